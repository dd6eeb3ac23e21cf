"""The process node against the real control plane: pods bound to it run as local processes.

Each test applies ordinary manifests (generic image `flotilla.local/python`, selected with
the node's label) and checks what the real controllers and the process itself observed.
"""

from __future__ import annotations

import ipaddress
import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest

import processnode
from localcluster.cluster import Cluster, wait_for
from processnode import ProcessNode

pytest_plugins = ["processnode.pytest_plugin"]
pytestmark = pytest.mark.cluster

IMAGE = "flotilla.local/python:3.11"
TIMEOUT = 90.0

# A tiny HTTP server bound to the pod's own address: answers with its pod name.
SERVER = """
import http.server, os
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("hello from " + os.environ["HOSTNAME"]).encode()
        self.send_response(200); self.end_headers(); self.wfile.write(body)
http.server.HTTPServer((os.environ["POD_IP"], 8080), Handler).serve_forever()
"""


def apply(cluster: Cluster, namespace: str, *manifests: dict[str, Any]) -> None:
    body = {"apiVersion": "v1", "kind": "List", "items": list(manifests)}
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(body))


def get(cluster: Cluster, namespace: str, kind: str, name: str) -> dict[str, Any] | None:
    proc = cluster.kubectl("get", kind, name, "-n", namespace, "-o", "json", check=False)
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def pod_spec(node: ProcessNode, container: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"nodeSelector": node.node_selector, "containers": [{"image": IMAGE, **container}], **extra}


def pod(name: str, spec: dict[str, Any], labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels or {}}, "spec": spec}


def job(name: str, spec: dict[str, Any], **job_spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {"backoffLimit": 0, "template": {"spec": {"restartPolicy": "Never", **spec}}, **job_spec},
    }


def condition(obj: dict[str, Any] | None, kind: str) -> dict[str, Any] | None:
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond["type"] == kind:
            return dict(cond)
    return None


def wait_ready(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        obj = get(cluster, namespace, "pod", name)
        return obj if (condition(obj, "Ready") or {}).get("status") == "True" else None

    return wait_for(ready, timeout=TIMEOUT, what=f"pod {name} Ready")


def job_finished(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        obj = get(cluster, namespace, "job", name)
        done = [c for c in ((obj or {}).get("status") or {}).get("conditions") or [] if c["status"] == "True"]
        return obj if any(c["type"] in ("Complete", "Failed") for c in done) else None

    return wait_for(finished, timeout=TIMEOUT, what=f"job {name} finished")


def job_pods(cluster: Cluster, namespace: str, name: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = cluster.kubectl_json("get", "pods", "-n", namespace, "-l", f"job-name={name}")[
        "items"
    ]
    return items


def terminated(pod_obj: dict[str, Any]) -> dict[str, Any]:
    state: dict[str, Any] = pod_obj["status"]["containerStatuses"][0]["state"]
    assert "terminated" in state, state
    return dict(state["terminated"])


def started_log(cluster: Cluster, namespace: str, name: str) -> Path:
    """The container's log file, as the "Started" event names it."""

    def find() -> Path | None:
        events = cluster.kubectl_json(
            "get", "events", "-n", namespace, "--field-selector", f"involvedObject.name={name},reason=Started"
        )["items"]
        for event in events:
            if "logs: " in event["message"]:
                return Path(event["message"].rsplit("logs: ", 1)[1])
        return None

    return wait_for(find, timeout=TIMEOUT, what=f"Started event of {name}")


def pid_of(obj: dict[str, Any]) -> int:
    """The container's process id, from the containerID the agent reports (process://<pid>)."""
    return int(obj["status"]["containerStatuses"][0]["containerID"].removeprefix("process://"))


def start_waiting(cluster: Cluster, namespace: str, name: str, spec: dict[str, Any]) -> tuple[int, Path]:
    """Run a pod whose script prints "waiting" once its signal handler is set; its pid and log."""
    apply(cluster, namespace, pod(name, spec))
    pid = pid_of(wait_ready(cluster, namespace, name))
    log = started_log(cluster, namespace, name)
    wait_for(lambda: "waiting" in log.read_text(), timeout=TIMEOUT, what="the process to install its handler")
    return pid, log


def delete_and_wait_gone(cluster: Cluster, namespace: str, name: str) -> None:
    cluster.kubectl("delete", "pod", name, "-n", namespace, "--wait=false")
    wait_for(lambda: get(cluster, namespace, "pod", name) is None, timeout=TIMEOUT, what=f"pod {name} gone")


def test_http_pod_is_ready_on_its_own_address_and_reachable_through_its_endpoint_slice(
    cluster: Cluster, namespace: str, process_node: ProcessNode
) -> None:
    assert process_node.endpoints_work, f"pod network fell back to loopback: {process_node.info.get('note')}"
    container = {
        "name": "web",
        "command": ["python", "-c", SERVER],
        "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]},
    }
    apply(cluster, namespace, pod("web", pod_spec(process_node, container), {"app": "web"}), service)

    ready = wait_ready(cluster, namespace, "web")
    ip = ready["status"]["podIP"]
    assert ipaddress.ip_address(ip) in ipaddress.ip_network(process_node.pod_network)
    assert ready["status"]["hostIP"] == "127.0.0.1"
    assert ready["spec"]["nodeName"] == process_node.name

    def slice_addresses() -> list[str] | None:
        slices = cluster.kubectl_json("get", "endpointslices", "-n", namespace, "-l", "kubernetes.io/service-name=web")[
            "items"
        ]
        ready_ips = [
            a
            for s in slices
            for e in s.get("endpoints") or []
            if (e.get("conditions") or {}).get("ready")
            for a in e["addresses"]
        ]
        return ready_ips or None

    assert wait_for(slice_addresses, timeout=TIMEOUT, what="EndpointSlice of web") == [ip]
    with urllib.request.urlopen(f"http://{ip}:8080/", timeout=10) as response:
        assert response.read().decode() == "hello from web"


def test_job_completes_and_its_termination_message_is_in_the_pod_status(
    cluster: Cluster, namespace: str, process_node: ProcessNode
) -> None:
    # The default terminationMessagePath, passed as an argument: the node rewrites it to the
    # pod's own file, as a mount namespace would have made it the container's /dev/termination-log.
    script = "import sys; open(sys.argv[1], 'w').write('artifact=abc123 size=42')"
    container = {"name": "main", "command": ["python", "-c", script, "/dev/termination-log"]}
    apply(cluster, namespace, job("writer", pod_spec(process_node, container)))

    finished = job_finished(cluster, namespace, "writer")
    assert condition(finished, "Complete") is not None, finished["status"]
    (only,) = job_pods(cluster, namespace, "writer")
    assert only["status"]["phase"] == "Succeeded"
    state = terminated(only)
    assert (state["exitCode"], state["reason"]) == (0, "Completed")
    assert state["message"] == "artifact=abc123 size=42"


def test_exit_code_3_fails_the_job_through_its_pod_failure_policy(
    cluster: Cluster, namespace: str, process_node: ProcessNode
) -> None:
    script = "import sys; print('accuracy budget exceeded', flush=True); sys.exit(3)"
    container = {
        "name": "optimizer",
        "command": ["python", "-c", script],
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    policy = {
        "rules": [{"action": "FailJob", "onExitCodes": {"containerName": "optimizer", "operator": "In", "values": [3]}}]
    }
    apply(cluster, namespace, job("budget", pod_spec(process_node, container), backoffLimit=4, podFailurePolicy=policy))

    finished = job_finished(cluster, namespace, "budget")
    failed = condition(finished, "Failed")
    assert failed is not None and failed["reason"] == "PodFailurePolicy", finished["status"]
    pods = job_pods(cluster, namespace, "budget")
    assert len(pods) == 1, "FailJob must not retry"
    state = terminated(pods[0])
    assert (state["exitCode"], state["reason"]) == (3, "Error")
    assert "accuracy budget exceeded" in state["message"]  # FallbackToLogsOnError


def test_deleting_a_pod_sends_sigterm_and_the_pod_disappears(
    cluster: Cluster, namespace: str, process_node: ProcessNode
) -> None:
    script = (
        "import signal, sys, time\n"
        "def term(*_):\n    print('got SIGTERM', flush=True); sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, term)\n"
        "print('waiting', flush=True)\n"
        "while True: time.sleep(1)\n"
    )
    spec = pod_spec(process_node, {"name": "main", "command": ["python", "-c", script]})
    pid, log = start_waiting(cluster, namespace, "sleeper", spec)

    delete_and_wait_gone(cluster, namespace, "sleeper")
    assert "got SIGTERM" in log.read_text()
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()


def test_a_process_that_ignores_sigterm_is_killed_after_the_grace_period(
    cluster: Cluster, namespace: str, process_node: ProcessNode
) -> None:
    script = (
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, lambda *_: print('ignoring SIGTERM', flush=True))\n"
        "print('waiting', flush=True)\n"
        "while True: time.sleep(0.2)\n"
    )
    spec = pod_spec(
        process_node, {"name": "main", "command": ["python", "-c", script]}, terminationGracePeriodSeconds=2
    )
    pid, log = start_waiting(cluster, namespace, "stubborn", spec)

    delete_and_wait_gone(cluster, namespace, "stubborn")
    assert "ignoring SIGTERM" in log.read_text()
    assert not Path(f"/proc/{pid}").exists()


def test_config_map_and_provisioned_claim_are_visible_at_their_mount_paths(
    cluster: Cluster, namespace: str, process_node: ProcessNode
) -> None:
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "settings"},
        "data": {"greeting": "hello", "ignored": "not mounted"},
    }
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "store"},
        "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}},
    }
    script = (
        "import os, sys\n"
        "greeting = open('/etc/app/conf/greeting.txt').read()\n"
        "assert not os.path.exists('/etc/app/ignored')\n"
        "open('/data/out.txt', 'w').write(greeting + ' from the pod')\n"
        "open('/sub/marker', 'w').write('sub')\n"
        "open(os.environ['TERMINATION_MESSAGE_PATH'], 'w').write(greeting)\n"
    )
    container = {
        "name": "main",
        "command": ["python", "-c", script],
        "volumeMounts": [
            {"name": "settings", "mountPath": "/etc/app", "readOnly": True},
            {"name": "store", "mountPath": "/data"},
            {"name": "store", "mountPath": "/sub", "subPath": "nested/dir"},
        ],
    }
    volumes = [
        {
            "name": "settings",
            "configMap": {"name": "settings", "items": [{"key": "greeting", "path": "conf/greeting.txt"}]},
        },
        {"name": "store", "persistentVolumeClaim": {"claimName": "store"}},
    ]
    apply(cluster, namespace, config_map, claim, job("mounts", pod_spec(process_node, container, volumes=volumes)))

    finished = job_finished(cluster, namespace, "mounts")
    (only,) = job_pods(cluster, namespace, "mounts")
    assert condition(finished, "Complete") is not None, terminated(only)
    assert terminated(only)["message"] == "hello"
    bound = get(cluster, namespace, "pvc", "store")
    assert bound is not None and bound["status"]["phase"] == "Bound"
    pv = cluster.kubectl_json("get", "pv", bound["spec"]["volumeName"])
    host_dir = Path(pv["spec"]["hostPath"]["path"])
    assert host_dir == process_node.volume_dir(namespace, "store")
    assert (host_dir / "out.txt").read_text() == "hello from the pod"
    assert (host_dir / "nested" / "dir" / "marker").read_text() == "sub"


def test_exec_readiness_probe_sees_the_pods_private_tmp(
    cluster: Cluster, namespace: str, process_node: ProcessNode
) -> None:
    script = "import time; time.sleep(1); open('/tmp/ready', 'w').close(); time.sleep(3600)"
    container = {
        "name": "main",
        "command": ["python", "-c", script],
        "readinessProbe": {"exec": {"command": ["test", "-f", "/tmp/ready"]}, "periodSeconds": 1},
    }
    apply(cluster, namespace, pod("probed", pod_spec(process_node, container)))
    ready = wait_ready(cluster, namespace, "probed")
    assert ready["status"]["containerStatuses"][0]["ready"] is True
    # The file is in the pod's own /tmp, not the host's.
    assert (process_node.container_root(ready["metadata"]["uid"], "main") / "tmp" / "ready").is_file()


def test_crashing_container_is_restarted_and_reports_its_last_state(
    cluster: Cluster, namespace: str, process_node: ProcessNode
) -> None:
    container = {"name": "main", "command": ["python", "-c", "import sys; sys.exit(1)"]}
    apply(cluster, namespace, pod("crasher", pod_spec(process_node, container)))

    def restarted() -> dict[str, Any] | None:
        obj = get(cluster, namespace, "pod", "crasher")
        statuses = ((obj or {}).get("status") or {}).get("containerStatuses") or []
        return statuses[0] if statuses and statuses[0]["restartCount"] >= 1 and statuses[0]["lastState"] else None

    status = wait_for(restarted, timeout=TIMEOUT, what="a restart of crasher")
    assert status["lastState"]["terminated"]["exitCode"] == 1


def test_unknown_image_waits_with_a_pull_error_and_an_event(
    cluster: Cluster, namespace: str, process_node: ProcessNode
) -> None:
    spec = pod_spec(process_node, {"name": "main", "image": "example.com/not/known:1"})
    apply(cluster, namespace, pod("nopull", spec))

    def waiting() -> dict[str, Any] | None:
        obj = get(cluster, namespace, "pod", "nopull")
        statuses = ((obj or {}).get("status") or {}).get("containerStatuses") or []
        return statuses[0]["state"].get("waiting") if statuses else None

    state = wait_for(waiting, timeout=TIMEOUT, what="nopull waiting")
    assert state["reason"] == "ErrImagePull"
    assert "not in the process node's image table" in state["message"]
    events = cluster.kubectl_json("get", "events", "-n", namespace, "--field-selector", "involvedObject.name=nopull")
    assert any(e["reason"] == "Failed" and e["type"] == "Warning" for e in events["items"])
    assert get(cluster, namespace, "pod", "nopull")["status"]["phase"] == "Pending"  # type: ignore[index]


def test_node_stays_ready_and_renews_its_lease(cluster: Cluster, process_node: ProcessNode) -> None:
    node = cluster.kubectl_json("get", "node", process_node.name)
    assert node["metadata"]["labels"]["flotilla.dev/process-node"] == "true"
    assert "kwok.x-k8s.io/node" not in (node["metadata"].get("annotations") or {})
    assert (condition(node, "Ready") or {}).get("status") == "True"
    first = cluster.kubectl_json("get", "lease", process_node.name, "-n", "kube-node-lease")["spec"]["renewTime"]

    def renewed() -> str | None:
        lease = cluster.kubectl_json("get", "lease", process_node.name, "-n", "kube-node-lease")
        return str(lease["spec"]["renewTime"]) if lease["spec"]["renewTime"] != first else None

    wait_for(renewed, timeout=60, what="the node's lease to be renewed", interval=1.0)
    node = cluster.kubectl_json("get", "node", process_node.name)
    assert (condition(node, "Ready") or {}).get("status") == "True"
    assert not [t for t in node["spec"].get("taints") or [] if t["key"].startswith("node.kubernetes.io/")]


TRITON_MODEL = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy()
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT", (x + 1).astype(np.float32))]))
        return responses
"""
TRITON_CONFIG = """
name: "plus1"
backend: "python"
max_batch_size: 0
input [{ name: "INPUT", data_type: TYPE_FP32, dims: [ -1 ] }]
output [{ name: "OUTPUT", data_type: TYPE_FP32, dims: [ -1 ] }]
instance_group [{ kind: KIND_CPU, count: 1 }]
"""


@pytest.mark.slow
def test_triton_image_runs_the_wheels_tritonserver_on_the_pod_ip(
    cluster: Cluster, namespace: str, process_node: ProcessNode
) -> None:
    model = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "plus1"},
        "data": {"config.pbtxt": TRITON_CONFIG, "model.py": TRITON_MODEL},
    }
    container = {
        "name": "triton",
        "image": "nvcr.io/nvidia/tritonserver:25.10-py3",
        "command": ["tritonserver"],
        "args": [
            "--model-repository=/models",
            "--model-control-mode=explicit",
            "--load-model=plus1",
            "--http-address=$(POD_IP)",
            "--http-port=8000",
        ],
        "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
        "ports": [{"name": "http", "containerPort": 8000}],
        "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": "http"}, "periodSeconds": 1},
        "volumeMounts": [
            {"name": "model", "mountPath": "/models/plus1/1/model.py", "subPath": "model.py"},
            {"name": "model", "mountPath": "/models/plus1/config.pbtxt", "subPath": "config.pbtxt"},
        ],
    }
    volumes = [{"name": "model", "configMap": {"name": "plus1"}}]
    apply(cluster, namespace, model, pod("triton", pod_spec(process_node, container, volumes=volumes)))

    ready = wait_ready(cluster, namespace, "triton")
    ip = ready["status"]["podIP"]
    body = json.dumps({"inputs": [{"name": "INPUT", "shape": [3], "datatype": "FP32", "data": [1, 2, 3]}]}).encode()
    request = urllib.request.Request(f"http://{ip}:8000/v2/models/plus1/infer", data=body, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        outputs = json.loads(response.read())["outputs"]
    assert outputs[0]["data"] == [2.0, 3.0, 4.0]
    # gRPC and metrics listen on the pod's address too (a netns would have made 0.0.0.0 mean that).
    with urllib.request.urlopen(f"http://{ip}:8002/metrics", timeout=10) as response:
        assert b"nv_inference_request_success" in response.read()


def test_a_restarted_agent_kills_what_a_crashed_one_left_and_runs_its_pods_again(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    """SIGKILL leaves the agent no chance to stop its processes; the next start with the
    same state directory must find and kill them, then run the pod again (restartCount 1)."""
    state = tmp_path / "state"
    first = processnode.start(cluster, name="local-crash", state_dir=state)
    second: ProcessNode | None = None
    try:
        container = {"name": "main", "command": ["python", "-c", "import time; time.sleep(3600)"]}
        apply(cluster, namespace, pod("survivor", pod_spec(first, container)))
        running = wait_ready(cluster, namespace, "survivor")
        orphan = pid_of(running)
        first.process.kill()
        first.process.wait()
        assert Path(f"/proc/{orphan}").exists(), "the container process outlives a SIGKILLed agent"

        second = processnode.start(cluster, name="local-crash", state_dir=state)
        wait_for(lambda: not Path(f"/proc/{orphan}").exists(), timeout=TIMEOUT, what="the orphan to be killed")

        def restarted() -> dict[str, Any] | None:
            obj = wait_ready(cluster, namespace, "survivor")
            status = obj["status"]["containerStatuses"][0]
            return obj if status["restartCount"] == 1 and status["containerID"] != f"process://{orphan}" else None

        again = wait_for(restarted, timeout=TIMEOUT, what="survivor running again")
        assert again["status"]["podIP"] == running["status"]["podIP"]  # the address is taken back
        cluster.kubectl("delete", "pod", "survivor", "-n", namespace, "--timeout=60s")
    finally:
        first.stop()
        if second is not None:
            second.stop(delete_node=True)
