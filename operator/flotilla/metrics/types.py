"""What the deciders read: per-pod cumulative counters in, per-revision intervals out."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class PodTarget:
    """A serving pod to read: where its metrics are and which revision it serves."""

    pod: str
    revision: str
    ip: str | None  # None while the pod has no IP yet (not readable, not an error)
    ready: bool


@dataclass(frozen=True)
class PodCounters:
    """Triton's cumulative counters for one model on one pod (nv_inference_*), as exported.

    Durations are microseconds, summed over requests since the server started. `quantiles`
    is Triton's request-latency summary (quantile -> microseconds) over its own sliding
    window; empty when the server runs without summary_latencies.
    """

    success: float = 0.0
    failure: float = 0.0
    request_us: float = 0.0  # nv_inference_request_duration_us (end to end inside Triton)
    queue_us: float = 0.0  # nv_inference_queue_duration_us
    compute_infer_us: float = 0.0  # nv_inference_compute_infer_duration_us
    compute_input_us: float = 0.0
    compute_output_us: float = 0.0
    inferences: float = 0.0  # nv_inference_count (batch items)
    executions: float = 0.0  # nv_inference_exec_count (batches run)
    quantiles: Mapping[float, float] = field(default_factory=dict)
    # nv_inference_pending_request_count: a gauge (requests waiting in the scheduler now), not
    # a counter; in a delta (Sampler) it stays the newer reading's value, like the quantiles,
    # and `pending_change` is how much it grew since the older one. None: not exported.
    pending: float | None = None
    pending_change: float | None = None


@dataclass(frozen=True)
class PodReading:
    """One look at one pod: counters, or why there are none."""

    pod: str
    revision: str
    at: float  # seconds (monotonic clock of whoever read it)
    counters: PodCounters | None
    error: str | None = None  # the endpoint failed: reported, never averaged as zero


@dataclass(frozen=True)
class Interval:
    """What one revision did between two looks, summed over its pods."""

    revision: str
    seconds: float
    requests: int  # success + failure
    errors: int
    request_us: float
    queue_us: float
    compute_us: float  # input + infer + output
    executions: int
    inferences: int
    pods: int  # pods that contributed a delta
    failed_pods: tuple[str, ...] = ()  # pods whose endpoint failed this look (name: error)
    # Request-weighted mean of the pods' summary quantiles (ms); empty without summaries.
    quantiles_ms: Mapping[float, float] = field(default_factory=dict)
    # Requests waiting in the pods' schedulers at the end of the interval, and its growth over
    # the interval (None: the pods do not export nv_inference_pending_request_count).
    pending: int | None = None
    pending_change: int | None = None

    @property
    def rate(self) -> float:
        """Requests per second completed (and failed)."""
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    @property
    def arrival_rate(self) -> float | None:
        """Requests per second that arrived: completions plus the growth of the queue.

        Under overload completions stay at the pods' capacity while the queue grows; this is
        the demand, seen within one interval instead of through queue times of completed
        requests. Requests executing at either end are not counted (at most a batch per pod).
        """
        if self.pending_change is None or self.seconds <= 0:
            return None
        return max(0.0, (self.requests + self.pending_change) / self.seconds)

    @property
    def successes(self) -> int:
        return self.requests - self.errors

    @property
    def mean_latency_ms(self) -> float | None:
        """Mean request latency inside Triton over the interval (exact, from counters)."""
        return self.request_us / self.successes / 1000 if self.successes > 0 else None

    @property
    def mean_queue_ms(self) -> float | None:
        return self.queue_us / self.successes / 1000 if self.successes > 0 else None

    @property
    def mean_batch(self) -> float | None:
        """Requests per batch Triton actually ran."""
        return self.inferences / self.executions if self.executions > 0 else None

    @property
    def compute_ms_per_batch(self) -> float | None:
        """Service time of one batch (compute only; queueing excluded).

        Measured on Triton 2.51: the compute counters grow once per successful REQUEST by the
        time of the batch it ran in, so a dynamic batch of b requests adds b times the batch's
        time (not once, and not once per item: a request carrying 3 items counts once; failed
        requests add nothing). Dividing by successes gives the request-weighted mean batch time,
        exact when batches take equal time; dividing by inferences (items) would undercount
        as soon as a request carries several items.
        """
        return self.compute_us / self.successes / 1000 if self.successes > 0 else None

    def quantile_ms(self, q: float) -> float | None:
        return self.quantiles_ms.get(q)


@dataclass(frozen=True)
class Window:
    """One look at a model: an Interval per revision (only revisions with readable pods)."""

    at: float
    seconds: float
    intervals: Mapping[str, Interval]
    errors: Mapping[str, str] = field(default_factory=dict)  # pod -> why its endpoint failed

    def of(self, revision: str | None) -> Interval | None:
        return self.intervals.get(revision) if revision else None
