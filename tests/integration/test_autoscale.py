"""Latency-objective autoscaling on the real control plane: the operator (a real process)
reads metrics the test drives (metrics_driver.py), decides with the control law, scales the
Deployment through its scale subresource, writes status and the LatencyObjectiveMet condition.
Also: an HPA pointed at the SmallModel's scale subresource is not fought."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from localcluster.cluster import Cluster, wait_for

from .conftest import Kubelet, Operator, get
from .metrics_driver import MetricsDriver, Profile
from .test_operator import SPEC, apply, finish_optimization, manifest, smallmodel, wait_condition
from .test_rollout import revision

pytestmark = pytest.mark.cluster
NAME = "chat"


def autoscaled(min_replicas: int = 1, max_replicas: int = 4, delay: int = 6) -> dict[str, Any]:
    return {
        **SPEC,
        "serving": {"maxBatchSize": 4},
        "autoscaling": {
            "enabled": True,
            "minReplicas": min_replicas,
            "maxReplicas": max_replicas,
            "latencyObjective": {"percentile": 95, "thresholdMs": 250},
            "scaleDownDelaySeconds": delay,
        },
    }


@pytest.fixture
def scaling_operator(metrics_operator: Callable[..., Operator]) -> Operator:
    return metrics_operator()


def replicas(cluster: Cluster, namespace: str, rev: str) -> int:
    dep = get(cluster, "deployment", namespace, f"{NAME}-{rev[:8]}")
    return int(dep["spec"]["replicas"]) if dep else -1


def status(cluster: Cluster, namespace: str) -> dict[str, Any]:
    return smallmodel(cluster, namespace, NAME).get("status", {})  # type: ignore[no-any-return]


def wait_replicas(cluster: Cluster, namespace: str, rev: str, want: int, what: str, timeout: float = 120) -> None:
    try:
        wait_for(lambda: replicas(cluster, namespace, rev) == want, timeout=timeout, what=what)
    except TimeoutError as err:
        scaling = status(cluster, namespace).get("scaling", {})
        raise AssertionError(f"{err}; replicas {replicas(cluster, namespace, rev)}; scaling {scaling}") from None


def test_scales_up_under_load_holds_without_metrics_and_down_after_the_delay(
    scaling_operator: Operator, kubelet: Kubelet, namespace: str, artifact_store: str, driver: MetricsDriver
) -> None:
    cluster = scaling_operator.cluster
    spec = autoscaled()
    apply(cluster, namespace, manifest(NAME, spec))
    key = finish_optimization(cluster, kubelet, namespace, NAME, spec)
    rev = revision(spec, key)
    # Light load: 2 requests/s per pod, 50 ms of compute each: p95 well inside 250 ms.
    driver.set(rev, Profile(rate=2, latency_ms=60, service_ms=50))
    wait_condition(cluster, namespace, NAME, "Ready", "True", "Serving")
    wait_condition(cluster, namespace, NAME, "LatencyObjectiveMet", "True")
    assert replicas(cluster, namespace, rev) == 1
    # 40/s at 50 ms each is twice what one replica can serve: requests queue, latency climbs.
    driver.set(rev, Profile(rate=40, latency_ms=600, service_ms=50))
    wait_for(lambda: replicas(cluster, namespace, rev) >= 2, timeout=60, what="scale up under load")
    scaled = status(cluster, namespace)["scaling"]
    assert scaled["desiredReplicas"] >= 2 and "rate" in scaled["reason"]
    assert status(cluster, namespace)["latency"]["p95Ms"] > 250
    missed = wait_condition(cluster, namespace, NAME, "LatencyObjectiveMet", "False", "ObjectiveMissed")
    assert "p95 <= 250 ms" in missed["message"]
    peak = wait_for(lambda: (n := replicas(cluster, namespace, rev)) >= 2 and n, timeout=30, what="replicas")
    assert peak <= 4  # maxReplicas
    # Metrics vanish (every pod's endpoint answers 503): hold, never scale down, say why.
    driver.down.add(rev[:8])
    held = wait_condition(cluster, namespace, NAME, "LatencyObjectiveMet", "Unknown", "NoMetrics")
    assert "503" in held["message"] or "metrics" in held["message"]
    before = replicas(cluster, namespace, rev)
    time.sleep(10)  # past the scale-down delay
    assert replicas(cluster, namespace, rev) == before
    # Back, light again: down one step at a time, only after the delay, to the minimum.
    driver.down.clear()
    driver.set(rev, Profile(rate=1, latency_ms=60, service_ms=50))
    went_down = time.monotonic()
    wait_replicas(cluster, namespace, rev, 1, "scale down to minReplicas")
    assert time.monotonic() - went_down >= 6  # not before scaleDownDelaySeconds
    wait_condition(cluster, namespace, NAME, "LatencyObjectiveMet", "True")
    assert status(cluster, namespace)["scaling"]["lastScaleTime"]
    # Exported for KEDA users who scale on our law instead.
    assert scaling_operator.metric("flotilla_desired_replicas", namespace=namespace) == 1


def test_bounds_hold_under_any_load(
    scaling_operator: Operator, kubelet: Kubelet, namespace: str, artifact_store: str, driver: MetricsDriver
) -> None:
    cluster = scaling_operator.cluster
    spec = autoscaled(min_replicas=2, max_replicas=3)
    apply(cluster, namespace, manifest(NAME, spec))
    key = finish_optimization(cluster, kubelet, namespace, NAME, spec)
    rev = revision(spec, key)
    driver.set(rev, Profile(rate=200, latency_ms=2000, service_ms=50))
    wait_replicas(cluster, namespace, rev, 3, "scaled to maxReplicas", timeout=90)
    time.sleep(5)
    assert replicas(cluster, namespace, rev) == 3
    assert status(cluster, namespace)["scaling"]["desiredReplicas"] == 3
    driver.set(rev, Profile(rate=0.1, latency_ms=20, service_ms=15))
    wait_replicas(cluster, namespace, rev, 2, "down to minReplicas")
    time.sleep(8)
    assert replicas(cluster, namespace, rev) == 2


def test_an_hpa_on_the_scale_subresource_is_not_fought(
    scaling_operator: Operator, kubelet: Kubelet, namespace: str, artifact_store: str, driver: MetricsDriver
) -> None:
    """Autoscaling off, a HorizontalPodAutoscaler (real controller-manager) targets the SmallModel:
    it writes spec.replicas through the scale subresource, and the operator follows it."""
    cluster = scaling_operator.cluster
    spec = {**SPEC, "replicas": 1}
    apply(cluster, namespace, manifest(NAME, spec))
    key = finish_optimization(cluster, kubelet, namespace, NAME, spec)
    rev = revision(spec, key)
    wait_condition(cluster, namespace, NAME, "Ready", "True", "Serving")
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": NAME},
        "spec": {
            "scaleTargetRef": {"apiVersion": "flotilla.dev/v1alpha1", "kind": "SmallModel", "name": NAME},
            "minReplicas": 3,
            "maxReplicas": 5,
            # No metrics server here: with minReplicas 3 the HPA still raises the count to 3.
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization",
                                                                                    "averageUtilization": 70}}}],
        },
    }  # fmt: skip
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(hpa))
    wait_for(lambda: smallmodel(cluster, namespace, NAME)["spec"]["replicas"] == 3, timeout=90, what="HPA scaled")
    wait_for(lambda: replicas(cluster, namespace, rev) == 3, timeout=60, what="the Deployment follows")
    time.sleep(6)
    assert smallmodel(cluster, namespace, NAME)["spec"]["replicas"] == 3  # the operator never writes spec
    assert replicas(cluster, namespace, rev) == 3
