"""Run the operator as a real process, for integration tests, benchmarks and the demo
(the way `kopf.testing.KopfRunner` serves kopf's own tests, but out of process, so a test
can kill and restart it)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """SIGTERM a child process started here, SIGKILL it if it outlives `timeout`."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class OperatorProcess:
    """`python -m flotilla run` with a kubeconfig and FLOTILLA_* settings; logs to a file."""

    def __init__(
        self, kubeconfig: Path, log_path: Path, namespaces: list[str], settings: Mapping[str, str] | None = None
    ) -> None:
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.namespaces = namespaces
        self.metrics_port = free_port()
        self.settings = {"FLOTILLA_METRICS_PORT": str(self.metrics_port), **(settings or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self, detach: bool = False) -> None:
        """Start it; `detach=True` lets it outlive this process (the demo), pid in `pid_file`."""
        env = {**os.environ, **self.settings, "KUBECONFIG": str(self.kubeconfig), "PYTHONUNBUFFERED": "1"}
        argv = [sys.executable, "-m", "flotilla", "run", "--liveness", ""]
        for ns in self.namespaces:
            argv += ["--namespace", ns]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=detach
            )
        self.pid_file.write_text(str(self.proc.pid))

    @property
    def pid_file(self) -> Path:
        return self.log_path.with_suffix(".pid")

    def stop(self, timeout: float = 30) -> None:
        stop_process(self.proc, timeout)

    @staticmethod
    def stop_detached(pid_file: Path, timeout: float = 30) -> int | None:
        """Stop an operator started with detach=True by its pid file; its pid or None."""
        try:
            pid = int(pid_file.read_text())
            os.kill(pid, signal.SIGTERM)
        except (OSError, ValueError):
            return None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.2)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
        pid_file.unlink(missing_ok=True)
        return pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())

    def metric(self, name: str, **labels: str) -> float:
        """Sum of a metric's samples whose labels include `labels` (0 when absent)."""
        total = 0.0
        for line in self.metrics().splitlines():
            if not line.startswith(name) or line.startswith("#"):
                continue
            series, _, value = line.rpartition(" ")
            if series.split("{")[0] != name:
                continue
            if all(f'{k}="{v}"' in series for k, v in labels.items()):
                total += float(value)
        return total


def unrelated_objects(namespace: str, count: int, prefix: str = "noise") -> dict[str, object]:
    """A kubectl List of `count` objects that are not the operator's (PVCs, Pods, ConfigMaps in
    equal shares), as an application's namespace holds them: what its watches must not carry.
    The Pods are scheduling-gated, so they stay Pending without costing the scheduler a try."""
    items: list[dict[str, object]] = []
    for i in range(count):
        meta = {"name": f"{prefix}-{i:05d}", "namespace": namespace, "labels": {"app": prefix}}
        kind = ("PersistentVolumeClaim", "Pod", "ConfigMap")[i % 3]
        if kind == "PersistentVolumeClaim":
            spec: dict[str, object] = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
            items.append({"apiVersion": "v1", "kind": kind, "metadata": meta, "spec": spec})
        elif kind == "Pod":
            spec = {
                "schedulingGates": [{"name": "flotilla.dev/never"}],
                "containers": [{"name": "app", "image": "registry.invalid/app:1"}],
            }
            items.append({"apiVersion": "v1", "kind": kind, "metadata": meta, "spec": spec})
        else:
            items.append({"apiVersion": "v1", "kind": kind, "metadata": meta, "data": {"key": "x" * 512}})
    return {"apiVersion": "v1", "kind": "List", "items": items}
