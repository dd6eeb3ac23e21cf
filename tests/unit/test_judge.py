"""The canary judge: validity under repeated looks, power, persistence, low traffic, known answers."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import pytest

from flotilla.metrics.types import Interval
from flotilla.rollout import judge as judge_mod
from flotilla.rollout.judge import Evidence, JudgeSettings, judge, observe

SETTINGS = JudgeSettings(max_error_rate=0.01, max_latency_regression=0.10, min_requests=200)
LATENCY_SIGMA = 0.5  # per-request log-latency sd (the measured SmolLM2 fit is near this)


def interval(requests: int, errors: int, request_ms_sum: float, revision: str = "r") -> Interval:
    return Interval(
        revision=revision, seconds=10.0, requests=requests, errors=errors, request_us=request_ms_sum * 1000,
        queue_us=0.0, compute_us=0.0, executions=requests, inferences=requests, pods=1,
    )  # fmt: skip


def draw(rng: random.Random, n: int, p_error: float, scale: float) -> Interval:
    """n requests: Bernoulli errors, lognormal latencies (median 300 ms * scale) for the rest."""
    errors = sum(rng.random() < p_error for _ in range(n))
    total = sum(scale * 300 * rng.lognormvariate(0.0, LATENCY_SIGMA) for _ in range(n - errors))
    return interval(n, errors, total)


Stream = Callable[[random.Random], tuple[Interval, Interval]]


def ever(stream: Stream, settings: JudgeSettings, runs: int, looks: int, decision: str, seed: int) -> float:
    """Share of runs in which `decision` comes up at any of `looks` looks (the judge looked at every one)."""
    hits = 0
    for run in range(runs):
        rng, ev = random.Random(seed * 100_003 + run), Evidence()
        for _ in range(looks):
            canary, stable = stream(rng)
            ev = observe(ev, canary, stable, settings)
            if judge(ev, settings).decision == decision:
                hits += 1
                break
    return hits / runs


# ---------------------------------------------------------------- known answers


def test_error_mixture_known_answer() -> None:
    # p0 = 1/2, 3 requests, 3 errors: alternatives at odds 1.5, 2, 4, 10, 30 are
    # p' = 3/5, 2/3, 4/5, 10/11, 30/31 and each likelihood ratio is (p' / (1/2))^3.
    expected = ((6 / 5) ** 3 + (4 / 3) ** 3 + (8 / 5) ** 3 + (20 / 11) ** 3 + (60 / 31) ** 3) / 5
    assert math.exp(judge_mod.error_log_e(3, 3, 0.5, above=True)) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(4.2911, abs=1e-4)
    # The mirror (alternatives 2/5, 1/3, 1/5, 1/11, 1/31): every term is (2 p')^3.
    mirror = ((4 / 5) ** 3 + (2 / 3) ** 3 + (2 / 5) ** 3 + (2 / 11) ** 3 + (2 / 31) ** 3) / 5
    assert math.exp(judge_mod.error_log_e(3, 3, 0.5, above=False)) == pytest.approx(mirror, rel=1e-12)
    assert judge_mod.error_log_e(0, 0, 0.01, above=True) == 0.0


def test_t_mixture_known_answer() -> None:
    # y = (1, 3): S = 4, Q = 10; g = 1: (1 + 2)^(-1/2) * (10 / (10 - 16/3))^(2/2) = 30 / (14 sqrt 3)
    assert math.exp(judge_mod.t_mixture_log_e(2, 4.0, 10.0, 1.0)) == pytest.approx(30 / (14 * math.sqrt(3)), rel=1e-12)
    # One observation carries no evidence: the scale prior absorbs it.
    assert judge_mod.t_mixture_log_e(1, 2.5, 6.25, 10.0) == 0.0


def test_t_mixture_matches_numeric_integration() -> None:
    """The closed form equals m1/m0 integrated numerically: x_i ~ N(sigma delta, sigma^2),
    delta ~ N(0, g) under H1, delta = 0 under H0, prior 1/sigma on sigma under both."""
    ys, g = (0.4, 1.3, 0.9), 2.0
    n, s, q = len(ys), sum(ys), sum(y * y for y in ys)

    def likelihood(sigma: float, delta: float) -> float:
        return math.prod(math.exp(-((y - sigma * delta) ** 2) / (2 * sigma**2)) / sigma for y in ys)

    def integrate(f: Callable[[float], float], lo: float, hi: float, steps: int) -> float:
        h = (hi - lo) / steps
        return h * (sum(f(lo + i * h) for i in range(1, steps)) + (f(lo) + f(hi)) / 2)

    # sigma = e^u: d sigma / sigma = du
    m0 = integrate(lambda u: likelihood(math.exp(u), 0.0), -6, 6, 600)
    normal = 1 / math.sqrt(2 * math.pi * g)
    m1 = integrate(
        lambda u: integrate(
            lambda d: likelihood(math.exp(u), d) * normal * math.exp(-d * d / (2 * g)), -12, 12, 240
        ),
        -6, 6, 240,
    )  # fmt: skip
    assert math.exp(judge_mod.t_mixture_log_e(n, s, q, g)) == pytest.approx(m1 / m0, rel=2e-3)


# ---------------------------------------------------------------- persistence and inputs


def test_evidence_round_trips_and_tolerates_missing_keys() -> None:
    rng, ev = random.Random(3), Evidence()
    for _ in range(12):
        ev = observe(ev, draw(rng, 30, 0.02, 1.0), draw(rng, 90, 0.001, 1.0), SETTINGS)
    assert ev.blocks > 0 and ev.canary_errors > 0
    data = ev.to_dict()
    assert all(isinstance(v, int | float) for v in data.values())
    assert len(data) <= 12
    assert Evidence.from_dict(data) == ev
    assert Evidence.from_dict(__import__("json").loads(__import__("json").dumps(data))) == ev
    assert Evidence.from_dict({}) == Evidence()
    partial = Evidence.from_dict({"canary_requests": 7, "unknown": 1, "canary_errors": "x"})
    assert partial == Evidence(canary_requests=7)
    assert isinstance(partial.canary_requests, int)


def test_resuming_from_status_gives_the_same_verdicts() -> None:
    rng = random.Random(11)
    looks = [(draw(rng, 25, 0.001, 1.0), draw(rng, 75, 0.001, 1.0)) for _ in range(20)]
    straight, resumed = Evidence(), Evidence()
    for canary, stable in looks:
        straight = observe(straight, canary, stable, SETTINGS)
        resumed = Evidence.from_dict(observe(Evidence.from_dict(resumed.to_dict()), canary, stable, SETTINGS).to_dict())
        assert judge(resumed, SETTINGS) == judge(straight, SETTINGS)


def test_none_and_empty_intervals_leave_evidence_unchanged() -> None:
    rng = random.Random(5)
    ev = observe(Evidence(), draw(rng, 30, 0.01, 1.0), draw(rng, 30, 0.01, 1.0), SETTINGS)
    stable = draw(rng, 50, 0.0, 1.0)
    assert observe(ev, None, None, SETTINGS) == ev
    assert observe(ev, None, stable, SETTINGS) == ev
    assert observe(ev, interval(0, 0, 0.0), stable, SETTINGS) == ev
    # Canary without stable: its errors count, latency has nothing to pair with.
    alone = observe(ev, interval(10, 1, 3000.0), None, SETTINGS)
    assert (alone.canary_requests, alone.canary_errors) == (ev.canary_requests + 10, ev.canary_errors + 1)
    assert (alone.blocks, alone.open_canary_ok) == (ev.blocks, ev.open_canary_ok)


def test_low_traffic_is_insufficient_with_the_count() -> None:
    ev = observe(Evidence(), interval(57, 0, 57 * 300.0), interval(500, 0, 500 * 300.0), SETTINGS)
    verdict = judge(ev, SETTINGS)
    assert (verdict.decision, verdict.reason) == ("inconclusive", "InsufficientTraffic")
    assert "57 of 200 canary requests" in verdict.message
    empty = judge(Evidence(), SETTINGS)
    assert empty.reason == "InsufficientTraffic" and "0 of 200" in empty.message


def test_enough_traffic_but_undecided_is_inconclusive() -> None:
    # 300 requests with 3 errors (1% = the threshold exactly): neither side can be shown.
    ev = Evidence()
    for _ in range(10):
        ev = observe(ev, interval(30, 0, 30 * 300.0), interval(90, 0, 90 * 300.0), SETTINGS)
    ev = Evidence.from_dict({**ev.to_dict(), "canary_errors": 3})
    verdict = judge(ev, SETTINGS)
    assert (verdict.decision, verdict.reason) == ("inconclusive", "Inconclusive")
    assert "1% (3/300)" in verdict.message


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="max_error_rate"):
        JudgeSettings(max_error_rate=1.5, max_latency_regression=0.1, min_requests=1)
    with pytest.raises(ValueError, match="alpha"):
        JudgeSettings(max_error_rate=0.01, max_latency_regression=0.1, min_requests=1, alpha=0.0)


def test_zero_error_budget_fails_on_the_first_error() -> None:
    strict = JudgeSettings(max_error_rate=0.0, max_latency_regression=0.1, min_requests=1)
    ev = observe(Evidence(), interval(100, 1, 99 * 300.0), interval(100, 0, 100 * 300.0), strict)
    assert judge(ev, strict).reason == "ErrorRateExceeded"


def test_messages_carry_the_numbers() -> None:
    rng, ev = random.Random(2), Evidence()
    for _ in range(40):
        ev = observe(ev, draw(rng, 50, 0.03, 1.3), draw(rng, 150, 0.001, 1.0), SETTINGS)
    verdict = judge(ev, SETTINGS)
    assert verdict.decision == "fail"
    assert "canary error rate" in verdict.message and "> 1%" in verdict.message
    assert "latency +" in verdict.message and "vs stable (mean" in verdict.message
    assert verdict.error_rate is not None and 0.02 < verdict.error_rate < 0.04
    assert verdict.latency_change is not None and 0.2 < verdict.latency_change < 0.4


# ---------------------------------------------------------------- validity under repeated looks


RUNS, LOOKS = 300, 60


def test_error_test_false_alarm_at_the_boundary_under_repeated_looks() -> None:
    """p = maxErrorRate exactly (the worst case of the null), judged after each of 60 looks."""
    settings = JudgeSettings(max_error_rate=0.05, max_latency_regression=0.10, min_requests=0)
    rng = random.Random(0)

    def stream(_: random.Random) -> tuple[Interval, Interval]:
        n = 40
        errors = sum(rng.random() < 0.05 for _ in range(n))
        return interval(n, errors, (n - errors) * 300.0), interval(n, 0, n * 300.0)

    false_fail = ever(stream, settings, RUNS, LOOKS, "fail", seed=1)
    assert false_fail <= settings.alpha


def test_naive_repeated_z_test_exceeds_alpha() -> None:
    """The peeking problem: a fixed-horizon one-sided z-test at alpha, repeated after every look
    on the same null stream, rejects far more often than alpha."""
    rng, alpha_z, p0 = random.Random(0), 1.6449, 0.05
    hits = 0
    for _ in range(RUNS):
        n = x = 0
        for _ in range(LOOKS):
            n += 40
            x += sum(rng.random() < p0 for _ in range(40))
            if (x / n - p0) / math.sqrt(p0 * (1 - p0) / n) > alpha_z:
                hits += 1
                break
    assert hits / RUNS > 2 * 0.05


def test_latency_test_false_alarm_at_the_boundary_under_repeated_looks() -> None:
    """Canary exactly +10% slower on every request (= maxLatencyRegression), uneven traffic."""

    def stream(rng: random.Random) -> tuple[Interval, Interval]:
        n = rng.choice((8, 20, 45))
        return draw(rng, n, 0.0, 1.10), draw(rng, 2 * n, 0.0, 1.0)

    assert ever(stream, SETTINGS, 200, 50, "fail", seed=2) <= SETTINGS.alpha


def test_aa_never_fails_and_mostly_passes() -> None:
    def stream(rng: random.Random) -> tuple[Interval, Interval]:
        return draw(rng, 40, 0.001, 1.0), draw(rng, 80, 0.001, 1.0)

    assert ever(stream, SETTINGS, 100, 30, "fail", seed=3) <= 0.01
    assert ever(stream, SETTINGS, 60, 30, "pass", seed=4) >= 0.9


def test_a_bad_canary_never_passes_often() -> None:
    """A canary 3% errors / +30% latency must not pass (the OK e-processes, at their nulls' far side)."""

    def stream(rng: random.Random) -> tuple[Interval, Interval]:
        return draw(rng, 40, 0.03, 1.3), draw(rng, 80, 0.001, 1.0)

    assert ever(stream, SETTINGS, 60, 30, "pass", seed=5) == 0.0


# ---------------------------------------------------------------- power


def test_power_on_latency_regression() -> None:
    def stream(rng: random.Random) -> tuple[Interval, Interval]:
        return draw(rng, 25, 0.001, 1.3), draw(rng, 75, 0.001, 1.0)

    assert ever(stream, SETTINGS, 100, 30, "fail", seed=6) >= 0.95


def test_power_on_error_rate() -> None:
    def stream(rng: random.Random) -> tuple[Interval, Interval]:
        return draw(rng, 40, 0.03, 1.0), draw(rng, 120, 0.001, 1.0)

    assert ever(stream, SETTINGS, 100, 30, "fail", seed=7) >= 0.95


def test_reason_codes_say_which_test_failed() -> None:
    rng, lat, err = random.Random(8), Evidence(), Evidence()
    for _ in range(30):
        lat = observe(lat, draw(rng, 40, 0.0, 1.5), draw(rng, 120, 0.0, 1.0), SETTINGS)
        err = observe(err, draw(rng, 40, 0.1, 1.0), draw(rng, 120, 0.0, 1.0), SETTINGS)
    assert judge(lat, SETTINGS).reason == "LatencyRegression"
    assert judge(lat, SETTINGS).latency_direction == 1
    assert judge(err, SETTINGS).reason == "ErrorRateExceeded"
