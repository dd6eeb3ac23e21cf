"""Fleet-wide safety of optimization Jobs: a cap on how many run at once, and finished Jobs of
artifacts no revision uses cleaned up."""

from __future__ import annotations

from dataclasses import replace

from flotilla.config import OperatorConfig
from flotilla.reconcile import Context, Plan, plan

from .objects import context, job_object, key_of, model, observed, revision_of, summary


def cond(p: Plan, type_: str) -> tuple[str, str, str]:
    c = p.status.condition(type_)
    assert c is not None, type_
    return c.status, c.reason, c.message


def capped(cap: int) -> Context:
    return replace(context(), config=OperatorConfig(max_concurrent_optimizations=cap))


def test_a_model_past_the_cap_waits_queued_and_starts_when_a_slot_frees() -> None:
    m = model()
    busy = replace(observed(), optimizations_running=2)
    p = plan(m, busy, capped(2))
    assert [o["kind"] for o in p.apply] == []  # no Job, and no claim either
    status, reason, message = cond(p, "Optimized")
    assert (status, reason) == ("False", "Queued") and "2 optimization Jobs run, at most 2" in message
    assert cond(p, "Ready")[1] == "Queued"
    assert p.events == ()  # waiting is not news
    p = plan(m.model_copy(update={"status": p.status}), replace(busy, optimizations_running=1), capped(2))
    assert "Job" in [o["kind"] for o in p.apply]
    assert cond(p, "Optimized")[1] == "Optimizing"


def test_no_cap_and_an_existing_job_are_never_queued() -> None:
    m = model()
    assert "Job" in [o["kind"] for o in plan(m, replace(observed(), optimizations_running=99), capped(0)).apply]
    running = replace(observed(job_object(m)), optimizations_running=9)
    assert cond(plan(m, running, capped(2)), "Optimized")[1] == "Optimizing"


def test_finished_jobs_of_unused_artifacts_are_deleted_and_the_used_ones_kept() -> None:
    old = model(optimize={"precision": "fp32"})
    mid = model(optimize={"precision": "int8"})
    new = model(optimize={"precision": "int4"})
    old_job = job_object(old, complete=True, result=summary(key_of(old)))
    mid_job = job_object(mid, failed=True)
    new_job = job_object(new)
    status = {"revisions": {"stable": revision_of(old), "stableArtifactKey": key_of(old)}}
    current = model(status=status, optimize={"precision": "int4"})
    p = plan(current, observed(old_job, mid_job, new_job), context())
    deleted = [(r.kind, r.name) for r in p.delete]
    assert deleted == [("Job", mid_job["metadata"]["name"])]  # stable's and the running one stay
