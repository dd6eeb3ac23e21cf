"""Pod failures surface within one reconcile as condition reasons with the kubelet's message,
on the real control plane: KWOK's failure stages (e2e/cluster/kwok-stages.yaml) write for a
pod with a failure image the container status a real kubelet reports for that failure."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from localcluster.cluster import Cluster, wait_for

from .conftest import Kubelet, Operator, get
from .test_operator import SPEC, apply, finish_optimization, manifest, wait_condition

pytestmark = pytest.mark.cluster

CPU_POOL = {"localcluster.flotilla.dev/pool": "cpu"}


def image(failure: str) -> str:
    return f"fail.kwok.flotilla.dev/{failure}:v1"


def events(cluster: Cluster, namespace: str, name: str) -> list[dict[str, Any]]:
    found = cluster.kubectl_json("get", "events", "-n", namespace, "--field-selector", f"involvedObject.name={name}")
    return list(found["items"])


def first_pod_created(cluster: Cluster, namespace: str, selector: str) -> float:
    def created() -> float | None:
        pods = get(cluster, "pods", namespace, selector=selector)
        items = pods["items"] if pods else []
        return time.time() if items else None

    return wait_for(created, timeout=60, what=f"a pod ({selector})")


@pytest.mark.parametrize(
    ("failure", "reason", "words"),
    [
        ("image-pull-backoff", "ImagePullBackOff", ['Back-off pulling image "fail.kwok.flotilla.dev/']),
        ("crash-loop", "CrashLoopBackOff", ["back-off 40s", "exit code 1 (Error, 3 restarts)", "failed to load model"]),
        ("oom-killed", "OOMKilled", ["memory limit", "exit code 137"]),
        ("missing-secret", "CreateContainerConfigError", ['secret "flotilla-missing-credentials" not found']),
    ],
)
def test_a_serving_pod_failure_is_the_ready_condition_and_an_event(
    operator_with: Callable[..., Operator],
    kubelet: Kubelet,
    namespace: str,
    artifact_store: str,
    failure: str,
    reason: str,
    words: list[str],
) -> None:
    op = operator_with(FLOTILLA_TRITON_IMAGE=image(failure))
    apply(op.cluster, namespace, manifest("chat", SPEC))
    finish_optimization(op.cluster, kubelet, namespace, "chat", SPEC)
    since = first_pod_created(op.cluster, namespace, "flotilla.dev/component=server")
    ready = wait_condition(op.cluster, namespace, "chat", "Ready", "False", reason)
    print(f"\n[pod-failures] {failure}: pod created -> Ready={reason} in {time.time() - since:.1f} s")
    assert all(w in ready["message"] for w in words), ready["message"]
    warnings = [e for e in events(op.cluster, namespace, "chat") if e["reason"] == reason]
    assert warnings and warnings[0]["type"] == "Warning"
    model = op.cluster.kubectl_json("get", "smallmodel", "chat", "-n", namespace)
    stalled = next(c for c in model["status"]["conditions"] if c["type"] == "Reconciling")
    assert stalled["status"] == "True"  # the kubelet keeps retrying; a fixed image heals it


def test_an_optimizer_pod_that_cannot_pull_its_image_is_the_optimized_condition(
    operator_with: Callable[..., Operator], namespace: str, artifact_store: str
) -> None:
    op = operator_with(
        FLOTILLA_OPTIMIZER_IMAGE=image("image-pull-backoff"), FLOTILLA_JOB_NODE_SELECTOR=json.dumps(CPU_POOL)
    )
    apply(op.cluster, namespace, manifest("chat", SPEC))
    since = first_pod_created(op.cluster, namespace, "flotilla.dev/component=optimizer")
    optimized = wait_condition(op.cluster, namespace, "chat", "Optimized", "False", "ImagePullBackOff")
    print(f"\n[pod-failures] optimizer image: pod created -> Optimized=ImagePullBackOff in {time.time() - since:.1f} s")
    assert "fail.kwok.flotilla.dev/image-pull-backoff:v1" in optimized["message"]
    assert "chat-opt-" in optimized["message"]
    assert any(e["reason"] == "ImagePullBackOff" for e in events(op.cluster, namespace, "chat"))
