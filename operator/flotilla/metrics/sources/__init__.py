"""The only I/O of flotilla.metrics: where per-pod Triton counters come from.

Both sources return one PodReading per readable target (a pod with an IP): counters, or the
reason there are none. `ScrapeSource` reads each pod's Triton metrics endpoint;
`PrometheusSource` asks Prometheus for the same counters. Either feeds a `Sampler`.
`GatewaySource` reads the Flotilla gateway's pods: requests held for models scaled to zero
(flotilla.metrics.gateway), the only demand a model without pods has.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from flotilla.metrics.types import PodReading, PodTarget

from .gateway import GatewaySource
from .prometheus import PrometheusError, PrometheusSource
from .scrape import ScrapeSource, scrape


class MetricsSource(Protocol):
    async def read(self, namespace: str, model: str, targets: Sequence[PodTarget]) -> list[PodReading]:
        """Cumulative counters of Triton model `model` (= the SmallModel's name) per target."""
        ...


__all__ = ["GatewaySource", "MetricsSource", "PrometheusError", "PrometheusSource", "ScrapeSource", "scrape"]
