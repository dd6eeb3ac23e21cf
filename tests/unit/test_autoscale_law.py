"""The latency-objective control law and its queueing formulas (pure, fast)."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest

from flotilla.autoscale import Bounds, LawState, Objective, Observation, decide, observation_from_interval
from flotilla.autoscale import queueing as qm
from flotilla.metrics.types import Interval

OBJ = Objective(95, 250.0)
BOUNDS = Bounds(min_replicas=1, max_replicas=10, scale_down_delay_s=300.0)
MAX_BATCH = 8


# ---------------------------------------------------------------- queueing formulas


def test_erlang_c_published_values() -> None:
    # c=2, a=1: C = (1/2 * 2/(2-1)) / (1 + 1 + 1) = 1/3 (e.g. Kleinrock, Queueing Systems I, M/M/m).
    assert qm.erlang_c(2, 1.0) == pytest.approx(1 / 3)
    # c=10, a=8: 0.4092 (call-centre Erlang C tables, e.g. Gans, Koole & Mandelbaum 2003, Table 1
    # style; also the closed form summed by hand).
    assert qm.erlang_c(10, 8.0) == pytest.approx(0.4092, abs=5e-4)
    # c=1: P(wait) is the utilisation.
    assert qm.erlang_c(1, 0.7) == pytest.approx(0.7)
    assert qm.erlang_c(3, 3.0) == 1.0  # unstable
    assert qm.erlang_c(3, 0.0) == 0.0


def test_erlang_c_matches_the_closed_form() -> None:
    for c, a in ((3, 2.1), (5, 4.5), (20, 15.0)):
        top = a**c / math.factorial(c) * c / (c - a)
        bottom = sum(a**k / math.factorial(k) for k in range(c)) + top
        assert qm.erlang_c(c, a) == pytest.approx(top / bottom, rel=1e-12)


def test_mmc_waiting_time() -> None:
    # M/M/1, lambda 0.5, mu 1: Wq = rho / (mu - lambda) = 1; P(W > t) = rho exp(-(mu - lambda) t).
    assert qm.mmc_mean_wait(1, 0.5, 1.0) == pytest.approx(1.0)
    t95 = qm.mmc_wait_quantile(1, 0.5, 1.0, 0.95)
    assert 0.5 * math.exp(-0.5 * t95) == pytest.approx(0.05)
    assert qm.mmc_wait_quantile(1, 0.5, 1.0, 0.4) == 0.0  # half never wait
    assert math.isinf(qm.mmc_mean_wait(2, 2.0, 1.0))


def test_md1_is_pollaczek_khinchine_and_cosmetatos_reduces_to_it() -> None:
    # M/D/1, rho 0.5, service 1: Wq = rho * s / (2 (1 - rho)) = 0.5 (exact).
    assert qm.mdc_mean_wait(1, 0.5, 1.0) == pytest.approx(0.5)
    assert qm.cosmetatos_factor(1, 0.8) == pytest.approx(1.0)
    # For c > 1 the correction is above 1 (M/D/c waits more than half of M/M/c) and tends to 1 at rho -> 1.
    assert qm.cosmetatos_factor(4, 0.5) > qm.cosmetatos_factor(4, 0.9) > 1.0
    assert qm.mdc_response_quantile(2, 0.0, 3.0, 0.95) == 3.0


def test_mdc_against_simulation() -> None:
    """Cosmetatos' M/D/c mean wait against the bench's simulator (deterministic service, 4 servers)."""
    sim = pytest.importorskip("bench.autoscale")
    c, service, rho = 4, 10.0, 0.85
    lam = rho * c / (service / 1000)
    cfg = sim.SimConfig(max_batch=1, queue_delay_ms=0.0, instances=c, service="deterministic",
                        mean_service_ms=service, min_replicas=1, max_replicas=1, record_from=10.0)  # fmt: skip
    arr = sim.poisson_arrivals(np.full(200, lam), 5)
    res = sim.Sim(cfg, None, arr, 5).run(None, 1, 200.0)
    predicted = qm.mdc_mean_wait(c, lam / 1000, service)
    assert float(np.mean(res.waits_ms)) == pytest.approx(predicted, rel=0.15)


def test_simulator_agrees_with_erlang_c() -> None:
    """A short `bench/autoscale.py --validate`: M/M/c P(wait) and mean wait within a few percent."""
    sim = pytest.importorskip("bench.autoscale")
    args = sim.parse_args(["--validate", "--validate-seconds", "120"])
    for row in sim.validate(args):
        assert row["p_wait_sim"] == pytest.approx(row["p_wait_erlang_c"], abs=0.04)
        assert row["mean_wait_ms_sim"] == pytest.approx(row["mean_wait_ms_erlang_c"], rel=0.2)


def test_batching_replica_model() -> None:
    svc = qm.BatchService(fixed=4.0, per_item=2.0, max_batch=8, queue_delay=2.0)
    assert svc.capacity == pytest.approx(8 / 20)  # per ms
    # Idle: the batcher delay plus one request's batch.
    assert qm.replica_response_quantile(svc, 0.0, 0.99) == pytest.approx(2.0 + 6.0, rel=1e-3)
    values = [qm.replica_response_quantile(svc, r, 0.95) for r in (0.01, 0.05, 0.1, 0.2, 0.3, 0.38)]
    assert values == sorted(values)
    assert math.isinf(qm.replica_response_quantile(svc, 0.41, 0.95))
    # Batching: near capacity, batches fill up.
    assert qm.replica_load(svc, 0.35).mean_batch > 3
    # More replicas share the rate: lower latency.
    assert qm.pool_response_quantile(svc, 0.6, 4, 0.95) < qm.pool_response_quantile(svc, 0.6, 2, 0.95)


# ---------------------------------------------------------------- the law


def obs(rate: float | None, *, ready: int = 2, starting: int = 0, current: int | None = None,
        observed: float | None = None, service: float = 18.0, batch: float = 3.0, queue: float = 5.0,
        stale: str | None = None) -> Observation:  # fmt: skip
    return Observation(
        rate_rps=rate, ready=ready, starting=starting, current=ready + starting if current is None else current,
        observed_pct_ms=observed, compute_ms_per_batch=service if rate else None,
        mean_batch=batch if rate else None, queue_ms=queue, requests=int((rate or 0) * 10), interval_s=10.0,
        stale_reason=stale,
    )  # fmt: skip


def run(o: Observation, state: LawState | None = None, now: float = 0.0, bounds: Bounds = BOUNDS,
        objective: Objective = OBJ) -> tuple[int, str, LawState]:  # fmt: skip
    d = decide(o, objective, bounds, state or LawState(), now, MAX_BATCH)
    return d.desired, d.reason, d.state


def test_decision_carries_numbers_and_inputs() -> None:
    d = decide(obs(41.2, observed=120.0), OBJ, BOUNDS, LawState(), 0.0, MAX_BATCH)
    assert "rate 41.2/s" in d.reason and "ms/batch (b=3.0)" in d.reason and "p95" in d.reason
    assert "250 ms" in d.reason
    assert d.inputs["rate_rps"] == 41.2 and d.inputs["ready"] == 2
    assert d.predicted_ms is not None and d.objective_met is True


def test_monotonic_in_load() -> None:
    desired = [run(obs(r, ready=1, current=1))[0] for r in (5, 20, 40, 80, 120, 160, 200, 300)]
    assert desired == sorted(desired)
    assert desired[0] == 1 and desired[-1] > 1


def test_scale_up_is_prompt_and_bounded() -> None:
    n, reason, _ = run(obs(2000.0, ready=1, current=1))
    assert n == 5  # max(x2, +4) from 1
    assert "scaling up 1 -> 5" in reason
    n, _, _ = run(obs(5000.0, ready=8, current=8))
    assert n == 10  # max_replicas
    n, reason, _ = run(obs(5000.0, ready=10, current=10))
    assert n == 10 and "holding 10" in reason and "not reachable within 10" in reason
    n, reason, _ = run(obs(5000.0, ready=8, starting=2, current=10))  # the last two still starting
    assert n == 10 and "scaling up 10 -> 10" not in reason
    big = Bounds(1, 100, 300)
    n, _, _ = run(obs(50000.0, ready=10, current=10), bounds=big)
    assert n == 20  # x2


def test_starting_pods_count_as_capacity() -> None:
    n_needed, _, st = run(obs(600.0, ready=2, current=2))
    assert n_needed > 2
    # The same load with the pods it asked for still starting: no further step.
    n, reason, _ = run(obs(600.0, ready=2, starting=n_needed - 2), st, now=10.0)
    assert n == n_needed
    assert "scaling up" not in reason


def test_scale_down_waits_for_the_delay_then_steps_one_bounded_step_at_a_time() -> None:
    state = LawState()
    t = 0.0
    n, reason, state = run(obs(10.0, ready=6, observed=40.0), state, t)
    assert n == 6 and "headroom for 0s" in reason
    while t < BOUNDS.scale_down_delay_s - 10:
        t += 10
        n, _, state = run(obs(10.0, ready=6, observed=40.0), state, t)
        assert n == 6
    t += 10
    n, reason, state = run(obs(10.0, ready=6, observed=40.0), state, t)
    # One bounded step: at most half the replicas (the load needs one).
    assert n == 3 and "scaling down 6 -> 3" in reason
    # Not again before fresh metrics at the new size (the Deployment still has pods going).
    n, _, state = run(obs(10.0, ready=6, current=3, observed=40.0), state, t + 10)
    assert n == 3
    # Headroom continues: the next interval at 3 steps again, by at most half.
    n, _, state = run(obs(10.0, ready=3, observed=40.0), state, t + 20)
    assert n == 2


def test_headroom_interrupted_restarts_the_delay() -> None:
    state = LawState()
    _, _, state = run(obs(10.0, ready=4), state, 0.0)
    _, _, state = run(obs(10.0, ready=4), state, 200.0)
    _, _, state = run(obs(1200.0, ready=4), state, 210.0)  # busy again: no headroom
    assert state.headroom_since is None
    n, _, state = run(obs(10.0, ready=4), state, 220.0)
    n, _, state = run(obs(10.0, ready=4), state, 400.0)
    assert n == 4  # 180 s of new headroom < 300 s


def test_hysteresis_band_holds() -> None:
    # A load where the current size meets the objective but one fewer would not meet the
    # stricter down target: hold, no headroom clock.
    base = run(obs(150.0, ready=1, current=1))[0]
    n, reason, state = run(obs(150.0, ready=base, current=base))
    assert n == base and state.headroom_since is None, reason


def test_missing_metrics_hold_and_never_scale_down() -> None:
    state = LawState(last_desired=4, service_ms=18.0, batch=3.0)
    n, reason, _ = run(obs(None, ready=4), state, 1000.0)
    assert n == 4 and "no metrics" in reason
    # Stale (a pod's endpoint failed): idle load, long past the delay, still no scale down.
    state = LawState(headroom_since=0.0, service_ms=18.0, batch=3.0)
    n, reason, _ = run(obs(1.0, ready=4, stale="metrics failed on 1 pod(s): p1: timeout"), state, 10_000.0)
    assert n == 4 and "metrics failed" in reason


def test_observation_from_interval() -> None:
    interval = Interval(
        revision="r1", seconds=10.0, requests=412, errors=0, request_us=412 * 40_000.0, queue_us=412 * 8_000.0,
        compute_us=412 * 18_000.0, executions=133, inferences=412, pods=2, failed_pods=("p3: refused",),
        quantiles_ms={0.5: 30.0, 0.95: 212.0},
    )  # fmt: skip
    o = observation_from_interval(interval, OBJ, ready=3, starting=0, current=3)
    assert o.rate_rps == pytest.approx(41.2)
    assert o.observed_pct_ms == 212.0
    assert o.compute_ms_per_batch == pytest.approx(18.0)
    assert o.mean_batch == pytest.approx(412 / 133)
    assert o.stale_reason is not None and "p3: refused" in o.stale_reason
    missing = observation_from_interval(None, OBJ, ready=3, starting=0, current=3)
    assert missing.rate_rps is None and missing.stale_reason


def test_counted_arrivals_size_for_the_demand_not_the_completions() -> None:
    """Two saturated pods (6 ms per request each: ~330/s together) complete at capacity; the
    pending gauge shows three times that arriving."""
    base = obs(330.0, ready=2, current=2, observed=900.0, queue=400.0)
    blind, _, _ = run(base)
    counted, reason, _ = run(replace(base, arrival_rps=1000.0, pending=3000))
    light, _, _ = run(replace(base, arrival_rps=1000.0, pending=0))
    assert blind == 3  # completions and queue times only: the surge guess (x1.5)
    assert counted == light == 6  # the demand, counted; capped by the bounded step (max(x2, +4))
    assert "backlog" in reason
    # Fewer arriving than completing (the queue draining): never below the completions.
    assert run(replace(base, arrival_rps=40.0, pending=0))[0] == run(replace(base, arrival_rps=330.0, pending=0))[0]


def test_observation_carries_the_pending_gauge() -> None:
    interval = Interval(
        revision="r1", seconds=10.0, requests=400, errors=0, request_us=0.0, queue_us=0.0, compute_us=0.0,
        executions=100, inferences=400, pods=2, pending=30, pending_change=100,
    )  # fmt: skip
    o = observation_from_interval(interval, OBJ, ready=2, starting=0, current=2)
    assert (o.pending, o.arrival_rps, o.rate_rps) == (30, pytest.approx(50.0), pytest.approx(40.0))


def test_bounds_are_respected() -> None:
    b = Bounds(2, 4, 0.0)
    assert run(obs(0.5, ready=2), bounds=b)[0] >= 2
    assert run(obs(10_000.0, ready=4), bounds=b)[0] <= 4
    n, reason, _ = run(obs(10.0, ready=1, current=1), bounds=b)
    assert n == 2 and "outside" in reason
    with pytest.raises(ValueError):
        Bounds(3, 2, 0.0)
    with pytest.raises(ValueError):
        Objective(97, 100.0)


def test_scale_to_zero_only_with_min_zero() -> None:
    idle = Observation(rate_rps=0.0, ready=1, starting=0, current=1, requests=0, queue_ms=None)
    state = LawState(service_ms=18.0, batch=1.0)
    # min 1: never zero.
    n, _, _ = run(idle, state, 10_000.0)
    assert n == 1
    zero = Bounds(0, 4, 300.0)
    n, reason, st = run(idle, state, 0.0, bounds=zero)
    assert n == 1 and "scaling to zero after" in reason
    n, _, st = run(idle, st, 200.0, bounds=zero)
    assert n == 1
    n, reason, st = run(idle, st, 300.0, bounds=zero)
    assert n == 0 and "scaling to zero" in reason
    # Any request resets the clock.
    _, _, st2 = run(obs(1.0, ready=1), st, 310.0, bounds=zero)
    assert st2.zero_since is None
    # At zero, demand (the gateway's count) wakes it; none keeps it at zero.
    at_zero = Observation(rate_rps=0.0, ready=0, starting=0, current=0)
    assert run(at_zero, st, 400.0, bounds=zero)[0] == 0
    waking = Observation(rate_rps=50.0, ready=0, starting=0, current=0)
    assert run(waking, st, 410.0, bounds=zero)[0] >= 1
    assert run(Observation(rate_rps=None, ready=0, starting=0, current=0), st, 420.0, bounds=zero)[0] == 0


def test_feedback_corrects_the_model() -> None:
    """Observed percentile above the prediction raises the correction (bounded), and with it the size."""
    # The busiest load one replica is predicted to carry within the objective.
    rate = max(r for r in range(5, 400, 5) if run(obs(float(r), ready=1, current=1))[0] == 1)
    state = LawState()
    for i in range(12):  # a minute apart: Triton's summary window has moved on each time
        n, _, state = run(obs(float(rate), ready=1, current=1, observed=400.0), state, 60.0 * i)
    assert 1.0 < state.correction <= 3.0
    assert n >= 2
    # And the opposite: a model that overestimates learns a correction below 1 (bounded at 0.5).
    state = LawState()
    for i in range(30):
        _, _, state = run(obs(50.0, ready=1, current=1, observed=1.0), state, 60.0 * i)
    assert state.correction == pytest.approx(0.5, abs=0.05)


def test_state_round_trips_through_json() -> None:
    _, _, state = run(obs(120.0, ready=2, observed=100.0))
    data = json.loads(json.dumps(state.to_dict()))
    again = LawState.from_dict(data)
    assert again.last_desired == state.last_desired
    assert again.service_ms == pytest.approx(state.service_ms)
    assert LawState.from_dict(None) == LawState()
    assert LawState.from_dict({"correction": "junk", "unknown": 1}).correction == 1.0
