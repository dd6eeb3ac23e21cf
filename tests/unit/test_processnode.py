"""Pure parts of the process node: expansion, paths, addresses, images, status, policy, env."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, ClassVar

import psutil
import pytest

from flotilla.local.triton import python_libdir
from processnode import envvars, images, ipam, node, paths, policy, probes, process, provisioner, quantity, status
from processnode.cli import config_from_args, parser
from processnode.config import NODE_LABEL, AgentConfig
from processnode.container import exit_status, termination_message
from processnode.expand import expand
from processnode.network import PodNetwork
from processnode.status import ContainerRecord, PodView, Terminated, pod_phase, pod_status
from processnode.triton import TritonRuntime
from processnode.volumes import MountError, container_mounts, select_items

# ---------------------------------------------------------------- $(VAR) expansion


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("--http-address=$(POD_IP)", "--http-address=198.18.0.7"),
        ("$(POD_IP):$(PORT)", "198.18.0.7:8000"),
        ("$(UNDEFINED) stays", "$(UNDEFINED) stays"),
        ("$$(POD_IP) is escaped", "$(POD_IP) is escaped"),
        ("$$$(POD_IP)", "$198.18.0.7"),
        ("$POD_IP is not a reference", "$POD_IP is not a reference"),
        ("unterminated $(POD_IP", "unterminated $(POD_IP"),
        ("trailing $", "trailing $"),
        ("", ""),
    ],
)
def test_expansion_follows_the_kubelet(value: str, expected: str) -> None:
    assert expand(value, {"POD_IP": "198.18.0.7", "PORT": "8000"}) == expected


# ---------------------------------------------------------------- image table


@pytest.mark.parametrize(
    ("image", "repository"),
    [
        ("nvcr.io/nvidia/tritonserver:25.10-py3", "nvcr.io/nvidia/tritonserver"),
        ("ghcr.io/flotilla-dev/flotilla-optimizer@sha256:abc", "ghcr.io/flotilla-dev/flotilla-optimizer"),
        ("localhost:5000/x/y:1", "localhost:5000/x/y"),
        ("python:3.11", "docker.io/library/python"),
        ("someone/tool", "docker.io/someone/tool"),
    ],
)
def test_image_repository_drops_tag_and_digest(image: str, repository: str) -> None:
    assert images.repository(image) == repository


def test_optimizer_command_runs_this_virtualenvs_python() -> None:
    table = images.ImageTable(python="/venv/bin/python", venv_bin=Path("/venv/bin"))
    launch = table.resolve(
        "ghcr.io/flotilla-dev/flotilla-optimizer:0.1.0", ["python", "-m", "flotilla", "optimize"], ["--out", "/x"]
    )
    assert launch.argv == ("/venv/bin/python", "-m", "flotilla", "optimize", "--out", "/x")
    assert launch.kind is images.Kind.PYTHON


def test_entrypoint_and_cmd_follow_kubernetes_rules() -> None:
    table = images.ImageTable(python="/venv/bin/python", venv_bin=Path("/venv/bin"))
    optimizer = "ghcr.io/flotilla-dev/flotilla-optimizer:1"
    assert table.resolve(optimizer, [], []).argv == ("/venv/bin/python", "-m", "flotilla", "optimize")
    # args without a command replace CMD and keep ENTRYPOINT
    assert table.resolve(optimizer, [], ["status"]).argv == ("/venv/bin/python", "-m", "flotilla", "status")
    assert table.resolve("ghcr.io/flotilla-dev/flotilla-operator:1", [], []).argv == ("/venv/bin/flotilla", "run")


def test_triton_image_is_marked_for_the_triton_runtime() -> None:
    launch = images.ImageTable().resolve(
        "nvcr.io/nvidia/tritonserver:25.10-py3", ["/opt/tritonserver/bin/tritonserver"], ["--x"]
    )
    assert launch.kind is images.Kind.TRITON
    assert launch.argv[1:] == ("--x",)


def test_unknown_image_is_a_pull_error_naming_the_known_ones() -> None:
    with pytest.raises(images.ImageError) as err:
        images.ImageTable().resolve("example.com/unknown:1", ["run"], [])
    assert err.value.reason == "ErrImagePull"
    assert "nvcr.io/nvidia/tritonserver" in err.value.message


def test_command_the_image_does_not_provide_is_a_start_error() -> None:
    with pytest.raises(images.ImageError) as err:
        images.ImageTable().resolve("nvcr.io/nvidia/tritonserver:1", ["bash", "-c", "x"], [])
    assert err.value.reason == "StartError"
    assert "executable file not found" in err.value.message


def test_generic_image_runs_host_tools() -> None:
    launch = images.ImageTable().resolve("flotilla.local/python", ["sh", "-c", "true"], [])
    assert Path(launch.argv[0]).name == "sh" and Path(launch.argv[0]).is_absolute()


def test_alias_names_a_known_image() -> None:
    table = images.ImageTable().with_aliases({"registry.local/triton": "nvcr.io/nvidia/tritonserver:1"})
    assert table.resolve("registry.local/triton:2", ["tritonserver"], []).kind is images.Kind.TRITON
    with pytest.raises(ValueError, match="not in the image table"):
        images.ImageTable().with_aliases({"a/b": "c/d"})


# ---------------------------------------------------------------- paths


def path_map() -> paths.PathMap:
    return paths.PathMap.of(Path("/state/pods/u/root/c"), ["/models", "/models/m/1/", "/tmp", "/dev/termination-log"])


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/models", "/state/pods/u/root/c/models"),
        ("/models/m/1/model.onnx", "/state/pods/u/root/c/models/m/1/model.onnx"),
        ("--model-repository=/models", "--model-repository=/state/pods/u/root/c/models"),
        ("/tmp/hf", "/state/pods/u/root/c/tmp/hf"),
        ("/a:/models/lib:/b", "/a:/state/pods/u/root/c/models/lib:/b"),
        ("cat /tmp/x > /tmp/y", "cat /state/pods/u/root/c/tmp/x > /state/pods/u/root/c/tmp/y"),
        ("open('/tmp/ready')", "open('/state/pods/u/root/c/tmp/ready')"),
        ("/dev/termination-log", "/state/pods/u/root/c/dev/termination-log"),
        ("/models2/x", "/models2/x"),  # a sibling, not below the mount
        ("/dev", "/state/pods/u/root/c/dev"),  # above a mount: the container has that directory
        ("/dev/null", "/dev/null"),  # but its other entries are the host's
        ("/usr/bin/python", "/usr/bin/python"),  # the host plays the image
        ("file:///models/x", "file:///models/x"),  # URLs are not container paths
        ("http://host/models", "http://host/models"),
        ("relative/models", "relative/models"),
    ],
)
def test_paths_below_mounts_are_rewritten_into_the_pod_tree(value: str, expected: str) -> None:
    assert path_map().rewrite(value) == expected


def test_directories_holding_mount_points_are_in_the_tree() -> None:
    mapping = paths.PathMap.of(Path("/r"), ["/models/m/1", "/models/m/config.pbtxt"])
    assert mapping.rewrite("--model-repository=/models") == "--model-repository=/r/models"
    assert mapping.rewrite("/models/m") == "/r/models/m"
    assert mapping.rewrite("/models/other") == "/models/other"


def test_root_mount_is_never_a_prefix() -> None:
    mapping = paths.PathMap.of(Path("/r"), ["/", "/data"])
    assert mapping.prefixes == ("/data",)
    assert mapping.rewrite("/etc/hosts") == "/etc/hosts"


def test_build_tree_links_mounts_and_nested_mounts(tmp_path: Path) -> None:
    volume, config = tmp_path / "vol", tmp_path / "cm" / "config.pbtxt"
    volume.mkdir()
    config.parent.mkdir()
    config.write_text("name: m")
    root = tmp_path / "root"
    paths.build_tree(root, [paths.Mount("/models/m/config.pbtxt", config), paths.Mount("/models/m/1", volume)])
    assert (root / "models/m/1").resolve() == volume.resolve()
    assert (root / "models/m/config.pbtxt").read_text() == "name: m"
    paths.build_tree(root, [paths.Mount("/models/m/1", config.parent)])  # idempotent, relinks
    assert (root / "models/m/1").resolve() == config.parent.resolve()


# ---------------------------------------------------------------- addresses


def test_usable_addresses_skip_dot_zero_and_dot_255() -> None:
    usable = ipam.usable(ipaddress.IPv4Network("198.18.0.0/23"))
    assert str(usable[0]) == "198.18.0.1" and str(usable[-1]) == "198.18.1.254"
    assert all(ip.packed[-1] not in (0, 255) for ip in usable)


def test_candidates_start_after_the_cursor_and_wrap() -> None:
    usable = ipam.usable(ipaddress.IPv4Network("198.18.0.0/29"))
    assert [str(ip) for ip in ipam.candidates(usable, "198.18.0.5")] == [
        "198.18.0.6",
        "198.18.0.1",
        "198.18.0.2",
        "198.18.0.3",
        "198.18.0.4",
        "198.18.0.5",
    ]
    assert str(next(ipam.candidates(usable, None))) == "198.18.0.1"
    assert str(next(ipam.candidates(usable, "10.0.0.1"))) == "198.18.0.1"


def test_allocation_is_unique_across_agents_and_rotates(tmp_path: Path) -> None:
    first = ipam.Ipam("198.18.0.0/29", tmp_path / "locks", tmp_path / "cursor-a")
    second = ipam.Ipam("198.18.0.0/29", tmp_path / "locks", tmp_path / "cursor-b")  # another agent
    a, b = first.allocate("pod a"), second.allocate("pod b")
    assert a != b
    first.release(a)
    assert first.allocate("pod c") not in (a, b)  # rotates past a just-released address
    assert first.allocate("pod d", prefer=a) == a  # the address a pod had before an agent restart


def test_exhausted_pool_says_so(tmp_path: Path) -> None:
    pool = ipam.Ipam("198.18.0.0/30", tmp_path)  # .1 and .2
    pool.allocate("x")
    pool.allocate("y")
    with pytest.raises(ipam.PoolExhaustedError, match="no free pod address"):
        pool.allocate("z")
    pool.release_all()
    assert pool.held == {}


def test_a_dead_agent_releases_its_addresses(tmp_path: Path) -> None:
    script = (
        "import pathlib, sys, time; sys.path.insert(0, sys.argv[1]); from processnode.ipam import Ipam; "
        "print(Ipam('198.18.0.0/30', pathlib.Path(sys.argv[2])).allocate('x'), flush=True); time.sleep(60)"
    )
    e2e = Path(__file__).resolve().parents[2] / "e2e"
    child = subprocess.Popen([sys.executable, "-c", script, str(e2e), str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    held = child.stdout.readline().strip()
    pool = ipam.Ipam("198.18.0.0/30", tmp_path)
    assert pool.allocate("mine") != held
    child.kill()
    child.wait()
    assert pool.allocate("after", prefer=held) == held


# ---------------------------------------------------------------- status


def record(name: str, **kw: Any) -> ContainerRecord:
    rec = ContainerRecord(name, "img")
    for key, value in kw.items():
        setattr(rec, key, value)
    return rec


def done(code: int) -> Terminated:
    return Terminated(code, status.exit_reason(code), "", "t0", "t1")


def test_phase_follows_the_kubelet() -> None:
    running = record("a", state=status.RUNNING)
    ok = record("a", state=status.TERMINATED, terminated=done(0))
    failed = record("a", state=status.TERMINATED, terminated=done(3))
    backing_off = record("a", state=status.WAITING, reason="CrashLoopBackOff", last_terminated=done(1))
    creating = record("a")
    assert pod_phase("Always", [], [creating]) == "Pending"
    assert pod_phase("Always", [], [running]) == "Running"
    assert pod_phase("Always", [], [backing_off]) == "Running"
    assert pod_phase("Never", [], [ok]) == "Succeeded"
    assert pod_phase("Never", [], [failed]) == "Failed"
    assert pod_phase("OnFailure", [], [failed]) == "Running"  # will restart
    assert pod_phase("Always", [], [failed], terminal=True) == "Failed"  # deleted
    assert pod_phase("Always", [], [ok], terminal=True) == "Succeeded"
    init_failed = record("i", init=True, state=status.TERMINATED, terminated=done(1))
    assert pod_phase("Never", [init_failed], [creating]) == "Failed"
    assert pod_phase("OnFailure", [init_failed], [creating]) == "Pending"
    assert pod_phase("Never", [record("i", init=True, state=status.RUNNING)], [creating]) == "Pending"


def test_status_of_a_ready_pod() -> None:
    web = record("web", state=status.RUNNING, started_at="t0", ready=True, started=True, pid=42)
    view = PodView("Always", [], [web], pod_ip="198.18.0.9", start_time="t0", sandbox_ready=True)
    out = pod_status(view, at="t1")
    assert out["phase"] == "Running"
    assert out["podIP"] == "198.18.0.9" and out["podIPs"] == [{"ip": "198.18.0.9"}]
    assert out["hostIP"] == "127.0.0.1"
    conds = {c["type"]: c for c in out["conditions"]}
    assert {k: c["status"] for k, c in conds.items()} == {
        "PodReadyToStartContainers": "True",
        "Initialized": "True",
        "ContainersReady": "True",
        "Ready": "True",
    }
    assert conds["Ready"]["reason"] is None  # null clears a stale reason in the merge patch
    (container,) = out["containerStatuses"]
    assert container["state"] == {"running": {"startedAt": "t0"}}
    assert container["containerID"] == "process://42"


def test_unready_container_and_readiness_gates_keep_the_pod_unready() -> None:
    web = record("web", state=status.RUNNING, started_at="t0", ready=False)
    out = pod_status(PodView("Always", [], [web], sandbox_ready=True), at="t1")
    ready = next(c for c in out["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "ContainersNotReady")
    assert ready["message"] == "containers with unready status: [web]"
    web.ready = True
    gated = PodView("Always", [], [web], sandbox_ready=True, readiness_gates={"example.com/lb": False})
    ready = next(c for c in pod_status(gated, at="t1")["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "ReadinessGatesNotReady")


def test_transition_time_changes_only_with_the_status() -> None:
    web = record("web", state=status.RUNNING, ready=True, started=True)
    view = PodView("Always", [], [web], sandbox_ready=True)
    first = pod_status(view, at="t1")["conditions"]
    assert pod_status(view, first, at="t2")["conditions"] == first
    web.ready = False
    later = {c["type"]: c["lastTransitionTime"] for c in pod_status(view, first, at="t3")["conditions"]}
    assert later["Ready"] == "t3" and later["Initialized"] == "t1"


def test_restart_keeps_the_last_termination() -> None:
    rec = record("a")
    rec.set_running(1, "t0")
    rec.set_terminated(done(2))
    rec.set_waiting("CrashLoopBackOff", "back-off 10s")
    api = rec.to_api()
    assert api["state"] == {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s"}}
    assert api["lastState"]["terminated"]["exitCode"] == 2
    rec.set_running(2, "t2")
    assert rec.to_api()["lastState"]["terminated"]["exitCode"] == 2


def test_disruption_condition_is_reported_at_node_shutdown() -> None:
    extra = {"type": "DisruptionTarget", "status": "True", "reason": "TerminationByKubelet"}
    view = PodView("Never", [], [record("a", state=status.TERMINATED, terminated=done(143))], terminal=True)
    view.extra_conditions = [extra]
    view.reason, view.message = "Terminated", "node shutdown"
    out = pod_status(view, at="t")
    assert out["phase"] == "Failed" and out["reason"] == "Terminated"
    assert out["conditions"][0]["type"] == "DisruptionTarget"


# ---------------------------------------------------------------- restarts, probes


def test_restart_policy() -> None:
    assert policy.should_restart("Always", 0)
    assert policy.should_restart("OnFailure", 1) and not policy.should_restart("OnFailure", 0)
    assert not policy.should_restart("Never", 1)


def test_backoff_is_immediate_then_doubles_to_the_cap() -> None:
    backoff = policy.Backoff(initial=10, cap=60)
    assert [backoff.next_delay(ran_for=1) for _ in range(6)] == [0, 10, 20, 40, 60, 60]
    assert backoff.next_delay(ran_for=120) == 0  # ran long enough: recovered


def test_probe_thresholds() -> None:
    readiness = probes.ProbeTracker.for_probe(probes.ProbeSpec("readiness", {"failureThreshold": 2}))
    assert readiness.result is False
    assert readiness.observe(True) and readiness.result
    assert not readiness.observe(False)  # one failure is below the threshold
    assert readiness.observe(False) and not readiness.result
    liveness = probes.ProbeTracker.for_probe(probes.ProbeSpec("liveness", {"successThreshold": 1}))
    assert liveness.result is True
    assert [liveness.observe(False) for _ in range(3)] == [False, False, True]


def test_probe_defaults_and_named_ports() -> None:
    spec = probes.ProbeSpec("readiness", {})
    assert (spec.period, spec.timeout, spec.failure_threshold, spec.success_threshold) == (10, 1, 3, 1)
    container = {"name": "c", "ports": [{"name": "http", "containerPort": 8000}]}
    assert probes.resolve_port("http", container) == 8000
    assert probes.resolve_port(9000, container) == 9000
    with pytest.raises(ValueError, match="not a named port"):
        probes.resolve_port("grpc", container)


def test_tcp_probe_against_a_closed_port_fails() -> None:
    ok, message = asyncio.run(probes.tcp_socket({"port": 1}, "127.0.0.1", {}, 1.0))
    assert not ok and "dial tcp 127.0.0.1:1" in message


# ---------------------------------------------------------------- environment


POD: dict[str, Any] = {
    "metadata": {"name": "p", "namespace": "ns", "uid": "u-1", "labels": {"app": "x"}},
    "spec": {"nodeName": "local-0", "serviceAccountName": "default"},
}


def test_env_order_expansion_and_downward_api() -> None:
    container = {
        "name": "c",
        "envFrom": [{"configMapRef": {"name": "base"}, "prefix": "CFG_"}],
        "env": [
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "URL", "value": "http://$(POD_IP):8000/$(LATER)"},
            {"name": "LATER", "value": "x"},
            {"name": "CFG_MODE", "value": "override"},
        ],
    }
    sources = envvars.EnvSources(config_maps={"base": {"data": {"MODE": "fast", "LEVEL": "3"}}}, pod_ip="198.18.0.4")
    env = envvars.container_env(POD, container, sources)
    assert env == {
        "CFG_MODE": "override",
        "CFG_LEVEL": "3",
        "POD_IP": "198.18.0.4",
        "NAME": "p",
        "APP": "x",
        "URL": "http://198.18.0.4:8000/$(LATER)",  # only variables defined before are expanded
        "LATER": "x",
    }
    command, args = envvars.command_line({"command": ["serve", "$(URL)"], "args": ["--ip=$(POD_IP)"]}, env)
    assert command == ["serve", "http://198.18.0.4:8000/$(LATER)"] and args == ["--ip=198.18.0.4"]


def test_missing_key_is_a_config_error_unless_optional() -> None:
    ref: dict[str, Any] = {"name": "K", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "k"}}}
    sources = envvars.EnvSources(config_maps={"cm": {"data": {}}})
    with pytest.raises(envvars.EnvError, match="couldn't find key k in configmap cm"):
        envvars.container_env(POD, {"env": [ref]}, sources)
    ref["valueFrom"]["configMapKeyRef"]["optional"] = True
    assert envvars.container_env(POD, {"env": [ref]}, sources) == {}
    missing = {"name": "S", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k"}}}
    with pytest.raises(envvars.EnvError, match='secret "nope" not found'):
        envvars.container_env(POD, {"env": [missing]}, sources)


def test_secret_values_are_decoded_and_references_listed() -> None:
    container = {
        "envFrom": [{"secretRef": {"name": "token"}}],
        "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "x"}}}],
    }
    assert envvars.references(container) == ({"cm"}, {"token"})
    sources = envvars.EnvSources(
        config_maps={"cm": {"data": {"x": "1"}}}, secrets={"token": {"data": {"HF_TOKEN": "aGk="}}}
    )
    assert envvars.container_env(POD, container, sources) == {"HF_TOKEN": "hi", "X": "1"}


def test_resource_field_ref_uses_limits_then_node_allocatable() -> None:
    container = {"resources": {"requests": {"cpu": "250m"}, "limits": {"memory": "1Gi"}}}
    sources = envvars.EnvSources(allocatable={"cpu": "2", "memory": "8Gi"})
    ref = envvars.resource_ref
    assert ref(container, {"resource": "requests.cpu", "divisor": "1m"}, sources) == "250"
    assert ref(container, {"resource": "requests.cpu"}, sources) == "1"  # rounded up
    assert ref(container, {"resource": "limits.memory", "divisor": "1Mi"}, sources) == "1024"
    assert ref(container, {"resource": "limits.cpu"}, sources) == "2"


@pytest.mark.parametrize(
    ("text", "value"), [("500m", 0.5), ("4Gi", 4 * 2**30), ("1e3", 1000), ("2", 2), ("1.5k", 1500), ("100n", 1e-7)]
)
def test_quantities(text: str, value: float) -> None:
    assert float(quantity.parse(text)) == pytest.approx(value)


def test_bad_quantity() -> None:
    with pytest.raises(ValueError, match="not a quantity"):
        quantity.parse("12 apples")


# ---------------------------------------------------------------- volumes


def test_config_map_items_select_keys() -> None:
    data = {"a": b"1", "b": b"2"}
    assert select_items(data, None, "cm", False) == data
    assert select_items(data, [{"key": "a", "path": "conf/a.txt"}], "cm", False) == {"conf/a.txt": b"1"}
    with pytest.raises(MountError, match="key 'c' not found"):
        select_items(data, [{"key": "c", "path": "c"}], "cm", False)


def test_sub_paths_are_created_and_checked(tmp_path: Path) -> None:
    container = {
        "volumeMounts": [
            {"name": "v", "mountPath": "/data"},
            {"name": "v", "mountPath": "/logs", "subPathExpr": "logs/$(POD_NAME)"},
        ]
    }
    mounts = container_mounts(container, {"v": tmp_path}, {"POD_NAME": "p"})
    assert mounts == [paths.Mount("/data", tmp_path), paths.Mount("/logs", tmp_path / "logs" / "p")]
    assert (tmp_path / "logs" / "p").is_dir()
    escape = {"volumeMounts": [{"name": "v", "mountPath": "/x", "subPath": "../etc"}]}
    with pytest.raises(MountError, match=r"without '\.\.'"):
        container_mounts(escape, {"v": tmp_path}, {})


# ---------------------------------------------------------------- termination message


def test_termination_message_from_file_or_log_tail(tmp_path: Path) -> None:
    message, log = tmp_path / "termination-log", tmp_path / "c.log"
    log.write_bytes(b"previous run\n" + b"".join(f"line {i}\n".encode() for i in range(100)))
    offset = len(b"previous run\n")
    message.write_text("")
    assert termination_message(message, "File", 1, log, offset) == ""
    tail = termination_message(message, "FallbackToLogsOnError", 1, log, offset)
    assert tail.splitlines()[-1] == "line 99" and "previous run" not in tail and len(tail.splitlines()) == 80
    assert termination_message(message, "FallbackToLogsOnError", 0, log, offset) == ""  # only on error
    message.write_text("x" * 5000)
    assert len(termination_message(message, "FallbackToLogsOnError", 1, log, offset)) == 4096


def test_exit_status_of_signals() -> None:
    assert exit_status(3) == (3, None)
    assert exit_status(-signal.SIGTERM) == (143, signal.SIGTERM)
    assert exit_status(-signal.SIGKILL) == (137, signal.SIGKILL)


# ---------------------------------------------------------------- node, lease, provisioner, triton


def config(**kw: Any) -> AgentConfig:
    base: dict[str, Any] = {
        "kubeconfig": Path("/k"),
        "state_dir": Path("/s"),
        "capacity": {"cpu": "2", "memory": "8Gi", "pods": "110"},
    }
    return AgentConfig(**{**base, **kw})


def test_node_is_labelled_and_never_annotated_for_kwok() -> None:
    manifest = node.node_manifest(
        config(gpus=2, gpu_product="NVIDIA-L4", taint=True), PodNetwork("198.18.0.0/16", "anyip", "")
    )
    labels = manifest["metadata"]["labels"]
    assert labels[NODE_LABEL] == "true" and labels["kubernetes.io/hostname"] == "local-0"
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-L4"
    assert not any(k.startswith("kwok") for k in manifest["metadata"]["annotations"])
    assert manifest["spec"]["taints"] == [{"key": NODE_LABEL, "value": "true", "effect": "NoSchedule"}]
    status_ = node.node_status(config(gpus=2), "v1.34.4", [], "t")
    assert status_["capacity"] == {"cpu": "2", "memory": "8Gi", "pods": "110", "nvidia.com/gpu": "2"}
    assert status_["allocatable"] == status_["capacity"]
    ready = next(c for c in status_["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True" and ready["lastHeartbeatTime"] == "t"


def test_taints_of_the_lifecycle_controller_are_kept() -> None:
    unreachable = {"key": "node.kubernetes.io/unreachable", "effect": "NoSchedule"}
    ours = {"key": NODE_LABEL, "value": "true", "effect": "NoSchedule"}
    assert node.merge_taints([unreachable, ours], want_ours=False) == [unreachable]
    assert node.merge_taints([unreachable], want_ours=True) == [unreachable, ours]


def test_lease_is_owned_by_the_node() -> None:
    lease = node.lease_manifest(config(), "node-uid")
    assert lease["metadata"]["namespace"] == "kube-node-lease"
    assert lease["metadata"]["ownerReferences"][0]["uid"] == "node-uid"
    assert lease["spec"]["holderIdentity"] == "local-0" and lease["spec"]["leaseDurationSeconds"] == 40


CLAIM: dict[str, Any] = {
    "metadata": {"name": "flotilla-artifacts", "namespace": "ml", "uid": "c-1"},
    "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "50Gi"}}},
    "status": {"phase": "Pending"},
}


def test_only_pending_classless_unbound_claims_are_provisioned() -> None:
    assert provisioner.wants_volume(CLAIM)
    assert provisioner.wants_volume({**CLAIM, "spec": {**CLAIM["spec"], "storageClassName": ""}})
    assert not provisioner.wants_volume({**CLAIM, "spec": {**CLAIM["spec"], "storageClassName": "fast"}})
    assert not provisioner.wants_volume({**CLAIM, "spec": {**CLAIM["spec"], "volumeName": "pv-1"}})
    assert not provisioner.wants_volume({**CLAIM, "status": {"phase": "Bound"}})


def test_provisioned_volume_is_pre_bound_and_retained(tmp_path: Path) -> None:
    directory = provisioner.volume_dir(tmp_path, CLAIM)
    assert directory == tmp_path / "ml" / "flotilla-artifacts"  # by name: a re-created claim finds its data
    pv = provisioner.pv_manifest(CLAIM, directory, "local-0")
    assert pv["metadata"]["name"] == "pvc-c-1"
    assert pv["spec"]["claimRef"] == {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "namespace": "ml",
        "name": "flotilla-artifacts",
        "uid": "c-1",
    }
    assert pv["spec"]["hostPath"]["path"] == str(directory)
    assert pv["spec"]["capacity"] == {"storage": "50Gi"} and pv["spec"]["storageClassName"] == ""
    assert pv["spec"]["persistentVolumeReclaimPolicy"] == "Retain"


def test_triton_gets_backends_and_binds_to_the_pod_ip() -> None:
    runtime = TritonRuntime(Path("/w/bin/tritonserver"), Path("/w/libs"), Path("/s/backends"))
    argv = runtime.argv(["tritonserver", "--model-repository=/m", "--http-address=198.18.0.3"], "198.18.0.3")
    assert argv[0] == "/w/bin/tritonserver"
    assert "--backend-directory=/s/backends" in argv
    assert argv.count("--http-address=198.18.0.3") == 1  # the container's own choice is kept
    assert "--grpc-address=198.18.0.3" in argv and "--metrics-address=198.18.0.3" in argv
    # This interpreter's libpython first (the stub must load the libpython its stdlib is for).
    libpython = python_libdir()
    assert runtime.env("/x")["LD_LIBRARY_PATH"] == ":".join([*([str(libpython)] if libpython else []), "/w/libs", "/x"])


def test_cli_builds_the_config() -> None:
    args = parser().parse_args(
        [
            "--kubeconfig",
            "/k",
            "--state-dir",
            "/s",
            "--gpus",
            "1",
            "--cpu",
            "16",
            "--label",
            "pool=local",
            "--image-alias",
            "a/b=c/d",
        ]
    )
    cfg = config_from_args(args)
    assert cfg.capacity["cpu"] == "16" and cfg.gpus == 1
    assert cfg.labels == {"pool": "local"} and cfg.image_aliases == {"a/b": "c/d"}
    assert cfg.node_capacity()["nvidia.com/gpu"] == "1"


# ---------------------------------------------------------------- processes (local, fast)


def test_stop_escalates_to_sigkill_and_reaches_the_whole_group(tmp_path: Path) -> None:
    # The leader ignores SIGTERM and has a child that would outlive it without group kills.
    script = (
        "import signal, subprocess, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "subprocess.Popen(['sleep', '60']); print('up', flush=True); time.sleep(60)"
    )

    async def scenario() -> tuple[int, list[int]]:
        spawned = await process.spawn(
            [sys.executable, "-c", script], dict(os.environ), tmp_path, tmp_path / "log", tmp_path / "pid.json"
        )
        while "up" not in (tmp_path / "log").read_text():
            await asyncio.sleep(0.05)
        members = [p for p in _group(spawned.pgid)]
        code = await process.stop(spawned, grace=0.3)
        return code, members

    code, members = asyncio.run(scenario())
    assert code == -signal.SIGKILL
    assert len(members) == 2
    time.sleep(0.1)
    assert not any(Path(f"/proc/{pid}").exists() and "Z" not in _state(pid) for pid in members)
    assert not (tmp_path / "pid.json").exists()


def test_stale_processes_of_a_crashed_agent_are_killed_but_reused_pids_are_not(tmp_path: Path) -> None:
    pods = tmp_path / "pods"
    (pods / "uid-a" / "pids").mkdir(parents=True)
    orphan = subprocess.Popen(["sleep", "60"], start_new_session=True)
    created = psutil.Process(orphan.pid).create_time()
    (pods / "uid-a" / "pids" / "c.json").write_text(
        f'{{"pid": {orphan.pid}, "pgid": {orphan.pid}, "created": {created}}}'
    )
    innocent = subprocess.Popen(["sleep", "60"], start_new_session=True)
    # A record whose pid now belongs to another process (start time differs): left alone.
    (pods / "uid-a" / "pids" / "d.json").write_text(
        f'{{"pid": {innocent.pid}, "pgid": {innocent.pid}, "created": 1.0}}'
    )
    try:
        assert process.cleanup_stale(pods) == [orphan.pid]
        assert orphan.wait(5) == -signal.SIGKILL
        assert innocent.poll() is None
        assert not list((pods / "uid-a" / "pids").iterdir())
    finally:
        innocent.kill()
        innocent.wait()


def _group(pgid: int) -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _pgid(int(p.name)) == pgid]


def _pgid(pid: int) -> int:
    try:
        return os.getpgid(pid)
    except OSError:
        return -1


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][:1]
    except OSError:
        return "Z"


# ---------------------------------------------------------------- watch errors: re-list and diff


class FakeRunner:
    """Stands in for PodRunner: records what the agent tells it."""

    made: ClassVar[list[FakeRunner]] = []

    def __init__(self, ctx: Any, pod: dict[str, Any]) -> None:
        FakeRunner.made.append(self)
        self.pod = pod
        self.namespace, self.name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        self.updates = 0
        self.vanished_called = False
        self.finished = asyncio.Event()

    def start(self) -> None:
        pass

    def update(self, pod: dict[str, Any]) -> None:
        self.updates += 1

    def vanished(self) -> None:
        self.vanished_called = True
        self.finished.set()

    def cleanup_files(self) -> None:
        pass


class BrokenWatchKube:
    """Each watch fails at once (a dropped connection); each list returns the next snapshot."""

    def __init__(self, snapshots: list[list[dict[str, Any]]]) -> None:
        self.snapshots = snapshots
        self.lists = 0

    async def list(self, res: Any, fields: Any = None, namespaced: bool = True) -> tuple[list[dict[str, Any]], str]:
        snapshot = self.snapshots[min(self.lists, len(self.snapshots) - 1)]
        self.lists += 1
        return snapshot, str(self.lists)

    async def watch(self, res: Any, version: str, fields: Any = None, namespaced: bool = True) -> Any:
        raise ConnectionResetError("watch dropped")
        yield  # an async generator, like Kube.watch


def test_agent_relists_after_a_watch_error_and_stops_pods_deleted_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from types import SimpleNamespace

    from processnode import agent as agent_module

    def listed(name: str) -> dict[str, Any]:
        return {"metadata": {"uid": f"uid-{name}", "namespace": "ns", "name": name}, "spec": {}, "status": {}}

    monkeypatch.setattr(agent_module, "PodRunner", FakeRunner)
    FakeRunner.made = []
    monkeypatch.setattr(agent_module, "RELIST_BACKOFF_S", (0.01,))
    kube = BrokenWatchKube([[listed("a"), listed("b")], [listed("a")]])
    agent = agent_module.Agent(config(state_dir=tmp_path))
    agent.ctx = SimpleNamespace(kube=kube)  # type: ignore[assignment]
    (tmp_path / "pods" / "uid-stale").mkdir(parents=True)  # a pod deleted while no agent ran

    async def scenario() -> tuple[Any, Any]:
        loop = asyncio.create_task(agent._guard("pods", agent._pods_loop))
        while kube.lists < 3:
            await asyncio.sleep(0.01)
        first = dict(agent.pods)
        agent.stop()
        loop.cancel()
        return first, agent.pods

    pods_after, _ = asyncio.run(scenario())
    assert set(pods_after) == {"uid-a"}  # b was dropped by the re-list
    runner_a, runner_b = FakeRunner.made  # one runner per pod, however often it is listed
    assert runner_a.updates >= 2 and not runner_a.vanished_called
    assert runner_b.vanished_called  # deleted while the watch was down: its processes are stopped
    assert not (tmp_path / "pods" / "uid-stale").exists()


def test_prestop_sleep_action_is_read_from_the_container_spec() -> None:
    from processnode.container import prestop_sleep_seconds

    assert prestop_sleep_seconds({"lifecycle": {"preStop": {"sleep": {"seconds": 5}}}}) == 5.0
    assert prestop_sleep_seconds({"lifecycle": {"preStop": {"exec": {"command": ["true"]}}}}) == 0.0
    assert prestop_sleep_seconds({}) == 0.0


def test_ready_endpoints_from_endpointslices() -> None:
    from demo.client import ready_endpoints

    slices = {
        "items": [
            {
                "ports": [{"name": "grpc", "port": 8001}, {"name": "http", "port": 8000}],
                "endpoints": [
                    {"addresses": ["198.18.0.3"], "conditions": {"ready": True}},
                    {"addresses": ["198.18.0.4"], "conditions": {"ready": False, "terminating": True}},
                ],
            }
        ]
    }
    assert ready_endpoints(slices) == ["http://198.18.0.3:8000"]
    assert ready_endpoints({"items": []}) == []
