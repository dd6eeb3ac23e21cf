"""One container: start its process, probe it, restart it, report its state.

The pod (`pod.PodRunner`) supplies what a container needs from its pod (environment
sources, volumes, address, status writer); this module owns the process and its record.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import process
from .envvars import EnvError
from .images import ImageError
from .policy import Backoff, should_restart
from .probes import ProbeSpec, ProbeTracker, check, run_exec
from .status import RUNNING, ContainerRecord, Terminated, exit_reason, now
from .volumes import MountError

if TYPE_CHECKING:
    from .pod import PodRunner

Obj = dict[str, Any]
log = logging.getLogger(__name__)
MESSAGE_LIMIT = 4096  # the kubelet's per-container termination message limit
LOG_TAIL_LINES = 80  # FallbackToLogsOnError: the last 80 lines, at most 2 KiB
LOG_TAIL_BYTES = 2048
CONFIG_RETRY_S = 10.0
START_ERROR_EXIT = 128


@dataclass(frozen=True)
class Plan:
    """Everything needed to start a container's process."""

    argv: list[str]
    env: dict[str, str]
    cwd: Path
    termination_file: Path
    image_id: str


def exit_status(returncode: int) -> tuple[int, int | None]:
    """asyncio's returncode (negative for a signal) -> (exit code as Kubernetes reports it, signal)."""
    if returncode < 0:
        return 128 - returncode, -returncode
    return returncode, None


def log_tail(log_path: Path, offset: int) -> str:
    try:
        with log_path.open("rb") as handle:
            handle.seek(offset)
            data = handle.read()
    except OSError:
        return ""
    lines = data.decode(errors="replace").splitlines()[-LOG_TAIL_LINES:]
    return "\n".join(lines)[-LOG_TAIL_BYTES:]


def termination_message(message_file: Path, policy: str, exit_code: int, log_path: Path, log_offset: int) -> str:
    """What the kubelet reports as the terminated state's message."""
    try:
        text = message_file.read_bytes()[:MESSAGE_LIMIT].decode(errors="replace")
    except OSError:
        text = ""
    if not text.strip() and policy == "FallbackToLogsOnError" and exit_code != 0:
        return log_tail(log_path, log_offset)
    return text


class ContainerRunner:
    def __init__(self, pod: PodRunner, spec: Obj, init: bool = False) -> None:
        self.pod = pod
        self.spec = spec
        self.name: str = spec["name"]
        self.init = init
        self.record = ContainerRecord(self.name, spec.get("image", ""), init=init)
        self.backoff = Backoff(pod.ctx.config.backoff_seconds, pod.ctx.config.max_backoff_seconds)
        self.spawned: process.Spawned | None = None
        self.stopping = False
        self._probes: dict[str, ProbeTracker] = {}
        self._started_event = asyncio.Event()

    # ------------------------------------------------------------ events and status

    def _event(self, kind: str, reason: str, message: str) -> None:
        self.pod.event(kind, reason, message, container=self.name, init=self.init)

    def _changed(self) -> None:
        self.pod.changed()

    @property
    def log_path(self) -> Path:
        meta = self.pod.pod["metadata"]
        return self.pod.ctx.config.log_path(meta["namespace"], meta["name"], self.name)

    # ------------------------------------------------------------ lifecycle

    async def run(self, restart_policy: str) -> None:
        """Run until the restart policy says stop (or the pod stops it)."""
        while not self.stopping:
            began = time.monotonic()
            terminated = await self.run_once()
            if terminated is None or self.stopping:
                return
            policy = "OnFailure" if self.init and restart_policy == "Always" else restart_policy
            if not should_restart(policy, terminated.exit_code):
                return
            await self._back_off(time.monotonic() - began)
            self.record.restart_count += 1

    async def _back_off(self, ran_for: float) -> None:
        delay = self.backoff.next_delay(ran_for)
        if not delay:
            return
        meta = self.pod.pod["metadata"]
        message = (
            f"back-off {delay:g}s restarting failed container={self.name} "
            f"pod={meta['name']}_{meta['namespace']}({meta['uid']})"
        )
        self.record.set_waiting("CrashLoopBackOff", message)
        self._event("Warning", "BackOff", f"Back-off restarting failed container {self.name} in pod {meta['name']}")
        self._changed()
        await asyncio.sleep(delay)

    async def _plan(self) -> Plan | Terminated | None:
        """The launch plan; a Terminated for a start error; None when the image is unknown.
        A configuration error (missing ConfigMap key) is retried until it resolves."""
        while True:
            try:
                return self.pod.plan(self.spec, prepare=True)
            except ImageError as err:
                if err.reason != "ErrImagePull":
                    return self._start_error(err.message)
                self.record.set_waiting(err.reason, err.message)
                self._event("Warning", "Failed", f"Failed to pull image {self.spec.get('image')!r}: {err.message}")
                self._event("Warning", "Failed", "Error: ErrImagePull")
                self._changed()
                return None
            except (EnvError, MountError) as err:
                self.record.set_waiting("CreateContainerConfigError", str(err))
                self._event("Warning", "Failed", f"Error: {err}")
                self._changed()
                await asyncio.sleep(CONFIG_RETRY_S)
                with contextlib.suppress(Exception):  # the missing ConfigMap may exist now
                    await self.pod.refresh_env_sources()

    def _start_error(self, message: str) -> Terminated:
        at = now()
        terminated = Terminated(START_ERROR_EXIT, "StartError", message, at, at)
        self.record.set_terminated(terminated)
        self._event("Warning", "Failed", f"Error: {message}")
        self._changed()
        return terminated

    async def run_once(self) -> Terminated | None:
        plan = await self._plan()
        if plan is None or isinstance(plan, Terminated):
            return plan
        if self.stopping:  # the pod was deleted while this start was being prepared
            return None
        log_offset = self._open_log(plan)
        try:
            self.spawned = await process.spawn(
                plan.argv, plan.env, plan.cwd, self.log_path, self.pod.dirs.pids / f"{self.name}.json"
            )
        except OSError as err:
            return self._start_error(f"exec {plan.argv[0]}: {err}")
        started_at = now()
        self.record.image_id = plan.image_id
        self.record.set_running(self.spawned.pid, started_at)
        self._started_event.clear()
        self._event("Normal", "Created", f"Created container: {self.name}")
        self._event(
            "Normal", "Started", f"Started container {self.name} (pid {self.spawned.pid}); logs: {self.log_path}"
        )
        probes = self._start_probes()
        self._update_ready()
        try:
            returncode = await self.spawned.process.wait()
        finally:  # also when the pod cancels this run: probes must not outlive it
            for task in probes:
                task.cancel()
        process.reap_group(self.spawned)
        code, signal = exit_status(returncode)
        policy = self.spec.get("terminationMessagePolicy") or "File"
        message = termination_message(plan.termination_file, policy, code, self.log_path, log_offset)
        terminated = Terminated(
            code, exit_reason(code), message, started_at, now(), signal, container_id=f"process://{self.spawned.pid}"
        )
        self.record.set_terminated(terminated)
        self._changed()
        return terminated

    def _open_log(self, plan: Plan) -> int:
        """Mark the start in the log; return where this run's output begins."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as handle:
            header = f"==> processnode: {now()} start #{self.record.restart_count} of {self.name}: {plan.argv}\n"
            handle.write(header.encode())
            return handle.tell()

    async def stop(self, grace: float, reason: str = "") -> None:
        """Stop for good: the preStop sleep action first (as the kubelet runs it, within the
        grace period), then SIGTERM to the process group and SIGKILL when the grace runs out."""
        self.stopping = True
        pause = prestop_sleep_seconds(self.spec)
        if pause and self.spawned is not None and self.spawned.process.returncode is None:
            pause = min(pause, grace)
            self._event("Normal", "PreStop", f"preStop sleep {pause:g}s before stopping {self.name}")
            await asyncio.sleep(pause)
            grace -= pause
        await self.kill(max(grace, 0.0), reason or f"Stopping container {self.name}")

    async def kill(self, grace: float, message: str) -> None:
        spawned = self.spawned
        if spawned is None or spawned.process.returncode is not None:
            return
        self._event("Normal", "Killing", message)
        await process.stop(spawned, grace)

    # ------------------------------------------------------------ probes

    def _probe_specs(self) -> list[ProbeSpec]:
        kinds = (("startup", "startupProbe"), ("readiness", "readinessProbe"), ("liveness", "livenessProbe"))
        return [ProbeSpec(kind, self.spec[key]) for kind, key in kinds if self.spec.get(key)]

    def _start_probes(self) -> list[asyncio.Task[None]]:
        specs = [] if self.init else self._probe_specs()
        self._probes = {p.kind: ProbeTracker.for_probe(p) for p in specs}
        if "startup" not in self._probes:
            self._started_event.set()
        return [asyncio.get_running_loop().create_task(self._probe_loop(p)) for p in specs]

    def _update_ready(self) -> None:
        running = self.record.state == RUNNING
        started = running and self._started_event.is_set()
        readiness = self._probes.get("readiness")
        ready = started and (readiness.result if readiness else True)
        if (started, ready) != (self.record.started, self.record.ready):
            self.record.started, self.record.ready = started, ready
            self._changed()

    async def _probe_loop(self, probe: ProbeSpec) -> None:
        tracker = self._probes[probe.kind]
        if probe.kind != "startup":
            await self._started_event.wait()
        await asyncio.sleep(probe.initial_delay)
        while self.record.state == RUNNING:
            ok, message = await check(probe, self.pod.ip or "", self.spec, self._exec_probe)
            if not ok:
                self._event("Warning", "Unhealthy", f"{probe.kind.capitalize()} probe failed: {message}")
            if tracker.observe(ok):
                await self._verdict(probe, tracker.result)
                if probe.kind == "startup" and tracker.result:
                    return  # the startup probe stops once it passed
            await asyncio.sleep(probe.period)

    async def _verdict(self, probe: ProbeSpec, passed: bool) -> None:
        if probe.kind == "startup" and passed:
            self._started_event.set()
        if probe.kind in ("liveness", "startup") and not passed:
            grace = probe.spec.get("terminationGracePeriodSeconds")
            grace = self.pod.grace_seconds() if grace is None else float(grace)
            what = "liveness" if probe.kind == "liveness" else "startup"
            await self.kill(grace, f"Container {self.name} failed {what} probe, will be restarted")
            return
        self._update_ready()

    async def _exec_probe(self, command: list[str], timeout: float) -> tuple[bool, str]:
        try:
            plan = self.pod.plan({**self.spec, "command": command, "args": []})
        except (ImageError, EnvError, MountError) as err:
            return False, str(err)
        return await run_exec(plan.argv, plan.env, str(plan.cwd), timeout)

    # ------------------------------------------------------------ adoption after an agent restart

    def adopt(self, previous: Mapping[str, Any] | None, restart_policy: str) -> bool:
        """Take over the state an earlier agent reported; True when the container must run."""
        if not previous:
            return True
        self.record.restart_count = int(previous.get("restartCount") or 0)
        state = previous.get("state") or {}
        if done := state.get("terminated"):
            terminated = Terminated(
                int(done.get("exitCode", 0)),
                str(done.get("reason", "")),
                str(done.get("message", "")),
                done.get("startedAt"),
                str(done.get("finishedAt") or now()),
            )
            self.record.set_terminated(terminated)
            policy = "OnFailure" if self.init else restart_policy
            return should_restart(policy, terminated.exit_code)
        if "running" in state:
            # Its process died with the previous agent: report it lost, as the kubelet does
            # when a container vanished, and run it again where the policy allows.
            lost = Terminated(137, "ContainerStatusUnknown", "The container could not be located", None, now())
            self.record.set_terminated(lost)
            if restart_policy == "Never" and not self.init:
                return False
            self.record.restart_count += 1
        return True

    def finalize_record(self) -> None:
        """After stop() when run_once was cancelled: record how the process ended."""
        spawned = self.spawned
        if self.record.state != RUNNING or spawned is None or spawned.process.returncode is None:
            return
        code, signal = exit_status(spawned.process.returncode)
        self.record.set_terminated(
            Terminated(code, exit_reason(code), "", self.record.started_at, now(), signal, f"process://{spawned.pid}")
        )


def prestop_sleep_seconds(spec: dict[str, Any]) -> float:
    """lifecycle.preStop.sleep.seconds (the kubelet's built-in sleep action); 0 when unset.
    An exec or httpGet preStop handler is not run by this node."""
    action = ((spec.get("lifecycle") or {}).get("preStop") or {}).get("sleep") or {}
    return float(action.get("seconds") or 0)
