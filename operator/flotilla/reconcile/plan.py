"""The planner: (SmallModel, observed children, now) -> what to apply, delete, scale, say.

Pure: no I/O, no clock, no randomness, so every decision is unit-testable and a restarted
operator that observes the same world makes the same plan.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from flotilla.api.v1alpha1 import (
    COND_DEGRADED,
    COND_OPTIMIZED,
    COND_READY,
    COND_RECONCILING,
    COND_STALLED,
    ArtifactSummary,
    RevisionsStatus,
    SmallModel,
    SmallModelStatus,
    artifact_key,
    serving_revision,
)
from flotilla.config import OperatorConfig
from flotilla.resources import optimizer, serving
from flotilla.resources.meta import Obj, config_map_name, deployment_name, stamped

from .artifact import ArtifactState, Building, Failed, Ready, artifact_state, artifact_status, describe
from .conditions import Want, merge, transitioned
from .observed import ANNOTATION_RESULT, Observed

EventType = Literal["Normal", "Warning"]


@dataclass(frozen=True)
class Event:
    type: EventType
    reason: str
    message: str


@dataclass(frozen=True)
class Ref:
    api_version: str
    kind: str
    name: str


@dataclass(frozen=True)
class Scale:
    deployment: str
    replicas: int


@dataclass(frozen=True)
class Annotate:
    ref: Ref
    annotations: dict[str, str]


@dataclass(frozen=True)
class Plan:
    apply: tuple[Obj, ...] = ()
    delete: tuple[Ref, ...] = ()
    scale: tuple[Scale, ...] = ()
    annotate: tuple[Annotate, ...] = ()
    events: tuple[Event, ...] = ()
    status: SmallModelStatus = field(default_factory=SmallModelStatus)


ConfigRenderer = Callable[[SmallModel, ArtifactSummary], str]


@dataclass(frozen=True)
class Context:
    config: OperatorConfig
    now: str  # RFC 3339, for condition transitions
    render_config: ConfigRenderer  # the revision's Triton config.pbtxt


@dataclass
class _Draft:
    """Accumulates a plan while the steps below decide."""

    apply: list[Obj] = field(default_factory=list)
    delete: list[Ref] = field(default_factory=list)
    scale: list[Scale] = field(default_factory=list)
    annotate: list[Annotate] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)

    def event(self, type_: EventType, reason: str, message: str) -> None:
        self.events.append(Event(type_, reason, message))


def desired_replicas(model: SmallModel) -> int:
    auto = model.spec.autoscaling
    if not auto.enabled:
        return model.spec.replicas
    wanted = model.status.scaling.desired_replicas if model.status.scaling else None
    return min(max(wanted if wanted is not None else auto.min_replicas, auto.min_replicas), auto.max_replicas)


def _plan_artifact(
    model: SmallModel, key: str, state: ArtifactState, observed: Observed, ctx: Context, draft: _Draft
) -> None:
    if isinstance(state, Building) and not state.exists:
        if not observed.artifact_pvc_exists and ctx.config.create_artifact_pvc:
            draft.apply.append(optimizer.build_artifact_pvc(model.metadata.namespace, ctx.config))
        draft.apply.append(stamped(optimizer.build_job(model, key, ctx.config)))
        draft.event(
            "Normal", "OptimizationStarted", f"Job {state.job} optimizes {model.spec.source.uri} (artifact {key[:8]})"
        )
    if isinstance(state, Ready | Failed) and state.newly_read:
        result = state.summary.to_termination_message()
        draft.annotate.append(Annotate(Ref("batch/v1", "Job", state.job), {ANNOTATION_RESULT: result}))


def _revision_objects(
    model: SmallModel, revision: str, summary: ArtifactSummary, replicas: int, ctx: Context
) -> list[Obj]:
    model_dir = summary.model_name or model.metadata.name
    objects = [
        serving.build_config_map(model, revision, ctx.render_config(model, summary)),
        serving.build_deployment(model, revision, summary.key, model_dir, ctx.config),
    ]
    if replicas > 1:
        objects.append(serving.build_pdb(model, revision))
    return [stamped(o) for o in objects]


def _delete_revision(model: SmallModel, revision: str, observed: Observed) -> list[Ref]:
    name = model.metadata.name
    refs = [
        Ref("apps/v1", "Deployment", deployment_name(name, revision)),
        Ref("v1", "ConfigMap", config_map_name(name, revision)),
    ]
    refs.append(Ref("policy/v1", "PodDisruptionBudget", deployment_name(name, revision)))
    return [r for r in refs if observed.exists(r.kind, r.name)]


@dataclass(frozen=True)
class _Serving:
    stable: str | None
    stable_key: str | None
    canary: str | None
    canary_key: str | None


def _prune_revisions(model: SmallModel, keep: set[str | None], observed: Observed, draft: _Draft) -> None:
    for revision in sorted(observed.revisions() - {r for r in keep if r}):
        draft.delete.extend(_delete_revision(model, revision, observed))


def _plan_services(
    model: SmallModel, stable: str | None, canary: str | None, observed: Observed, draft: _Draft
) -> None:
    if stable is not None:
        draft.apply.append(stamped(serving.build_service(model)))
        draft.apply.append(stamped(serving.build_service(model, "stable", stable)))
    if canary is not None:
        draft.apply.append(stamped(serving.build_service(model, "canary", canary)))
    elif observed.exists("Service", f"{model.metadata.name}-canary"):
        draft.delete.append(Ref("v1", "Service", f"{model.metadata.name}-canary"))


def _plan_serving(
    model: SmallModel, key: str, revision: str, state: ArtifactState, observed: Observed, ctx: Context, draft: _Draft
) -> _Serving:
    """Steady state, first rollout, or replacing the stable revision once the new one is ready."""
    prev = model.status.revisions or RevisionsStatus()
    stable, stable_key = prev.stable, prev.stable_artifact_key
    replicas = desired_replicas(model)
    canary: str | None = None
    if isinstance(state, Ready):
        draft.apply.extend(_revision_objects(model, revision, state.summary, replicas, ctx))
        if replicas <= 1 and observed.exists("PodDisruptionBudget", deployment_name(model.metadata.name, revision)):
            draft.delete.append(Ref("policy/v1", "PodDisruptionBudget", deployment_name(model.metadata.name, revision)))
        dep = observed.deployment(revision)
        if stable is None or stable == revision:
            stable, stable_key = revision, key
        elif dep is not None and dep.ready_replicas >= max(1, replicas):
            draft.event("Normal", "RevisionPromoted", f"revision {revision} is ready and replaces {stable}")
            stable, stable_key = revision, key
        else:
            canary = revision
        if dep is None or dep.replicas != replicas:
            draft.scale.append(Scale(deployment_name(model.metadata.name, revision), replicas))
    if stable is not None and stable != revision:
        dep = observed.deployment(stable)
        if dep is not None and dep.replicas != replicas:
            draft.scale.append(Scale(dep.name, replicas))
    _prune_revisions(model, {stable, canary}, observed, draft)
    _plan_services(model, stable, canary, observed, draft)
    return _Serving(stable, stable_key, canary, key if canary else None)


def _optimized(state: ArtifactState) -> Want:
    if isinstance(state, Ready):
        return Want(COND_OPTIMIZED, "True", "ArtifactReady", describe(state.summary))
    if isinstance(state, Failed):
        return Want(COND_OPTIMIZED, "False", state.summary.reason or "OptimizerError", state.summary.message)
    if state.unschedulable:
        return Want(
            COND_OPTIMIZED, "False", "Unschedulable", f"Job {state.job} cannot be scheduled: {state.unschedulable}"
        )
    return Want(COND_OPTIMIZED, "False", "Optimizing", f"Job {state.job} is optimizing the model")


def _ready(model: SmallModel, revision: str, state: ArtifactState, result: _Serving, observed: Observed) -> Want:
    dep = observed.deployment(revision)
    replicas = desired_replicas(model)
    if result.stable == revision and dep is not None and (dep.ready_replicas > 0 or replicas == 0):
        return Want(
            COND_READY, "True", "Serving", f"revision {revision} serves with {dep.ready_replicas}/{replicas} ready"
        )
    keeps = f"; revision {result.stable} keeps serving" if result.stable and result.stable != revision else ""
    if isinstance(state, Failed):
        return Want(COND_READY, "False", state.summary.reason or "OptimizerError", state.summary.message[:1000] + keeps)
    if isinstance(state, Building):
        return Want(COND_READY, "False", "Optimizing", f"waiting for Job {state.job}{keeps}")
    waiting = next((p.unschedulable for p in observed.pods_of_revision(revision) if p.unschedulable), None)
    if waiting:
        return Want(COND_READY, "False", "Unschedulable", f"revision {revision} cannot be scheduled: {waiting}{keeps}")
    ready = dep.ready_replicas if dep else 0
    return Want(
        COND_READY, "False", "Deploying", f"revision {revision}: {ready}/{max(1, replicas)} replicas ready{keeps}"
    )


def _kstatus(ready: Want, state: ArtifactState, result: _Serving) -> list[Want]:
    stalled = isinstance(state, Failed)
    serving_old = result.stable is not None and stalled
    reason = ready.reason
    return [
        Want(COND_RECONCILING, "True" if ready.status != "True" and not stalled else "False", reason, ready.message),
        Want(COND_STALLED, "True" if stalled else "False", reason, ready.message if stalled else ""),
        Want(
            COND_DEGRADED,
            "True" if serving_old else "False",
            reason if serving_old else "AsExpected",
            ready.message if serving_old else "",
        ),
    ]


def _status(
    model: SmallModel,
    key: str,
    state: ArtifactState,
    result: _Serving,
    observed: Observed,
    wants: list[Want],
    ctx: Context,
) -> SmallModelStatus:
    live = [d for d in observed.deployments if d.revision in {result.stable, result.canary}]
    prev = model.status.revisions or RevisionsStatus()
    revisions = RevisionsStatus(
        stable=result.stable,
        stable_artifact_key=result.stable_key,
        canary=result.canary,
        canary_artifact_key=result.canary_key,
        last_rollback=prev.last_rollback,
    )
    return model.status.model_copy(
        update={
            "observed_generation": model.metadata.generation,
            "conditions": merge(model.status.conditions, wants, model.metadata.generation, ctx.now),
            "artifact": artifact_status(state, key),
            "revisions": revisions,
            "replicas": sum(d.replicas for d in live),
            "ready_replicas": sum(d.ready_replicas for d in live),
            "selector": serving.selector_string(model),
            "endpoint": f"http://{model.metadata.name}.{model.metadata.namespace}.svc:{serving.HTTP_PORT}",
        }
    )


# Progress reasons that are not news; everything else that moves is an Event.
QUIET_REASONS = {"Optimizing", "Deploying"}


def _transition_events(before: SmallModelStatus, after: SmallModelStatus, draft: _Draft) -> None:
    optimized = transitioned(before.conditions, after.conditions, COND_OPTIMIZED)
    ready = transitioned(before.conditions, after.conditions, COND_READY)
    if optimized is not None and optimized.status == "True":
        draft.event("Normal", "Optimized", optimized.message)
    elif optimized is not None and optimized.reason not in QUIET_REASONS:
        draft.event("Warning", optimized.reason, optimized.message[:1024])
    if ready is not None and ready.status == "True":
        draft.event("Normal", "Ready", ready.message)
    elif (
        ready is not None
        and ready.reason not in QUIET_REASONS
        and (optimized is None or optimized.reason != ready.reason)
    ):
        draft.event("Warning", ready.reason, ready.message[:1024])


def plan(model: SmallModel, observed: Observed, ctx: Context) -> Plan:
    spec = model.spec
    key = artifact_key(spec.source, spec.optimize)
    revision = serving_revision(key, spec.serving)
    draft = _Draft()
    state = artifact_state(model, key, observed)
    _plan_artifact(model, key, state, observed, ctx, draft)
    result = _plan_serving(model, key, revision, state, observed, ctx, draft)
    ready = _ready(model, revision, state, result, observed)
    wants = [_optimized(state), ready, *_kstatus(ready, state, result)]
    status = _status(model, key, state, result, observed, wants, ctx)
    _transition_events(model.status, status, draft)
    return Plan(
        tuple(draft.apply), tuple(draft.delete), tuple(draft.scale), tuple(draft.annotate), tuple(draft.events), status
    )
