"""One pod on the node: address, volumes, init containers, containers, status, deletion.

Lifecycle, as the kubelet runs it: claim an address (the "sandbox"), set up volumes
(retrying with FailedMount events), run init containers in order, then all containers
with their restart policy. Deletion (deletionTimestamp set, or the pod vanished) stops
the containers with SIGTERM and, after the grace period, SIGKILL, then deletes the pod
with grace 0 and a uid precondition. Status is patched whenever something changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from pathlib import Path
from typing import Any

from lightkube.resources.core_v1 import ConfigMap, Pod, Secret

from .container import ContainerRunner, Plan
from .context import NodeContext
from .envvars import EnvSources, command_line, container_env, references
from .events import pod_ref
from .images import Kind
from .kube import status_code
from .paths import PathMap, build_tree, touch_file
from .status import PodView, now, pod_status
from .volumes import MountError, PodDirs, VolumeResolver, container_mounts

Obj = dict[str, Any]
log = logging.getLogger(__name__)
DEFAULT_TERMINATION_PATH = "/dev/termination-log"
MOUNT_RETRY_S = 2.0
MIN_GRACE_S = 2.0  # the kubelet's minimum for a forced (grace 0) deletion
SHUTDOWN_MESSAGE = "Pod was terminated in response to imminent node shutdown."
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def is_terminal(pod: Obj) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


class PodRunner:
    def __init__(self, ctx: NodeContext, pod: Obj) -> None:
        self.ctx = ctx
        self.pod = pod
        meta = pod["metadata"]
        self.uid: str = meta["uid"]
        self.namespace: str = meta["namespace"]
        self.name: str = meta["name"]
        self.dirs = PodDirs(ctx.config.pods_dir / self.uid)
        spec = pod["spec"]
        self.restart_policy: str = spec.get("restartPolicy") or "Always"
        self.init = [ContainerRunner(self, c, init=True) for c in spec.get("initContainers") or []]
        self.containers = [ContainerRunner(self, c) for c in spec["containers"]]
        self.ip: str | None = None
        self.start_time: str | None = (pod.get("status") or {}).get("startTime")
        self.sources = EnvSources(host_ip=ctx.host_ip, allocatable=ctx.config.node_capacity())
        self.volumes: dict[str, Path] = {}
        self.sandbox_ready = False
        self.terminal = False
        self.reason = self.message = ""
        self.extra_conditions: list[Obj] = []
        self._deleting = asyncio.Event()
        self._gone = False  # deleted from the API by someone else (force delete)
        self._dirty = asyncio.Event()
        self._last_status: Obj | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.finished = asyncio.Event()  # deleted from the API and cleaned up

    def __repr__(self) -> str:
        return f"<pod {self.namespace}/{self.name} {self.uid[:8]}>"

    # ------------------------------------------------------------ what the agent calls

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._main()), loop.create_task(self._status_writer())]

    def update(self, pod: Obj) -> None:
        """A newer version from the API (deletion requested, readiness gates, ...)."""
        self.pod = pod
        if (pod.get("metadata") or {}).get("deletionTimestamp"):
            self._deleting.set()
        self.changed()

    def vanished(self) -> None:
        """Gone from the API without us (force-deleted): stop everything, delete nothing."""
        self._gone = True
        self._deleting.set()

    async def shutdown(self) -> None:
        """The agent is stopping: kill the containers, report the pod failed by node shutdown."""
        main = self._tasks[0] if self._tasks else None
        if main is not None:
            main.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await main
        grace = min(self.grace_seconds(), self.ctx.config.shutdown_grace_seconds)
        await self._stop_all(grace, "Stopping container {name}: the process node is shutting down")
        for runner in [*self.init, *self.containers]:
            runner.finalize_record()
        if not self.finished.is_set() and not is_terminal(self.pod):
            self.terminal = True
            self.reason, self.message = "Terminated", SHUTDOWN_MESSAGE
            self.extra_conditions = [_disruption_target()]
            with contextlib.suppress(Exception):
                await self._write_status()
        self._release()
        for task in self._tasks:
            task.cancel()

    # ------------------------------------------------------------ shared with containers

    def changed(self) -> None:
        self._dirty.set()

    def event(self, kind: str, reason: str, message: str, container: str | None = None, init: bool = False) -> None:
        self.ctx.events.emit(pod_ref(self.pod, container, init), kind, reason, message)

    def grace_seconds(self) -> float:
        meta, spec = self.pod.get("metadata") or {}, self.pod.get("spec") or {}
        grace = meta.get("deletionGracePeriodSeconds")
        if grace is None:
            grace = spec.get("terminationGracePeriodSeconds")
        return max(float(30 if grace is None else grace), MIN_GRACE_S)

    def path_map(self, container: Obj) -> PathMap:
        term = container.get("terminationMessagePath") or DEFAULT_TERMINATION_PATH
        paths = [m["mountPath"] for m in container.get("volumeMounts") or []]
        # /tmp is the container's own, as in an image's writable layer, not the host's.
        return PathMap.of(self.dirs.root / container["name"], [*paths, term, "/tmp"])

    def plan(self, container: Obj, prepare: bool = False) -> Plan:
        """How to start a container (or an exec probe in it); `prepare` builds its tree.
        Raises ImageError, EnvError or MountError."""
        env = container_env(self.pod, container, self._sources())
        command, args = command_line(container, env)
        launch = self.ctx.images.resolve(container.get("image", ""), command, args)
        paths = self.path_map(container)
        # Rewrite the container's own words only, before anything the node adds (host paths
        # such as a state directory under /tmp must not be rewritten again).
        argv = [launch.argv[0], *paths.rewrite_all(launch.argv[1:])]
        extra: dict[str, str] = {}
        if launch.kind is Kind.TRITON:
            runtime = self.ctx.triton()
            argv, extra = runtime.argv(argv, self.ip or ""), runtime.env()
        term = paths.host(container.get("terminationMessagePath") or DEFAULT_TERMINATION_PATH)
        cwd = paths.host(container.get("workingDir") or "/")
        if prepare:
            self._prepare_tree(container, paths, env, term, cwd)
        rewritten = {k: paths.rewrite(v) for k, v in env.items()}
        full_env = {**self._base_env(paths, term), **rewritten, **extra}
        return Plan(argv, full_env, cwd, term, f"processnode://{argv[0]}")

    def _prepare_tree(self, container: Obj, paths: PathMap, env: dict[str, str], term: Path, cwd: Path) -> None:
        build_tree(paths.root, container_mounts(container, self.volumes, env))
        touch_file(term)  # empty at every start: a message is this run's
        cwd.mkdir(parents=True, exist_ok=True)
        paths.host("/tmp").mkdir(parents=True, exist_ok=True)

    def _base_env(self, paths: PathMap, term: Path) -> dict[str, str]:
        """What every container's environment starts with (nothing of the agent's leaks in)."""
        return {
            "PATH": f"{self.ctx.venv_bin}:{BASE_PATH}",
            "HOME": str(paths.root),
            "LANG": "C.UTF-8",
            "HOSTNAME": self.name,
            "TMPDIR": str(paths.host("/tmp")),
            "POD_IP": self.ip or "",
            "TERMINATION_MESSAGE_PATH": str(term),
        }

    def _sources(self) -> EnvSources:
        self.sources.pod_ip = self.ip or ""
        return self.sources

    # ------------------------------------------------------------ lifecycle

    async def _main(self) -> None:
        life = asyncio.get_running_loop().create_task(self._lifecycle())
        deleting = asyncio.get_running_loop().create_task(self._deleting.wait())
        try:
            await asyncio.wait({life, deleting}, return_when=asyncio.FIRST_COMPLETED)
            if life.done() and not life.cancelled() and (err := life.exception()) is not None:
                log.error("%r: %s", self, err, exc_info=err)
                self.event("Warning", "Failed", f"process node error: {err}")
            await deleting
            await self._stop_all(self.grace_seconds(), "Stopping container {name}")
            life.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await life
            await self._remove()
        finally:
            life.cancel()
            deleting.cancel()
            for task in self._tasks[1:]:  # the status writer has nothing left to write
                task.cancel()

    async def _lifecycle(self) -> None:
        if is_terminal(self.pod):
            return  # finished before this agent started: only its deletion is left to do
        must_run = self._adopt()
        await self._sandbox()
        await self._mount_volumes()
        for runner in self.init:
            if must_run.get(runner.name, True):
                await runner.run(self.restart_policy)
            if not runner.record.succeeded:
                return  # failed for good (Never), or the image is unknown: the pod stays put
        runners = [c for c in self.containers if must_run.get(c.name, True)]
        await asyncio.gather(*(c.run(self.restart_policy) for c in runners))
        self.changed()

    def _adopt(self) -> dict[str, bool]:
        status = self.pod.get("status") or {}
        previous = {
            s["name"]: s
            for s in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]
        }
        return {r.name: r.adopt(previous.get(r.name), self.restart_policy) for r in [*self.init, *self.containers]}

    async def _sandbox(self) -> None:
        prefer = (self.pod.get("status") or {}).get("podIP")
        self.ip = self.ctx.ipam.allocate(f"{self.ctx.config.name} {self.namespace}/{self.name} {self.uid}", prefer)
        for directory in (self.dirs.root, self.dirs.volumes, self.dirs.pids):
            directory.mkdir(parents=True, exist_ok=True)
        self.start_time = self.start_time or now()
        self.sandbox_ready = True
        self.changed()

    async def _mount_volumes(self) -> None:
        resolver = VolumeResolver(self.ctx.kube, self.pod, self.dirs, self._sources())
        while True:
            try:
                self.volumes = await resolver.resolve_all()
                await self._load_env_sources()
                return
            except MountError as err:
                self.event("Warning", "FailedMount", f"MountVolume.SetUp failed: {err}")
            await asyncio.sleep(MOUNT_RETRY_S)

    async def refresh_env_sources(self) -> None:
        await self._load_env_sources()

    async def _load_env_sources(self) -> None:
        """Fetch the ConfigMaps and Secrets the containers' environments read (None: missing)."""
        for container in [*self.init, *self.containers]:
            config_maps, secrets = references(container.spec)
            for name in config_maps:
                self.sources.config_maps[name] = await self.ctx.kube.get(ConfigMap, name, self.namespace)
            for name in secrets:
                self.sources.secrets[name] = await self.ctx.kube.get(Secret, name, self.namespace)

    # ------------------------------------------------------------ teardown

    async def _stop_all(self, grace: float, message: str) -> None:
        runners = [*self.init, *self.containers]
        await asyncio.gather(*(r.stop(grace, message.format(name=r.name)) for r in runners))

    async def _remove(self) -> None:
        """Containers are gone: report it, then delete the pod object like a kubelet."""
        self.terminal = True
        if not self._gone:
            with contextlib.suppress(Exception):
                await self._write_status()
            try:
                await self.ctx.kube.delete_pod_now(self.namespace, self.name, self.uid)
            except Exception as err:
                log.warning("%r: delete failed: %s", self, err)
        self._release()

    def _release(self) -> None:
        if self.ip:
            self.ctx.ipam.release(self.ip)
        self.finished.set()

    def cleanup_files(self) -> None:
        """After the pod is gone from the API: its tree and volumes (emptyDir data) go too."""
        shutil.rmtree(self.dirs.base, ignore_errors=True)
        self.ctx.events.forget(self.uid)

    # ------------------------------------------------------------ status

    def view(self) -> PodView:
        gates = [g["conditionType"] for g in (self.pod.get("spec") or {}).get("readinessGates") or []]
        present = {
            c.get("type"): c.get("status") == "True" for c in (self.pod.get("status") or {}).get("conditions") or []
        }
        return PodView(
            restart_policy=self.restart_policy,
            init=[r.record for r in self.init],
            containers=[r.record for r in self.containers],
            pod_ip=self.ip,
            host_ip=self.ctx.host_ip,
            start_time=self.start_time,
            sandbox_ready=self.sandbox_ready,
            terminal=self.terminal,
            reason=self.reason,
            message=self.message,
            readiness_gates={g: present.get(g, False) for g in gates},
            extra_conditions=self.extra_conditions,
        )

    async def _write_status(self) -> None:
        if is_terminal(self.pod) and not self.sandbox_ready:
            return  # adopted as finished: its status is final already
        # The conditions last sent carry the transition times (the watch may lag behind).
        old = (self._last_status or self.pod.get("status") or {}).get("conditions") or []
        status = pod_status(self.view(), old)
        if status == self._last_status:
            return
        body = dict(status)
        if "podIPs" in body:  # replace, not merge by ip: an address that changed must not linger
            body["podIPs"] = [{"$patch": "replace"}, *body["podIPs"]]
        await self.ctx.kube.patch(Pod.Status, self.name, {"status": body}, namespace=self.namespace)
        self._last_status = status

    async def _status_writer(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                await self._write_status()
            except Exception as err:
                if status_code(err) == 404:
                    return
                log.warning("%r: status update failed (retrying): %s", self, err)
                await asyncio.sleep(1.0)
                self._dirty.set()


def _disruption_target() -> Obj:
    return {
        "type": "DisruptionTarget",
        "status": "True",
        "reason": "TerminationByKubelet",
        "message": SHUTDOWN_MESSAGE,
        "lastTransitionTime": now(),
    }
