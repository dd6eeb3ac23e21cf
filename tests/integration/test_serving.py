"""Serving pods the operator creates land where their GPUs are, on the simulated fleet
(e2e/cluster/nodes.yaml: H100 x8, L4 x4, A100 MIG 1g.10gb, CPU-only), via the real scheduler."""

from __future__ import annotations

from typing import Any

import pytest

from flotilla.api.v1alpha1 import serving_revision
from flotilla.api.v1alpha1.spec import SmallModelSpec
from localcluster.cluster import wait_for

from .conftest import Kubelet, Operator, get
from .test_operator import SPEC, apply, finish_optimization, manifest, wait_condition

pytestmark = pytest.mark.cluster


def serve(operator: Operator, kubelet: Kubelet, namespace: str, serving: dict[str, Any]) -> tuple[dict[str, Any], str]:
    spec = {**SPEC, "serving": serving}
    apply(operator.cluster, namespace, manifest("gpu", spec))
    key = finish_optimization(operator.cluster, kubelet, namespace, "gpu", spec)
    revision = serving_revision(key, SmallModelSpec.model_validate(spec).serving)
    return spec, revision


def serving_pods(operator: Operator, namespace: str, revision: str) -> list[dict[str, Any]]:
    pods = get(operator.cluster, "pods", namespace, selector=f"flotilla.dev/revision={revision}")
    return list(pods["items"]) if pods else []


def node_labels(operator: Operator, node: str) -> dict[str, str]:
    return operator.cluster.kubectl_json("get", "node", node)["metadata"]["labels"]  # type: ignore[no-any-return]


def test_l4_request_lands_on_l4_nodes(
    operator: Operator, kubelet: Kubelet, namespace: str, artifact_store: str
) -> None:
    _, revision = serve(operator, kubelet, namespace, {"gpu": {"count": 2, "product": "NVIDIA-L4"}})
    operator.cluster.kubectl("scale", "smallmodel/gpu", "-n", namespace, "--replicas=2")
    wait_condition(operator.cluster, namespace, "gpu", "Ready", "True", "Serving")
    wait_for(
        lambda: len([p for p in serving_pods(operator, namespace, revision) if p["spec"].get("nodeName")]) == 2,
        timeout=60,
        what="2 pods scheduled",
    )
    for pod in serving_pods(operator, namespace, revision):
        labels = node_labels(operator, pod["spec"]["nodeName"])
        assert labels["nvidia.com/gpu.product"] == "NVIDIA-L4", pod["spec"]["nodeName"]
        limits = pod["spec"]["containers"][0]["resources"]["limits"]
        assert limits["nvidia.com/gpu"] == "2"
    # two replicas: a PodDisruptionBudget protects them
    assert get(operator.cluster, "pdb", namespace, f"gpu-{revision[:8]}") is not None


def test_mig_profile_lands_on_the_mig_node(
    operator: Operator, kubelet: Kubelet, namespace: str, artifact_store: str
) -> None:
    _, revision = serve(operator, kubelet, namespace, {"gpu": {"count": 1, "migProfile": "1g.10gb"}})
    wait_condition(operator.cluster, namespace, "gpu", "Ready", "True", "Serving")
    (pod,) = serving_pods(operator, namespace, revision)
    labels = node_labels(operator, pod["spec"]["nodeName"])
    assert labels["nvidia.com/mig.strategy"] == "mixed"
    assert pod["spec"]["containers"][0]["resources"]["limits"] == {"nvidia.com/mig-1g.10gb": "1"}


def test_impossible_request_reports_unschedulable(
    operator: Operator, kubelet: Kubelet, namespace: str, artifact_store: str
) -> None:
    serve(operator, kubelet, namespace, {"gpu": {"count": 16}})
    ready = wait_condition(operator.cluster, namespace, "gpu", "Ready", "False", "Unschedulable")
    assert "Insufficient nvidia.com/gpu" in ready["message"]
    events = operator.cluster.kubectl_json(
        "get", "events", "-n", namespace, "--field-selector", "involvedObject.name=gpu"
    )
    assert "Unschedulable" in [e["reason"] for e in events["items"]]


def test_cpu_serving_stays_off_gpu_nodes(
    operator: Operator, kubelet: Kubelet, namespace: str, artifact_store: str
) -> None:
    _, revision = serve(operator, kubelet, namespace, {"resources": {"requests": {"cpu": "1", "memory": "2Gi"}}})
    wait_condition(operator.cluster, namespace, "gpu", "Ready", "True", "Serving")
    (pod,) = serving_pods(operator, namespace, revision)
    assert "nvidia.com/gpu.product" not in node_labels(operator, pod["spec"]["nodeName"])
