"""The latency-objective control law: one pure decision per metrics interval.

`decide(obs, objective, bounds, state, now_s, max_batch)` returns how many replicas a serving
revision should have, a reason sentence with the numbers, and the next `LawState` (small,
frozen, JSON-able with to_dict/from_dict: the loop keeps it in the SmallModel status).

In words (docs/autoscaling-law.md has the formulas):
1. Service model. Triton reports compute time per batch and the mean batch size; a batch of b
   takes s(b) = s0 + s1*b. Each interval adds (b, s) to an exponentially weighted regression;
   until batch sizes have varied enough to fit a slope, s0 is taken as `fixed_share` of s.
2. Queueing model. kube-proxy spreads requests at random, so each of c replicas is a batching
   server with Poisson arrivals at rate/c (`queueing.pool_response_quantile`).
3. Feedback. The observed percentile (Triton's summary) over the model's prediction for the
   pods that served it updates a multiplicative correction (smoothed in log space, bounded),
   only when the interval is steady: no pods starting, no backlog, no scaling within Triton's
   summary window (60 s), and the rate within 25% of its one-minute average.
4. Decision. need = fewest replicas whose corrected prediction meets `target_fraction` of the
   threshold at the rate expected one cold start ahead; pods still starting count as capacity.
   Up: at once, at most max(x2, +4) per decision (the HPA's default scale-up policy). Down:
   only when fewer replicas would meet the target even at `down_margin` (15%) more load,
   sustained for scale_down_delay_s, then one bounded step per decision (at most half, to
   what is needed), each after fresh metrics at the current size.
   Zero: only with min_replicas 0, after the delay, at rate 0. Stale or missing metrics never
   scale down.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from flotilla.autoscale.queueing import BatchService, pool_response_quantile, replica_load
from flotilla.metrics.types import Interval

PERCENTILES = (50, 90, 95, 99)
InputValue = float | int | str | None


@dataclass(frozen=True)
class Objective:
    """The user's latency objective: `percentile` of request latency at most `threshold_ms`."""

    percentile: int
    threshold_ms: float

    def __post_init__(self) -> None:
        if self.percentile not in PERCENTILES:
            raise ValueError(f"percentile must be one of {PERCENTILES}, not {self.percentile}")
        if not self.threshold_ms > 0:
            raise ValueError("threshold_ms must be > 0")

    @property
    def q(self) -> float:
        return self.percentile / 100


@dataclass(frozen=True)
class Bounds:
    min_replicas: int
    max_replicas: int
    scale_down_delay_s: float

    def __post_init__(self) -> None:
        if self.min_replicas < 0 or self.max_replicas < max(1, self.min_replicas):
            raise ValueError("need 0 <= min_replicas <= max_replicas and max_replicas >= 1")
        if self.scale_down_delay_s < 0:
            raise ValueError("scale_down_delay_s must be >= 0")

    def clamp(self, n: int) -> int:
        return max(self.min_replicas, min(self.max_replicas, n))


@dataclass(frozen=True)
class LawConfig:
    """Tuning of the law; the defaults are what the benchmark ran."""

    target_fraction: float = 1.0  # plan to the threshold times this (below 1: room for noise)
    down_margin: float = 0.05  # headroom: fewer replicas would still meet the target at this much more load
    correction_min: float = 0.5
    correction_max: float = 3.0
    correction_alpha: float = 0.3  # weight of the newest ratio in the log-space EWMA
    feedback_min_requests: int = 200  # fewer requests: the percentile is too noisy to learn from
    steady_rate_change: float = 0.25  # feedback only when the rate is this close to its 1-minute average
    summary_window_s: float = 60.0  # Triton's summary quantiles cover about this long
    max_step_factor: float = 2.0  # scale up at most to max(current * factor, current + add)
    max_step_add: int = 4
    surge_factor: float = 1.5  # a growing backlog: at least this many times the saturated pods
    lead_s: float = 20.0  # look this far ahead on a rising rate (cold start + one interval)
    trend_alpha: float = 0.8
    max_forecast: float = 0.5  # the forecast adds at most this share to the current demand
    burst_alpha: float = 0.05  # memory of the burst statistics (~20 intervals)
    burst_z: float = 1.0  # headroom in standard deviations of the rise over one lead time
    down_step_fraction: float = 0.5  # a step down removes at most this share (at least one replica)
    fixed_share: float = 0.0  # s0 / s(b) until the regression has spread in b (0: no batching gain)
    fit_decay: float = 0.95  # per interval, of the regression's weights
    fit_min_spread: float = 0.25  # variance of b (batch sizes) needed to trust the slope
    saturated_util: float = 0.9  # at this utilization completed requests understate demand
    backlog_fraction: float = 0.25  # mean queue time above this share of the threshold: a backlog
    drain_s: float = 20.0  # plan capacity to work a backlog off within this long
    # The smoothing weights and the fit's decay above are per interval of this length; at other
    # intervals they are rescaled so that memories last as many seconds (a 5 s interval must not
    # make the correction twice as jumpy as a 10 s one).
    reference_interval_s: float = 10.0


@dataclass(frozen=True)
class LawState:
    """What the law remembers between intervals (numbers only; persisted in status)."""

    correction: float = 1.0
    service_ms: float = 0.0  # last observed compute time per batch (0: never observed)
    batch: float = 1.0  # the mean batch size it was observed at
    fit_w: float = 0.0  # exponentially weighted sums of (b, s) for s(b) = s0 + s1*b
    fit_b: float = 0.0
    fit_s: float = 0.0
    fit_bb: float = 0.0
    fit_bs: float = 0.0
    last_rate: float | None = None  # the demand estimate of the last interval
    last_queue_ms: float | None = None
    rate_avg: float | None = None  # exponential average of the demand, ~1 minute
    trend: float = 0.0  # requests per second, per second (smoothed, rising only matters)
    rise_var: float = 0.0  # mean square rise of the demand per interval beyond noise ((req/s)^2)
    headroom_since: float | None = None
    zero_since: float | None = None
    last_desired: int | None = None
    last_scale_s: float | None = None

    def to_dict(self) -> dict[str, float | int | None]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> LawState:
        """Tolerant: unknown keys are ignored, missing or malformed ones take the default."""
        if not data:
            return cls()
        values: dict[str, Any] = {}
        defaults = cls()
        for f in fields(cls):
            raw = data.get(f.name)
            if raw is None:
                continue
            try:
                if f.name == "last_desired":
                    values[f.name] = int(raw)
                else:
                    values[f.name] = float(raw)
            except (TypeError, ValueError):
                values[f.name] = getattr(defaults, f.name)
        return cls(**values)


@dataclass(frozen=True)
class Observation:
    """One interval of one revision as the law sees it (see `observation_from_interval`)."""

    rate_rps: float | None  # None: no metrics this interval
    ready: int
    starting: int
    current: int  # replicas the Deployment has now (its spec)
    observed_pct_ms: float | None = None  # the objective's percentile (Triton summary), if any
    mean_latency_ms: float | None = None
    compute_ms_per_batch: float | None = None
    mean_batch: float | None = None
    queue_ms: float | None = None
    requests: int = 0
    # From Triton's pending-request gauge, where the pods export it: requests waiting now, and
    # completions plus the queue's growth per second (the demand, even under overload).
    pending: int | None = None
    arrival_rps: float | None = None
    pods_reporting: int | None = None  # pods whose counters made the interval (None: all ready ones)
    interval_s: float = 10.0
    stale_reason: str | None = None  # metrics are incomplete: never scale down


@dataclass(frozen=True)
class Decision:
    desired: int
    reason: str
    state: LawState
    predicted_ms: float | None  # the corrected prediction with `desired` replicas
    objective_met: bool | None  # observed percentile <= threshold (None: not observed)
    action: str = "hold"  # up | down | hold | zero
    inputs: Mapping[str, InputValue] = field(default_factory=dict)


def observation_from_interval(
    interval: Interval | None,
    objective: Objective,
    *,
    ready: int,
    starting: int,
    current: int,
    interval_s: float | None = None,
    stale_reason: str | None = None,
) -> Observation:
    """Build the law's input from the metrics layer's Interval, the way the operator does."""
    if interval is None:
        return Observation(
            rate_rps=None,
            ready=ready,
            starting=starting,
            current=current,
            interval_s=interval_s or 10.0,
            stale_reason=stale_reason or "no metrics for this revision",
        )
    reason = stale_reason
    if interval.failed_pods:
        reason = f"metrics failed on {len(interval.failed_pods)} pod(s): {', '.join(interval.failed_pods)}"
    elif interval.pods < ready and reason is None:
        reason = f"only {interval.pods} of {ready} ready pods reported"
    return Observation(
        rate_rps=interval.rate,
        ready=ready,
        starting=starting,
        current=current,
        observed_pct_ms=interval.quantile_ms(objective.q),
        mean_latency_ms=interval.mean_latency_ms,
        compute_ms_per_batch=interval.compute_ms_per_batch,
        mean_batch=interval.mean_batch,
        queue_ms=interval.mean_queue_ms,
        requests=interval.requests,
        pending=interval.pending,
        arrival_rps=interval.arrival_rate,
        pods_reporting=interval.pods,
        interval_s=interval_s or interval.seconds,
        stale_reason=reason,
    )


# ---------------------------------------------------------------- pieces


def per_reference(interval_s: float, cfg: LawConfig) -> float:
    """How many reference intervals one interval of `interval_s` is."""
    return max(interval_s, 1e-9) / cfg.reference_interval_s


def smoothing(alpha: float, interval_s: float, cfg: LawConfig) -> float:
    """The weight of the newest value for an interval of `interval_s`, given `alpha` per reference
    interval: the same time constant whatever the interval."""
    return 1.0 - float((1.0 - alpha) ** per_reference(interval_s, cfg))


def service_model(state: LawState, max_batch: int, queue_delay_ms: float, cfg: LawConfig) -> BatchService | None:
    """s(b) = s0 + s1*b from the regression when b has spread, else the fixed-share prior."""
    if state.service_ms <= 0:
        return None
    s_obs, b_obs = state.service_ms, max(1.0, state.batch)
    if state.fit_w > 0:  # the weighted means: steadier than the last interval alone
        s_obs, b_obs = state.fit_s / state.fit_w, max(1.0, state.fit_b / state.fit_w)
    s0, s1 = cfg.fixed_share * s_obs, (1 - cfg.fixed_share) * s_obs / b_obs
    if state.fit_w > 0:
        mb = state.fit_b / state.fit_w
        ms = state.fit_s / state.fit_w
        var = state.fit_bb / state.fit_w - mb * mb
        if var >= cfg.fit_min_spread:
            slope = (state.fit_bs / state.fit_w - mb * ms) / var
            intercept = ms - slope * mb
            if slope > 0 and intercept >= 0:
                s0, s1 = intercept, slope
    return BatchService(fixed=s0, per_item=s1, max_batch=max(1, max_batch), queue_delay=queue_delay_ms)


def predict_ms(svc: BatchService, rate_rps: float, replicas: int, q: float, correction: float) -> float:
    """Corrected q-quantile of latency (ms) with `replicas` sharing `rate_rps` at random."""
    raw = pool_response_quantile(svc, rate_rps / 1000.0, replicas, q)
    return raw * correction


def fewest(
    svc: BatchService, rate_rps: float, q: float, correction: float, limit_ms: float, lo: int, hi: int
) -> tuple[int, float, bool]:
    """Fewest replicas in [lo, hi] whose prediction is <= limit_ms: (n, prediction, met)."""
    lo = max(1, lo)
    hi = max(lo, hi)
    pred = predict_ms(svc, rate_rps, hi, q, correction)
    if pred > limit_ms:
        return hi, pred, False
    # The prediction falls as replicas are added: bisect.
    while lo < hi:
        mid = (lo + hi) // 2
        if predict_ms(svc, rate_rps, mid, q, correction) <= limit_ms:
            hi = mid
        else:
            lo = mid + 1
    return hi, predict_ms(svc, rate_rps, hi, q, correction), True


def request_weighted_batch(mean_batch: float, max_batch: int) -> float:
    """The batch size a request rides in on average, from the mean size of the batches run.

    Triton adds a batch's compute time once per request in it, so compute per request is
    E[b s(b)] / E[b]: the time of a batch of E[b^2] / E[b], not of E[b]. With batch sizes
    1 + Poisson(m - 1) that is m + 1 - 1/m; it tapers back to m as m reaches the maximum
    (every batch full).
    """
    m = max(1.0, mean_batch)
    if max_batch <= 1:
        return m
    full = min(1.0, (m - 1) / (max_batch - 1))
    return min(float(max_batch), m + (1 - 1 / m) * (1 - full))


def _learn_service(state: LawState, obs: Observation, cfg: LawConfig, max_batch: int) -> LawState:
    s, b = obs.compute_ms_per_batch, obs.mean_batch
    if s is None or b is None or s <= 0 or obs.requests <= 0:
        return state
    b = request_weighted_batch(b, max_batch)
    d = cfg.fit_decay ** per_reference(obs.interval_s, cfg)
    w = min(1.0, obs.requests / 100)  # an interval of few requests says little
    return replace(
        state,
        service_ms=s,
        batch=b,
        fit_w=state.fit_w * d + w,
        fit_b=state.fit_b * d + w * b,
        fit_s=state.fit_s * d + w * s,
        fit_bb=state.fit_bb * d + w * b * b,
        fit_bs=state.fit_bs * d + w * b * s,
    )


def demand_estimate(obs: Observation, state: LawState, limit_ms: float, cfg: LawConfig) -> tuple[float, bool]:
    """Requests per second arriving, and whether a backlog is building (then completions understate it).

    With Triton's pending gauge the arrivals are counted (`Observation.arrival_rps`). Without it:
    Under overload Triton completes at its capacity mu while the queue Q grows at lambda - mu;
    the queue time of completed requests, W ~ Q / mu, then grows at (lambda - mu) / mu per
    second: lambda ~ mu * (1 + dW/dt). Working the backlog off within drain_s needs Q / drain_s
    = mu * W / drain_s more.
    """
    rate = max(0.0, obs.rate_rps or 0.0)
    if obs.pending is not None and obs.arrival_rps is not None:
        # Counted, not inferred: arrivals, and the requests waiting now. Waiting longer than
        # backlog_fraction of the threshold (Little: pending / completions) is a backlog, to
        # work off within drain_s on top of the arrivals.
        arrivals = max(rate, obs.arrival_rps)
        wait_ms = 1000 * obs.pending / max(rate, 1e-9) if obs.pending > 0 else 0.0
        if wait_ms <= cfg.backlog_fraction * limit_ms:
            return arrivals, False
        return arrivals + obs.pending / cfg.drain_s, True
    queue_ms = obs.queue_ms
    if queue_ms is None or queue_ms <= cfg.backlog_fraction * limit_ms or rate <= 0:
        return rate, False
    prev = state.last_queue_ms if state.last_queue_ms is not None else queue_ms
    growth = max(0.0, queue_ms - prev) / 1000 / max(obs.interval_s, 1e-9)
    return rate * (1 + growth) + rate * (queue_ms / 1000) / cfg.drain_s, True


def _fmt(x: float | None, digits: int = 1) -> str:
    if x is None:
        return "n/a"
    if math.isinf(x):
        return "inf"
    return f"{x:.{digits}f}" if abs(x) < 100 else f"{x:.0f}"


# ---------------------------------------------------------------- the law


def decide(  # noqa: PLR0912, PLR0915 - one readable sequence of rules
    obs: Observation,
    objective: Objective,
    bounds: Bounds,
    state: LawState,
    now_s: float,
    max_batch: int,
    *,
    queue_delay_ms: float = 2.0,
    config: LawConfig | None = None,
) -> Decision:
    """Desired replicas for one revision from one interval of its metrics. Pure."""
    cfg = config or LawConfig()
    q, limit = objective.q, objective.threshold_ms
    current = obs.current
    have = max(current, obs.ready + obs.starting)  # starting pods are capacity that is coming
    pct = f"p{objective.percentile}"
    met = None if obs.observed_pct_ms is None else obs.observed_pct_ms <= limit
    inputs: dict[str, InputValue] = {
        "rate_rps": obs.rate_rps,
        "observed_ms": obs.observed_pct_ms,
        "compute_ms_per_batch": obs.compute_ms_per_batch,
        "mean_batch": obs.mean_batch,
        "queue_ms": obs.queue_ms,
        "requests": obs.requests,
        "pending": obs.pending,
        "ready": obs.ready,
        "starting": obs.starting,
        "current": current,
        "stale": obs.stale_reason,
    }

    def done(desired: int, reason: str, st: LawState, action: str, predicted: float | None = None) -> Decision:
        desired = bounds.clamp(desired)
        if desired != current:
            st = replace(st, last_scale_s=now_s)
            if action == "hold":
                action = "up" if desired > current else "down"
        st = replace(st, last_desired=desired)
        inputs["correction"] = round(st.correction, 3)
        return Decision(desired, reason, st, predicted, met, action, dict(inputs))

    # Outside the bounds (the user changed them): move inside first.
    if current < bounds.min_replicas or current > bounds.max_replicas:
        target = bounds.clamp(current)
        return done(
            target, f"{current} replicas is outside [{bounds.min_replicas}, {bounds.max_replicas}]", state, "hold"
        )

    # No metrics: hold, never scale down.
    if obs.rate_rps is None:
        hold = max(current, state.last_desired or 0) if current > 0 else current
        why = obs.stale_reason or "no metrics"
        st = replace(state, headroom_since=None, zero_since=None)
        if current == 0:
            return done(0, f"staying at zero: {why}", st, "hold")
        return done(hold, f"holding {hold} replicas: {why}; never scaling down without metrics", st, "hold")

    served_rate = max(0.0, obs.rate_rps)
    partial = obs.pods_reporting is not None and 0 < obs.pods_reporting < obs.ready
    st = _learn_service(state, obs, cfg, max_batch)
    rate, backlog = demand_estimate(obs, state, limit, cfg)
    st = replace(st, last_queue_ms=obs.queue_ms)
    # Rising-demand trend (per second), smoothed; forecast one lead time ahead. A partial
    # interval (a pod that just became ready has no baseline yet) undercounts the rate: its
    # rise is a lower bound, so it may raise the trend but never lower it. Skipping those
    # intervals altogether left the trend flat through a ramp, where every interval has a new pod.
    if state.last_rate is not None and obs.interval_s > 0:
        # A rise within three standard deviations of Poisson counting noise is no trend.
        noise = 3 * math.sqrt(2 * max(rate, state.last_rate, 1e-9) / obs.interval_s)
        rise = rate - state.last_rate
        slope = math.copysign(max(0.0, abs(rise) - noise), rise) / obs.interval_s
        a_trend = smoothing(cfg.trend_alpha, obs.interval_s, cfg)
        trend = (1 - a_trend) * state.trend + a_trend * slope
        st = replace(st, trend=max(trend, state.trend) if partial else trend)
    # Within counting noise of its one-minute average, plan on the average (steadier).
    base = rate
    noise_band = 2 * math.sqrt(max(state.rate_avg or 0.0, 1e-9) / max(obs.interval_s, 1e-9))
    if state.rate_avg is not None and not backlog and abs(rate - state.rate_avg) <= noise_band:
        base = max(rate, state.rate_avg) if st.trend > 0 else state.rate_avg
    # Burst headroom: the rise this workload has shown over one lead time, beyond counting noise.
    if state.last_rate is not None and not partial:
        rise = max(0.0, rate - state.last_rate)
        noise_var = 2 * max(rate, state.last_rate) / max(obs.interval_s, 1e-9)  # of a difference of counts
        # Under counting noise alone the positive part of a rise has a mean square of half the
        # noise variance: subtract that on average, not per interval (clipping each interval
        # at zero left a standing headroom of pure noise, twice as large at half the interval).
        sq = rise * rise - 0.5 * noise_var
        a_burst = smoothing(cfg.burst_alpha, obs.interval_s, cfg)
        st = replace(st, rise_var=max(0.0, (1 - a_burst) * state.rise_var + a_burst * sq))
    steps_ahead = max(1.0, cfg.lead_s / max(obs.interval_s, 1e-9))
    burst = cfg.burst_z * math.sqrt(st.rise_var * steps_ahead)
    plan_rate = base + min(cfg.max_forecast * base, max(max(0.0, st.trend) * cfg.lead_s, burst))
    inputs["demand_rps"] = round(rate, 3)
    svc = service_model(st, max_batch, queue_delay_ms, cfg)

    # From zero: any demand (the gateway's count) brings the minimum needed back.
    if current == 0:
        st = replace(st, last_rate=rate, zero_since=None if rate > 0 else st.zero_since)
        if rate <= 0:
            return done(0, "scaled to zero, no requests", st, "hold")
        n = 1
        if svc is not None:
            n, _, _ = fewest(svc, plan_rate, q, st.correction, cfg.target_fraction * limit, 1, bounds.max_replicas)
        n = min(n, cfg.max_step_add)
        return done(n, f"rate {_fmt(rate)}/s with 0 replicas: waking {n}", st, "up")

    if svc is None:
        # Never observed a batch: no model yet, feedback alone.
        st = replace(st, last_rate=rate)
        if met is False and obs.starting == 0:
            n = current + 1
            return done(
                n, f"observed {pct} {_fmt(obs.observed_pct_ms)} ms > {_fmt(limit)} ms, no service time yet", st, "up"
            )
        return done(current, f"rate {_fmt(rate)}/s: no service time observed yet, holding {current}", st, "hold")

    # Feedback: observed over predicted for the pods that served, in steady intervals only.
    avg = state.rate_avg
    steady = (
        obs.starting == 0
        and obs.stale_reason is None
        and obs.ready == current
        and avg is not None
        and abs(rate - avg) <= cfg.steady_rate_change * max(avg, 1e-9)
        and (state.last_scale_s is None or now_s - state.last_scale_s >= cfg.summary_window_s)
    )
    a = min(1.0, obs.interval_s / cfg.summary_window_s)
    st = replace(st, rate_avg=rate if avg is None else (1 - a) * avg + a * rate)
    served = max(1, obs.ready)
    raw_now = predict_ms(svc, served_rate, served, q, 1.0)
    if (
        steady
        and obs.observed_pct_ms is not None
        and obs.requests >= cfg.feedback_min_requests
        and not backlog
        and math.isfinite(raw_now)
        and raw_now > 0
    ):
        ratio = min(cfg.correction_max, max(cfg.correction_min, obs.observed_pct_ms / raw_now))
        a_k = smoothing(cfg.correction_alpha, obs.interval_s, cfg)
        log_k = (1 - a_k) * math.log(st.correction) + a_k * math.log(ratio)
        st = replace(st, correction=min(cfg.correction_max, max(cfg.correction_min, math.exp(log_k))))
    st = replace(st, last_rate=rate)
    k = st.correction

    floor = max(1, bounds.min_replicas)
    need_up, _pred_up, reachable = fewest(svc, plan_rate, q, k, cfg.target_fraction * limit, floor, bounds.max_replicas)
    need_down, _, _ = fewest(
        svc, rate * (1 + cfg.down_margin), q, k, cfg.target_fraction * limit, floor, bounds.max_replicas
    )
    util = replica_load(svc, served_rate / 1000.0 / served).utilization
    saturated = met is False and util >= cfg.saturated_util
    # Without the pending gauge the demand under overload is a guess from queue times.
    counted = obs.arrival_rps is not None
    growing = not counted and backlog and obs.queue_ms is not None and obs.queue_ms > (state.last_queue_ms or 0.0)
    if growing:
        # Overloaded and getting worse: completions hide the demand; step up by the surge factor.
        # Relative to the pods that are saturated (ready), so pods already starting are credited.
        need_up = max(need_up, min(bounds.max_replicas, math.ceil(served * cfg.surge_factor)))
    if met is False and backlog and obs.starting == 0 and need_up <= have:
        # The model says enough, the pods say otherwise: trust the pods.
        need_up = have + 1 if not saturated else math.ceil(have * min(cfg.max_step_factor, obs.observed_pct_ms / limit))  # type: ignore[operator]
        need_up = max(need_up, have + 1)

    head = (
        f"rate {_fmt(served_rate)}/s{f' (demand ~{_fmt(rate)}/s with the backlog)' if backlog else ''}, "
        f"service {_fmt(obs.compute_ms_per_batch or st.service_ms)} ms/batch "
        f"(b={_fmt(obs.mean_batch or st.batch)})"
    )
    if k != 1.0:
        head += f", correction x{k:.2f}"

    def said(n: int, r: float) -> str:
        p = predict_ms(svc, r, n, q, k)
        op = "<=" if p <= limit else ">"
        return f"predicted {pct} {_fmt(p)} ms with {n} replica{'s' if n != 1 else ''} {op} {_fmt(limit)} ms"

    # Up: promptly, bounded step.
    if need_up > have:
        cap = max(math.ceil(have * cfg.max_step_factor), have + cfg.max_step_add)
        n = min(need_up, cap, bounds.max_replicas)
        st = replace(st, headroom_since=None, zero_since=None)
        extra = "" if reachable else f" (objective not reachable within {bounds.max_replicas})"
        ahead = f", planning for {_fmt(plan_rate)}/s" if plan_rate > rate * 1.01 else ""
        if n <= current:  # already at the most the bounds allow
            why = f"{head}{ahead}: {said(need_up, plan_rate)}{extra}; holding {current}, the maximum"
            return done(current, why, st, "hold", predict_ms(svc, plan_rate, current, q, k))
        why = f"{head}{ahead}: {said(need_up, plan_rate)}{extra}; scaling up {current} -> {n}"
        if obs.starting:
            why += f" ({obs.starting} starting)"
        return done(n, why, st, "up", predict_ms(svc, plan_rate, n, q, k))

    # Zero: only with min 0, after the delay, at rate 0.
    if bounds.min_replicas == 0 and rate <= 0 and obs.stale_reason is None:
        since = st.zero_since if st.zero_since is not None else now_s
        st = replace(st, zero_since=since, headroom_since=None)
        waited = now_s - since
        if waited >= bounds.scale_down_delay_s:
            return done(
                0, f"no requests for {waited:.0f}s >= {bounds.scale_down_delay_s:.0f}s: scaling to zero", st, "zero"
            )
        return done(
            current,
            f"no requests for {waited:.0f}s; scaling to zero after {bounds.scale_down_delay_s:.0f}s",
            st,
            "hold",
            None,
        )
    st = replace(st, zero_since=None)

    # Down: sustained headroom, one bounded step per decision, fresh metrics at the current size
    # between steps, never on stale metrics.
    if need_down < current and obs.stale_reason is None and obs.starting == 0:
        since = st.headroom_since if st.headroom_since is not None else now_s
        st = replace(st, headroom_since=since)
        waited = now_s - since
        if waited >= bounds.scale_down_delay_s and obs.ready == current:
            n = max(need_down, current - max(1, math.floor(current * cfg.down_step_fraction)))
            why = (
                f"{head}: {said(n, rate)}; headroom for {waited:.0f}s >= {bounds.scale_down_delay_s:.0f}s, "
                f"scaling down {current} -> {n}"
            )
            return done(n, why, st, "down", predict_ms(svc, rate, n, q, k))
        why = (
            f"{head}: {said(need_down, rate)}; headroom for {waited:.0f}s of "
            f"{bounds.scale_down_delay_s:.0f}s, holding {current}"
        )
        return done(current, why, st, "hold", predict_ms(svc, rate, current, q, k))

    st = replace(st, headroom_since=None)
    out_of_reach = not reachable and predict_ms(svc, rate, current, q, k) > limit
    unreachable = f" (objective not reachable within {bounds.max_replicas})" if out_of_reach else ""
    if obs.stale_reason is not None:
        why = f"{head}: {said(current, rate)}{unreachable}; holding {current} ({obs.stale_reason})"
    else:
        why = f"{head}: {said(current, rate)}{unreachable}; holding {current}"
    return done(current, why, st, "hold", predict_ms(svc, rate, have, q, k))
