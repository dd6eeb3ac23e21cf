"""The local control plane is real: scheduling, controllers, GC, CEL, RBAC, restart,
supervision of its components, the Gateway API CRDs; and a real Prometheus.

Every wait here is for a state the cluster must reach; none asserts how fast it got there.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
import yaml

from localcluster import build, gatewayapi, procs, prometheus, supervisor
from localcluster import cluster as lc
from localcluster.cluster import Cluster, wait_for
from localcluster.nodes import load_pools, node_manifests
from localcluster.pytest_plugin import PrometheusFactory
from localcluster.versions import load_versions

pytestmark = pytest.mark.cluster

GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
WAIT_S = 120.0


def apply(cluster: Cluster, namespace: str, *objects: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(objects))


def pods(cluster: Cluster, namespace: str, selector: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = cluster.kubectl_json("get", "pods", "-n", namespace, "-l", selector)["items"]
    return items


def is_ready(pod: dict[str, Any]) -> bool:
    conditions = pod.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def pause_pod_spec(resources: dict[str, str], **extra: Any) -> dict[str, Any]:
    container = {"name": "main", "image": "registry.k8s.io/pause:3.10", "resources": {"limits": resources}}
    return {"containers": [container], "tolerations": [GPU_TOLERATION], **extra}


def test_server_is_the_pinned_release(cluster: Cluster) -> None:
    assert cluster.server_version == load_versions().kubernetes
    info = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert info["serverVersion"]["gitVersion"] == load_versions().kubernetes


def test_api_server_listens_on_loopback_only_and_enforces_rbac(cluster: Cluster, namespace: str) -> None:
    port = cluster.settings.ports["kube-apiserver"]
    listening = [c.laddr for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN]
    addresses = {addr.ip for addr in listening if addr and addr.port == port}
    assert addresses == {"127.0.0.1"}
    sa = f"system:serviceaccount:{namespace}:default"
    denied = cluster.kubectl("auth", "can-i", "list", "secrets", "-n", namespace, f"--as={sa}", check=False)
    assert denied.stdout.strip() == "no"
    assert cluster.kubectl("auth", "can-i", "list", "secrets", "-n", namespace).stdout.strip() == "yes"


def test_gpu_deployment_lands_on_l4_nodes_only(cluster: Cluster, namespace: str) -> None:
    affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "nvidia.com/gpu.product", "operator": "In", "values": ["NVIDIA-L4"]}]}
                ]
            }
        }
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "l4-serving"},
        "spec": {
            # 3 pods x 2 GPUs does not fit on one 4-GPU L4 node: the scheduler must spread
            # them over both L4 nodes and may use no other GPU node.
            "replicas": 3,
            "selector": {"matchLabels": {"app": "l4-serving"}},
            "template": {
                "metadata": {"labels": {"app": "l4-serving"}},
                "spec": pause_pod_spec({"nvidia.com/gpu": "2"}, affinity=affinity),
            },
        },
    }
    apply(cluster, namespace, deployment)
    cluster.kubectl("rollout", "status", "deployment/l4-serving", "-n", namespace, f"--timeout={WAIT_S:.0f}s")
    placed = pods(cluster, namespace, "app=l4-serving")
    assert len(placed) == 3
    assert all(is_ready(p) for p in placed)
    assert all(p["status"].get("podIP") for p in placed)
    nodes = {p["spec"]["nodeName"] for p in placed}
    assert nodes == {"l4-0", "l4-1"}


def test_mig_request_lands_on_the_mig_node(cluster: Cluster, namespace: str) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "mig-slice", "labels": {"app": "mig"}},
        "spec": pause_pod_spec({"nvidia.com/mig-1g.10gb": "1"}),
    }
    apply(cluster, namespace, pod)
    cluster.kubectl("wait", "pod/mig-slice", "-n", namespace, "--for=condition=Ready", f"--timeout={WAIT_S:.0f}s")
    placed = cluster.kubectl_json("get", "pod", "mig-slice", "-n", namespace)
    assert placed["spec"]["nodeName"] == "a100-mig-0"


def test_sixteen_gpus_stay_pending_with_failed_scheduling(cluster: Cluster, namespace: str) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "too-big"},
        "spec": pause_pod_spec({"nvidia.com/gpu": "16"}),
    }
    apply(cluster, namespace, pod)

    def failed_scheduling() -> str | None:
        events = cluster.kubectl_json(
            "get", "events", "-n", namespace, "--field-selector", "involvedObject.name=too-big,reason=FailedScheduling"
        )["items"]
        return events[0]["message"] if events else None

    message = wait_for(failed_scheduling, timeout=WAIT_S, what="a FailedScheduling event for too-big")
    assert "Insufficient nvidia.com/gpu" in message
    status = cluster.kubectl_json("get", "pod", "too-big", "-n", namespace)
    assert status["status"]["phase"] == "Pending"
    assert "nodeName" not in status["spec"]


def job(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": {"job": name, **(labels or {})}},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "main", "image": "registry.k8s.io/pause:3.10"}],
                },
            },
        },
    }


def test_job_completes_through_kwok_and_the_job_controller(cluster: Cluster, namespace: str) -> None:
    apply(cluster, namespace, job("quantize"))
    cluster.kubectl("wait", "job/quantize", "-n", namespace, "--for=condition=Complete", f"--timeout={WAIT_S:.0f}s")
    (pod,) = pods(cluster, namespace, "job=quantize")
    assert pod["status"]["phase"] == "Succeeded"
    assert pod["spec"]["nodeName"].startswith("cpu-")  # GPU nodes are tainted


def test_manual_label_leaves_completion_to_the_test(cluster: Cluster, namespace: str) -> None:
    apply(cluster, namespace, job("manual", {"kwok.flotilla.dev/complete": "manual"}))
    pod = wait_for(
        lambda: next((p for p in pods(cluster, namespace, "job=manual") if is_ready(p)), None),
        timeout=WAIT_S,
        what="the manual Job's pod to be Running",
    )
    # A second, ordinary Job completing proves KWOK has run its stages since; the labelled
    # pod must still be Running, waiting for the test.
    apply(cluster, namespace, job("ordinary"))
    cluster.kubectl("wait", "job/ordinary", "-n", namespace, "--for=condition=Complete", f"--timeout={WAIT_S:.0f}s")
    (still,) = pods(cluster, namespace, "job=manual")
    assert still["status"]["phase"] == "Running"

    # The test plays the kubelet: the Job controller takes the pod's word for it.
    terminated = {"exitCode": 0, "reason": "Completed", "message": '{"artifact": "ok"}'}
    status = {
        "status": {
            "phase": "Succeeded",
            "containerStatuses": [
                {
                    "name": "main",
                    "image": "registry.k8s.io/pause:3.10",
                    "imageID": "",
                    "ready": False,
                    "restartCount": 0,
                    "state": {"terminated": {**terminated, "startedAt": None, "finishedAt": None}},
                }
            ],
        }
    }
    name = pod["metadata"]["name"]
    cluster.kubectl(
        "patch", "pod", name, "-n", namespace, "--subresource=status", "--type=merge", "-p", json.dumps(status)
    )
    cluster.kubectl("wait", "job/manual", "-n", namespace, "--for=condition=Complete", f"--timeout={WAIT_S:.0f}s")
    done = cluster.kubectl_json("get", "pod", name, "-n", namespace)
    assert done["status"]["containerStatuses"][0]["state"]["terminated"]["message"] == '{"artifact": "ok"}'


def test_unschedulable_job_pod_is_left_to_the_test(cluster: Cluster, namespace: str) -> None:
    """The other opt-out: a nodeSelector no node matches keeps the pod away from KWOK."""
    unplaced = job("nowhere")
    unplaced["spec"]["template"]["spec"]["nodeSelector"] = {"flotilla.dev/test-no-node": "true"}
    apply(cluster, namespace, unplaced)
    (pod,) = wait_for(lambda: pods(cluster, namespace, "job=nowhere"), timeout=WAIT_S, what="the Job's pod")
    assert pod["status"]["phase"] == "Pending"
    assert "nodeName" not in pod["spec"]
    failed = {"status": {"phase": "Failed", "reason": "SimulatedByTest", "message": "accuracy budget exceeded"}}
    name = pod["metadata"]["name"]
    cluster.kubectl(
        "patch", "pod", name, "-n", namespace, "--subresource=status", "--type=merge", "-p", json.dumps(failed)
    )
    cluster.kubectl("wait", "job/nowhere", "-n", namespace, "--for=condition=Failed", f"--timeout={WAIT_S:.0f}s")


def test_owner_and_namespace_deletion_garbage_collect_children(cluster: Cluster) -> None:
    namespace = f"t-gc-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", namespace)
    try:
        wait_for(
            lambda: cluster.kubectl("get", "sa", "default", "-n", namespace, check=False).returncode == 0,
            timeout=WAIT_S,
            what="the default ServiceAccount",
        )
        deployment = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": pause_pod_spec({})},
            },
        }
        config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}, "data": {"a": "b"}}
        apply(cluster, namespace, deployment, config_map)
        cluster.kubectl("rollout", "status", "deployment/web", "-n", namespace, f"--timeout={WAIT_S:.0f}s")

        # Owner references: deleting the Deployment removes its ReplicaSet and pods.
        cluster.kubectl("delete", "deployment", "web", "-n", namespace, "--wait=false")
        wait_for(
            lambda: not cluster.kubectl_json("get", "replicasets,pods", "-n", namespace)["items"],
            timeout=WAIT_S,
            what="the garbage collector to remove the ReplicaSet and pods",
        )

        # Namespace deletion: everything inside goes, then the namespace itself.
        apply(cluster, namespace, deployment)
        cluster.kubectl("rollout", "status", "deployment/web", "-n", namespace, f"--timeout={WAIT_S:.0f}s")
        cluster.kubectl("delete", "namespace", namespace, "--wait=false")
        wait_for(
            lambda: cluster.kubectl("get", "namespace", namespace, check=False).returncode != 0,
            timeout=WAIT_S,
            what=f"namespace {namespace} to be deleted with its children",
        )
    finally:
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", "--ignore-not-found", check=False)


def test_crd_validation_rule_rejects_with_its_message(cluster: Cluster, namespace: str) -> None:
    group = f"t{uuid.uuid4().hex[:8]}.localcluster.flotilla.dev"
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "properties": {"min": {"type": "integer"}, "max": {"type": "integer"}},
                                    "x-kubernetes-validations": [
                                        {"rule": "self.min <= self.max", "message": "min must not exceed max"}
                                    ],
                                }
                            },
                        }
                    },
                }
            ],
        },
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(crd))
    try:
        cluster.kubectl("wait", f"crd/widgets.{group}", "--for=condition=Established", f"--timeout={WAIT_S:.0f}s")

        def widget(name: str, low: int, high: int) -> str:
            body = {"apiVersion": f"{group}/v1", "kind": "Widget", "metadata": {"name": name}}
            return json.dumps({**body, "spec": {"min": low, "max": high}})

        bad = cluster.kubectl("create", "-n", namespace, "-f", "-", input=widget("bad", 5, 1), check=False)
        assert bad.returncode != 0
        assert "min must not exceed max" in bad.stderr
        cluster.kubectl("create", "-n", namespace, "-f", "-", input=widget("good", 1, 5))
    finally:
        cluster.kubectl("delete", "crd", f"widgets.{group}", "--wait=false", check=False)


def test_kwok_leaves_nodes_without_its_annotation_alone(cluster: Cluster) -> None:
    """The process node (a real node agent, e2e/) must never be driven by KWOK."""
    suffix = uuid.uuid4().hex[:6]
    plain = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": f"local-{suffix}"}}
    managed = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": f"kwok-{suffix}", "annotations": {"kwok.x-k8s.io/node": "fake"}},
    }
    cluster.kubectl("create", "-f", "-", input=yaml.safe_dump_all([plain, managed]))
    try:
        wait_for(
            lambda: is_ready(cluster.kubectl_json("get", "node", f"kwok-{suffix}")),
            timeout=WAIT_S,
            what="KWOK to make its annotated node Ready",
        )
        untouched = cluster.kubectl_json("get", "node", f"local-{suffix}")
        assert not untouched.get("status", {}).get("conditions")
    finally:
        cluster.kubectl("delete", "node", f"local-{suffix}", f"kwok-{suffix}", "--wait=false", check=False)


@pytest.mark.cluster_restart
def test_up_recovers_from_crashed_components(cluster: Cluster) -> None:
    """Stale pid files of a crashed run are handled, not fatal."""
    marker = str(cluster.settings.cluster_dir)
    # A crashed run: the supervisor is gone too (else it would restart the components).
    assert supervisor.stop_supervisor(cluster.settings) is not None
    pids = procs.read_pid_files(cluster.settings.cluster_dir / "pids")
    crashed = [pids["kube-scheduler"], pids["kwok-controller"]]
    for pid in crashed:
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not any(procs.is_ours(p, marker) for p in crashed), timeout=WAIT_S, what="the kill")
    assert lc.inspect(cluster.settings).state == "stale"

    lc.up(cluster.settings)
    status = lc.inspect(cluster.settings)
    assert status.running
    assert status.nodes_ready == status.nodes_total == len(node_manifests(load_pools()))
    assert status.supervisor is not None  # up started a new one


@pytest.mark.cluster_restart
def test_cluster_survives_down_then_up(cluster: Cluster) -> None:
    stopped = lc.down(cluster.settings)
    assert len(stopped) >= 5  # etcd, apiserver, controller-manager, scheduler, kwok
    assert not any(psutil.pid_exists(pid) and procs.is_ours(pid, str(cluster.settings.cluster_dir)) for pid in stopped)
    assert lc.inspect(cluster.settings).state == "absent"
    assert cluster.kubectl("get", "--raw", "/readyz", check=False, timeout=20).returncode != 0

    again = lc.up(cluster.settings)
    assert again.server_version == cluster.server_version
    # The session's handle keeps working: same kubeconfig path, same ports, new certificates.
    nodes = cluster.kubectl_json("get", "nodes", "-l", "localcluster.flotilla.dev/pool")["items"]
    assert len(nodes) == len(node_manifests(load_pools()))
    assert all(is_ready(n) for n in nodes)


# ---------------------------------------------------------------- supervision


def component_pids(cluster: Cluster) -> dict[str, int]:
    return procs.read_pid_files(cluster.settings.cluster_dir / "pids")


def wait_running_again(cluster: Cluster, names: tuple[str, ...], old: dict[str, int], timeout: float) -> None:
    marker = str(cluster.settings.cluster_dir)

    def replaced() -> bool:
        pids = component_pids(cluster)
        return all(pids.get(n) not in (None, old[n]) and procs.is_ours(pids[n], marker) for n in names)

    wait_for(replaced, timeout=timeout, what=f"the supervisor to restart {', '.join(names)}", interval=0.5)


def roll_out(cluster: Cluster, namespace: str, name: str, timeout: float = WAIT_S) -> list[dict[str, Any]]:
    """A 2-replica Deployment on the CPU nodes, rolled out: needs the controller-manager
    (ReplicaSet, pods), the scheduler (binding) and KWOK (Running/Ready)."""
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": pause_pod_spec({})},
        },
    }
    apply(cluster, namespace, deployment)
    cluster.kubectl("rollout", "status", f"deployment/{name}", "-n", namespace, f"--timeout={timeout:.0f}s")
    placed = pods(cluster, namespace, f"app={name}")
    assert len(placed) == 2
    assert all(p["spec"].get("nodeName") and is_ready(p) for p in placed)
    return placed


@pytest.mark.cluster_restart
def test_supervisor_restarts_killed_scheduler_and_controller_manager(cluster: Cluster, namespace: str) -> None:
    settings = cluster.settings
    assert supervisor.running_pid(settings) is not None
    before = supervisor.restart_counts(settings)
    old = component_pids(cluster)
    names = ("kube-scheduler", "kube-controller-manager")
    for name in names:
        os.kill(old[name], signal.SIGKILL)
    wait_running_again(cluster, names, old, timeout=30)

    after = supervisor.restart_counts(settings)
    for name in names:
        assert after[name] == before.get(name, 0) + 1
        log = (settings.cluster_dir / "logs" / f"{name}.log").read_text(errors="replace")
        assert f"localcluster-supervisor: {name}: pid {old[name]} exited" in log
    status = lc.inspect(settings)
    assert status.running
    assert status.restarts["kube-scheduler"] == after["kube-scheduler"]
    assert any("restarts: " in line for line in lc.describe(status))
    # The new instances take over the leases (after the dead holders' 15 s run out) and work.
    roll_out(cluster, namespace, "after-kill")


@pytest.mark.cluster_restart
def test_control_plane_recovers_from_a_frozen_api_server(cluster: Cluster, namespace: str) -> None:
    """45 s without an API server: the controller-manager and scheduler lose their leader
    leases and exit (as they do on a real cluster, where kubelet restarts them)."""
    settings = cluster.settings
    before = supervisor.restart_counts(settings)
    old = component_pids(cluster)
    procs.freeze(old["kube-apiserver"], 45)
    names = ("kube-controller-manager", "kube-scheduler")
    wait_running_again(cluster, names, old, timeout=60)
    after = supervisor.restart_counts(settings)
    assert all(after[n] > before.get(n, 0) for n in names)
    assert component_pids(cluster)["kube-apiserver"] == old["kube-apiserver"]  # frozen, not dead
    roll_out(cluster, namespace, "after-freeze")
    assert lc.inspect(settings).running


# ---------------------------------------------------------------- Gateway API


def httproute(name: str, weights: dict[str, int]) -> dict[str, Any]:
    refs = [{"name": svc, "port": 8000, "weight": w} for svc, w in weights.items()]
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": name},
        "spec": {"parentRefs": [{"name": "gateway"}], "rules": [{"backendRefs": refs}]},
    }


def test_gateway_api_crds_are_served_after_up(cluster: Cluster, namespace: str) -> None:
    if not gatewayapi.enabled():
        gatewayapi.install(cluster)  # this session runs without them (FLOTILLA_CLUSTER_GATEWAY_API=0)
    assert gatewayapi.is_installed(cluster)
    served = json.loads(cluster.kubectl("get", "--raw", "/apis/gateway.networking.k8s.io/v1").stdout)
    assert {"httproutes", "gateways", "gatewayclasses", "grpcroutes"} <= {r["name"] for r in served["resources"]}
    assert lc.inspect(cluster.settings).gateway_api == load_versions().gateway_api
    # Canary weights, as the operator writes them, are accepted and kept.
    apply(cluster, namespace, httproute("canary", {"stable": 90, "canary": 10}))
    route = cluster.kubectl_json("get", "httproute", "canary", "-n", namespace)
    assert [r["weight"] for r in route["spec"]["rules"][0]["backendRefs"]] == [90, 10]
    # The CRDs' own validation runs (weights are bounded).
    bad = cluster.kubectl(
        "apply", "-n", namespace, "-f", "-", input=json.dumps(httproute("bad", {"x": -1})), check=False
    )
    assert bad.returncode != 0


def test_gateway_api_can_be_removed_and_restored_at_test_time(cluster: Cluster) -> None:
    gatewayapi.install(cluster)
    try:
        removed = gatewayapi.uninstall(cluster)
        assert "httproutes.gateway.networking.k8s.io" in removed
        assert not gatewayapi.is_installed(cluster)
        gone = cluster.kubectl("get", "--raw", "/apis/gateway.networking.k8s.io/v1", check=False)
        assert gone.returncode != 0
    finally:
        if gatewayapi.enabled():
            gatewayapi.install(cluster)
    if gatewayapi.enabled():
        assert gatewayapi.is_installed(cluster)


# ---------------------------------------------------------------- Prometheus


METRICS = (
    "# HELP flotilla_test_requests_total Requests served.\n"
    "# TYPE flotilla_test_requests_total counter\n"
    'flotilla_test_requests_total{model="smollm2",code="200"} 42\n'
)


@pytest.fixture
def metrics_endpoint() -> Iterator[str]:
    """A tiny HTTP server answering /metrics with a fixed exposition text; its host:port."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = METRICS.encode()
            self.send_response(200 if self.path == "/metrics" else 404)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_prometheus_scrapes_a_local_endpoint(prometheus_factory: PrometheusFactory, metrics_endpoint: str) -> None:
    prom = prometheus_factory(prometheus.scrape_config([metrics_endpoint], job="fake-triton", interval="1s"))
    assert prom.url.startswith("http://127.0.0.1:")

    def scraped() -> list[dict[str, Any]]:
        return prom.query('flotilla_test_requests_total{job="fake-triton"}')

    (series,) = wait_for(scraped, timeout=30, what="Prometheus to scrape the endpoint", interval=0.5)
    assert series["metric"]["model"] == "smollm2"
    assert series["metric"]["instance"] == metrics_endpoint
    assert float(series["value"][1]) == 42
    (up,) = prom.query('up{job="fake-triton"}')
    assert up["value"][1] == "1"
    info = prom.api("status/buildinfo")  # the version ldflags took
    assert info["version"] == build.prometheus_release(load_versions().prometheus)
