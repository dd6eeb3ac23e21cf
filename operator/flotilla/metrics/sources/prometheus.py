"""Read the same cumulative Triton counters per pod from Prometheus (PromQL instant query).

One query per look fetches every series of the model in the namespace, raw (no rate(), no
sum()), so the Sampler computes deltas exactly as it does for scraped text and both sources
are interchangeable. Series are matched to pods by the labels a PodMonitor (or
kubernetes_sd relabeling) adds, `namespace` and `pod` by default; Triton's own `model`
label names the model.

Prometheus values are as of its last scrape, so a window shorter than the scrape interval
sees no change: give the Sampler a `min_seconds` of at least that interval.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import aiohttp

from flotilla.metrics.triton import COUNTERS, GAUGES, SUMMARY, Sample, from_samples
from flotilla.metrics.types import PodReading, PodTarget

Clock = Callable[[], float]
# Only the exact family names: a summary's _count/_sum repeat the counters.
METRIC_NAMES = (*COUNTERS, *GAUGES, SUMMARY)
# Labels that tell one Triton series from another within a pod (besides the name).
SERIES_LABELS = ("version", "reason", "quantile")


class PrometheusError(RuntimeError):
    """Prometheus is unreachable or answered an error: no pod can be judged from it."""


def promql_string(value: str) -> str:
    """A PromQL double-quoted string literal."""
    return json.dumps(value)  # same escapes (\\ \" \n), and names are ASCII anyway


def query(namespace: str, model: str, namespace_label: str = "namespace", model_label: str = "model") -> str:
    """Every Triton series of `model` in `namespace`, raw."""
    names = "|".join(METRIC_NAMES)
    return (
        f'{{__name__=~"{names}", {namespace_label}={promql_string(namespace)}, {model_label}={promql_string(model)}}}'
    )


class PrometheusSource:
    """MetricsSource backed by a Prometheus server's HTTP API."""

    def __init__(
        self,
        url: str,
        *,
        namespace_label: str = "namespace",
        pod_label: str = "pod",
        model_label: str = "model",
        timeout: float = 5.0,
        session: aiohttp.ClientSession | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.url = url.rstrip("/")
        self.namespace_label, self.pod_label, self.model_label = namespace_label, pod_label, model_label
        self.timeout, self.session, self.clock = timeout, session, clock

    async def read(self, namespace: str, model: str, targets: Sequence[PodTarget]) -> list[PodReading]:
        """One reading per target with an IP; a pod without series gets an error reading.

        Raises PrometheusError when Prometheus itself fails: that says nothing about pods.
        """
        readable = [t for t in targets if t.ip]
        if not readable:
            return []
        result = await self.instant(query(namespace, model, self.namespace_label, self.model_label))
        at = self.clock()
        by_pod = self._by_pod(result)
        return [self._reading(t, model, by_pod.get(t.pod, []), at) for t in readable]

    def _by_pod(self, result: Iterable[Mapping[str, Any]]) -> dict[str, list[Sample]]:
        # Two scrape jobs for one pod would double every counter: keep one value per series
        # (the largest, i.e. the freshest of monotonic counters).
        series: dict[tuple[str, ...], Sample] = {}
        for item in result:
            labels: Mapping[str, str] = item.get("metric", {})
            pod, name = labels.get(self.pod_label), labels.get("__name__")
            if pod is None or name is None:
                continue
            sample = Sample(name, name, {**labels, "model": labels.get(self.model_label, "")}, _value(item))
            key = (pod, name, *(labels.get(label, "") for label in SERIES_LABELS))
            if key not in series or sample.value > series[key].value:
                series[key] = sample
        by_pod: dict[str, list[Sample]] = {}
        for key, sample in series.items():
            by_pod.setdefault(key[0], []).append(sample)
        return by_pod

    def _reading(self, target: PodTarget, model: str, samples: list[Sample], at: float) -> PodReading:
        counters = from_samples(samples).get(model)
        if counters is None:
            error = (
                f"no series for {self.pod_label}={target.pod!r} {self.model_label}={model!r} in Prometheus "
                "(not scraped yet, or the scrape labels differ)"
            )
            return PodReading(target.pod, target.revision, at, None, error)
        return PodReading(target.pod, target.revision, at, counters)

    async def instant(self, promql: str) -> list[Mapping[str, Any]]:
        """The vector an instant query returns (`data.result`)."""
        if self.session is None:
            async with aiohttp.ClientSession() as own:
                return await self._instant(own, promql)
        return await self._instant(self.session, promql)

    async def _instant(self, session: aiohttp.ClientSession, promql: str) -> list[Mapping[str, Any]]:
        endpoint = f"{self.url}/api/v1/query"
        try:
            async with asyncio.timeout(self.timeout), session.post(endpoint, data={"query": promql}) as response:
                raw = await response.text()
                status = response.status
        except TimeoutError as exc:
            raise PrometheusError(f"Prometheus at {self.url} did not answer within {self.timeout:g}s") from exc
        except aiohttp.ClientError as exc:
            raise PrometheusError(f"Prometheus at {self.url} unreachable: {type(exc).__name__}: {exc}") from exc
        return _result(self.url, status, raw)


def _result(url: str, status: int, raw: str) -> list[Mapping[str, Any]]:
    try:
        body = json.loads(raw)
    except ValueError:
        raise PrometheusError(f"Prometheus at {url} answered HTTP {status} without JSON: {raw[:200]!r}") from None
    if not isinstance(body, dict) or body.get("status") != "success":
        error = body.get("error", raw[:200]) if isinstance(body, dict) else raw[:200]
        kind = body.get("errorType", "error") if isinstance(body, dict) else "error"
        raise PrometheusError(f"Prometheus at {url} answered HTTP {status}: {kind}: {error}")
    data = body.get("data", {})
    if data.get("resultType") != "vector":
        raise PrometheusError(f"Prometheus at {url} answered a {data.get('resultType')!r}, not a vector")
    result: list[Mapping[str, Any]] = data.get("result", [])
    return result


def _value(item: Mapping[str, Any]) -> float:
    # An instant vector's value is [unix time, "string number"]; "NaN" for an empty quantile.
    return float(item["value"][1])
