"""The autoscaler's step of the plan: one metrics window -> desired replicas, status.scaling,
status.latency and the LatencyObjectiveMet condition. Pure; the law is `flotilla.autoscale`.

The law sizes the whole model (stable plus canary traffic); during a canary the rollout splits
that count (the canary gets the fewest replicas for its weight, stable the rest), so the
autoscaler in effect scales the stable revision and leaves the canary's size to the rollout.
Between looks (no window) the last decision stands.

At zero replicas there are no pods to read: the demand is the Flotilla gateway's count of the
requests it holds for the model (`Observed.gateway_demand`, read by the controller only then).
Any count wakes the model; a gateway that could not be read leaves it at zero and says why
(at zero, unknown demand can only mean staying there).
"""

from __future__ import annotations

from collections.abc import Iterable

from flotilla.api.v1alpha1 import COND_LATENCY, LatencyStatus, RevisionsStatus, ScalingStatus, SmallModel
from flotilla.autoscale import law
from flotilla.metrics import Interval, Window
from flotilla.metrics.gateway import Demand
from flotilla.rollout.machine import parse_time

from .conditions import Want
from .observed import Observed

QUANTILES = {"p50_ms": 0.5, "p95_ms": 0.95, "p99_ms": 0.99}
COLD_START_KEY = "coldStartFrom"


def merge(intervals: Iterable[Interval]) -> Interval | None:
    """One interval for the whole model: sums, and request-weighted quantiles."""
    parts = list(intervals)
    if not parts:
        return None
    requests = sum(i.requests for i in parts)
    quantiles: dict[float, float] = {}
    for q in {q for i in parts for q in i.quantiles_ms}:
        weighted = [(i.quantiles_ms[q], i.requests) for i in parts if q in i.quantiles_ms]
        weight = sum(w for _, w in weighted)
        quantiles[q] = sum(v * w for v, w in weighted) / weight if weight else max(v for v, _ in weighted)
    return Interval(
        revision="+".join(i.revision for i in parts),
        seconds=max(i.seconds for i in parts),
        requests=requests,
        errors=sum(i.errors for i in parts),
        request_us=sum(i.request_us for i in parts),
        queue_us=sum(i.queue_us for i in parts),
        compute_us=sum(i.compute_us for i in parts),
        executions=sum(i.executions for i in parts),
        inferences=sum(i.inferences for i in parts),
        pods=sum(i.pods for i in parts),
        failed_pods=tuple(p for i in parts for p in i.failed_pods),
        quantiles_ms=quantiles,
        pending=_known_sum([i.pending for i in parts]),
        pending_change=_known_sum([i.pending_change for i in parts]),
    )


def _known_sum(values: list[int | None]) -> int | None:
    """A gauge summed over revisions, unknown when one revision's pods do not export it."""
    return None if any(v is None for v in values) else sum(v for v in values if v is not None)


def _latency(interval: Interval | None, window: Window) -> LatencyStatus | None:
    if interval is None:
        return None
    values = {name: interval.quantile_ms(q) for name, q in QUANTILES.items()}
    return LatencyStatus(
        **{k: round(v, 1) for k, v in values.items() if v is not None},
        requests_per_second=round(interval.rate, 2),
        window=f"{window.seconds:.0f}s",
    )


def _condition(decision: law.Decision, objective: law.Objective, reason: str) -> Want:
    target = f"p{objective.percentile} <= {objective.threshold_ms:g} ms"
    if decision.objective_met is True:
        return Want(COND_LATENCY, "True", "ObjectiveMet", f"{target}: {reason}")
    if decision.objective_met is False:
        return Want(COND_LATENCY, "False", "ObjectiveMissed", f"{target}: {reason}")
    return Want(COND_LATENCY, "Unknown", "NoMetrics", f"{target}: {reason}")


def _state(previous: ScalingStatus | None) -> tuple[law.LawState, dict[str, float]]:
    saved = dict((previous.state or {}) if previous else {})
    extra = {k: saved.pop(k) for k in [COLD_START_KEY] if k in saved}
    return law.LawState.from_dict(saved), extra


def _wire_state(state: law.LawState, extra: dict[str, float]) -> dict[str, float]:
    return {**{k: float(v) for k, v in state.to_dict().items() if isinstance(v, int | float)}, **extra}


def _current(model: SmallModel, observed: Observed) -> int:
    """The replicas the law starts from: what runs now (without metrics the law holds there), or
    during a canary (the rollout adds a surge pod) the last decision."""
    auto = model.spec.autoscaling
    previous = model.status.scaling
    revisions = model.status.revisions or RevisionsStatus()
    deployed = [d.replicas for d in observed.deployments if d.revision == revisions.stable]
    if deployed and revisions.canary is None:
        return sum(deployed)
    return previous.desired_replicas if previous and previous.desired_replicas is not None else auto.min_replicas


def at_zero(model: SmallModel, observed: Observed) -> bool:
    """An autoscaled model that may scale to zero and is there: its demand is the gateway's."""
    auto = model.spec.autoscaling
    return (
        auto.enabled
        and auto.latency_objective is not None
        and auto.min_replicas == 0
        and _current(model, observed) == 0
    )


def _from_gateway(demand: Demand, *, ready: int, starting: int, interval_s: float) -> law.Observation:
    """The law's input at zero: the gateway's requests as the rate (rate > 0 with 0 replicas wakes)."""
    seconds = demand.seconds if demand.seconds > 0 else interval_s
    if demand.requests > 0:  # demand, even if a gateway pod was unreadable (waking is the safe side)
        rate = demand.requests / seconds
        return law.Observation(rate, ready, starting, 0, requests=demand.requests, interval_s=seconds)
    if demand.error is not None:
        why = f"at zero and the gateway's demand is unknown ({demand.error}): staying at zero until it is read"
        return law.Observation(None, ready, starting, 0, interval_s=seconds, stale_reason=why)
    return law.Observation(0.0, ready, starting, 0, requests=0, interval_s=seconds)


def decide(model: SmallModel, observed: Observed, now: str, interval_s: float) -> tuple[SmallModel, Want | None]:
    """The model with status.scaling/latency updated from this look, and the condition to set."""
    auto = model.spec.autoscaling
    previous = model.status.scaling
    if not auto.enabled or auto.latency_objective is None:
        return model, None
    objective = law.Objective(auto.latency_objective.percentile, float(auto.latency_objective.threshold_ms))
    revisions = model.status.revisions or RevisionsStatus()
    live = [r for r in (revisions.stable, revisions.canary) if r]
    ready = sum(len(observed.serving_pods(r)) for r in live)
    starting = sum(1 for r in live for p in observed.pods_of_revision(r) if not p.ready and not p.terminating)
    current = _current(model, observed)
    window = observed.metrics
    decided = previous is not None and previous.desired_replicas is not None
    if window is None and observed.metrics_error is None and decided:
        return model, None  # between looks: the last decision stands, condition unchanged
    interval = merge(i for r in live if (i := window.of(r)) is not None) if window else None
    stale = observed.metrics_error
    if stale is None and window is not None and window.errors:
        stale = "metrics failed: " + "; ".join(f"{p}: {e}" for p, e in window.errors.items())
    demand = observed.gateway_demand if current == 0 else None
    if demand is not None:
        obs = _from_gateway(demand, ready=ready, starting=starting, interval_s=interval_s)
    else:
        obs = law.observation_from_interval(
            interval,
            objective,
            ready=ready,
            starting=starting,
            current=current,
            interval_s=interval_s,
            stale_reason=stale,
        )
    state, extra = _state(previous)
    now_s = parse_time(now) or 0.0
    serving = model.spec.serving
    decision = law.decide(
        obs,
        objective,
        law.Bounds(auto.min_replicas, auto.max_replicas, float(auto.scale_down_delay_seconds)),
        state,
        now_s,
        max(serving.max_batch_size, 1),
        queue_delay_ms=serving.max_queue_delay_microseconds / 1000,
    )
    if current == 0 and decision.desired > 0:
        # Scale from zero: time it to the first ready pod, from the first look that woke it (a
        # look before the scale shows in the Deployment still sees 0 and must not restart it).
        extra.setdefault(COLD_START_KEY, now_s)
    cold_start = previous.cold_start_seconds if previous else None
    if COLD_START_KEY in extra and ready > 0:
        cold_start = round(now_s - extra.pop(COLD_START_KEY), 1)
    changed = previous is None or previous.desired_replicas != decision.desired
    reason = decision.reason if demand is None else f"{decision.reason} ({demand.describe()})"
    scaling = ScalingStatus(
        desired_replicas=decision.desired,
        reason=reason[:1024],
        last_scale_time=now if changed else (previous.last_scale_time if previous else None),
        cold_start_seconds=cold_start,
        state=_wire_state(decision.state, extra),
    )
    update = {"scaling": scaling}
    if window is not None and (latency := _latency(interval, window)) is not None:
        update["latency"] = latency  # type: ignore[assignment]
    return model.model_copy(update={"status": model.status.model_copy(update=update)}), _condition(
        decision, objective, reason
    )
