"""Start and stop a process node in the background (tests, the demo).

    node = processnode.start(cluster)            # or start(kubeconfig_path, state_dir=...)
    ... pods with nodeSelector node.node_selector run as local processes ...
    node.stop()

The agent is a child process (`python -m processnode`) watching its parent: if the caller
dies without stop(), the agent shuts itself down and stops its pods.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import psutil

from . import process
from .config import DEFAULT_NAME, NODE_LABEL
from .network import DEFAULT_CIDR

E2E_DIR = Path(__file__).resolve().parents[1]
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 45.0


class ProcessNodeError(RuntimeError):
    pass


class HasKubeconfig(Protocol):
    @property
    def kubeconfig(self) -> Path: ...


@dataclass
class ProcessNode:
    name: str
    state_dir: Path
    kubeconfig: Path
    process: subprocess.Popen[bytes]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def node_selector(self) -> dict[str, str]:
        """Selects this node: the process-node label plus its hostname."""
        return {NODE_LABEL: "true", "kubernetes.io/hostname": self.name}

    @property
    def pod_network(self) -> str:
        return str(self.info.get("podNetwork", ""))

    @property
    def endpoints_work(self) -> bool:
        """False in the loopback fallback: the API server rejects those EndpointSlice addresses."""
        return self.info.get("podNetworkMode") == "anyip"

    @property
    def agent_log(self) -> Path:
        return self.state_dir / "agent.log"

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_path(self, namespace: str, pod: str, container: str) -> Path:
        return self.state_dir / "logs" / f"{namespace}_{pod}_{container}.log"

    def container_root(self, pod_uid: str, container: str) -> Path:
        """The host directory a container sees as "/" for its mounts, /tmp and termination file."""
        return self.state_dir / "pods" / pod_uid / "root" / container

    def volume_dir(self, namespace: str, claim: str) -> Path:
        """Host directory of a claim the node's provisioner bound."""
        return self.state_dir / "volumes" / namespace / claim

    def rss_bytes(self) -> int:
        return int(psutil.Process(self.pid).memory_info().rss)

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = STOP_TIMEOUT_S, delete_node: bool = False) -> None:
        """SIGTERM the agent (it stops its pods); SIGKILL and clean up after it if it hangs."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        process.cleanup_stale(self.state_dir / "pods")
        if delete_node:
            delete_node_object(self.kubeconfig, self.name)

    def __enter__(self) -> ProcessNode:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def delete_node_object(kubeconfig: Path, name: str) -> None:
    """Remove the Node: the pod GC then removes pods still bound to it."""
    from lightkube import Client, KubeConfig
    from lightkube.core.exceptions import ApiError
    from lightkube.resources.core_v1 import Node

    client = Client(config=KubeConfig.from_file(kubeconfig))
    try:
        client.delete(Node, name)
    except ApiError as err:
        if err.status.code != 404:
            raise
    finally:
        client.close()


def _kubeconfig(target: HasKubeconfig | str | os.PathLike[str]) -> Path:
    if isinstance(target, str | os.PathLike):
        return Path(target).resolve()
    return Path(target.kubeconfig).resolve()


def _default_state_dir(kubeconfig: Path, name: str) -> Path:
    # Beside the cluster's own state (the kubeconfig lives in the cluster's state dir).
    return kubeconfig.parent / "processnode" / name


def start(
    target: HasKubeconfig | str | os.PathLike[str],
    *,
    name: str = DEFAULT_NAME,
    state_dir: Path | None = None,
    gpus: int = 0,
    gpu_product: str = "",
    cpu: str | None = None,
    memory: str | None = None,
    labels: dict[str, str] | None = None,
    taint: bool = False,
    pod_cidr: str = DEFAULT_CIDR,
    image_aliases: dict[str, str] | None = None,
    backoff_seconds: float | None = None,
    extra_args: tuple[str, ...] = (),
    ready_timeout: float = READY_TIMEOUT_S,
    detach: bool = False,
) -> ProcessNode:
    """Start the agent for a cluster (anything with `.kubeconfig`, or a kubeconfig path) and
    return once its Node is registered and Ready.

    `detach=True` (the demo) lets the agent outlive the caller, in its own session; stop it
    later by the pid in `<state>/agent.json` (see `stop_detached`)."""
    kubeconfig = _kubeconfig(target)
    state = (state_dir or _default_state_dir(kubeconfig, name)).resolve()
    state.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "processnode", "--kubeconfig", str(kubeconfig), "--name", name]
    argv += ["--state-dir", str(state), "--pod-cidr", pod_cidr]
    argv += [] if detach else ["--parent-pid", str(os.getpid())]
    argv += ["--gpus", str(gpus)] + (["--gpu-product", gpu_product] if gpu_product else [])
    argv += [f"--cpu={cpu}"] if cpu else []
    argv += [f"--memory={memory}"] if memory else []
    argv += [f"--label={k}={v}" for k, v in (labels or {}).items()]
    argv += [f"--image-alias={k}={v}" for k, v in (image_aliases or {}).items()]
    argv += ["--taint"] if taint else []
    argv += [f"--backoff-seconds={backoff_seconds}"] if backoff_seconds is not None else []
    argv += list(extra_args)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(E2E_DIR), os.environ.get("PYTHONPATH", "")]).rstrip(":")}
    ready_file = state / "agent.json"
    ready_file.unlink(missing_ok=True)
    with (state / "agent.log").open("ab") as log:
        proc = subprocess.Popen(
            argv, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=detach
        )
    node = ProcessNode(name, state, kubeconfig, proc)
    node.info = _wait_ready(node, ready_file, ready_timeout)
    return node


def stop_detached(state_dir: Path, timeout: float = STOP_TIMEOUT_S) -> int | None:
    """Stop an agent started with detach=True, found by its state directory; its pid or None."""
    ready_file = state_dir / "agent.json"
    try:
        pid = int(json.loads(ready_file.read_text())["pid"])
        agent = psutil.Process(pid)
    except (OSError, ValueError, KeyError, psutil.NoSuchProcess):
        process.cleanup_stale(state_dir / "pods")
        return None
    agent.terminate()
    try:
        agent.wait(timeout)
    except psutil.TimeoutExpired:
        agent.kill()
    process.cleanup_stale(state_dir / "pods")
    ready_file.unlink(missing_ok=True)
    return pid


def _wait_ready(node: ProcessNode, ready_file: Path, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if node.process.poll() is not None:
            raise ProcessNodeError(f"process node {node.name} exited ({node.process.returncode}): {_tail(node)}")
        if ready_file.is_file():
            info: dict[str, Any] = json.loads(ready_file.read_text())
            if info.get("pid") == node.pid:
                return info
        time.sleep(0.1)
    node.stop()
    raise ProcessNodeError(f"process node {node.name} not ready after {timeout:.0f}s: {_tail(node)}")


def _tail(node: ProcessNode) -> str:
    try:
        lines = node.agent_log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    return " | ".join(lines[-5:]) + f" (log: {node.agent_log})"
