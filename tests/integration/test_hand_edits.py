"""A hand edit of a child object is put back, on the real control plane: the edit keeps our
content hash, so only the object's generation or resourceVersion tells (executor.py)."""

from __future__ import annotations

import json
import time

import pytest

from flotilla.api.v1alpha1 import serving_revision
from flotilla.api.v1alpha1.spec import SmallModelSpec
from flotilla.resources.meta import ANNOTATION_APPLIED_HASH, config_map_name
from localcluster.cluster import wait_for

from .conftest import Kubelet, Operator, get
from .test_operator import SPEC, apply, finish_optimization, manifest, wait_condition

pytestmark = pytest.mark.cluster


def serve_chat(operator: Operator, kubelet: Kubelet, namespace: str) -> str:
    """The model `chat` optimized and Ready; its serving revision."""
    apply(operator.cluster, namespace, manifest("chat"))
    key = finish_optimization(operator.cluster, kubelet, namespace, "chat", SPEC)
    wait_condition(operator.cluster, namespace, "chat", "Ready", "True")
    return serving_revision(key, SmallModelSpec.model_validate(SPEC).serving)


def test_hand_edits_of_the_deployment_and_a_service_are_put_back(
    operator: Operator, kubelet: Kubelet, namespace: str, artifact_store: str
) -> None:
    cluster = operator.cluster
    revision = serve_chat(operator, kubelet, namespace)
    deployment = f"chat-{revision[:8]}"
    image = get(cluster, "deployment", namespace, deployment)["spec"]["template"]["spec"]["containers"][0]["image"]
    selector = get(cluster, "service", namespace, "chat-stable")["spec"]["selector"]

    edit = {"spec": {"template": {"spec": {"containers": [{"name": "triton", "image": "example.invalid/other:1"}]}}}}
    cluster.kubectl("patch", "deployment", deployment, "-n", namespace, "-p", json.dumps(edit))
    # Values of fields we set (an added field is another manager's: server-side apply keeps it).
    wrong = {"spec": {"selector": dict.fromkeys(selector, "wrong")}}
    cluster.kubectl("patch", "service", "chat-stable", "-n", namespace, "-p", json.dumps(wrong))
    edited = time.monotonic()

    def deployment_back() -> bool:
        spec = get(cluster, "deployment", namespace, deployment)["spec"]["template"]["spec"]
        return bool(spec["containers"][0]["image"] == image)

    def service_back() -> bool:
        return bool(get(cluster, "service", namespace, "chat-stable")["spec"]["selector"] == selector)

    wait_for(deployment_back, timeout=30, what="the Deployment's image put back")
    wait_for(service_back, timeout=30, what="the Service's selector put back")
    print(f"\n[hand-edits] both edits put back {time.monotonic() - edited:.1f} s after the patch")


def test_an_immutable_config_map_rendered_differently_is_replaced_not_wedged(
    operator: Operator, kubelet: Kubelet, namespace: str, artifact_store: str
) -> None:
    """As after an operator upgrade whose config.pbtxt differs for an existing revision."""
    cluster = operator.cluster
    revision = serve_chat(operator, kubelet, namespace)
    name = config_map_name("chat", revision)
    ours = get(cluster, "configmap", namespace, name)
    operator.stop()
    older = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "labels": ours["metadata"]["labels"],
            "annotations": {ANNOTATION_APPLIED_HASH: "rendered-by-an-older-operator"},
            "ownerReferences": ours["metadata"]["ownerReferences"],
        },
        "immutable": True,
        "data": {k: f"# an older rendering\n{v}" for k, v in ours["data"].items()},
    }
    cluster.kubectl("delete", "configmap", name, "-n", namespace)
    cluster.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(older))
    operator.start()
    wait_for(
        lambda: get(cluster, "configmap", namespace, name)["data"] == ours["data"],
        timeout=60,
        what="the ConfigMap replaced with this operator's rendering",
    )
    assert "is immutable and its content changed: replacing it" in operator.log()
    wait_condition(cluster, namespace, "chat", "Ready", "True")
