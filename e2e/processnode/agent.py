"""The node agent: registration, heartbeats, the pods bound to the node, the provisioner.

Watches are list-then-watch loops: any error (a dropped connection, 410 Gone, an API
server restart) leads to a fresh list, which is diffed against what the agent holds, so
no deletion is missed while the watch was down.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from lightkube import KubeConfig
from lightkube.resources.core_v1 import PersistentVolumeClaim, Pod

from . import network, process
from .config import AgentConfig
from .context import NodeContext
from .events import Events, node_ref
from .images import ImageTable
from .ipam import DEFAULT_LOCK_DIR, Ipam
from .kube import Kube
from .node import NodeAgent
from .pod import PodRunner, is_terminal
from .provisioner import Provisioner

Obj = dict[str, Any]
log = logging.getLogger(__name__)
RELIST_BACKOFF_S = (0.5, 1.0, 2.0, 5.0)


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.pods: dict[str, PodRunner] = {}
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.ctx: NodeContext | None = None
        self.node: NodeAgent | None = None
        self._locks: list[int] = []

    # ------------------------------------------------------------ start and stop

    def _prepare_state(self) -> None:
        """Kill what a crashed predecessor left running; keep volumes and logs."""
        for directory in (self.config.state_dir, self.config.pods_dir, self.config.logs_dir, self.config.volumes_dir):
            directory.mkdir(parents=True, exist_ok=True)
        self._locks = [
            exclusive_lock(self.config.state_dir / "agent.lock", f"state directory {self.config.state_dir}"),
            exclusive_lock(node_lock_path(self.config), f"node {self.config.name} of {self.config.kubeconfig}"),
        ]
        self.config.ready_file.unlink(missing_ok=True)
        killed = process.cleanup_stale(self.config.pods_dir)
        if killed:
            log.warning("killed %d process groups left by an earlier agent: %s", len(killed), killed)

    async def _setup(self) -> NodeContext:
        config = self.config
        pod_network = network.setup(config.pod_cidr, config.add_route)
        log.info("pod network: %s %s (%s)", pod_network.mode, pod_network.cidr, pod_network.note)
        kube = Kube(config.kubeconfig)
        ipam = Ipam(pod_network.cidr, config.ipam_dir or DEFAULT_LOCK_DIR, config.state_dir / "ipam-cursor")
        images = ImageTable().with_aliases(config.image_aliases)
        ctx = NodeContext(config, kube, ipam, pod_network, images, Events(kube, config.name))
        self.node = NodeAgent(kube, config, pod_network)
        node = await self.node.register()
        if not pod_network.endpoints_work:
            ctx.events.emit(node_ref(config.name, node["metadata"]["uid"]), "Warning", "PodNetwork", pod_network.note)
        ctx.events.emit(
            node_ref(config.name, node["metadata"]["uid"]),
            "Normal",
            "Starting",
            f"Started process node agent (pid {os.getpid()}, state {config.state_dir}, pods on {pod_network.cidr})",
        )
        return ctx

    def _write_ready_file(self, ctx: NodeContext) -> None:
        info = {
            "pid": os.getpid(),
            "node": self.config.name,
            "podNetwork": ctx.network.cidr,
            "podNetworkMode": ctx.network.mode,
            "note": ctx.network.note,
        }
        tmp = self.config.ready_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(info, indent=2) + "\n")
        tmp.replace(self.config.ready_file)

    async def run(self) -> None:
        self._prepare_state()
        self.ctx = await self._setup()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        self._tasks = [
            loop.create_task(self._guard("lease", self._lease_loop)),
            loop.create_task(self._guard("node status", self._status_loop)),
            loop.create_task(self._guard("pods", self._pods_loop)),
            loop.create_task(self._guard("claims", self._claims_loop)),
        ]
        if self.config.parent_pid:
            self._tasks.append(loop.create_task(self._watch_parent(self.config.parent_pid)))
        self._write_ready_file(self.ctx)
        log.info("node %s is Ready", self.config.name)
        try:
            await self._stop.wait()
        finally:
            await self.shutdown()

    def stop(self) -> None:
        self._stop.set()

    async def shutdown(self) -> None:
        log.info("shutting down: stopping %d pods", len(self.pods))
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*(runner.shutdown() for runner in self.pods.values()), return_exceptions=True)
        process.kill_all_now()
        if self.ctx is not None:
            await self.ctx.events.flush()
            self.ctx.ipam.release_all()
            await self.ctx.kube.close()
        self.config.ready_file.unlink(missing_ok=True)

    async def _guard(self, what: str, loop_fn: Callable[[], Awaitable[None]]) -> None:
        """Run a loop forever: a failure is logged and the loop restarts after a pause."""
        failures = 0
        while not self._stop.is_set():
            try:
                await loop_fn()
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as err:
                delay = RELIST_BACKOFF_S[min(failures, len(RELIST_BACKOFF_S) - 1)]
                failures += 1
                log.warning("%s: %s: %s (again in %.1fs)", what, type(err).__name__, err, delay)
                await asyncio.sleep(delay)

    async def _watch_parent(self, pid: int) -> None:
        """Started by a test or the demo: exit with that process, never linger."""
        while True:
            await asyncio.sleep(1.0)
            if os.getppid() != pid and not _alive(pid):
                log.warning("parent process %d is gone: shutting down", pid)
                self._stop.set()
                return

    # ------------------------------------------------------------ heartbeats

    async def _lease_loop(self) -> None:
        assert self.node is not None
        while True:
            await asyncio.sleep(self.config.lease_renew_seconds)
            await self.node.renew_lease()

    async def _status_loop(self) -> None:
        assert self.node is not None
        while True:
            await asyncio.sleep(self.config.status_seconds)
            await self.node.post_status()

    # ------------------------------------------------------------ pods

    async def _pods_loop(self) -> None:
        assert self.ctx is not None
        fields = {"spec.nodeName": self.config.name}
        pods, version = await self.ctx.kube.list(Pod, fields=fields)
        self._sync(pods)
        async for kind, pod in self.ctx.kube.watch(Pod, version, fields=fields):
            self._on_pod(kind, pod)

    def _sync(self, pods: list[Obj]) -> None:
        listed = {p["metadata"]["uid"]: p for p in pods}
        for uid, runner in list(self.pods.items()):
            if uid not in listed:
                self._forget(uid, runner)
        for pod in pods:
            self._on_pod("MODIFIED", pod)
        self._cleanup_orphan_dirs(set(listed))

    def _on_pod(self, kind: str, pod: Obj) -> None:
        assert self.ctx is not None
        uid = pod["metadata"]["uid"]
        runner = self.pods.get(uid)
        if kind == "DELETED":
            if runner is not None:
                self._forget(uid, runner)
            return
        if runner is not None:
            runner.update(pod)
            return
        runner = PodRunner(self.ctx, pod)
        self.pods[uid] = runner
        log.info("pod %s/%s (%s) bound here", runner.namespace, runner.name, "terminal" if is_terminal(pod) else "new")
        runner.start()
        runner.update(pod)  # a pod already marked for deletion is torn down at once

    def _forget(self, uid: str, runner: PodRunner) -> None:
        """The pod is gone from the API: stop what may still run, then drop its files."""
        self.pods.pop(uid, None)
        runner.vanished()

        async def cleanup() -> None:
            with contextlib.suppress(asyncio.CancelledError):
                await runner.finished.wait()
            runner.cleanup_files()

        asyncio.get_running_loop().create_task(cleanup())

    def _cleanup_orphan_dirs(self, live: set[str]) -> None:
        """Pod directories of pods that no longer exist (deleted while no agent ran)."""
        for directory in self.config.pods_dir.iterdir() if self.config.pods_dir.is_dir() else []:
            if directory.name not in live and directory.name not in self.pods:
                shutil.rmtree(directory, ignore_errors=True)

    # ------------------------------------------------------------ volumes

    async def _claims_loop(self) -> None:
        assert self.ctx is not None
        provisioner = Provisioner(self.ctx.kube, self.config.volumes_dir, self.config.name)
        claims, version = await self.ctx.kube.list(PersistentVolumeClaim)
        for claim in claims:
            await provisioner.on_claim(claim)
        await provisioner.collect_released()
        async for kind, claim in self.ctx.kube.watch(PersistentVolumeClaim, version):
            if kind == "DELETED":
                await provisioner.on_claim_deleted(claim)
            else:
                await provisioner.on_claim(claim)


class AlreadyRunningError(RuntimeError):
    pass


def node_lock_path(config: AgentConfig) -> Path:
    """Machine-wide: one agent per (cluster, node name), whatever their state directories."""
    server = KubeConfig.from_file(config.kubeconfig).get()
    url = server.cluster.server if server else str(config.kubeconfig)
    digest = hashlib.sha256(f"{url}|{config.name}".encode()).hexdigest()[:16]
    return (config.ipam_dir or DEFAULT_LOCK_DIR).parent / "nodes" / f"{config.name}-{digest}.lock"


def exclusive_lock(path: Path, what: str) -> int:
    """An flock held for the agent's lifetime (the kernel drops it if the agent dies)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = path.read_text().strip() or "another agent"
        os.close(fd)
        raise AlreadyRunningError(f"{what} is in use by {holder} (lock {path})") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()}\n".encode())
    return fd


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def run_agent(config: AgentConfig) -> None:
    await Agent(config).run()
