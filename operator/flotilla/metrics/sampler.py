"""Two looks at a model's pods -> one Window of per-revision Intervals (pure).

The sources return cumulative counters; deciders want "what happened since last time". A
`Sampler` (one per model) keeps the last good reading of each pod and subtracts:

- a pod seen for the first time contributes nothing: it becomes the baseline (its counters
  hold everything since the server started, not since the last look);
- a pod whose counters went down restarted: the new value is its delta (from zero);
- a failed reading is listed in `Window.errors` and the revision's `Interval.failed_pods`,
  never averaged as zero, and the pod keeps its old baseline, so when it answers again its
  whole delta is counted (a canary whose metrics endpoint times out under load must not have
  its errors dropped; that one window's counts then span more than its `seconds`, which
  overstates its rate once: the safe direction for scaling);
- a pod missing from the readings (deleted, or without an IP) is forgotten.

The state is plain data (the last readings and the time of the last window): an operator
that restarts simply starts a new baseline.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from .triton import counters_of, values_of, weighted_quantiles
from .types import Interval, PodCounters, PodReading, Window


@dataclass
class Sampler:
    """Deltas of one model's pods between successive looks.

    `min_seconds`: a window must span at least one metrics interval (Triton updates counters
    per request, but Prometheus only per scrape, and the operator reconciles on every child
    event); `observe` returns None, and keeps its baseline, when called sooner than that.
    """

    min_seconds: float = 0.0
    baseline: dict[str, PodReading] = field(default_factory=dict)  # pod -> last good reading
    last_at: float | None = None  # when the last window was taken

    def observe(self, readings: Sequence[PodReading], at: float) -> Window | None:
        """The window from the last look to `at`, or None when the last one is too recent."""
        if self.last_at is not None and at - self.last_at < self.min_seconds:
            return None
        seconds = at - self.last_at if self.last_at is not None else 0.0
        deltas: list[tuple[str, PodCounters]] = []  # (revision, delta), pods that contributed
        errors: dict[str, str] = {}
        failed: dict[str, list[str]] = {}  # revision -> "pod: error"
        current: dict[str, PodReading] = {}
        for reading in readings:
            if reading.counters is None:
                errors[reading.pod] = reading.error or "no counters"
                failed.setdefault(reading.revision, []).append(f"{reading.pod}: {errors[reading.pod]}")
                if reading.pod in self.baseline:
                    current[reading.pod] = self.baseline[reading.pod]
                continue
            previous = self.baseline.get(reading.pod)
            if previous is not None and previous.counters is not None:
                deltas.append((reading.revision, delta(previous.counters, reading.counters)))
            current[reading.pod] = reading
        # Pods not in `readings` are dropped here: vanished pods are forgotten.
        self.baseline, self.last_at = current, at
        intervals = {rev: interval(rev, seconds, parts, failed.get(rev, ())) for rev, parts in _by_revision(deltas)}
        return Window(at=at, seconds=seconds, intervals=intervals, errors=errors)


def restarted(previous: PodCounters, now: PodCounters) -> bool:
    before, after = values_of(previous), values_of(now)
    return any(after[name] < before[name] for name in after)


def delta(previous: PodCounters, now: PodCounters) -> PodCounters:
    """What a pod did between two readings; quantiles and the pending gauge are the newer
    reading's (a window, a value now), `pending_change` the gauge's growth."""
    if restarted(previous, now):
        # Counted from zero: the restarted server's counters are all since then, its queue too.
        return replace(now, pending_change=now.pending)
    before = values_of(previous)
    change = None if now.pending is None or previous.pending is None else now.pending - previous.pending
    counters = counters_of({name: value - before[name] for name, value in values_of(now).items()}, now.quantiles)
    return replace(counters, pending=now.pending, pending_change=change)


def _by_revision(deltas: Iterable[tuple[str, PodCounters]]) -> list[tuple[str, list[PodCounters]]]:
    grouped: dict[str, list[PodCounters]] = {}
    for revision, counters in deltas:
        grouped.setdefault(revision, []).append(counters)
    return sorted(grouped.items())


def interval(revision: str, seconds: float, parts: Sequence[PodCounters], failed: Iterable[str] = ()) -> Interval:
    """Sum of one revision's pod deltas.

    `quantiles_ms` is the mean of the pods' summary quantiles weighted by each pod's requests
    in this interval: an approximation (a mean of per-pod p95s is not the fleet's p95), and
    Triton's summaries cover its own last ~60 s, not exactly this interval. Pods without
    requests in the interval do not vote (their summaries are stale or empty).
    """

    values = [values_of(p) for p in parts]

    def total(name: str) -> float:
        return sum(v[name] for v in values)

    quantiles_us = weighted_quantiles([(p.quantiles, p.success) for p in parts])
    return Interval(
        revision=revision,
        seconds=seconds,
        requests=round(total("success") + total("failure")),
        errors=round(total("failure")),
        request_us=total("request_us"),
        queue_us=total("queue_us"),
        compute_us=total("compute_input_us") + total("compute_infer_us") + total("compute_output_us"),
        executions=round(total("executions")),
        inferences=round(total("inferences")),
        pods=len(parts),
        failed_pods=tuple(failed),
        quantiles_ms={q: us / 1000 for q, us in quantiles_us.items()},
        pending=_gauge_sum([p.pending for p in parts]),
        pending_change=_gauge_sum([p.pending_change for p in parts]),
    )


def _gauge_sum(values: Sequence[float | None]) -> int | None:
    """The pods' sum, or None unless every pod exported the gauge (a partial sum misleads)."""
    if not values or any(v is None for v in values):
        return None
    return round(sum(v for v in values if v is not None))
