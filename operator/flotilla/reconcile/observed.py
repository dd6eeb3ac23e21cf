"""What the planner knows of the cluster: small projections of a SmallModel's children.

Built from raw API objects by pure functions, so the operator's in-memory indexes and the
tests construct them the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from flotilla.api.v1alpha1 import GROUP, LABEL_ARTIFACT_KEY, LABEL_REVISION, ArtifactSummary
from flotilla.metrics import Window
from flotilla.metrics.gateway import Demand
from flotilla.resources.meta import ANNOTATION_APPLIED_HASH, marker

ANNOTATION_RESULT = f"{GROUP}/result"
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    meta: Mapping[str, Any] = obj.get("metadata") or {}
    return meta


def _labels(obj: Mapping[str, Any]) -> Mapping[str, str]:
    labels: Mapping[str, str] = _meta(obj).get("labels") or {}
    return labels


def _annotations(obj: Mapping[str, Any]) -> Mapping[str, str]:
    annotations: Mapping[str, str] = _meta(obj).get("annotations") or {}
    return annotations


def _condition(obj: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    conditions: Iterable[Mapping[str, Any]] = (obj.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == type_), None)


def _is_true(obj: Mapping[str, Any], type_: str) -> bool:
    cond = _condition(obj, type_)
    return cond is not None and cond.get("status") == "True"


def parse_summary(text: str | None) -> ArtifactSummary | None:
    if not text:
        return None
    try:
        return ArtifactSummary.from_termination_message(text.strip())
    except ValueError:
        return None


def _replicas_manager(obj: Mapping[str, Any]) -> str | None:
    """Who set spec.replicas last, from managedFields (the newest entry that owns it)."""
    owners = [
        entry
        for entry in _meta(obj).get("managedFields") or []
        if "f:replicas" in ((entry.get("fieldsV1") or {}).get("f:spec") or {})
    ]
    owners.sort(key=lambda e: str(e.get("time", "")))
    return str(owners[-1].get("manager")) if owners else None


@dataclass(frozen=True)
class JobView:
    name: str
    key: str
    applied_hash: str | None
    complete: bool
    failed: bool
    failure_reason: str  # the Job's Failed condition reason, e.g. BackoffLimitExceeded
    failure_message: str
    result: ArtifactSummary | None  # persisted on the Job once read from its pod
    failed_at: str | None = None  # the Failed condition's lastTransitionTime (RFC 3339)

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> JobView:
        failed = _condition(obj, "Failed") or {}
        return cls(
            name=_meta(obj).get("name", ""),
            key=_labels(obj).get(LABEL_ARTIFACT_KEY, ""),
            applied_hash=_annotations(obj).get(ANNOTATION_APPLIED_HASH),
            complete=_is_true(obj, "Complete"),
            failed=failed.get("status") == "True",
            failure_reason=failed.get("reason", ""),
            failure_message=failed.get("message", ""),
            result=parse_summary(_annotations(obj).get(ANNOTATION_RESULT)),
            failed_at=failed.get("lastTransitionTime") if failed.get("status") == "True" else None,
        )


# Container waiting reasons the kubelet keeps retrying but that need a person: a wrong image
# or registry credentials, a container that exits at start, a missing Secret or ConfigMap.
WAITING_FAILURES = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "ErrImageNeverPull",
        "CrashLoopBackOff",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)


def _last_exit(last: Mapping[str, Any], restarts: int) -> str:
    said = f"exit code {last.get('exitCode')} ({last.get('reason') or 'terminated'}"
    said += f", {restarts} restarts)" if restarts else ")"
    message = str(last.get("message") or "").strip()
    return f"{said}: {message[-500:]}" if message else said


def _said_reason(last: Mapping[str, Any]) -> str | None:
    """The failure reason of an ArtifactSummary termination message, if that is what it is."""
    message = str(last.get("message") or "").strip()
    if not message.startswith("{"):
        return None
    try:
        summary = ArtifactSummary.from_termination_message(message)
    except ValueError:
        return None
    return None if summary.ok else summary.reason


@dataclass(frozen=True)
class PodProblem:
    """Why a pod does not run, in the kubelet's or scheduler's words (a condition's reason and message)."""

    reason: str
    message: str


def _container_state(status: Mapping[str, Any]) -> tuple[Mapping[str, Any], Mapping[str, Any], int]:
    """The first container that is not running well: its waiting state, its last termination, restarts."""
    for cs in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        last = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated") or {}
        if waiting.get("reason") in WAITING_FAILURES or last.get("reason") == "OOMKilled":
            return waiting, last, int(cs.get("restartCount") or 0)
    return {}, {}, 0


@dataclass(frozen=True)
class PodView:
    name: str
    job_name: str | None
    revision: str | None
    phase: str
    ready: bool
    unschedulable: str | None  # the scheduler's message while the pod cannot be placed
    terminated_message: str | None
    terminated_reason: str | None  # e.g. Completed, Error, OOMKilled
    exit_code: int | None
    ip: str | None = None
    node: str | None = None
    terminating: bool = False
    waiting_reason: str | None = None  # a container stuck in WAITING_FAILURES, e.g. ImagePullBackOff
    waiting_message: str | None = None
    last_exit: str | None = None  # that container's last termination: "exit code 1 (Error): <message>"
    oom_killed: bool = False  # that container was last killed for exceeding its memory limit
    # The reason a Flotilla container (the S3 fetch init container) wrote in its termination
    # message, e.g. ArtifactChecksumMismatch: a better condition reason than CrashLoopBackOff.
    said_reason: str | None = None

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> PodView:
        status = obj.get("status") or {}
        scheduled = _condition(obj, "PodScheduled") or {}
        unschedulable = scheduled.get("message", "") if scheduled.get("reason") == "Unschedulable" else None
        terminated: Mapping[str, Any] = {}
        for cs in status.get("containerStatuses") or []:
            terminated = (
                (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated") or {}
            )
            if terminated:
                break
        labels = _labels(obj)
        waiting, last, restarts = _container_state(status)
        return cls(
            name=_meta(obj).get("name", ""),
            job_name=labels.get(JOB_NAME_LABEL) or labels.get("job-name"),
            revision=labels.get(LABEL_REVISION),
            phase=status.get("phase", "Pending"),
            ready=_is_true(obj, "Ready"),
            unschedulable=unschedulable,
            terminated_message=terminated.get("message"),
            terminated_reason=terminated.get("reason"),
            exit_code=terminated.get("exitCode"),
            ip=status.get("podIP") or None,
            node=(obj.get("spec") or {}).get("nodeName") or None,
            terminating=bool(_meta(obj).get("deletionTimestamp")),
            waiting_reason=waiting.get("reason"),
            waiting_message=waiting.get("message"),
            last_exit=_last_exit(last, restarts) if last else None,
            oom_killed=last.get("reason") == "OOMKilled",
            said_reason=_said_reason(last),
        )

    @property
    def problem(self) -> PodProblem | None:
        """What keeps this pod from running that the kubelet will not fix by itself, if anything."""
        if self.unschedulable:
            return PodProblem("Unschedulable", self.unschedulable)
        if self.oom_killed:
            return PodProblem("OOMKilled", f"pod {self.name}: killed for exceeding its memory limit ({self.last_exit})")
        if self.waiting_reason:
            said = f"pod {self.name}: {self.waiting_reason}: {self.waiting_message or 'no message'}"
            said = f"{said}; last {self.last_exit}" if self.last_exit else said
            return PodProblem(self.said_reason or self.waiting_reason, said)
        return None

    @property
    def serving(self) -> bool:
        """Ready, addressable and not on its way out: may take requests."""
        return self.ready and self.ip is not None and not self.terminating


@dataclass(frozen=True)
class DeploymentView:
    name: str
    revision: str
    key: str
    applied_hash: str | None
    replicas: int
    ready_replicas: int
    updated_replicas: int
    replicas_manager: str | None = None  # field manager that last set spec.replicas
    marker: int | None = None  # metadata.generation: grows when anyone changes the spec

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> DeploymentView:
        status = obj.get("status") or {}
        return cls(
            name=_meta(obj).get("name", ""),
            revision=_labels(obj).get(LABEL_REVISION, ""),
            key=_labels(obj).get(LABEL_ARTIFACT_KEY, ""),
            applied_hash=_annotations(obj).get(ANNOTATION_APPLIED_HASH),
            replicas=int((obj.get("spec") or {}).get("replicas", 1)),
            ready_replicas=int(status.get("readyReplicas", 0)),
            updated_replicas=int(status.get("updatedReplicas", 0)),
            replicas_manager=_replicas_manager(obj),
            marker=marker(_meta(obj).get("generation"), _meta(obj).get("resourceVersion")),
        )


@dataclass(frozen=True)
class ObjectView:
    """Any other child (Service, ConfigMap, PodDisruptionBudget): identity and content hash."""

    kind: str
    name: str
    applied_hash: str | None
    revision: str | None = None
    marker: int | None = None  # generation, else resourceVersion: grows when anyone writes it

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> ObjectView:
        return cls(
            kind=obj.get("kind", ""),
            name=_meta(obj).get("name", ""),
            applied_hash=_annotations(obj).get(ANNOTATION_APPLIED_HASH),
            revision=_labels(obj).get(LABEL_REVISION),
            marker=marker(_meta(obj).get("generation"), _meta(obj).get("resourceVersion")),
        )


# The scheduler writes the node it chose on a WaitForFirstConsumer claim (the provisioner then
# creates the volume there).
SELECTED_NODE = "volume.kubernetes.io/selected-node"


@dataclass(frozen=True)
class ClaimView:
    """The artifact claim as its own status tells it."""

    name: str
    phase: str  # Pending, Bound, Lost
    storage_class: str | None  # spec.storageClassName; None: the cluster's default class
    access_modes: tuple[str, ...]
    selected_node: str | None = None

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> ClaimView:
        spec = obj.get("spec") or {}
        return cls(
            name=_meta(obj).get("name", ""),
            phase=(obj.get("status") or {}).get("phase") or "Pending",
            storage_class=spec.get("storageClassName"),
            access_modes=tuple(spec.get("accessModes") or ()),
            selected_node=_annotations(obj).get(SELECTED_NODE),
        )


@dataclass(frozen=True)
class EventView:
    """A Warning Event about the artifact claim or one of the model's pods (only the message
    says why a claim does not provision or a volume does not attach)."""

    kind: str  # of the involved object: PersistentVolumeClaim, Pod
    name: str
    reason: str  # ProvisioningFailed, FailedAttachVolume, FailedScheduling, ...
    message: str
    last_seen: str = ""  # RFC 3339, to pick the latest

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> EventView:
        involved = obj.get("involvedObject") or obj.get("regarding") or {}
        seen = obj.get("lastTimestamp") or obj.get("eventTime") or (obj.get("series") or {}).get("lastObservedTime")
        return cls(
            kind=str(involved.get("kind", "")),
            name=str(involved.get("name", "")),
            reason=str(obj.get("reason", "")),
            message=str(obj.get("message") or obj.get("note") or ""),
            last_seen=str(seen or _meta(obj).get("creationTimestamp") or ""),
        )


@dataclass(frozen=True)
class Observed:
    jobs: tuple[JobView, ...] = ()
    pods: tuple[PodView, ...] = ()
    deployments: tuple[DeploymentView, ...] = ()
    others: tuple[ObjectView, ...] = ()
    artifact_pvc_exists: bool = True
    artifact_claim: ClaimView | None = None  # None: not watched (tests) or missing
    # Warning Events about the artifact claim and this model's pods, read by the controller only
    # while the claim is not Bound or a pod of the model is Pending (controller.py).
    warnings: tuple[EventView, ...] = ()
    metrics: Window | None = None  # one look at the serving pods' metrics, or None between looks
    http_route_api: bool = False  # the cluster serves gateway.networking.k8s.io HTTPRoutes
    metrics_error: str | None = None  # the metrics source as a whole failed (e.g. Prometheus down)
    # The gateway's count of requests for this model, read only while it is at zero (no pods
    # to read demand from): see scaling.at_zero.
    gateway_demand: Demand | None = None
    # Optimization Jobs running now across every watched namespace (the fleet-wide cap),
    # counted by the controller only for a plan that may create a Job (controller.py), from
    # `fleet_jobs`: every Job the watch has shown, as (namespace, view).
    optimizations_running: int = 0
    fleet_jobs: Callable[[], Iterable[tuple[str, JobView]]] = lambda: ()
    extra: Mapping[str, Any] = field(default_factory=dict)

    def job(self, name: str) -> JobView | None:
        return next((j for j in self.jobs if j.name == name), None)

    def deployment(self, revision: str) -> DeploymentView | None:
        return next((d for d in self.deployments if d.revision == revision), None)

    def pods_of_job(self, job: str) -> list[PodView]:
        return [p for p in self.pods if p.job_name == job]

    def pods_of_revision(self, revision: str) -> list[PodView]:
        return [p for p in self.pods if p.revision == revision]

    def serving_pods(self, revision: str | None) -> list[PodView]:
        return [p for p in self.pods if revision and p.revision == revision and p.serving]

    def find(self, kind: str, name: str) -> JobView | DeploymentView | ObjectView | None:
        views: tuple[JobView | DeploymentView | ObjectView, ...]
        if kind == "Job":
            views = self.jobs
        elif kind == "Deployment":
            views = self.deployments
        else:
            views = tuple(o for o in self.others if o.kind == kind)
        return next((v for v in views if v.name == name), None)

    def revisions(self) -> set[str]:
        """Every serving revision that still has an object in the cluster."""
        found = {d.revision for d in self.deployments} | {o.revision for o in self.others if o.revision}
        return {r for r in found if r}

    def exists(self, kind: str, name: str) -> bool:
        return self.find(kind, name) is not None

    def marker_of(self, kind: str, name: str) -> int | None:
        view = self.find(kind, name)
        return view.marker if isinstance(view, DeploymentView | ObjectView) else None

    def hash_of(self, kind: str, name: str) -> str | None:
        view = self.find(kind, name)
        return view.applied_hash if view else None
