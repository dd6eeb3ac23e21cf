"""One interface over serving metrics, shared by the canary judge and the autoscaler.

Pure here (types, parsing, deltas); the sources that do I/O (scraping each pod's Triton
metrics endpoint, querying Prometheus) live in `flotilla.metrics.sources`.

Every source yields the same thing: cumulative Triton counters per serving pod
(`PodCounters`). A `Sampler` keeps the previous reading of each pod and turns two readings
into an `Interval` per revision: requests, errors, time spent, batches, quantiles. The
deciders (rollout/, autoscale/) only ever see Intervals.
"""

from .sampler import Sampler
from .triton import MetricsFormatError, parse, parse_model
from .types import Interval, PodCounters, PodReading, PodTarget, Window

__all__ = [
    "Interval",
    "MetricsFormatError",
    "PodCounters",
    "PodReading",
    "PodTarget",
    "Sampler",
    "Window",
    "parse",
    "parse_model",
]
