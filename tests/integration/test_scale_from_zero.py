"""Scale from zero on the real control plane: the operator (a real process) takes an autoscaled
model with minReplicas 0 to zero, the gateway (a real process) holds a request for it, the
operator reads that from the gateway's /metrics, wakes the model, and the held request is
answered once the pod is ready.

The gateway runs on an address of the process node's pod range (as tests/integration/
test_gateway.py's stand-in pods do), and a Pod object named as a gateway pod carries that
address in its status, so the operator finds it exactly as it finds the chart's gateway pods
(by labels, in a namespace). The serving pod is pinned to a node that does not exist; the test
plays its kubelet: a stand-in Triton (FakeTriton) on an address of its own, and the pod's
status set Running and Ready with that IP (the operator then times the cold start). The
EndpointSlice controller skips a pod whose node does not exist, so the test also writes the
`<name>-stable` EndpointSlice it would have written, as test_gateway.py does.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from flotilla.gateway.testing import FakeTriton, GatewayProcess
from localcluster.cluster import Cluster, wait_for
from processnode import network
from processnode.ipam import Ipam
from tests.gateway_objects import endpoint, endpoint_slice

from .conftest import NO_NODE, Kubelet, Operator, get
from .test_operator import SPEC, apply, finish_optimization, manifest, smallmodel, wait_condition
from .test_rollout import revision

pytestmark = pytest.mark.cluster
NAME = "lazy"
GATEWAY_LABELS = {"app.kubernetes.io/name": "flotilla-gateway-test"}
TRITON_HTTP_PORT = 8000  # the serving pods' port named http (the EndpointSlice's port)


@pytest.fixture
def ipam(pod_network: network.PodNetwork) -> Iterator[Ipam]:
    pool = Ipam(pod_network.cidr)
    yield pool
    pool.release_all()


def play_running(cluster: Cluster, namespace: str, pod: str, ip: str, ready: bool) -> None:
    """What a kubelet would write: the pod runs on `ip` (and is Ready)."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    status = {
        "phase": "Running",
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "conditions": [
            {"type": "Ready", "status": "True" if ready else "False", "lastTransitionTime": now},
            {"type": "ContainersReady", "status": "True" if ready else "False", "lastTransitionTime": now},
        ],
    }
    patch = json.dumps({"status": status})
    cluster.kubectl("patch", "pod", pod, "-n", namespace, "--subresource=status", "--type=merge", "-p", patch)


def gateway_pod(cluster: Cluster, namespace: str, ip: str) -> None:
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "gateway-0", "namespace": namespace, "labels": GATEWAY_LABELS},
        "spec": {"nodeSelector": NO_NODE, "containers": [{"name": "gateway", "image": "gateway"}]},
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(body))
    play_running(cluster, namespace, "gateway-0", ip, ready=True)


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as err:
        return int(err.code), err.read().decode()
    except OSError:
        return 0, ""


def deployment_replicas(cluster: Cluster, namespace: str, rev: str) -> int:
    dep = get(cluster, "deployment", namespace, f"{NAME}-{rev[:8]}")
    return int(dep["spec"]["replicas"]) if dep else -1


def scaling(cluster: Cluster, namespace: str) -> dict[str, Any]:
    return smallmodel(cluster, namespace, NAME).get("status", {}).get("scaling", {})  # type: ignore[no-any-return]


def test_a_held_request_wakes_a_model_at_zero(  # noqa: PLR0915 - one story, told in order
    crd: Cluster,
    namespace: str,
    kubelet: Kubelet,
    artifact_store: str,
    ipam: Ipam,
    tmp_path: Path,
) -> None:
    cluster = crd
    gw_ip = ipam.allocate("scale-from-zero-test")
    env = {
        "FLOTILLA_GATEWAY_NAMESPACES": namespace,
        "FLOTILLA_GATEWAY_OWN_NAMESPACE": namespace,
        "FLOTILLA_GATEWAY_HOST": gw_ip,
        "FLOTILLA_GATEWAY_SCALE_FROM_ZERO_HOLD_SECONDS": "90",
    }
    gateway = GatewayProcess(cluster.kubeconfig, tmp_path / "gateway.log", env).start()
    gateway_url = f"http://{gw_ip}:{gateway.port}"
    operator = Operator(
        cluster,
        namespace,
        tmp_path,
        FLOTILLA_METRICS_INTERVAL_SECONDS="1",
        FLOTILLA_SERVING_NODE_SELECTOR=json.dumps(NO_NODE),  # the test plays the serving pod's kubelet
        FLOTILLA_GATEWAY_PODS_NAMESPACE=namespace,
        FLOTILLA_GATEWAY_PODS_LABELS=json.dumps(GATEWAY_LABELS),
        FLOTILLA_GATEWAY_PODS_PORT=str(gateway.port),
    )
    triton: FakeTriton | None = None
    answers: list[Any] = []
    try:
        operator.start()
        gateway_pod(cluster, namespace, gw_ip)
        spec = {
            **SPEC,
            "autoscaling": {
                "enabled": True,
                "minReplicas": 0,
                "maxReplicas": 2,
                "latencyObjective": {"percentile": 95, "thresholdMs": 250},
                "scaleDownDelaySeconds": 5,
            },
        }
        apply(cluster, namespace, manifest(NAME, spec))
        key = finish_optimization(cluster, kubelet, namespace, NAME, spec)
        rev = revision(spec, key)
        # minReplicas 0 and no demand: served (a stable revision) with no replica.
        wait_condition(cluster, namespace, NAME, "Ready", "True", "Serving")
        wait_for(lambda: deployment_replicas(cluster, namespace, rev) == 0, timeout=60, what="at zero")
        idle = wait_for(
            lambda: "scaled to zero" in (r := scaling(cluster, namespace).get("reason", "")) and r,
            timeout=60,
            what="the autoscaler's look at zero",
        )
        assert "gateway: 0 waiting" in idle
        wait_for(lambda: http_get(f"{gateway_url}/readyz")[0] == 200, timeout=30, what="gateway ready")

        client = openai.OpenAI(base_url=f"{gateway_url}/v1", api_key="none", max_retries=0, timeout=120)

        def ask() -> None:
            try:
                answers.append(client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "Hi"}]))
            except Exception as err:
                answers.append(err)

        asker = threading.Thread(target=ask, daemon=True)
        asker.start()
        # The operator sees the held request on the gateway's /metrics and wakes the model.
        wait_for(lambda: deployment_replicas(cluster, namespace, rev) >= 1, timeout=60, what="woken by the gateway")
        woke = scaling(cluster, namespace)
        assert "waking" in woke["reason"] and "gateway: 1 waiting" in woke["reason"], woke
        assert not answers, answers  # still held: no pod is ready yet
        # The serving pod comes up: the held request is sent to it.

        def serving_pod() -> str | None:
            found = get(cluster, "pods", namespace, selector=f"flotilla.dev/revision={rev}") or {}
            return next((p["metadata"]["name"] for p in found.get("items", [])), None)

        pod = wait_for(serving_pod, timeout=60, what="a serving pod")
        triton_ip = ipam.allocate("scale-from-zero-test")
        triton = FakeTriton(name=NAME).start_in_thread(triton_ip, TRITON_HTTP_PORT)
        play_running(cluster, namespace, pod, triton_ip, ready=True)
        slice_ = endpoint_slice(NAME, "stable", [endpoint(triton_ip, pod=pod)], namespace=namespace)
        slice_["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"] = "tests.flotilla.dev"
        cluster.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(slice_))
        asker.join(90)
        assert answers and not isinstance(answers[0], Exception), answers
        assert answers[0].system_fingerprint == rev and triton.requests == 1
        cold = wait_for(lambda: scaling(cluster, namespace).get("coldStartSeconds"), timeout=30, what="cold start")
        assert cold > 0
        status, text = http_get(f"{gateway_url}/metrics")
        assert status == 200 and f'flotilla_gateway_waiting_requests{{model="{namespace}/{NAME}"}} 0.0' in text
    finally:
        cluster.kubectl("delete", "smallmodels", "--all", "-n", namespace, "--timeout=60s", check=False)
        operator.stop()
        gateway.stop()
        if triton is not None:
            triton.stop_thread()
        for proc in (operator, gateway):
            if "Traceback" in proc.log():
                print(f"--- log ({proc.log_path}) ---\n{proc.log()[-4000:]}")
