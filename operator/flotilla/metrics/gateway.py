"""The Flotilla gateway's scale-from-zero figures, the autoscaler's third metrics source (pure).

A model scaled to zero has no pods, so neither Triton nor Prometheus' scrape of them can say
that someone wants it. The gateway can: it holds each request for such a model and exports,
per model (`namespace/name`),

- `flotilla_gateway_waiting_requests`: a gauge, the requests held now;
- `flotilla_gateway_scale_from_zero_requests_total`: a counter, the requests that arrived
  while the model had no endpoint (held, or refused over the hold's cap).

`parse_gateway` reads one gateway pod's /metrics text; a `DemandSampler` (one per model at
zero) turns two looks at every gateway pod into a `Demand`, as `Sampler` does for Triton
counters: a gateway pod seen for the first time is a baseline for its counter (its gauge
counts at once), a counter that went down is a restarted pod (the new value is its delta),
and a pod that could not be read is named in `Demand.error`, never counted as zero.
The I/O (listing the gateway pods, reading them) is `flotilla.metrics.sources.gateway`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from .triton import MetricsFormatError

# The gateway's names (flotilla.gateway.metrics; the two must not drift: a test reads a real
# gateway's /metrics with this parser). A counter's family name has no `_total`.
WAITING = "flotilla_gateway_waiting_requests"
ARRIVED = "flotilla_gateway_scale_from_zero_requests"
MODEL_LABEL = "model"


@dataclass(frozen=True)
class GatewayCounts:
    """One gateway pod's figures for one model."""

    waiting: float = 0.0  # held now
    arrived: float = 0.0  # arrivals at zero since the gateway process started


def parse_gateway(text: str) -> dict[str, GatewayCounts]:
    """model (`namespace/name`) -> its counts, from one gateway pod's /metrics text. A model the
    pod never held a request for is absent (the counts are zero)."""
    waiting: dict[str, float] = {}
    arrived: dict[str, float] = {}
    try:
        for family in text_string_to_metric_families(text):
            if family.name not in (WAITING, ARRIVED):
                continue
            for sample in family.samples:
                model = sample.labels.get(MODEL_LABEL)
                if not model:
                    continue
                if family.name == WAITING and sample.name == WAITING:
                    waiting[model] = waiting.get(model, 0.0) + float(sample.value)
                elif family.name == ARRIVED and sample.name == f"{ARRIVED}_total":  # not `_created`
                    arrived[model] = arrived.get(model, 0.0) + float(sample.value)
    except ValueError as exc:  # the parser's only complaint about malformed text
        raise MetricsFormatError(f"not Prometheus text format: {exc}") from exc
    return {m: GatewayCounts(waiting.get(m, 0.0), arrived.get(m, 0.0)) for m in sorted({*waiting, *arrived})}


@dataclass(frozen=True)
class GatewayTarget:
    """A gateway pod to read."""

    pod: str
    ip: str


@dataclass(frozen=True)
class GatewayReading:
    """One gateway pod's counts of every model, or why there are none."""

    pod: str
    counts: Mapping[str, GatewayCounts] | None
    error: str | None = None


@dataclass(frozen=True)
class GatewayLook:
    """One look at every gateway pod. `error`: there was nothing to read (the pods could not be
    listed, or none runs), so the demand of every model is unknown."""

    at: float  # seconds, the reader's monotonic clock
    readings: tuple[GatewayReading, ...] = ()
    error: str | None = None


@dataclass(frozen=True)
class Demand:
    """What the gateway says of one model between two looks.

    `error` says that part of the gateway could not be read: more demand than counted may exist,
    never less, so a count above zero is still demand (waking is the safe direction) while a
    zero is "unknown", not "none".
    """

    waiting: int  # held now, over every gateway pod read
    arrived: int  # arrivals at zero since the last look (pods read both times)
    seconds: float  # since the last look; 0 on the first
    error: str | None = None

    @property
    def requests(self) -> int:
        """A lower bound of the requests that want the model: every one held now arrived at
        some point, but perhaps before the last look."""
        return max(self.waiting, self.arrived)

    def describe(self) -> str:
        span = f" in {self.seconds:.0f}s" if self.seconds > 0 else ""
        return f"gateway: {self.waiting} waiting, {self.arrived} arrived at zero{span}"


@dataclass
class DemandSampler:
    """Deltas of one model's gateway counters between successive looks (state: the last
    counter value per gateway pod). Start a fresh one each time the model reaches zero:
    arrivals while it was waking must not count again as demand at the next zero."""

    baseline: dict[str, float] = field(default_factory=dict)  # gateway pod -> arrived counter
    last_at: float | None = None

    def observe(self, look: GatewayLook, model: str) -> Demand:
        seconds = look.at - self.last_at if self.last_at is not None else 0.0
        if look.error is not None:  # nothing read: keep the baseline for the next look
            return Demand(0, 0, seconds, look.error)
        waiting = arrived = 0.0
        errors: list[str] = []
        current: dict[str, float] = {}
        for reading in look.readings:
            if reading.counts is None:
                errors.append(f"{reading.pod}: {reading.error or 'no counts'}")
                if reading.pod in self.baseline:
                    current[reading.pod] = self.baseline[reading.pod]
                continue
            counts = reading.counts.get(model, GatewayCounts())
            waiting += counts.waiting
            previous = self.baseline.get(reading.pod)
            if previous is not None:
                # A counter that went down: the gateway restarted, everything since counts.
                arrived += counts.arrived - previous if counts.arrived >= previous else counts.arrived
            current[reading.pod] = counts.arrived
        # Pods not read this time (gone) are forgotten.
        self.baseline, self.last_at = current, look.at
        return Demand(round(waiting), round(arrived), seconds, "; ".join(errors) or None)
