"""The operator's own Prometheus metrics."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterator, Mapping, Sized

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
API_REQUESTS = Counter(
    "flotilla_api_requests_total", "Writes the operator sent to the API server.", ["verb", "kind"], registry=REGISTRY
)
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


class DesiredReplicasCollector(Collector):
    """The autoscaler's desired replicas per model: KEDA (a metrics-api or prometheus trigger) can
    scale a SmallModel's scale subresource on our law instead of the operator doing it."""

    def __init__(self) -> None:
        self.by_model: dict[tuple[str, str], int] = {}

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "flotilla_desired_replicas", "Replicas the latency law wants per SmallModel.", labels=["namespace", "name"]
        )
        for (namespace, name), desired in sorted(self.by_model.items()):
            family.add_metric([namespace, name], desired)
        yield family


DESIRED_REPLICAS = DesiredReplicasCollector()
REGISTRY.register(DESIRED_REPLICAS)


class IndexCollector(Collector):
    """Objects the operator holds in its in-memory indexes, per index, at scrape time: what its
    memory grows with (children of its models only; the watches are filtered server-side)."""

    def __init__(self) -> None:
        self.indexes: Mapping[str, Mapping[object, Sized]] = {}

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("flotilla_indexed_objects", "Objects held in each index.", labels=["index"])
        for name, index in sorted(self.indexes.items()):
            family.add_metric([name], sum(len(store) for store in list(index.values())))
        yield family


INDEXED = IndexCollector()
REGISTRY.register(INDEXED)


def serve(port: int) -> None:
    if port:
        start_http_server(port, registry=REGISTRY)


HTTP_REQUESTS = Counter(
    "flotilla_http_requests_total",
    "Requests to the API server by client library and method (only with FLOTILLA_TRACE_HTTP=1).",
    ["client", "method"],
    registry=REGISTRY,
)


def trace_http() -> None:
    """Count every API request the process makes, kopf's (aiohttp) and ours (httpx).

    Off by default: it wraps the libraries' request methods, which is diagnostics, not
    something to run blind across library upgrades. bench/reconcile.py turns it on to
    report API requests per object.
    """
    import aiohttp
    import httpx2  # lightkube's HTTP client

    original_request = aiohttp.ClientSession._request
    original_send = httpx2.AsyncClient.send

    async def counted_request(self: aiohttp.ClientSession, method: str, *args: object, **kwargs: object) -> object:
        HTTP_REQUESTS.labels(client="kopf", method=method.upper()).inc()
        return await original_request(self, method, *args, **kwargs)  # type: ignore[arg-type]

    async def counted_send(self: httpx2.AsyncClient, request: httpx2.Request, **kwargs: object) -> httpx2.Response:
        HTTP_REQUESTS.labels(client="lightkube", method=request.method).inc()
        return await original_send(self, request, **kwargs)  # type: ignore[arg-type]

    aiohttp.ClientSession._request = counted_request  # type: ignore[assignment,method-assign]
    httpx2.AsyncClient.send = counted_send  # type: ignore[method-assign]
