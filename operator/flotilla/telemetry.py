"""The operator's own Prometheus metrics."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

REGISTRY = CollectorRegistry()

RECONCILES = Counter("flotilla_reconcile_total", "Reconciles of SmallModels.", ["result"], registry=REGISTRY)
RECONCILE_SECONDS = Histogram(
    "flotilla_reconcile_duration_seconds",
    "Time to plan and execute one reconcile.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
API_REQUESTS = Counter("flotilla_api_requests_total", "Writes the operator sent to the API server.", registry=REGISTRY)
JOBS = Counter("flotilla_optimization_jobs_total", "Optimization Jobs by outcome.", ["event"], registry=REGISTRY)


class ConditionCollector(Collector):
    """SmallModels by condition type and status, computed at scrape time."""

    def __init__(self) -> None:
        self.by_model: dict[tuple[str, str], dict[str, str]] = {}

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("flotilla_smallmodels", "SmallModels by condition.", labels=["condition", "status"])
        tally = Tally((t, s) for conditions in self.by_model.values() for t, s in conditions.items())
        for (type_, status), count in sorted(tally.items()):
            family.add_metric([type_, status], count)
        yield family


CONDITIONS = ConditionCollector()
REGISTRY.register(CONDITIONS)


def serve(port: int) -> None:
    if port:
        start_http_server(port, registry=REGISTRY)
