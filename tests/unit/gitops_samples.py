"""SmallModels in the states a GitOps tool sees, with the status the real planner writes.

One place for both GitOps tests (tests/unit/test_gitops.py): kstatus's own computation
(sigs.k8s.io/cli-utils, e2e/tools/kstatus) and the Argo CD health check (docs/argocd-health.lua).
Each status comes from `plan()` on the fixtures of tests/unit/objects.py, replanned until it
settles, never written by hand; `EXPECTED` is what docs/gitops.md says each tool reports.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from flotilla.api.v1alpha1 import ANNOTATION_ABORT, SmallModel
from flotilla.config import OperatorConfig
from flotilla.reconcile import Observed, Plan, plan

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


@dataclass(frozen=True)
class Expected:
    kstatus: str  # status.Compute: InProgress | Current | Failed
    argo: str  # hs.status: Progressing | Healthy | Degraded
    ready: str  # Ready's reason, to show the sample is the state it claims to be ("" without status)


EXPECTED: dict[str, Expected] = {
    # kstatus reads "no status yet" as Current (it cannot tell a resource with nothing to
    # report from one no controller has seen); the Argo CD check waits for observedGeneration.
    "created": Expected("Current", "Progressing", ""),
    "optimizing": Expected("InProgress", "Progressing", "Optimizing"),
    "queued": Expected("InProgress", "Progressing", "Queued"),
    "deploying": Expected("InProgress", "Progressing", "Deploying"),
    "serving": Expected("Current", "Healthy", "Serving"),
    "scaled-to-zero": Expected("Current", "Healthy", "Serving"),
    "optimization-failed": Expected("Failed", "Degraded", "AccuracyBudgetExceeded"),
    "update-failed-stable-serving": Expected("Failed", "Degraded", "AccuracyBudgetExceeded"),
    "canary": Expected("InProgress", "Progressing", "CanaryProgressing"),
    "rolled-back": Expected("Failed", "Degraded", "RolledBack"),
    "unschedulable": Expected("InProgress", "Progressing", "Unschedulable"),
    "crash-looping-canary": Expected("InProgress", "Progressing", "CrashLoopBackOff"),
    "generation-ahead": Expected("InProgress", "Progressing", "Serving"),
}


def settle(m: SmallModel, obs: Observed, rounds: int = 3) -> Plan:
    """Plan, write the status back, plan again: what a reader sees once reconciles agree."""
    p = plan(m, obs, context())
    for _ in range(rounds - 1):
        p = plan(m.model_copy(update={"status": p.status}), obs, context())
    return p


def wire(m: SmallModel, p: Plan, generation: int | None = None) -> dict[str, Any]:
    """The SmallModel as `kubectl get -o json` shows it after the plan's status was written."""
    return {
        "apiVersion": m.api_version,
        "kind": m.kind,
        "metadata": {
            "name": m.metadata.name,
            "namespace": m.metadata.namespace,
            "uid": m.metadata.uid,
            "generation": m.metadata.generation if generation is None else generation,
        },
        "spec": m.spec.to_wire(),
        "status": p.status.to_wire(),
    }


def _serving(replicas: int = 1) -> tuple[SmallModel, Plan, dict[str, Any]]:
    m = model(replicas=replicas)
    key, rev = key_of(m), revision_of(m)
    job = job_object(m, complete=True, result=summary(key))
    return m, settle(m, observed(job, deployment_object(m, rev, key, replicas=replicas, ready=replicas))), job


def created() -> dict[str, Any]:
    """Applied, not yet reconciled: no status at all (the only sample no plan produced)."""
    m = model()
    return {
        "apiVersion": m.api_version,
        "kind": m.kind,
        "metadata": {"name": "created", "generation": 1},
        "spec": m.spec.to_wire(),
    }


def optimizing() -> dict[str, Any]:
    m = model()
    return wire(m, settle(m, observed()))


def queued() -> dict[str, Any]:
    """Past the fleet's cap on optimization Jobs (docs/conditions.md): waits for a slot."""
    m = model()
    capped = replace(context(), config=OperatorConfig(max_concurrent_optimizations=2))
    busy = replace(observed(), optimizations_running=2)
    p = plan(m, busy, capped)
    return wire(m, plan(m.model_copy(update={"status": p.status}), busy, capped))


def deploying() -> dict[str, Any]:
    m = model()
    key, rev = key_of(m), revision_of(m)
    obs = observed(job_object(m, complete=True, result=summary(key)), deployment_object(m, rev, key, ready=0))
    return wire(m, settle(m, obs))


def serving() -> dict[str, Any]:
    m, p, _ = _serving()
    return wire(m, p)


def scaled_to_zero() -> dict[str, Any]:
    m, p, _ = _serving(replicas=0)
    return wire(m, p)


def optimization_failed() -> dict[str, Any]:
    m = model()
    fail = summary(key_of(m), ok=False)
    obs = observed(
        job_object(m, failed=True),
        job_pod_object(m, message=fail.to_termination_message(), exit_code=3, reason="Error"),
    )
    return wire(m, settle(m, obs))


def update_failed_stable_serving() -> dict[str, Any]:
    old, settled, old_job = _serving()
    new = model(generation=2, optimize={"precision": "int8"}).model_copy(update={"status": settled.status})
    obs = observed(
        old_job,
        deployment_object(old, revision_of(old), key_of(old)),
        job_object(new, failed=True, result=summary(key_of(new), ok=False)),
    )
    return wire(new, settle(new, obs))


def _canary(
    pods: Callable[[SmallModel, str], list[dict[str, Any]]],
) -> tuple[SmallModel, Observed, Plan]:
    """A serving change of a settled 2-replica model: revision 2 starts as a canary."""
    old, settled, job = _serving(replicas=2)
    rev1 = revision_of(old)
    new = model(generation=2, replicas=2, serving={"maxBatchSize": 16}).model_copy(update={"status": settled.status})
    rev2 = revision_of(new)
    obs = observed(
        job,
        deployment_object(old, rev1, key_of(old), replicas=2, ready=2),
        deployment_object(new, rev2, key_of(new), replicas=1, ready=0),
        *[serving_pod_object(old, rev1, f"old-{i}", f"10.0.0.{i}") for i in range(2)],
        *pods(new, rev2),
    )
    return new, obs, settle(new, obs)


def canary() -> dict[str, Any]:
    new, _, p = _canary(lambda m, rev: [serving_pod_object(m, rev, "new-0", "10.0.1.0")])
    return wire(new, p)


def rolled_back() -> dict[str, Any]:
    new, obs, going = _canary(lambda m, rev: [serving_pod_object(m, rev, "new-0", "10.0.1.0")])
    meta = new.metadata.model_copy(update={"annotations": {ANNOTATION_ABORT: "true"}})
    aborted = plan(new.model_copy(update={"metadata": meta, "status": going.status}), obs, context())
    assert ANNOTATION_ABORT in aborted.clear_annotations
    after = new.model_copy(update={"status": aborted.status})  # the executor removed the annotation
    old = model(replicas=2)
    rest = observed(
        job_object(old, complete=True, result=summary(key_of(old))),
        deployment_object(old, revision_of(old), key_of(old), replicas=2, ready=2),
    )
    return wire(after, settle(after, rest))


def unschedulable() -> dict[str, Any]:
    m = model()
    key, rev = key_of(m), revision_of(m)
    obs = observed(
        job_object(m, complete=True, result=summary(key)),
        deployment_object(m, rev, key, ready=0),
        pending_pod_object(m, revision=rev, message="0/9 nodes are available: 9 Insufficient nvidia.com/gpu"),
    )
    return wire(m, settle(m, obs))


def crash_looping_canary() -> dict[str, Any]:
    def crashing(m: SmallModel, rev: str) -> list[dict[str, Any]]:
        pod = serving_pod_object(m, rev, "new-0", "10.0.1.0", ready=False)
        pod["status"]["containerStatuses"] = [
            {
                "name": "triton",
                "restartCount": 4,
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 1m20s restarting"}},
                "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}},
            }
        ]
        return [pod]

    new, _, p = _canary(crashing)
    return wire(new, p)


def generation_ahead() -> dict[str, Any]:
    """A spec edit the operator has not reconciled yet: metadata.generation 2, status of 1."""
    m, p, _ = _serving()
    return wire(m, p, generation=2)


BUILDERS: dict[str, Callable[[], dict[str, Any]]] = {
    "created": created,
    "optimizing": optimizing,
    "queued": queued,
    "deploying": deploying,
    "serving": serving,
    "scaled-to-zero": scaled_to_zero,
    "optimization-failed": optimization_failed,
    "update-failed-stable-serving": update_failed_stable_serving,
    "canary": canary,
    "rolled-back": rolled_back,
    "unschedulable": unschedulable,
    "crash-looping-canary": crash_looping_canary,
    "generation-ahead": generation_ahead,
}


def samples() -> dict[str, dict[str, Any]]:
    """name -> SmallModel object (metadata.name is the sample's name)."""
    out = {}
    for name, build in BUILDERS.items():
        obj = build()
        obj["metadata"]["name"] = name
        out[name] = obj
    return out
