"""The planner: (SmallModel, observed children, now) -> what to apply, delete, scale, say.

Pure: no I/O, no clock, no randomness, so every decision is unit-testable and a restarted
operator that observes the same world makes the same plan.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal

from flotilla.api.v1alpha1 import (
    ANNOTATION_ABORT,
    ANNOTATION_PROMOTE,
    COND_CANARY,
    COND_DEGRADED,
    COND_OPTIMIZED,
    COND_READY,
    COND_RECONCILING,
    COND_STALLED,
    SCALE_MANAGER,
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
from flotilla.rollout import machine as rollout

from . import scaling, store
from .artifact import ArtifactState, Building, Failed, Ready, artifact_state, artifact_status, describe
from .conditions import Want, merge, transitioned
from .observed import ANNOTATION_RESULT, DeploymentView, Observed

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
    # Annotations of the SmallModel to remove once status is written (honoured commands).
    clear_annotations: tuple[str, ...] = ()


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


def needs_metrics(model: SmallModel) -> bool:
    """A canary in progress or the autoscaler: serving metrics are read every interval."""
    revisions = model.status.revisions
    return (
        model.spec.autoscaling.enabled
        or (revisions is not None and revisions.canary is not None)
        or (
            revisions is not None
            and revisions.stable is not None
            and serving_revision(artifact_key(model.spec.source, model.spec.optimize), model.spec.serving)
            != revisions.stable
        )
    )


def desired_replicas(model: SmallModel) -> int:
    auto = model.spec.autoscaling
    if not auto.enabled:
        return model.spec.replicas
    wanted = model.status.scaling.desired_replicas if model.status.scaling else None
    return min(max(wanted if wanted is not None else auto.min_replicas, auto.min_replicas), auto.max_replicas)


def _on_claim(ctx: Context) -> bool:
    """Artifacts live on the per-namespace claim (not in S3): its binding and access mode matter."""
    return ctx.config.artifact_store == "pvc"


def _plan_artifact(
    model: SmallModel, key: str, state: ArtifactState, observed: Observed, ctx: Context, draft: _Draft
) -> None:
    _prune_jobs(model, key, observed, draft)
    if isinstance(state, Building) and not state.exists and state.queued is None:
        if _on_claim(ctx) and not observed.artifact_pvc_exists and ctx.config.create_artifact_pvc:
            draft.apply.append(optimizer.build_artifact_pvc(model.metadata.namespace, ctx.config))
        draft.apply.append(stamped(optimizer.build_job(model, key, ctx.config)))
        draft.event(
            "Normal", "OptimizationStarted", f"Job {state.job} optimizes {model.spec.source.uri} (artifact {key[:8]})"
        )
    if isinstance(state, Ready | Failed) and state.newly_read:
        result = state.summary.to_termination_message()
        draft.annotate.append(Annotate(Ref("batch/v1", "Job", state.job), {ANNOTATION_RESULT: result}))
    elif isinstance(state, Failed) and _store_retry_due(state, observed, ctx):
        draft.delete.append(Ref("batch/v1", "Job", state.job))  # the next reconcile starts a new one
        draft.event("Normal", "OptimizationRetried", f"Job {state.job} failed with {state.summary.reason}: retrying")


def _store_retry_due(state: Failed, observed: Observed, ctx: Context) -> bool:
    job = observed.job(state.job)
    failed_at = rollout.parse_time(job.failed_at) if job is not None and job.failed_at else None
    now = rollout.parse_time(ctx.now) or 0.0
    return store.retry_due(state.summary.reason, failed_at, now, ctx.config.store_retry_seconds)


def queue_slot(state: ArtifactState, observed: Observed, ctx: Context) -> ArtifactState:
    """A Job to create waits while the fleet runs max_concurrent_optimizations of them."""
    cap = ctx.config.max_concurrent_optimizations
    if not isinstance(state, Building) or state.exists or cap == 0 or observed.optimizations_running < cap:
        return state
    running = observed.optimizations_running
    why = f"{running} optimization Jobs run, at most {cap} at once (operator setting max_concurrent_optimizations)"
    return replace(state, queued=why)


def _store_check(state: ArtifactState, observed: Observed, ctx: Context) -> ArtifactState:
    """A Job that waits for the artifact store says so, rather than its pod's symptom."""
    if not isinstance(state, Building) or not state.exists or not _on_claim(ctx):
        return state
    problem = store.store_problem(observed, ctx.config.artifact_pvc_access_mode, observed.pods_of_job(state.job))
    return replace(state, problem=problem) if problem is not None else state


def _prune_jobs(model: SmallModel, key: str, observed: Observed, draft: _Draft) -> None:
    """Finished Jobs of artifacts no revision uses go; the current, stable and canary artifacts'
    Jobs stay: they hold the result a return to that spec reuses (status records only the current)."""
    revisions = model.status.revisions or RevisionsStatus()
    keep = {key, revisions.stable_artifact_key, revisions.canary_artifact_key}
    for job in observed.jobs:
        if job.key not in keep and (job.complete or job.failed):
            draft.delete.append(Ref("batch/v1", "Job", job.name))


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
    revisions: RevisionsStatus
    rollout: rollout.Decision | None = None


def _prune_revisions(model: SmallModel, keep: set[str | None], observed: Observed, draft: _Draft) -> None:
    for revision in sorted(observed.revisions() - {r for r in keep if r}):
        draft.delete.extend(_delete_revision(model, revision, observed))


def _gateway_parent(model: SmallModel, ctx: Context) -> Obj | None:
    ref = model.spec.rollout.gateway_ref
    if ref is not None:
        return {k: v for k, v in ref.to_wire().items()}
    if ctx.config.gateway_parent:
        namespace, _, name = ctx.config.gateway_parent.rpartition("/")
        return {"name": name, **({"namespace": namespace} if namespace else {})}
    return None


def uses_http_route(observed: Observed, ctx: Context) -> bool:
    return observed.http_route_api and ctx.config.traffic_split == "auto"


def _plan_services(model: SmallModel, result: _Serving, observed: Observed, ctx: Context, draft: _Draft) -> None:
    name = model.metadata.name
    if result.stable is None:
        return
    draft.apply.append(stamped(serving.build_service(model)))
    draft.apply.append(stamped(serving.build_service(model, "stable", result.stable)))
    in_service = [result.stable] + ([result.canary] if result.canary else [])
    endpoints = [
        serving.Endpoint(p.name, p.ip, p.node)
        for revision in in_service
        for p in observed.serving_pods(revision)
        if p.ip is not None
    ]
    draft.apply.append(stamped(serving.build_endpoint_slice(model, endpoints)))
    if result.canary is not None:
        draft.apply.append(stamped(serving.build_service(model, "canary", result.canary)))
    elif observed.exists("Service", f"{name}-canary"):
        draft.delete.append(Ref("v1", "Service", f"{name}-canary"))
    if uses_http_route(observed, ctx):
        weight = result.rollout.canary_weight if result.rollout and result.canary else None
        draft.apply.append(stamped(serving.build_http_route(model, weight, _gateway_parent(model, ctx))))
    elif observed.exists("HTTPRoute", name):
        draft.delete.append(Ref("gateway.networking.k8s.io/v1", "HTTPRoute", name))


def _scale(draft: _Draft, dep: DeploymentView | None, name: str, wanted: int, recorded: int | None) -> None:
    """Set replicas, without fighting another owner: when someone else (kubectl scale, an HPA on
    the Deployment) set them since our last decision, and our decision has not changed, leave them."""
    if dep is not None and dep.replicas == wanted:
        return
    others = dep is not None and dep.replicas_manager not in (None, SCALE_MANAGER)
    if others and recorded == wanted:
        return
    draft.scale.append(Scale(name, wanted))


def _first_rollout(
    model: SmallModel, key: str, revision: str, state: ArtifactState, observed: Observed, ctx: Context, draft: _Draft
) -> _Serving:
    prev = model.status.revisions or RevisionsStatus()
    total = desired_replicas(model)
    if not isinstance(state, Ready):
        return _Serving(None, None, None, None, prev)
    _apply_revision(model, revision, state.summary, total, observed, ctx, draft)
    dep = observed.deployment(revision)
    _scale(draft, dep, deployment_name(model.metadata.name, revision), total, prev.stable_replicas)
    revisions = rollout.idle(prev.model_copy(update={"stable": revision, "stable_artifact_key": key}), total).revisions
    return _Serving(revision, key, None, None, revisions)


def _apply_revision(
    model: SmallModel,
    revision: str,
    summary: ArtifactSummary,
    replicas: int,
    observed: Observed,
    ctx: Context,
    draft: _Draft,
) -> None:
    draft.apply.extend(_revision_objects(model, revision, summary, replicas, ctx))
    pdb = deployment_name(model.metadata.name, revision)
    if replicas <= 1 and observed.exists("PodDisruptionBudget", pdb):
        draft.delete.append(Ref("policy/v1", "PodDisruptionBudget", pdb))


def rollout_command(model: SmallModel) -> rollout.Command | None:
    notes = model.metadata.annotations
    if ANNOTATION_ABORT in notes:
        return "abort"
    if ANNOTATION_PROMOTE in notes:
        return "promote"
    return None


def _plan_rollout(
    model: SmallModel, key: str, revision: str, state: ArtifactState, observed: Observed, ctx: Context, draft: _Draft
) -> _Serving:
    """A stable revision serves: steady state, or a canary of the spec's revision."""
    prev = model.status.revisions or RevisionsStatus()
    assert prev.stable is not None
    total = desired_replicas(model)
    if isinstance(state, Ready) or revision == prev.stable:
        obs = rollout.Observation(
            target=revision,
            target_key=key,
            total=total,
            stable_ready=len(observed.serving_pods(prev.stable)),
            canary_ready=len(observed.serving_pods(revision)) if revision != prev.stable else 0,
            window=observed.metrics,
            now=rollout.parse_time(ctx.now) or 0.0,
            now_text=ctx.now,
            command=rollout_command(model),
            http_route=uses_http_route(observed, ctx),
        )
        decision = rollout.decide(model.spec.rollout.canary, prev, obs)
    else:  # the spec's artifact is not ready: no canary yet, a canary of an older spec ends
        cleared = prev.model_copy(update={"canary": None}) if prev.canary else prev
        decision = rollout.idle(cleared, total)
    for note in decision.notes:
        draft.event(note.type, note.reason, note.message)
    new = decision.revisions
    stable, canary = new.stable, new.canary
    assert stable is not None
    name = model.metadata.name
    if canary is not None and isinstance(state, Ready):
        _apply_revision(model, canary, state.summary, decision.canary_replicas, observed, ctx, draft)
        _scale(draft, observed.deployment(canary), deployment_name(name, canary), decision.canary_replicas,
               prev.canary_replicas if prev.canary == canary else None)  # fmt: skip
    if stable == revision and isinstance(state, Ready):
        _apply_revision(model, stable, state.summary, decision.stable_replicas, observed, ctx, draft)
    recorded = prev.stable_replicas if prev.stable == stable else prev.canary_replicas
    _scale(draft, observed.deployment(stable), deployment_name(name, stable), decision.stable_replicas, recorded)
    return _Serving(stable, new.stable_artifact_key, canary, new.canary_artifact_key, new, decision)


def _plan_serving(
    model: SmallModel, key: str, revision: str, state: ArtifactState, observed: Observed, ctx: Context, draft: _Draft
) -> _Serving:
    prev = model.status.revisions or RevisionsStatus()
    if prev.stable is None:
        result = _first_rollout(model, key, revision, state, observed, ctx, draft)
    else:
        result = _plan_rollout(model, key, revision, state, observed, ctx, draft)
    _prune_revisions(model, {result.stable, result.canary}, observed, draft)
    _plan_services(model, result, observed, ctx, draft)
    return result


def _what(reason: str) -> str:
    if reason in (store.CLAIM_PENDING, store.SINGLE_NODE):
        return "cannot use the artifact store"
    return "cannot be scheduled" if reason == "Unschedulable" else "does not run"


def _optimized(state: ArtifactState, ctx: Context) -> Want:
    if isinstance(state, Ready):
        return Want(COND_OPTIMIZED, "True", "ArtifactReady", describe(state.summary))
    if isinstance(state, Failed):
        message = state.summary.message
        if state.summary.reason in store.RETRIED_STORE_FAILURES:
            message += f"; the Job runs again {ctx.config.store_retry_seconds:.0f}s after it failed"
        return Want(COND_OPTIMIZED, "False", state.summary.reason or "OptimizerError", message)
    if state.queued is not None:
        return Want(COND_OPTIMIZED, "False", "Queued", f"Job {state.job} waits: {state.queued}")
    if state.problem is not None:
        what = _what(state.problem.reason)
        return Want(COND_OPTIMIZED, "False", state.problem.reason, f"Job {state.job} {what}: {state.problem.message}")
    return Want(COND_OPTIMIZED, "False", "Optimizing", f"Job {state.job} is optimizing the model")


def _single_node_note(replicas: int, observed: Observed, ctx: Context) -> str:
    """Replicas > 1 on a ReadWriteOnce claim are allowed, but they only run on one node: say so."""
    mode = store.single_node_mode(observed.artifact_claim, ctx.config.artifact_pvc_access_mode)
    if replicas <= 1 or mode is None or not _on_claim(ctx):
        return ""
    claim = observed.artifact_claim.name if observed.artifact_claim else ctx.config.artifact_pvc
    return f"; {store.single_node_advice(claim, mode)}"


def _ready(
    model: SmallModel, revision: str, state: ArtifactState, result: _Serving, observed: Observed, ctx: Context
) -> Want:
    dep = observed.deployment(revision)
    replicas = desired_replicas(model)
    pods = [p for p in observed.pods_of_revision(revision) if not p.terminating]
    if _on_claim(ctx):
        stuck = store.store_problem(observed, ctx.config.artifact_pvc_access_mode, pods)
    else:
        stuck = store.download_problem(pods)
    note = _single_node_note(replicas, observed, ctx)
    if result.stable == revision and dep is not None and (dep.ready_replicas > 0 or replicas == 0):
        said = f"revision {revision} serves with {dep.ready_replicas}/{replicas} ready"
        if stuck is not None and dep.ready_replicas < replicas:  # serving, but short of replicas: why
            return Want(COND_READY, "True", stuck.reason, f"{said}; {stuck.message}")
        return Want(COND_READY, "True", "Serving", said + note)
    keeps = f"; revision {result.stable} keeps serving" if result.stable and result.stable != revision else ""
    if isinstance(state, Failed):
        return Want(COND_READY, "False", state.summary.reason or "OptimizerError", state.summary.message[:1000] + keeps)
    if isinstance(state, Building):
        reason = "Queued" if state.queued else "Optimizing"
        return Want(COND_READY, "False", reason, f"waiting for Job {state.job}{keeps}")
    last = result.revisions.last_rollback
    if result.canary is None and last is not None and last.revision == revision and result.stable != revision:
        return Want(COND_READY, "False", "RolledBack", f"revision {revision} was rolled back: {last.reason}{keeps}")
    problem = stuck or next((p.problem for p in pods if p.problem), None)
    if problem is not None:
        what = _what(problem.reason)
        return Want(COND_READY, "False", problem.reason, f"revision {revision} {what}: {problem.message}{keeps}")
    if result.canary == revision and result.rollout is not None:
        weight = result.revisions.canary_weight or 0
        message = f"canary {revision} at {weight}%: {result.rollout.condition_message}{keeps}"
        return Want(COND_READY, "False", "CanaryProgressing", message)
    ready = dep.ready_replicas if dep else 0
    return Want(
        COND_READY, "False", "Deploying", f"revision {revision}: {ready}/{max(1, replicas)} replicas ready{keeps}"
    )


def _canary(result: _Serving) -> Want:
    if result.rollout is None:
        return Want(COND_CANARY, "False", "NoCanary", "no stable revision yet: the first rollout has no canary")
    d = result.rollout
    return Want(COND_CANARY, d.condition_status, d.condition_reason, d.condition_message)


# Ready reasons after which nothing changes until the spec does.
STALLED_REASONS = {"RolledBack"}


def _kstatus(ready: Want, state: ArtifactState, result: _Serving) -> list[Want]:
    retried = isinstance(state, Failed) and state.summary.reason in store.RETRIED_STORE_FAILURES
    stalled = (isinstance(state, Failed) and not retried) or ready.reason in STALLED_REASONS
    serving_old = result.stable is not None and (isinstance(state, Failed) or ready.reason in STALLED_REASONS)
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
    return model.status.model_copy(
        update={
            "observed_generation": model.metadata.generation,
            "conditions": merge(model.status.conditions, wants, model.metadata.generation, ctx.now),
            "artifact": artifact_status(state, key),
            "revisions": result.revisions,
            "replicas": sum(d.replicas for d in live),
            "ready_replicas": sum(d.ready_replicas for d in live),
            "selector": serving.selector_string(model),
            "endpoint": f"http://{model.metadata.name}.{model.metadata.namespace}.svc:{serving.HTTP_PORT}",
            "pruned_fields": model.pruned_fields() or None,
        }
    )


# Progress reasons that are not news; everything else that moves is an Event.
# CanaryProgressing and RolledBack: the rollout posts its own Events.
QUIET_REASONS = {"Optimizing", "Queued", "Deploying", "CanaryProgressing", "RolledBack"}


def _transition_events(before: SmallModelStatus, after: SmallModelStatus, draft: _Draft) -> None:
    if after.pruned_fields and after.pruned_fields != before.pruned_fields:
        draft.event(
            "Warning",
            "UnknownFieldsPruned",
            f"the API server dropped {', '.join(after.pruned_fields)}: not fields of SmallModel (misspelled?), "
            "they have no effect; kubectl apply --validate=strict refuses them",
        )
    optimized = transitioned(before.conditions, after.conditions, COND_OPTIMIZED)
    ready = transitioned(before.conditions, after.conditions, COND_READY)
    if optimized is not None and optimized.status == "True":
        draft.event("Normal", "Optimized", optimized.message)
    elif optimized is not None and optimized.reason not in QUIET_REASONS:
        draft.event("Warning", optimized.reason, optimized.message[:1024])
    if ready is not None and ready.status == "True" and ready.reason == "Serving":
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
    model, latency = scaling.decide(model, observed, ctx.now, ctx.config.metrics_interval_seconds)
    state = _store_check(queue_slot(artifact_state(model, key, observed), observed, ctx), observed, ctx)
    _plan_artifact(model, key, state, observed, ctx, draft)
    result = _plan_serving(model, key, revision, state, observed, ctx, draft)
    ready = _ready(model, revision, state, result, observed, ctx)
    wants = [_optimized(state, ctx), ready, _canary(result), *_kstatus(ready, state, result)]
    wants += [latency] if latency is not None else []
    status = _status(model, key, state, result, observed, wants, ctx)
    _transition_events(model.status, status, draft)
    clear = tuple(a for a in (ANNOTATION_PROMOTE, ANNOTATION_ABORT) if a in model.metadata.annotations)
    return Plan(
        tuple(draft.apply),
        tuple(draft.delete),
        tuple(draft.scale),
        tuple(draft.annotate),
        tuple(draft.events),
        status,
        clear,
    )
