"""The gateway's Prometheus metrics: histograms (aggregatable across gateway replicas, unlike
summaries) per model and serving revision, so the canary judge and the autoscaler can read
client-side latency by revision. `model` is `namespace/name` and only ever a served model's
name: errors before a model is resolved are labelled `model=""`, so clients cannot grow the
label set with made-up names."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
TOKEN_GAP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56)
TOKEN_BUCKETS = (1, 4, 16, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
WAKE_BUCKETS = (0.5, 1, 2.5, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300)
# Read by the operator (flotilla.metrics.gateway) to wake models at zero: keep the names in step.
WAITING_REQUESTS = "flotilla_gateway_waiting_requests"
SCALE_FROM_ZERO_REQUESTS = "flotilla_gateway_scale_from_zero_requests"


@dataclass(frozen=True)
class Series:
    """The labelled children of one model and revision, looked up once: `labels()` validates
    and locks on every call, which the request path need not pay each time."""

    in_flight: Any
    ttft: Any
    itl: Any
    prompt_tokens: Any
    completion_tokens: Any
    retries: Any


@dataclass(frozen=True)
class WakeSeries:
    """The scale-from-zero children of one model."""

    waiting: Any
    arrived: Any
    waited: Any


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self._series: dict[tuple[str, str], Series] = {}
        self._wake: dict[str, WakeSeries] = {}
        self._latency: dict[tuple[str, str, str, str], Any] = {}
        self.registry = registry or CollectorRegistry()
        r = self.registry
        per = ["model", "revision"]
        self.latency = Histogram(
            "flotilla_gateway_request_duration_seconds",
            "Time from request arrival to the last byte of the answer.",
            [*per, "api", "code"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "flotilla_gateway_time_to_first_token_seconds",
            "Streamed requests: arrival to the first generated text.",
            per,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "flotilla_gateway_inter_token_seconds",
            "Streamed requests: time between successive chunks of generated text.",
            per,
            buckets=TOKEN_GAP_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Histogram(
            "flotilla_gateway_prompt_tokens", "Prompt tokens per request.", per, buckets=TOKEN_BUCKETS, registry=r
        )
        self.completion_tokens = Histogram(
            "flotilla_gateway_completion_tokens",
            "Completion tokens per request.",
            per,
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.errors = Counter(
            "flotilla_gateway_errors", "Failed requests by error kind.", ["model", "revision", "kind"], registry=r
        )
        self.in_flight = Gauge("flotilla_gateway_in_flight_requests", "Requests being answered.", per, registry=r)
        self.retries = Counter(
            "flotilla_gateway_retries", "Attempts moved to another endpoint.", ["model", "revision"], registry=r
        )
        # Scale from zero: the operator reads these two from every gateway replica (the only
        # demand signal of a model without pods), so they exist per model, not per revision.
        self.waiting = Gauge(
            WAITING_REQUESTS,
            "Requests held for a model scaled to zero, waiting for its first ready replica.",
            ["model"],
            registry=r,
        )
        self.scale_from_zero = Counter(
            SCALE_FROM_ZERO_REQUESTS,
            "Requests that arrived for a model scaled to zero (held, or refused over the hold's cap).",
            ["model"],
            registry=r,
        )
        self.wake_wait = Histogram(
            "flotilla_gateway_scale_from_zero_wait_seconds",
            "How long held requests waited for a model to scale from zero (until served, timed out or gone).",
            ["model"],
            buckets=WAKE_BUCKETS,
            registry=r,
        )

    def series(self, model: str, revision: str) -> Series:
        key = (model, revision)
        found = self._series.get(key)
        if found is None:
            found = self._series[key] = Series(
                self.in_flight.labels(model, revision),
                self.ttft.labels(model, revision),
                self.itl.labels(model, revision),
                self.prompt_tokens.labels(model, revision),
                self.completion_tokens.labels(model, revision),
                self.retries.labels(model, revision),
            )
        return found

    def wake(self, model: str) -> WakeSeries:
        found = self._wake.get(model)
        if found is None:
            found = self._wake[model] = WakeSeries(
                self.waiting.labels(model), self.scale_from_zero.labels(model), self.wake_wait.labels(model)
            )
        return found

    def observe_latency(self, model: str, revision: str, api: str, code: str, seconds: float) -> None:
        key = (model, revision, api, code)
        child = self._latency.get(key)
        if child is None:
            child = self._latency[key] = self.latency.labels(model, revision, api, code)
        child.observe(seconds)
