"""Triton's Prometheus text exposition -> cumulative counters per model (pure).

Measured on Triton 2.51 (nvidia-pytriton 0.7.0), see tests/unit/data/triton-metrics-*.txt:
- Every nv_inference_* series carries `model` and `version`; `nv_inference_request_failure`
  also `reason` (BACKEND, OTHER, CANCELED, REJECTED), summed here.
- Duration counters and `nv_inference_count` cover successful requests only; a request that
  fails in the backend adds one to `failure{reason="BACKEND"}` and one execution, nothing else.
- Requests the frontend rejects before they reach the model (malformed input: HTTP 400,
  queue full: HTTP 503) are counted NOWHERE, and a python-backend model that answers a
  request with an error response (`InferenceResponse(error=...)`, what Flotilla's model.py
  does for a bad request) counts it as a SUCCESS. Error rates from these counters are lower
  bounds; the gateway sees the rest.
- Compute durations are added once per request, not per batch and not per item: a dynamic
  batch of b requests adds b times the batch's compute time (see Interval.compute_ms_per_batch).
- `nv_inference_request_summary_us` quantiles (0.5, 0.9, 0.95, 0.99, 0.999 by default) come
  from prometheus-cpp's Summary as Triton creates it (quantiles only, so its defaults hold):
  a sliding window of 60 s in 5 age buckets, i.e. the last 48-60 s of successful requests.
  With no request in that window a quantile is NaN: left out here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from .types import PodCounters

MODEL_LABEL = "model"
VERSION_LABEL = "version"
SUMMARY = "nv_inference_request_summary_us"

# Triton counter family -> PodCounters field.
COUNTERS: Mapping[str, str] = {
    "nv_inference_request_success": "success",
    "nv_inference_request_failure": "failure",
    "nv_inference_request_duration_us": "request_us",
    "nv_inference_queue_duration_us": "queue_us",
    "nv_inference_compute_infer_duration_us": "compute_infer_us",
    "nv_inference_compute_input_duration_us": "compute_input_us",
    "nv_inference_compute_output_duration_us": "compute_output_us",
    "nv_inference_count": "inferences",
    "nv_inference_exec_count": "executions",
}
# Triton gauge family -> PodCounters field (values now, not since the start).
GAUGES: Mapping[str, str] = {"nv_inference_pending_request_count": "pending"}
FAMILIES = frozenset({*COUNTERS, *GAUGES, SUMMARY})


class MetricsFormatError(ValueError):
    """The text is not Prometheus exposition format."""


@dataclass
class _Version:
    """One (model, version)'s series while parsing."""

    counters: dict[str, float] = field(default_factory=dict)
    quantiles: dict[float, float] = field(default_factory=dict)
    pending: float | None = None


def parse(text: str) -> dict[str, PodCounters]:
    """Counters of every model in one scrape of a Triton metrics endpoint, keyed by model name.

    Versions of one model are merged: counters add up, quantiles are weighted by successes.
    """
    try:
        samples = [
            Sample(family.name, sample.name, sample.labels, float(sample.value))
            for family in text_string_to_metric_families(text)
            if family.name in FAMILIES
            for sample in family.samples
        ]
    except ValueError as exc:  # the parser's only complaint about malformed text
        raise MetricsFormatError(f"not Prometheus text format: {exc}") from exc
    return from_samples(samples)


@dataclass(frozen=True)
class Sample:
    """One series value: its metric family, its own name (a summary's differ), labels, value."""

    family: str
    name: str
    labels: Mapping[str, str]
    value: float


def from_samples(samples: Iterable[Sample]) -> dict[str, PodCounters]:
    """Counters per model from one server's samples (parsed text, or Prometheus series)."""
    versions: dict[tuple[str, str], _Version] = {}
    for sample in samples:
        model = sample.labels.get(MODEL_LABEL)
        if model is None or sample.family not in FAMILIES:
            continue
        seen = versions.setdefault((model, sample.labels.get(VERSION_LABEL, "")), _Version())
        _add(seen, sample.family, sample.name, sample.labels, sample.value)
    merged: dict[str, list[PodCounters]] = {}
    for (model, _), seen in sorted(versions.items()):
        merged.setdefault(model, []).append(_counters(seen))
    return {model: merge(parts) for model, parts in merged.items()}


def _add(seen: _Version, family: str, sample: str, labels: Mapping[str, str], value: float) -> None:
    if family == SUMMARY:
        # Only the quantile samples: _count/_sum repeat the success and duration counters.
        if sample == SUMMARY and "quantile" in labels and not math.isnan(value):
            seen.quantiles[float(labels["quantile"])] = value
        return
    if family in GAUGES:
        seen.pending = (seen.pending or 0.0) + value
        return
    name = COUNTERS[family]
    # Adding, not assigning: failure has one series per reason.
    seen.counters[name] = seen.counters.get(name, 0.0) + value


def _counters(seen: _Version) -> PodCounters:
    return counters_of(seen.counters, seen.quantiles, seen.pending)


def counters_of(
    values: Mapping[str, float], quantiles: Mapping[float, float], pending: float | None = None
) -> PodCounters:
    """PodCounters from field name -> value (missing fields are zero), quantiles, the pending gauge."""

    def get(name: str) -> float:
        return float(values.get(name, 0.0))

    return PodCounters(
        success=get("success"),
        failure=get("failure"),
        request_us=get("request_us"),
        queue_us=get("queue_us"),
        compute_infer_us=get("compute_infer_us"),
        compute_input_us=get("compute_input_us"),
        compute_output_us=get("compute_output_us"),
        inferences=get("inferences"),
        executions=get("executions"),
        quantiles=dict(quantiles),
        pending=None if pending is None else float(pending),
    )


def values_of(counters: PodCounters) -> dict[str, float]:
    """Field name -> value of every counter (not the quantiles)."""
    return {name: float(getattr(counters, name)) for name in COUNTERS.values()}


def merge(parts: list[PodCounters]) -> PodCounters:
    """Sum of several counter sets (versions of a model); quantiles weighted by successes."""
    if len(parts) == 1:
        return parts[0]
    sums = {name: sum(values_of(p)[name] for p in parts) for name in COUNTERS.values()}
    known = [p.pending for p in parts if p.pending is not None]
    pending = sum(known) if known else None
    return counters_of(sums, weighted_quantiles([(p.quantiles, p.success) for p in parts]), pending)


def weighted_quantiles(parts: list[tuple[Mapping[float, float], float]]) -> dict[float, float]:
    """Weighted mean per quantile over the parts that have it with a positive weight.

    An approximation: the mean of several distributions' p95 is not the p95 of their union.
    """
    totals: dict[float, float] = {}
    weights: dict[float, float] = {}
    for quantiles, weight in parts:
        if weight <= 0:
            continue
        for q, value in quantiles.items():
            totals[q] = totals.get(q, 0.0) + value * weight
            weights[q] = weights.get(q, 0.0) + weight
    return {q: totals[q] / weights[q] for q in sorted(totals)}


def parse_model(text: str, model: str) -> PodCounters | None:
    """Counters of one model, None when the server does not export it (not loaded)."""
    return parse(text).get(model)
