"""The planner's autoscaling step (reconcile/scaling.py) and the controller's status cache."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from flotilla.config import OperatorConfig
from flotilla.controller import Controller
from flotilla.metrics import Interval, Window
from flotilla.reconcile import Plan, plan
from flotilla.resources.meta import deployment_name

from .objects import (
    context,
    deployment_object,
    job_object,
    key_of,
    model,
    observed,
    revision_of,
    serving_pod_object,
    summary,
)

AUTO = {
    "enabled": True,
    "minReplicas": 1,
    "maxReplicas": 4,
    "latencyObjective": {"percentile": 95, "thresholdMs": 250},
    "scaleDownDelaySeconds": 60,
}


def interval(rev: str, rate: float, service_ms: float, p95_ms: float, pods: int = 1) -> Interval:
    n = int(rate * 10)
    return Interval(
        revision=rev,
        seconds=10.0,
        requests=n,
        errors=0,
        request_us=n * p95_ms * 700,
        queue_us=n * max(p95_ms * 0.7 - service_ms, 0) * 1000,
        compute_us=n * service_ms * 1000,
        executions=n,
        inferences=n,
        pods=pods,
        quantiles_ms={0.5: p95_ms * 0.6, 0.9: p95_ms * 0.9, 0.95: p95_ms, 0.99: p95_ms * 1.3},
    )


def serving(replicas: int = 1, status: dict[str, Any] | None = None, metrics: Window | None = None) -> Plan:
    m = model(autoscaling=AUTO)
    key, rev = key_of(m), revision_of(m)
    first = plan(m, observed(job_object(m, complete=True, result=summary(key))), context())
    m = m.model_copy(update={"status": first.status})
    pods = [serving_pod_object(m, rev, f"p{i}", f"10.0.0.{i}") for i in range(replicas)]
    obs = observed(
        job_object(m, complete=True, result=summary(key)),
        deployment_object(m, rev, key, replicas=replicas, ready=replicas),
        *pods,
        metrics=metrics,
    )
    return plan(m, obs, context())


def test_load_past_one_replica_scales_up_and_says_why() -> None:
    m = model(autoscaling=AUTO)
    rev = revision_of(m)
    p = serving(metrics=Window(at=0, seconds=10, intervals={rev: interval(rev, 30, 50, 900)}))
    assert p.status.scaling is not None and p.status.scaling.desired_replicas is not None
    assert p.status.scaling.desired_replicas >= 2
    assert "rate" in (p.status.scaling.reason or "")
    assert [s.replicas for s in p.scale if s.deployment == deployment_name("chat", rev)] == [
        p.status.scaling.desired_replicas
    ]
    cond = p.status.condition("LatencyObjectiveMet")
    assert cond is not None and (cond.status, cond.reason) == ("False", "ObjectiveMissed")
    assert p.status.latency is not None and p.status.latency.p95_ms == 900
    assert p.status.scaling.state  # the law's memory, for a restarted operator


def test_light_load_meets_the_objective_with_one_replica() -> None:
    m = model(autoscaling=AUTO)
    rev = revision_of(m)
    p = serving(metrics=Window(at=0, seconds=10, intervals={rev: interval(rev, 1, 20, 40)}))
    assert p.status.scaling is not None and p.status.scaling.desired_replicas == 1
    cond = p.status.condition("LatencyObjectiveMet")
    assert cond is not None and cond.status == "True"


def test_the_pending_gauge_reaches_the_law() -> None:
    """One pod completes 20/s of 50 ms requests (its capacity) while 200 wait: the demand is counted."""
    m = model(autoscaling=AUTO)
    rev = revision_of(m)
    saturated = interval(rev, 20, 50, 2000)
    blind = serving(metrics=Window(at=0, seconds=10, intervals={rev: saturated}))
    counted = serving(
        metrics=Window(at=0, seconds=10, intervals={rev: replace(saturated, pending=200, pending_change=200)})
    )
    assert counted.status.scaling is not None and blind.status.scaling is not None
    assert counted.status.scaling.desired_replicas == AUTO["maxReplicas"]  # 40/s + backlog: 4 pods
    assert "backlog" in (counted.status.scaling.reason or "")
    assert blind.status.scaling.desired_replicas != counted.status.scaling.desired_replicas


def test_failed_metrics_hold_and_say_so() -> None:
    m = model(autoscaling=AUTO)
    rev = revision_of(m)
    broken = Window(at=0, seconds=10, intervals={}, errors={"p0": "connection refused"})
    p = serving(replicas=3, metrics=broken)
    cond = p.status.condition("LatencyObjectiveMet")
    assert cond is not None and (cond.status, cond.reason) == ("Unknown", "NoMetrics")
    assert "connection refused" in cond.message
    assert p.status.scaling is not None and p.status.scaling.desired_replicas != 1  # never down without metrics
    del rev


def test_between_looks_the_last_decision_stands() -> None:
    m = model(autoscaling=AUTO)
    rev = revision_of(m)
    first = serving(metrics=Window(at=0, seconds=10, intervals={rev: interval(rev, 30, 50, 900)}))
    key = key_of(m)
    again = plan(
        m.model_copy(update={"status": first.status}),
        observed(job_object(m, complete=True, result=summary(key)), deployment_object(m, rev, key, replicas=3)),
        context(),
    )
    assert again.status.scaling == first.status.scaling


def test_cached_status_never_hides_a_newer_object() -> None:
    """The controller prefers the status it last wrote only over an older body."""
    ctl = Controller(OperatorConfig())
    body: dict[str, Any] = {
        "metadata": {"name": "chat", "namespace": "ml", "resourceVersion": "10"},
        "spec": {"source": {"uri": "file:///m"}},
        "status": {"replicas": 7},
    }
    written = model().status.model_copy(update={"replicas": 2})
    ctl._written[("ml", "chat")] = (12, written)
    assert ctl._model(body).status.replicas == 2  # an event from before our write
    newer = {**body, "metadata": {**body["metadata"], "resourceVersion": "15"}}
    assert ctl._model(newer).status.replicas == 7  # someone wrote after us: theirs stands
