"""PrometheusSource against a real Prometheus (built from Go modules, e2e/localcluster).

Prometheus scrapes local aiohttp endpoints that serve captured Triton 2.51 metrics text
(tests/unit/data), with `namespace`/`pod` added by static_configs labels the way a PodMonitor
relabeling adds them; `PrometheusSource.read` must return exactly the counters the scrape
source parses from the same text. No control plane is needed.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from flotilla.metrics import PodReading, PodTarget, Sampler, parse_model
from flotilla.metrics.sources import PrometheusError, PrometheusSource
from localcluster.pytest_plugin import PrometheusFactory

DATA = Path(__file__).resolve().parents[1] / "unit" / "data"
NAMESPACE = "ml"
MODEL = "probe"  # the model in the captured text


def captured(name: str) -> str:
    return (DATA / f"triton-metrics-{name}.txt").read_text()


class Endpoints:
    """An aiohttp server on 127.0.0.1 in its own thread: path -> text, changeable while it runs."""

    def __init__(self, texts: dict[str, str]) -> None:
        self.texts = dict(texts)
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    async def _handle(self, request: web.Request) -> web.Response:
        text = self.texts.get(request.path)
        if text is None:
            return web.Response(status=404)
        return web.Response(text=text, content_type="text/plain")  # Triton's content type

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_get("/{name}", self._handle)
        self._runner = web.AppRunner(app)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = self._runner.addresses[0][1]
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())

    def __enter__(self) -> Endpoints:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def job(name: str, port: int, path: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "job_name": name,
        "metrics_path": path,
        "static_configs": [{"targets": [f"127.0.0.1:{port}"], "labels": labels}],
    }


def config(port: int) -> dict[str, Any]:
    return {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            job("pod-a", port, "/a", {"namespace": NAMESPACE, "pod": "probe-a"}),
            job("pod-b", port, "/b", {"namespace": NAMESPACE, "pod": "probe-b"}),
            # The same pod name in another namespace: must never be mixed in.
            job("other", port, "/other", {"namespace": "other", "pod": "probe-a"}),
        ],
    }


def pod(name: str, revision: str = "r1") -> PodTarget:
    return PodTarget(pod=name, revision=revision, ip="10.0.0.1", ready=True)


TARGETS = [pod("probe-a"), pod("probe-b", "r2"), pod("never-scraped")]


def read(source: PrometheusSource) -> dict[str, PodReading]:
    return {r.pod: r for r in asyncio.run(source.read(NAMESPACE, MODEL, TARGETS))}


def read_until(source: PrometheusSource, done: Any, timeout: float = 30.0) -> dict[str, PodReading]:
    deadline = time.monotonic() + timeout
    while True:
        readings = read(source)
        if done(readings) or time.monotonic() > deadline:
            return readings
        time.sleep(0.5)


@pytest.fixture
def endpoints() -> Iterator[Endpoints]:
    success = 'nv_inference_request_success{model="probe",version="1"} '
    other = captured("probe").replace(f"{success}7\n", f"{success}700\n")
    assert other != captured("probe")
    texts = {"/a": captured("probe"), "/b": captured("probe-idle"), "/other": other}
    with Endpoints(texts) as served:
        yield served


def test_prometheus_source_reads_the_counters_triton_exported(
    prometheus_factory: PrometheusFactory, endpoints: Endpoints
) -> None:
    prom = prometheus_factory(config(endpoints.port))
    source = PrometheusSource(prom.url)
    readings = read_until(source, lambda r: r["probe-a"].counters is not None and r["probe-b"].counters is not None)
    # Exactly what parsing the same text gives, quantiles included (NaN ones left out).
    assert readings["probe-a"].counters == parse_model(captured("probe"), MODEL), prom.log()[-2000:]
    assert readings["probe-b"].counters == parse_model(captured("probe-idle"), MODEL)
    assert readings["probe-b"].revision == "r2"
    missing = readings["never-scraped"]
    assert missing.counters is None and "no series for pod='never-scraped'" in str(missing.error)


def test_prometheus_source_feeds_the_sampler(prometheus_factory: PrometheusFactory, endpoints: Endpoints) -> None:
    prom = prometheus_factory(config(endpoints.port))
    source = PrometheusSource(prom.url)
    sampler = Sampler()
    # Both pods scraped before the baseline: a pod first seen later only becomes a baseline.
    first = read_until(source, lambda r: r["probe-a"].counters is not None and r["probe-b"].counters is not None)
    sampler.observe(list(first.values()), at=0.0)
    endpoints.texts["/b"] = captured("probe")  # probe-b served the probe's traffic since
    later = read_until(source, lambda r: r["probe-b"].counters is not None and r["probe-b"].counters.success == 7)
    window = sampler.observe(list(later.values()), at=10.0)
    assert window is not None
    assert window.errors.keys() == {"never-scraped"}
    assert window.intervals["r1"].requests == 0  # probe-a served the same text throughout
    moved = window.intervals["r2"]
    assert (moved.requests, moved.errors, moved.inferences, moved.executions) == (8, 1, 9, 5)
    assert moved.quantile_ms(0.5) == pytest.approx(500.760)


def test_prometheus_answering_an_error_raises(prometheus_factory: PrometheusFactory, endpoints: Endpoints) -> None:
    prom = prometheus_factory(config(endpoints.port))
    bad = PrometheusSource(prom.url, namespace_label="not a label")  # a PromQL parse error
    with pytest.raises(PrometheusError, match="bad_data"):
        read(bad)
    prom.stop()
    with pytest.raises(PrometheusError, match="unreachable"):
        read(PrometheusSource(prom.url))
