"""The artifact store: where artifacts live, and whether the pods that need it can use it.

Today the store is a PersistentVolumeClaim in each namespace (the operator setting
artifact_pvc). Two ways it can keep a model from running are told apart here, so a condition
names the store rather than a pod's symptom:

- the claim does not bind (no such StorageClass, no default class, a provisioner failure, an
  access mode the class does not offer): `ArtifactClaimPending`;
- the claim is ReadWriteOnce (or ReadWriteOncePod) and a pod cannot use it where it was
  placed (the volume is attached to another node, or lives on a node the pod may not go to):
  `ArtifactClaimSingleNode`.

An object store (S3, issue 14) would add its own check beside `store_problem`, with the same
answer: None when the store is usable, else the reason and message for the condition.
"""

from __future__ import annotations

from collections.abc import Iterable

from .observed import ClaimView, EventView, Observed, PodProblem, PodView

# Failures of the object store that a person or time fixes outside the SmallModel (a Secret
# rotated, a bucket created, an endpoint back): the failed Job is retried after a while.
RETRIED_STORE_FAILURES = frozenset({"StoreUnreachable", "StoreCredentialsInvalid", "StoreBucketMissing"})


# What a serving pod's fetch-artifact init container reports (flotilla.objectstore).
DOWNLOAD_FAILURES = RETRIED_STORE_FAILURES | {"ArtifactChecksumMismatch", "ArtifactMissing"}


def download_problem(pods: Iterable[PodView]) -> PodProblem | None:
    """A pod that cannot download its artifact from the S3 store: named even while other
    replicas serve, like a pod that cannot use a single-node claim."""
    for pod in pods:
        problem = pod.problem
        if not pod.terminating and problem is not None and problem.reason in DOWNLOAD_FAILURES:
            return problem
    return None


def retry_due(reason: str | None, failed_at: float | None, now: float, wait: float) -> bool:
    """A failed Job whose reason is the store's, `wait` seconds after it failed: run it again.
    The Job itself already retried its pod with backoff; this is the slow outer loop."""
    return reason in RETRIED_STORE_FAILURES and failed_at is not None and now - failed_at >= wait


CLAIM_PENDING = "ArtifactClaimPending"
SINGLE_NODE = "ArtifactClaimSingleNode"
SINGLE_NODE_MODES = frozenset({"ReadWriteOnce", "ReadWriteOncePod"})

# What the scheduler says when a pod cannot go where a single-node volume is (VolumeBinding:
# "didn't match PersistentVolume's node affinity" since Kubernetes 1.30 or so, "had volume node
# affinity conflict" before; VolumeRestrictions for ReadWriteOncePod), and what the
# attach/detach controller says when the volume is attached to another node already.
_SCHEDULER_SINGLE_NODE = ("PersistentVolume's node affinity", "volume node affinity conflict", "ReadWriteOncePod")
_MULTI_ATTACH = "Multi-Attach"


def _about_volumes(message: str) -> bool:
    """The scheduler blames the volume ("pod has unbound immediate PersistentVolumeClaims",
    'storageclass.storage.k8s.io "x" not found'), not CPU or memory: a WaitForFirstConsumer
    claim is Pending while its pod waits for room, and that is not the claim's fault."""
    lowered = message.lower()
    return any(word in lowered for word in ("persistentvolumeclaim", "persistent volume", "storageclass"))


def _latest(events: Iterable[EventView], kind: str, name: str) -> EventView | None:
    about = [e for e in events if e.kind == kind and e.name == name]
    return max(about, key=lambda e: e.last_seen) if about else None


def _claim_facts(claim: ClaimView) -> str:
    storage_class = claim.storage_class if claim.storage_class is not None else "unset (the cluster's default)"
    if claim.storage_class == "":
        storage_class = '"" (static volumes only)'
    modes = ", ".join(claim.access_modes) or "none"
    return f"artifact claim {claim.name} is {claim.phase} (storageClassName {storage_class}, accessModes {modes})"


def claim_pending(claim: ClaimView | None, pods: Iterable[PodView], events: Iterable[EventView]) -> PodProblem | None:
    """The claim has not bound and something says it will not by itself: a Warning Event
    about it (ProvisioningFailed, ...) or a pod that mounts it cannot be scheduled. A claim
    that waits for its first consumer (WaitForFirstConsumer) with neither is just early."""
    if claim is None or claim.phase == "Bound":
        return None
    event = _latest(events, "PersistentVolumeClaim", claim.name)
    stuck = next((p for p in pods if p.unschedulable and _about_volumes(p.unschedulable)), None)
    if event is None and stuck is None:
        return None
    said = f"{event.reason}: {event.message}" if event else f"pod {stuck.name}: {stuck.unschedulable}" if stuck else ""
    fix = (
        "give the claim a StorageClass that exists and offers this access mode (operator settings "
        "artifact_storage_class, artifact_pvc_access_mode), or bind it to a PersistentVolume"
    )
    return PodProblem(CLAIM_PENDING, f"{_claim_facts(claim)}: {said}; {fix}")


def single_node_mode(claim: ClaimView | None, configured: str) -> str | None:
    """ReadWriteOnce or ReadWriteOncePod when the claim is one (its own spec, else the setting)."""
    modes = set(claim.access_modes) if claim is not None and claim.access_modes else {configured}
    if "ReadWriteMany" in modes or "ReadOnlyMany" in modes:
        return None
    return next(iter(sorted(modes & SINGLE_NODE_MODES)), None)


def single_node_advice(claim_name: str, mode: str) -> str:
    if mode == "ReadWriteOncePod":
        limit = "only one pod at a time may mount it (a second replica or the optimization Job waits)"
    else:
        limit = "every pod that mounts it (optimization Job, serving replicas) must run on the node it is attached to"
    return (
        f"artifact claim {claim_name} is {mode}: {limit}; for replicas on several nodes use a ReadWriteMany "
        "StorageClass (operator settings artifact_storage_class, artifact_pvc_access_mode=ReadWriteMany)"
    )


def _single_node_symptom(pod: PodView, events: Iterable[EventView]) -> str | None:
    if pod.unschedulable and any(s in pod.unschedulable for s in _SCHEDULER_SINGLE_NODE):
        return pod.unschedulable
    event = _latest(events, "Pod", pod.name)
    if pod.phase == "Pending" and event is not None and _MULTI_ATTACH in event.message:
        return f"{event.reason}: {event.message}"
    return None


def single_node(
    claim: ClaimView | None, configured: str, pods: Iterable[PodView], events: Iterable[EventView]
) -> PodProblem | None:
    """A pod cannot use a single-node claim where it is: attached elsewhere, or out of reach."""
    mode = single_node_mode(claim, configured)
    if mode is None:
        return None
    name = claim.name if claim is not None else "?"
    for pod in pods:
        if not pod.terminating and (symptom := _single_node_symptom(pod, events)):
            return PodProblem(SINGLE_NODE, f"pod {pod.name}: {symptom}; {single_node_advice(name, mode)}")
    return None


def store_problem(observed: Observed, configured_mode: str, pods: list[PodView]) -> PodProblem | None:
    """Why these pods (of one Job or one revision) cannot use the artifact store, if that is why."""
    claim = observed.artifact_claim
    return claim_pending(claim, pods, observed.warnings) or single_node(claim, configured_mode, pods, observed.warnings)
