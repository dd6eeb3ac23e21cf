"""Planner decisions, from a SmallModel and what is observed of its children."""

from __future__ import annotations

from typing import Any

from flotilla.api.v1alpha1 import LABEL_ARTIFACT_KEY, LABEL_REVISION
from flotilla.reconcile import Observed, Plan, plan
from flotilla.reconcile.observed import ANNOTATION_RESULT, DeploymentView
from flotilla.resources.meta import ANNOTATION_APPLIED_HASH, deployment_name, job_name

from .objects import (
    context,
    deployment_object,
    job_object,
    job_pod_object,
    key_of,
    model,
    observed,
    pending_pod_object,
    revision_of,
    serving_pod_object,
    summary,
)


def rollout_time(text: str) -> float:
    from flotilla.rollout.machine import parse_time

    return parse_time(text) or 0.0


def rfc3339(epoch: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def kinds(p: Plan) -> list[str]:
    return [o["kind"] for o in p.apply]


def cond(p: Plan, type_: str) -> tuple[str, str]:
    c = p.status.condition(type_)
    assert c is not None, type_
    return c.status, c.reason


def replan(m: Any, p: Plan, obs: Observed) -> Plan:
    """The next reconcile, after the status of `p` was written."""
    return plan(m.model_copy(update={"status": p.status}), obs, context())


def test_new_model_creates_the_job_and_the_artifact_claim() -> None:
    m = model()
    p = plan(m, observed(pvc=False), context())
    assert kinds(p) == ["PersistentVolumeClaim", "Job"]
    job = p.apply[1]
    assert job["metadata"]["name"] == job_name("chat", key_of(m))
    assert job["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert ANNOTATION_APPLIED_HASH in job["metadata"]["annotations"]
    assert cond(p, "Optimized") == ("False", "Optimizing")
    assert cond(p, "Ready") == ("False", "Optimizing")
    assert cond(p, "Reconciling")[0] == "True"
    assert cond(p, "Stalled")[0] == "False"
    assert [e.reason for e in p.events] == ["OptimizationStarted"]
    assert p.status.observed_generation == 1


def test_existing_claim_is_not_recreated() -> None:
    assert kinds(plan(model(), observed(pvc=True), context())) == ["Job"]


def test_running_job_is_left_alone() -> None:
    m = model()
    p = plan(m, observed(job_object(m)), context())
    assert p.apply == () and p.events == ()
    assert cond(p, "Optimized") == ("False", "Optimizing")


def test_unschedulable_job_pod_is_reported() -> None:
    m = model()
    p = plan(
        m, observed(job_object(m), pending_pod_object(m, job=True, message="0/3 nodes: Insufficient memory")), context()
    )
    status, reason = cond(p, "Optimized")
    assert (status, reason) == ("False", "Unschedulable")
    assert "Insufficient memory" in p.status.condition("Optimized").message  # type: ignore[union-attr]
    assert any(e.type == "Warning" and e.reason == "Unschedulable" for e in p.events)


def test_finished_job_result_is_read_persisted_and_served() -> None:
    m = model()
    s = summary(key_of(m))
    obs = observed(job_object(m, complete=True), job_pod_object(m, message=s.to_termination_message()))
    p = plan(m, obs, context())
    assert [a.annotations.keys() for a in p.annotate] == [{ANNOTATION_RESULT}]
    assert kinds(p) == ["ConfigMap", "Deployment", "Service", "Service", "EndpointSlice"]
    rev = revision_of(m)
    deployment = p.apply[1]
    assert deployment["metadata"]["name"] == deployment_name("chat", rev)
    assert "replicas" not in deployment["spec"]  # set through the scale subresource
    assert [(s.deployment, s.replicas) for s in p.scale] == [(deployment_name("chat", rev), 1)]
    assert cond(p, "Optimized") == ("True", "ArtifactReady")
    assert cond(p, "Ready") == ("False", "Deploying")
    assert p.status.artifact is not None and p.status.artifact.precision == "int4"
    assert p.status.revisions is not None and p.status.revisions.stable == rev
    assert [e.reason for e in p.events] == ["Optimized"]


def test_ready_when_the_stable_revision_has_ready_pods() -> None:
    m = model()
    key, rev = key_of(m), revision_of(m)
    first = plan(m, observed(job_object(m, complete=True, result=summary(key))), context())
    obs = observed(job_object(m, complete=True, result=summary(key)), deployment_object(m, rev, key, ready=1))
    p = replan(m, first, obs)
    assert cond(p, "Ready") == ("True", "Serving")
    assert cond(p, "Reconciling")[0] == "False"
    assert p.status.ready_replicas == 1
    assert [e.reason for e in p.events] == ["Ready"]
    assert p.annotate == ()  # already persisted on the Job


def test_steady_state_is_a_fixed_point() -> None:
    m = model()
    key, rev = key_of(m), revision_of(m)
    obs = observed(job_object(m, complete=True, result=summary(key)), deployment_object(m, rev, key, ready=1))
    p1 = plan(m, obs, context())
    p2 = replan(m, p1, obs)
    assert p2.status == p1.status.model_copy(update={"conditions": p2.status.conditions})
    assert p2.status.to_wire() == replan(m, p2, obs).status.to_wire()
    assert p2.events == () and p2.scale == () and p2.delete == ()


def test_failed_job_reports_the_optimizer_reason() -> None:
    m = model()
    fail = summary(key_of(m), ok=False)
    obs = observed(
        job_object(m, failed=True),
        job_pod_object(m, message=fail.to_termination_message(), exit_code=3, reason="Error"),
    )
    p = plan(m, obs, context())
    assert cond(p, "Optimized") == ("False", "AccuracyBudgetExceeded")
    assert cond(p, "Stalled") == ("True", "AccuracyBudgetExceeded")
    assert cond(p, "Reconciling")[0] == "False"
    assert kinds(p) == []  # nothing rolled out, no new Job
    warnings = [e for e in p.events if e.type == "Warning"]
    assert [e.reason for e in warnings] == ["AccuracyBudgetExceeded"]
    assert "0.63" in warnings[0].message


def test_failed_job_without_summary_uses_the_pod_state() -> None:
    m = model()
    obs = observed(job_object(m, failed=True), job_pod_object(m, message=None, exit_code=137, reason="OOMKilled"))
    p = plan(m, obs, context())
    status, reason = cond(p, "Optimized")
    assert (status, reason) == ("False", "OOMKilled")
    message = p.status.condition("Optimized").message  # type: ignore[union-attr]
    assert "OOMKilled" in message and "137" in message
    obs = observed(job_object(m, failed=True), job_pod_object(m, message=None, exit_code=1, reason="Error"))
    assert cond(plan(m, obs, context()), "Optimized") == ("False", "OptimizerError")


def test_failed_update_keeps_the_stable_revision_serving() -> None:
    old = model(optimize={"precision": "fp32"})
    old_key, old_rev = key_of(old), revision_of(old)
    settled = plan(
        old,
        observed(job_object(old, complete=True, result=summary(old_key)), deployment_object(old, old_rev, old_key)),
        context(),
    )
    new = model(generation=2, optimize={"precision": "int8"}).model_copy(update={"status": settled.status})
    fail = summary(key_of(new), ok=False)
    obs = observed(
        job_object(old, complete=True, result=summary(old_key)),
        deployment_object(old, old_rev, old_key),
        job_object(new, failed=True, result=fail),
    )
    p = plan(new, obs, context())
    assert p.delete == ()  # the stable Deployment stays
    assert p.status.revisions is not None and p.status.revisions.stable == old_rev
    assert cond(p, "Ready")[1] == "AccuracyBudgetExceeded"
    assert cond(p, "Degraded") == ("True", "AccuracyBudgetExceeded")
    assert f"revision {old_rev} keeps serving" in p.status.condition("Ready").message  # type: ignore[union-attr]
    assert any(s.deployment == deployment_name("chat", old_rev) for s in p.scale) is False


def test_serving_change_without_canary_steps_replaces_the_revision_once_ready() -> None:
    """steps [100]: no judgement, the new revision replaces the stable one once ready."""
    no_canary = {"canary": {"steps": [100]}}
    m1 = model(rollout=no_canary)
    key, rev1 = key_of(m1), revision_of(m1)
    job = job_object(m1, complete=True, result=summary(key))
    settled = plan(m1, observed(job, deployment_object(m1, rev1, key)), context())
    m2 = model(generation=2, serving={"maxBatchSize": 16}, rollout=no_canary)
    m2 = m2.model_copy(update={"status": settled.status})
    rev2 = revision_of(m2)
    assert key_of(m2) == key and rev2 != rev1  # same artifact, new revision

    rolling = plan(m2, observed(job, deployment_object(m1, rev1, key)), context())
    assert rolling.status.revisions is not None
    assert (rolling.status.revisions.stable, rolling.status.revisions.canary) == (rev1, rev2)
    assert rolling.delete == ()
    assert "max_batch_size: 16" in rolling.apply[0]["data"]["config.pbtxt"]
    assert any(o["metadata"]["name"] == "chat-canary" for o in rolling.apply)

    both = observed(
        job,
        deployment_object(m1, rev1, key),
        deployment_object(m2, rev2, key, ready=1),
        serving_pod_object(m1, rev1, "old-1", "10.0.0.1"),
        serving_pod_object(m2, rev2, "new-1", "10.0.0.2"),
    )
    done = replan(m2, rolling, both)
    assert done.status.revisions is not None
    assert (done.status.revisions.stable, done.status.revisions.canary) == (rev2, None)
    assert {r.name for r in done.delete} >= {deployment_name("chat", rev1)}
    assert "Promoted" in [e.reason for e in done.events]
    endpoints = next(o for o in done.apply if o["kind"] == "EndpointSlice")["endpoints"]
    assert [e["targetRef"]["name"] for e in endpoints] == ["new-1"]


def test_replicas_follow_spec_through_scale_actions() -> None:
    m = model(replicas=3)
    key, rev = key_of(m), revision_of(m)
    p = plan(
        m,
        observed(job_object(m, complete=True, result=summary(key)), deployment_object(m, rev, key, replicas=1)),
        context(),
    )
    assert [(s.replicas) for s in p.scale] == [3]
    assert "PodDisruptionBudget" in kinds(p)


def test_scaled_to_one_removes_the_pdb() -> None:
    m = model(replicas=1)
    key, rev = key_of(m), revision_of(m)
    pdb = {
        "kind": "PodDisruptionBudget",
        "metadata": {"name": deployment_name("chat", rev), "annotations": {ANNOTATION_APPLIED_HASH: "x"}},
    }
    obs = observed(job_object(m, complete=True, result=summary(key)), deployment_object(m, rev, key))
    from flotilla.reconcile.observed import ObjectView

    obs = Observed(jobs=obs.jobs, deployments=obs.deployments, others=(ObjectView.from_object(pdb),))
    p = plan(m, obs, context())
    assert [r.kind for r in p.delete] == ["PodDisruptionBudget"]


def test_unschedulable_serving_pods_are_reported() -> None:
    m = model(serving={"gpu": {"count": 16}})
    key, rev = key_of(m), revision_of(m)
    obs = observed(
        job_object(m, complete=True, result=summary(key)),
        deployment_object(m, rev, key, ready=0),
        pending_pod_object(m, revision=rev, message="0/9 nodes are available: 9 Insufficient nvidia.com/gpu."),
    )
    p = plan(m, obs, context())
    assert cond(p, "Ready") == ("False", "Unschedulable")
    assert "Insufficient nvidia.com/gpu" in p.status.condition("Ready").message  # type: ignore[union-attr]


def test_spec_back_to_an_old_artifact_reuses_its_job_result() -> None:
    m = model()
    key = key_of(m)
    p = plan(m, observed(job_object(m, complete=True, result=summary(key))), context())
    assert "Job" not in kinds(p)
    assert cond(p, "Optimized") == ("True", "ArtifactReady")


def test_artifact_recorded_in_status_survives_a_deleted_job() -> None:
    m = model()
    key = key_of(m)
    first = plan(m, observed(job_object(m, complete=True, result=summary(key))), context())
    p = replan(m, first, observed())
    assert "Job" not in kinds(p)
    assert p.status.artifact is not None and p.status.artifact.recipe == "int4-block32"


def test_old_revisions_are_pruned() -> None:
    m = model()
    key, rev = key_of(m), revision_of(m)
    stray = DeploymentView("chat-deadbeef", "deadbeef00", key, "h", 1, 1, 1)
    base = observed(job_object(m, complete=True, result=summary(key)), deployment_object(m, rev, key))
    obs = Observed(jobs=base.jobs, deployments=(*base.deployments, stray))
    p = plan(m, obs, context())
    assert [r.name for r in p.delete] == ["chat-deadbeef"]


def test_labels_tie_children_to_model_and_revision() -> None:
    m = model()
    key = key_of(m)
    p = plan(m, observed(job_object(m, complete=True, result=summary(key))), context())
    deployment = next(o for o in p.apply if o["kind"] == "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert labels[LABEL_REVISION] == revision_of(m) and labels[LABEL_ARTIFACT_KEY] == key


def test_leftover_config_of_a_gone_revision_is_pruned() -> None:
    from flotilla.reconcile.observed import ObjectView

    m = model()
    key, rev = key_of(m), revision_of(m)
    base = observed(job_object(m, complete=True, result=summary(key)), deployment_object(m, rev, key))
    leftover = ObjectView("ConfigMap", "chat-0ld0ld00-config", "h", revision="0ld0ld0000")
    p = plan(m, Observed(jobs=base.jobs, deployments=base.deployments, others=(leftover,)), context())
    assert [(r.kind, r.name) for r in p.delete] == [("ConfigMap", "chat-0ld0ld00-config")]


def test_with_the_s3_store_no_artifact_claim_is_created() -> None:
    from dataclasses import replace

    from flotilla.config import OperatorConfig

    ctx = replace(context(), config=OperatorConfig(artifact_store="s3", s3_bucket="models"))
    p = plan(model(), observed(pvc=False), ctx)
    assert kinds(p) == ["Job"]


def _store_failure(failed_at: str) -> tuple[Any, Observed]:
    m = model()
    result = summary(key_of(m), ok=False, reason="StoreUnreachable", message="upload: connect timeout to s3:9000")
    job = job_object(m, failed=True, result=result)
    job["status"]["conditions"][0]["lastTransitionTime"] = failed_at
    return m, observed(job)


def test_a_job_failed_by_the_object_store_runs_again_after_the_retry_wait() -> None:
    ctx = context()  # now: NOW; store_retry_seconds 300 by default
    now = rollout_time(ctx.now)
    m, obs = _store_failure(rfc3339(now - 299))
    early = plan(m, obs, ctx)
    assert not early.delete and cond(early, "Optimized") == ("False", "StoreUnreachable")
    optimized = early.status.condition("Optimized")
    assert optimized is not None and "runs again 300s after it failed" in optimized.message
    assert cond(early, "Stalled")[0] == "False" and cond(early, "Reconciling")[0] == "True"  # it will move
    due = plan(*_store_failure(rfc3339(now - 301)), ctx)
    assert [(r.kind, r.name) for r in due.delete] == [("Job", job_name("chat", key_of(m)))]
    assert "OptimizationRetried" in [e.reason for e in due.events]


def test_a_budget_failure_is_never_retried() -> None:
    ctx = context()
    m = model()
    job = job_object(m, failed=True, result=summary(key_of(m), ok=False))
    job["status"]["conditions"][0]["lastTransitionTime"] = rfc3339(rollout_time(ctx.now) - 86400)
    p = plan(m, observed(job), ctx)
    assert not p.delete and cond(p, "Stalled") == ("True", "AccuracyBudgetExceeded")
