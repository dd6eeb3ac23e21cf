"""Queueing formulas for the latency-objective control law. Pure, stdlib `math` only.

Times are in any one unit (the law uses milliseconds); rates are per that unit.

- `erlang_b`, `erlang_c`: blocking and waiting probability of c servers offered a = lambda/mu
  erlangs (Erlang C is P(wait > 0) in M/M/c).
- `mmc_mean_wait`, `mmc_wait_quantile`: M/M/c waiting time, exact (W is 0 with probability
  1 - C, else exponential with rate c*mu - lambda).
- `mdc_mean_wait`, `mdc_wait_quantile`, `mdc_response_quantile`: M/D/c by the Cosmetatos (1976)
  correction of half the M/M/c mean wait; the waiting-time tail is taken exponential with the
  M/M/c delay probability, and the response percentile is service + waiting percentile.
- `BatchService`, `replica_response_cdf`, `replica_response_quantile`: one Triton replica with
  dynamic batching (one model instance, max batch B, max queue delay d), batch time
  s(b) = s0 + s1*b, Poisson arrivals (kube-proxy spreads requests at random, so each of c
  replicas sees lambda/c). See docs/autoscaling-law.md for the derivation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass


def erlang_b(c: int, a: float) -> float:
    """Erlang B blocking probability of c servers offered a erlangs (stable recursion)."""
    if c < 0 or a < 0:
        raise ValueError("c and a must be >= 0")
    b = 1.0
    for k in range(1, c + 1):
        b = a * b / (k + a * b)
    return b


def erlang_c(c: int, a: float) -> float:
    """Erlang C: probability that an arrival waits in M/M/c with offered load a = lambda/mu.

    1.0 when the system is unstable (a >= c). c=2, a=1 gives 1/3.
    """
    if c <= 0:
        raise ValueError("c must be >= 1")
    if a <= 0:
        return 0.0
    if a >= c:
        return 1.0
    b = erlang_b(c, a)
    return c * b / (c - a * (1 - b))


def mmc_mean_wait(c: int, lam: float, mu: float) -> float:
    """Mean waiting time (before service) in M/M/c: C / (c*mu - lambda); inf when unstable."""
    if lam <= 0:
        return 0.0
    if lam >= c * mu:
        return math.inf
    return erlang_c(c, lam / mu) / (c * mu - lam)


def mmc_wait_quantile(c: int, lam: float, mu: float, q: float) -> float:
    """q-quantile (0<q<1) of the M/M/c waiting time: P(W > t) = C * exp(-(c*mu - lambda) t)."""
    if lam <= 0:
        return 0.0
    if lam >= c * mu:
        return math.inf
    p_wait = erlang_c(c, lam / mu)
    if p_wait <= 1 - q:
        return 0.0
    return math.log(p_wait / (1 - q)) / (c * mu - lam)


def cosmetatos_factor(c: int, rho: float) -> float:
    """Wq(M/D/c) ~= 0.5 * factor * Wq(M/M/c) (Cosmetatos 1976); 1.0 for c = 1 (exact M/D/1)."""
    if rho <= 0:
        return 1.0
    return 1 + (1 - rho) * (c - 1) * (math.sqrt(4 + 5 * c) - 2) / (16 * rho * c)


def mdc_mean_wait(c: int, lam: float, service: float) -> float:
    """Mean waiting time in M/D/c with deterministic service time `service` (Cosmetatos)."""
    if lam <= 0:
        return 0.0
    mu = 1 / service
    base = mmc_mean_wait(c, lam, mu)
    if math.isinf(base):
        return math.inf
    rho = lam * service / c
    return 0.5 * cosmetatos_factor(c, rho) * base


def mdc_wait_quantile(c: int, lam: float, service: float, q: float) -> float:
    """q-quantile of the M/D/c wait: W = 0 w.p. 1 - C, else exponential with mean Wq / C."""
    if lam <= 0:
        return 0.0
    if lam * service >= c:
        return math.inf
    p_wait = erlang_c(c, lam * service)
    if p_wait <= 1 - q:
        return 0.0
    mean_given_wait = mdc_mean_wait(c, lam, service) / p_wait
    return mean_given_wait * math.log(p_wait / (1 - q))


def mdc_response_quantile(c: int, lam: float, service: float, q: float) -> float:
    """q-quantile of the M/D/c response time: service + waiting-time quantile."""
    return service + mdc_wait_quantile(c, lam, service, q)


# ---------------------------------------------------------------- one batching replica


@dataclass(frozen=True)
class BatchService:
    """A replica's batch time s(b) = fixed + per_item * b, largest batch, batcher delay."""

    fixed: float
    per_item: float
    max_batch: int
    queue_delay: float = 0.0

    def time(self, b: float) -> float:
        return self.fixed + self.per_item * b

    @property
    def capacity(self) -> float:
        """Most requests per unit time one replica can serve (full batches back to back)."""
        return self.max_batch / self.time(self.max_batch)


@dataclass(frozen=True)
class ReplicaLoad:
    """The operating point the batching model derives for one replica at one arrival rate."""

    rate: float
    mean_batch: float  # batch size while the instance is busy (fixed point b = rate * s(b))
    busy: float  # share of time the instance computes
    utilization: float  # rate / capacity (>= 1: the queue grows without bound)
    batch_time: float  # s(mean_batch)
    next_batch_time: float  # the batch a request arriving while busy rides in
    idle_time: float  # response of a request arriving at an idle instance (delay + s(1 + rate*d))
    overflow_p: float  # probability that a request also waits for earlier full batches
    overflow_mean: float  # mean of that extra wait, given it happens


def replica_load(svc: BatchService, rate: float) -> ReplicaLoad:
    b_max = float(svc.max_batch)
    util = rate / svc.capacity if svc.capacity > 0 else math.inf
    if rate <= 0:
        one = svc.time(1)
        return ReplicaLoad(0.0, 1.0, 0.0, 0.0, one, one, svc.queue_delay + one, 0.0, 0.0)
    # While busy, the next batch is what arrived during the current one: b = rate * s(b).
    b = b_max if rate * svc.per_item >= 1 else min(b_max, max(1.0, rate * svc.fixed / (1 - rate * svc.per_item)))
    s_b = svc.time(b)
    busy = min(1.0, rate * s_b / b)
    next_b = min(b_max, 1 + rate * s_b)
    idle_b = min(b_max, 1 + rate * svc.queue_delay) if svc.max_batch > 1 else 1.0
    # A request waits only for batches it could not join; heavy-traffic (Kingman) mean of that
    # backlog: s(B) / (2 B (1 - u)) for full batches, reached with probability u.
    if util >= 1:
        return ReplicaLoad(rate, b, 1.0, util, s_b, svc.time(next_b), math.inf, 1.0, math.inf)
    overflow_mean = svc.time(b_max) / (2 * b_max * (1 - util))
    return ReplicaLoad(
        rate=rate,
        mean_batch=b,
        busy=busy,
        utilization=util,
        batch_time=s_b,
        next_batch_time=svc.time(next_b),
        idle_time=svc.queue_delay + svc.time(idle_b),
        overflow_p=util,
        overflow_mean=overflow_mean,
    )


def _uniform_plus_exp_cdf(x: float, width: float, p_exp: float, mean_exp: float) -> float:
    """P(U + E <= x), U ~ Uniform(0, width), E = 0 w.p. 1 - p_exp else Exponential(mean_exp)."""
    if x <= 0:
        return 0.0
    if width <= 0:
        plain = 1.0
        with_exp = 1 - math.exp(-x / mean_exp) if mean_exp > 0 else 1.0
    else:
        plain = min(1.0, x / width)
        if mean_exp <= 0:
            with_exp = plain
        else:
            m = min(x, width)
            # (1/width) * integral_0^m (1 - exp(-(x - u)/theta)) du
            tail = mean_exp * (math.exp(-(x - m) / mean_exp) - math.exp(-x / mean_exp))
            with_exp = (m - tail) / width
    return (1 - p_exp) * plain + p_exp * with_exp


def replica_response_cdf(svc: BatchService, rate: float) -> Callable[[float], float]:
    """P(response <= t) of one batching replica at Poisson `rate`.

    Arriving at an idle instance (probability 1 - busy): the batcher delay plus s(1 + rate*d).
    Arriving while a batch runs: the rest of it (uniform), then its own batch, then, near
    capacity, full batches queued ahead of it (exponential, heavy-traffic).
    """
    load = replica_load(svc, rate)

    def cdf(t: float) -> float:
        if math.isinf(load.idle_time):
            return 0.0
        idle = 1.0 if t >= load.idle_time else 0.0
        busy = _uniform_plus_exp_cdf(t - load.next_batch_time, load.batch_time, load.overflow_p, load.overflow_mean)
        return (1 - load.busy) * idle + load.busy * busy

    return cdf


def quantile_of(cdf: Callable[[float], float], q: float, hi: float) -> float:
    """Smallest t with cdf(t) >= q by bisection on [0, hi] (doubling hi as needed); inf if none."""
    for _ in range(60):
        if cdf(hi) >= q:
            break
        hi *= 2
    else:
        return math.inf
    lo = 0.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if cdf(mid) >= q:
            hi = mid
        else:
            lo = mid
        if hi - lo <= 1e-6 * hi:
            break
    return hi


def replica_response_quantile(svc: BatchService, rate: float, q: float) -> float:
    """q-quantile of the response time of one batching replica at Poisson `rate` (inf if overloaded)."""
    if rate > 0 and rate >= svc.capacity:
        return math.inf
    return quantile_of(replica_response_cdf(svc, rate), q, hi=max(svc.time(svc.max_batch), 1e-9) * 4)


def pool_response_quantile(svc: BatchService, rate: float, replicas: int, q: float) -> float:
    """q-quantile of the response time of `replicas` identical replicas sharing `rate` at random."""
    if replicas <= 0:
        return math.inf if rate > 0 else 0.0
    return replica_response_quantile(svc, rate / replicas, q)
