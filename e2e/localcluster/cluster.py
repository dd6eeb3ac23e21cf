"""Bring the local cluster up (or reuse it), tear it down, and describe it.

kwokctl (`--runtime binary`) starts etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and the kwok controller from the cached binaries, generates the PKI and
records one pid file per component. Everything else is ours: the fixed ports, the
kubeconfig, the simulated fleet, readiness, the Gateway API CRDs (gatewayapi.py), the
supervisor that restarts components which exit (supervisor.py), and teardown by pid.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from . import gatewayapi, supervisor
from .build import BuildError, ensure_binaries
from .config import CLUSTER_NAME, LOOPBACK, Settings, render_kwokctl_config
from .kubeapi import ApiError, KubeAPI, Pki
from .kubectl import find_kubectl
from .nodes import POOL_LABEL, load_pools, node_manifests
from .procs import cmdline, is_ours, port_free, port_owner, processes_mentioning, read_pid_files, stop
from .versions import Versions, load_versions

COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok-controller")
RETRY_UP = "retry with: make cluster-up"
KWOKCTL_TIMEOUT_S = 180
READY_TIMEOUT_S = 120.0
PORT_RELEASE_S = 10.0

T = TypeVar("T")


class ClusterError(RuntimeError):
    """A one-line cause, fit to print as the last line of a failed `make cluster-up`."""


def progress(message: str) -> None:
    print(f"[cluster] {message}", flush=True)


def wait_for(
    condition: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    interval: float = 0.25,
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Poll `condition` until it returns something truthy and return that.

    Exceptions listed in `ignore` count as "not yet" (an API server still starting refuses
    connections); the last one is named in the TimeoutError so a failure says why.
    """
    deadline = time.monotonic() + timeout
    last: str = "condition never held"
    while True:
        try:
            result = condition()
            if result:
                return result
        except ignore as err:
            last = f"{type(err).__name__}: {err}"
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what} ({last})")
        time.sleep(interval)


@dataclass
class Cluster:
    """A running local cluster, as tests and tools use it."""

    settings: Settings
    kubectl_path: Path
    server_version: str
    # Seconds from the start of `up` to each milestone (bench/cluster.py reports them).
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def kubeconfig(self) -> Path:
        return self.settings.kubeconfig

    @property
    def api(self) -> KubeAPI:
        return KubeAPI(self.settings.api_url, Pki.in_dir(self.settings.cluster_dir / "pki"))

    def env(self) -> dict[str, str]:
        """os.environ plus KUBECONFIG, for subprocesses (kopf, helm, the operator)."""
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this cluster; on failure (check=True) raise with its stderr."""
        argv = [str(self.kubectl_path), f"--kubeconfig={self.kubeconfig}", *args]
        proc = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    def kubectl_json(self, *args: str) -> Any:
        return json.loads(self.kubectl(*args, "-o", "json").stdout)


@dataclass
class Status:
    state: str  # "running", "stale" (something left behind, not healthy) or "absent"
    reason: str
    settings: Settings
    components: dict[str, int | None] = field(default_factory=dict)  # name -> live pid
    server_version: str = ""
    nodes_ready: int = 0
    nodes_total: int = 0
    supervisor: int | None = None  # pid of the process restarting components that exit
    restarts: dict[str, int] = field(default_factory=dict)  # name -> restarts by the supervisor
    gateway_api: str = ""  # the Gateway API bundle version installed, "" when none

    @property
    def running(self) -> bool:
        return self.state == "running"


# ---------------------------------------------------------------- inspection


def _component_pids(settings: Settings) -> dict[str, int | None]:
    recorded = read_pid_files(settings.cluster_dir / "pids")
    marker = str(settings.cluster_dir)
    return {name: pid if (pid := recorded.get(name)) and is_ours(pid, marker) else None for name in COMPONENTS}


def _api(settings: Settings) -> KubeAPI | None:
    pki = Pki.in_dir(settings.cluster_dir / "pki")
    return KubeAPI(settings.api_url, pki, timeout_s=3.0) if pki.key.is_file() else None


def _readyz(api: KubeAPI) -> bool:
    return str(api.get("/readyz")).strip() == "ok"


def inspect(settings: Settings) -> Status:
    """What is there now: running, stale (leftovers of a crash), or nothing."""
    if not settings.cluster_dir.exists() and not settings.state_file.exists():
        return Status("absent", "no cluster", settings)
    components = _component_pids(settings)
    watcher, restarts = supervisor.running_pid(settings), supervisor.restart_counts(settings)

    def stale(reason: str) -> Status:
        return Status("stale", reason, settings, components, supervisor=watcher, restarts=restarts)

    dead = [name for name, pid in components.items() if pid is None]
    if dead:
        return stale(f"not running: {', '.join(dead)}")
    api = _api(settings)
    try:
        if api is None or not _readyz(api):
            return stale("API server is not ready")
        version = str(api.get("/version")["gitVersion"])
        nodes = api.get(f"/api/v1/nodes?labelSelector={POOL_LABEL}")["items"]
        gateway = gatewayapi.installed_bundle(api)
    except (OSError, ApiError) as err:
        return stale(f"API server does not answer: {err}")
    ready = sum(1 for n in nodes if _node_ready(n))
    return Status("running", "healthy", settings, components, version, ready, len(nodes), watcher, restarts, gateway)


def _node_ready(node: dict[str, Any]) -> bool:
    conditions = node.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


# ---------------------------------------------------------------- bring-up


@contextlib.contextmanager
def _locked(settings: Settings) -> Iterator[None]:
    """One up/down at a time per state dir (parallel pytest sessions, a make in another shell)."""
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    with (settings.state_dir / ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _binaries(versions: Versions) -> dict[str, Path]:
    """Cached binaries (building what is missing) plus a kubectl within skew."""
    kubectl = find_kubectl(versions)
    groups = ("kubernetes", "etcd", "kwok", *(("gateway-api",) if gatewayapi.enabled() else ()))
    try:
        binaries = ensure_binaries(versions, kubectl_found=kubectl is not None, only=groups)
    except BuildError as err:
        raise ClusterError(str(err)) from None
    if kubectl is not None:
        binaries["kubectl"] = kubectl
    return binaries


def check_ports(settings: Settings) -> None:
    for name, port in settings.ports.items():
        if not port_free(port) and not _released_soon(port):
            raise ClusterError(
                f"port {port} ({name}) on {LOOPBACK} is in use by {port_owner(port)}: stop it, or pick another "
                f"range with FLOTILLA_CLUSTER_PORT_BASE (now {settings.port_base}, uses {len(settings.ports)} ports); "
                f"{RETRY_UP}"
            )


def _released_soon(port: int) -> bool:
    """A socket of a process that is just exiting holds the port for a moment; a listener
    that `psutil` can name is a real conflict and fails at once."""
    if port_owner(port) != "another process":
        return False
    try:
        return wait_for(lambda: port_free(port), timeout=PORT_RELEASE_S, what=f"port {port} to be released")
    except TimeoutError:
        return False


def _kwokctl_failure(output: list[str], settings: Settings) -> str:
    """The most telling line: kwokctl's own error, else the end of a component's log."""
    errors = [_log_message(ln) for ln in output if _log_level(ln) == "ERROR" or ln.startswith("Error:")]
    if errors:
        return errors[-1]
    for name in COMPONENTS:
        log = settings.cluster_dir / "logs" / f"{name}.log"
        if log.is_file() and (lines := log.read_text(errors="replace").strip().splitlines()):
            return f"{name}: {_log_message(lines[-1])[:300]}"
    return _log_message(output[-1]) if output else "no output"


def _log_record(line: str) -> dict[str, Any] | None:
    """kwok and kwokctl log one JSON object per line when not on a terminal."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _log_level(line: str) -> str:
    record = _log_record(line)
    return str(record.get("level", "")) if record else ""


def _log_message(line: str) -> str:
    """The gist of a log line: message plus error, without time, source and ids."""
    record = _log_record(line)
    if record is None:
        return line.strip()
    err = f": {record['err']}" if record.get("err") else ""
    return f"{record.get('msg', '')}{err}"


def _run_kwokctl(settings: Settings, kwokctl: Path, args: list[str], timeout_s: float) -> tuple[int, list[str]]:
    env = {**os.environ, "KWOK_WORKDIR": str(settings.kwok_workdir)}
    argv = [str(kwokctl), "-c", str(settings.kwokctl_config), "--name", CLUSTER_NAME, *args]
    output: list[str] = []
    with settings.log_file.open("a") as log:
        log.write(f"$ {' '.join(argv)}\n")
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        watchdog = threading.Timer(timeout_s, proc.kill)  # kwokctl silent and stuck: give up
        watchdog.start()
        try:
            for line in proc.stdout:
                log.write(line)
                output.append(line.rstrip())
                if _log_level(line) in ("INFO", "WARN"):
                    progress(f"  kwokctl: {_log_message(line)}")
            code = proc.wait()
        finally:
            watchdog.cancel()
    return code, output


def _create(settings: Settings, versions: Versions, binaries: dict[str, Path]) -> None:
    settings.kwokctl_config.write_text(render_kwokctl_config(settings, versions, binaries))
    ports = settings.ports
    progress(
        f"starting etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok on {LOOPBACK}:"
        f"{min(ports.values())}-{max(ports.values())} (state in {settings.state_dir})"
    )
    code, output = _run_kwokctl(
        settings,
        binaries["kwokctl"],
        ["create", "cluster", "--kubeconfig=", f"--timeout={KWOKCTL_TIMEOUT_S}s"],
        KWOKCTL_TIMEOUT_S + 30,
    )
    if code != 0:
        cause = _kwokctl_failure(output, settings)
        _stop_processes(settings)  # leave logs for debugging; the next `up` clears them
        raise ClusterError(
            f"kwokctl create cluster failed: {cause}; logs in {settings.cluster_dir / 'logs'}; {RETRY_UP}"
        )


def write_kubeconfig(settings: Settings) -> None:
    """A self-contained kubeconfig (certificates inline) so it works from any directory."""
    pki = Pki.in_dir(settings.cluster_dir / "pki")

    def b64(path: Path) -> str:
        return base64.b64encode(path.read_bytes()).decode()

    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": CLUSTER_NAME, "cluster": {"server": settings.api_url, "certificate-authority-data": b64(pki.ca)}}
        ],
        "users": [
            {"name": "admin", "user": {"client-certificate-data": b64(pki.cert), "client-key-data": b64(pki.key)}}
        ],
        "contexts": [{"name": CLUSTER_NAME, "context": {"cluster": CLUSTER_NAME, "user": "admin"}}],
        "current-context": CLUSTER_NAME,
    }
    tmp = settings.kubeconfig.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
    tmp.chmod(0o600)
    tmp.replace(settings.kubeconfig)


def apply_nodes(api: KubeAPI, manifests: list[dict[str, Any]]) -> None:
    """Make the simulated fleet match the node file: create, update, delete extras."""
    wanted = {m["metadata"]["name"]: m for m in manifests}
    for name, manifest in wanted.items():
        try:
            api.post("/api/v1/nodes", manifest)
        except ApiError as err:
            if err.status != 409:
                raise
            # Already there (a reused cluster): converge labels, taints and capacity.
            api.merge_patch(f"/api/v1/nodes/{name}", {"metadata": manifest["metadata"], "spec": manifest["spec"]})
            api.merge_patch(f"/api/v1/nodes/{name}/status", {"status": manifest["status"]})
    for node in api.get(f"/api/v1/nodes?labelSelector={POOL_LABEL}")["items"]:
        if node["metadata"]["name"] not in wanted:
            api.delete(f"/api/v1/nodes/{node['metadata']['name']}")


def _wait_ready(
    settings: Settings, manifests: list[dict[str, Any]], started: float, timings: dict[str, float]
) -> KubeAPI:
    api = KubeAPI(settings.api_url, Pki.in_dir(settings.cluster_dir / "pki"))
    wait_for(lambda: _readyz(api), timeout=READY_TIMEOUT_S, what="the API server's /readyz", ignore=(OSError, ApiError))
    timings["api_ready_s"] = time.monotonic() - started
    progress(f"API ready at {settings.api_url} ({timings['api_ready_s']:.1f}s)")
    apply_nodes(api, manifests)
    wait_for(
        lambda: api.exists("/api/v1/namespaces/default/serviceaccounts/default"),
        timeout=READY_TIMEOUT_S,
        what="the default ServiceAccount (created by kube-controller-manager)",
        ignore=(OSError, ApiError),
    )
    names = {m["metadata"]["name"] for m in manifests}

    def nodes_ready() -> bool:
        nodes = api.get(f"/api/v1/nodes?labelSelector={POOL_LABEL}")["items"]
        return {n["metadata"]["name"] for n in nodes if _node_ready(n)} >= names

    wait_for(nodes_ready, timeout=READY_TIMEOUT_S, what=f"{len(names)} nodes Ready (KWOK)", ignore=(OSError, ApiError))
    timings["nodes_ready_s"] = time.monotonic() - started
    progress(f"{len(names)} simulated nodes Ready ({timings['nodes_ready_s']:.1f}s)")
    return api


def _healed(settings: Settings, current: Status) -> Status:
    """A component down while the supervisor runs is most likely being restarted (after a
    backoff of at most 30 s): give it that long before clearing the whole cluster."""
    progress(f"{current.reason}; waiting for the supervisor (pid {current.supervisor}) to restart it")

    def healed() -> Status | None:
        status = inspect(settings)
        return status if status.running else None

    try:
        return wait_for(
            healed,
            timeout=supervisor.MAX_BACKOFF_S + 15,
            what="the supervisor to restart it",
            interval=1.0,
        )
    except TimeoutError:
        return inspect(settings)


def _gateway_api(settings: Settings, timings: dict[str, float], started: float) -> None:
    """Install the Gateway API CRDs, or remove them with FLOTILLA_CLUSTER_GATEWAY_API=0."""
    api = KubeAPI(settings.api_url, Pki.in_dir(settings.cluster_dir / "pki"), timeout_s=gatewayapi.TIMEOUT_S)
    try:
        if gatewayapi.enabled():
            names = gatewayapi.apply(api)
            timings["gateway_api_s"] = time.monotonic() - started
            took = timings["gateway_api_s"] - timings.get("nodes_ready_s", 0.0)
            progress(f"Gateway API {load_versions().gateway_api}: {len(names)} CRDs Established ({took:.1f}s)")
        elif removed := gatewayapi.remove(api):
            progress(f"{gatewayapi.ENV}=0: removed {len(removed)} Gateway API CRDs")
    except (TimeoutError, OSError, ApiError, FileNotFoundError) as err:
        raise ClusterError(f"Gateway API CRDs: {err}; {RETRY_UP}") from None


def up(settings: Settings | None = None) -> Cluster:
    """Start the cluster, or reuse a healthy one; return when it can run pods."""
    settings = settings or Settings.from_env()
    started = time.monotonic()
    versions = load_versions()
    manifests = node_manifests(load_pools())  # a bad node file fails before anything starts
    timings: dict[str, float] = {}
    with _locked(settings):
        binaries = _binaries(versions)
        timings["binaries_s"] = time.monotonic() - started
        current = inspect(settings)
        if current.state == "stale" and current.supervisor is not None:
            current = _healed(settings, current)
        if current.running:
            progress(f"reusing the running cluster at {settings.api_url}")
        else:
            if current.state == "stale":
                progress(f"clearing a stale cluster ({current.reason})")
            # Also when "absent": a deleted state dir can leave components running from it.
            if (stopped := _teardown(settings)) and current.state == "absent":
                progress(f"stopped {len(stopped)} leftover processes of {settings.cluster_dir}")
            settings.state_dir.mkdir(parents=True, exist_ok=True)
            check_ports(settings)
            _create(settings, versions, binaries)
        write_kubeconfig(settings)
        try:
            api = _wait_ready(settings, manifests, started, timings)
        except TimeoutError as err:
            raise ClusterError(f"{err}; logs in {settings.cluster_dir / 'logs'}; {RETRY_UP}") from None
        _gateway_api(settings, timings, started)
        try:
            supervisor.start(settings)
        except RuntimeError as err:
            raise ClusterError(f"{err}; {RETRY_UP}") from None
        version = str(api.get("/version")["gitVersion"])
        settings.state_file.write_text(
            json.dumps({"api": settings.api_url, "ports": settings.ports, "kubernetes": version}, indent=2) + "\n"
        )
    timings["total_s"] = time.monotonic() - started
    progress(f"ready in {timings['total_s']:.1f}s: export KUBECONFIG={settings.kubeconfig}")
    return Cluster(settings, binaries["kubectl"], version, timings)


def ensure_up(settings: Settings | None = None) -> Cluster:
    """The cluster tests use: the running one if healthy, else a fresh one (same as `up`)."""
    return up(settings)


# ---------------------------------------------------------------- teardown


# Clients first, then the API server, then etcd: stopped all at once, kube-apiserver spends
# ~20 s retrying a vanished etcd before it exits; in this order the whole stop takes ~1.5 s.
STOP_ORDER = (("kwok-controller", "kube-controller-manager", "kube-scheduler"), ("kube-apiserver",), ("etcd",))


def _stop_processes(settings: Settings) -> list[int]:
    # The supervisor first: it would restart what is stopped next.
    supervised = supervisor.stop_supervisor(settings)
    marker = str(settings.cluster_dir)
    named = {pid: name for name, pid in read_pid_files(settings.cluster_dir / "pids").items() if is_ours(pid, marker)}
    for pid in processes_mentioning(marker, COMPONENTS):
        named.setdefault(pid, Path(cmdline(pid).split(" ")[0]).name)
    stopped: list[int] = [supervised] if supervised else []
    for stage in STOP_ORDER:
        stopped += stop([pid for pid, name in named.items() if name in stage])
    return stopped + stop([pid for pid, name in named.items() if pid not in stopped])


def _teardown(settings: Settings) -> list[int]:
    stopped = _stop_processes(settings)
    shutil.rmtree(settings.kwok_workdir, ignore_errors=True)
    for path in (settings.kubeconfig, settings.state_file, settings.kwokctl_config):
        path.unlink(missing_ok=True)
    return stopped


def down(settings: Settings | None = None) -> list[int]:
    """Stop every process this cluster started (by pid) and remove its data."""
    settings = settings or Settings.from_env()
    if not settings.state_dir.exists():
        progress("no cluster to stop")
        return []
    with _locked(settings):
        stopped = _teardown(settings)
    for pid in stopped:
        progress(f"stopped pid {pid}")
    progress(f"cluster removed ({settings.kwok_workdir})" if stopped else "no cluster processes were running")
    return stopped


def describe(status: Status) -> list[str]:
    """Human lines for `status`."""
    settings = status.settings
    lines = [f"state: {status.state} ({status.reason})", f"api: {settings.api_url}"]
    if status.server_version:
        lines.append(f"version: {status.server_version}")
    for name, pid in status.components.items():
        restarts = status.restarts.get(name, 0)
        lines.append(f"  {name:<24} {'pid ' + str(pid) if pid else 'not running':<12} restarts: {restarts}")
    if status.state != "absent":
        watcher = f"pid {status.supervisor}" if status.supervisor else "not running (`make cluster-up` starts it)"
        lines.append(f"  {'supervisor':<24} {watcher}")
    if status.running:
        lines.append(f"nodes: {status.nodes_ready}/{status.nodes_total} Ready")
        lines.append(f"gateway api: {status.gateway_api or 'not installed'}")
        lines.append(f"kubeconfig: {settings.kubeconfig}")
    lines.append(f"ports: {', '.join(f'{k}={v}' for k, v in settings.ports.items())}")
    return lines


__all__ = [
    "Cluster",
    "ClusterError",
    "Settings",
    "Status",
    "down",
    "ensure_up",
    "inspect",
    "up",
    "wait_for",
]
