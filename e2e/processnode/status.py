"""Pod status as the kubelet reports it, computed from what the agent knows. Pure.

`ContainerRecord` is one container's observed state; `pod_status` turns the records of a
pod into the status stanza (phase, conditions, container statuses, addresses) that the
agent patches onto the pod.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

Obj = dict[str, Any]

WAITING, RUNNING, TERMINATED = "waiting", "running", "terminated"


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Terminated:
    exit_code: int
    reason: str
    message: str
    started_at: str | None
    finished_at: str
    signal: int | None = None
    container_id: str = ""

    def to_api(self) -> Obj:
        out: Obj = {"exitCode": self.exit_code, "reason": self.reason, "finishedAt": self.finished_at}
        if self.started_at:
            out["startedAt"] = self.started_at
        if self.message:
            out["message"] = self.message
        if self.signal:
            out["signal"] = self.signal
        if self.container_id:
            out["containerID"] = self.container_id
        return out


def exit_reason(exit_code: int, oom: bool = False) -> str:
    if oom:
        return "OOMKilled"
    return "Completed" if exit_code == 0 else "Error"


@dataclass
class ContainerRecord:
    name: str
    image: str
    init: bool = False
    state: str = WAITING
    reason: str = "ContainerCreating"
    message: str = ""
    started_at: str | None = None
    terminated: Terminated | None = None
    last_terminated: Terminated | None = None
    restart_count: int = 0
    ready: bool = False
    started: bool = False
    pid: int | None = None
    image_id: str = ""

    @property
    def container_id(self) -> str:
        return f"process://{self.pid}" if self.pid else ""

    def set_waiting(self, reason: str, message: str = "") -> None:
        if self.state == TERMINATED and self.terminated is not None:
            self.last_terminated = self.terminated
        self.state, self.reason, self.message = WAITING, reason, message
        self.terminated = None
        self.ready = self.started = False

    def set_running(self, pid: int, started_at: str) -> None:
        if self.state == TERMINATED and self.terminated is not None:
            self.last_terminated = self.terminated
        self.state, self.pid, self.started_at = RUNNING, pid, started_at
        self.reason = self.message = ""
        self.terminated = None
        self.ready = self.started = False

    def set_terminated(self, terminated: Terminated) -> None:
        self.state, self.terminated = TERMINATED, terminated
        self.ready = self.started = False

    @property
    def succeeded(self) -> bool:
        return self.state == TERMINATED and self.terminated is not None and self.terminated.exit_code == 0

    def _state_api(self) -> Obj:
        if self.state == RUNNING:
            return {RUNNING: {"startedAt": self.started_at}}
        if self.state == TERMINATED and self.terminated is not None:
            return {TERMINATED: self.terminated.to_api()}
        waiting: Obj = {"reason": self.reason}
        if self.message:
            waiting["message"] = self.message
        return {WAITING: waiting}

    def to_api(self) -> Obj:
        status: Obj = {
            "name": self.name,
            "image": self.image,
            "imageID": self.image_id,
            "ready": self.ready,
            "started": self.started,
            "restartCount": self.restart_count,
            "state": self._state_api(),
            "lastState": {TERMINATED: self.last_terminated.to_api()} if self.last_terminated else {},
        }
        if self.container_id:
            status["containerID"] = self.container_id
        return status


def _init_counts(init: Sequence[ContainerRecord]) -> tuple[int, int]:
    """(pending, failed) regular init containers."""
    pending = failed = 0
    for record in init:
        if record.state == TERMINATED and record.terminated is not None:
            failed += record.terminated.exit_code != 0
        elif record.state == WAITING and record.last_terminated is not None:
            failed += record.last_terminated.exit_code != 0
        else:
            pending += 1
    return pending, failed


def _container_counts(containers: Sequence[ContainerRecord]) -> tuple[int, int, int, int]:
    """(running, waiting, stopped, succeeded); a container waiting to restart counts as stopped."""
    running = waiting = stopped = succeeded = 0
    for record in containers:
        if record.state == RUNNING:
            running += 1
        elif record.state == TERMINATED:
            stopped += 1
            succeeded += record.succeeded
        elif record.last_terminated is not None:
            stopped += 1
        else:
            waiting += 1
    return running, waiting, stopped, succeeded


def pod_phase(
    restart_policy: str, init: Sequence[ContainerRecord], containers: Sequence[ContainerRecord], terminal: bool = False
) -> str:
    """The kubelet's getPhase (pkg/kubelet/kubelet_pods.go), without sidecar init containers."""
    pending_init, failed_init = _init_counts(init)
    if failed_init and restart_policy == "Never":
        return "Failed"
    running, waiting, stopped, succeeded = _container_counts(containers)
    if pending_init or failed_init or waiting:
        return "Pending"
    if running:
        return "Running"
    if not stopped:
        return "Pending"
    if terminal:
        return "Succeeded" if stopped == succeeded else "Failed"
    if restart_policy == "Always":
        return "Running"
    if stopped == succeeded:
        return "Succeeded"
    return "Failed" if restart_policy == "Never" else "Running"


@dataclass
class PodView:
    """Everything `pod_status` needs besides the pod itself."""

    restart_policy: str
    init: list[ContainerRecord]
    containers: list[ContainerRecord]
    pod_ip: str | None = None
    host_ip: str = "127.0.0.1"
    start_time: str | None = None
    sandbox_ready: bool = False
    terminal: bool = False  # the pod is being torn down for good (deleted, node shutdown)
    reason: str = ""
    message: str = ""
    readiness_gates: dict[str, bool] = field(default_factory=dict)  # gate -> its condition is True
    extra_conditions: list[Obj] = field(default_factory=list)  # e.g. DisruptionTarget at node shutdown


def _names(records: Sequence[ContainerRecord]) -> str:
    return "[" + " ".join(r.name for r in records) + "]"


def _condition(kind: str, ok: bool, reason: str = "", message: str = "") -> Obj:
    # reason/message are always present: null removes a stale one in the strategic merge patch.
    return {
        "type": kind,
        "status": "True" if ok else "False",
        "lastProbeTime": None,
        "reason": reason if not ok and reason else None,
        "message": message if not ok and message else None,
    }


def conditions(view: PodView, phase: str) -> list[Obj]:
    done = phase in ("Succeeded", "Failed")
    initialized = all(r.succeeded for r in view.init)
    unready = [r for r in view.containers if not r.ready]
    gates_pending = sorted(g for g, ok in view.readiness_gates.items() if not ok)
    if done:
        containers_ready = _condition("ContainersReady", False, "PodCompleted")
        ready = _condition("Ready", False, "PodCompleted")
    else:
        not_ready = f"containers with unready status: {_names(unready)}"
        containers_ready = _condition("ContainersReady", not unready, "ContainersNotReady", not_ready)
        if unready:
            ready = _condition("Ready", False, "ContainersNotReady", not_ready)
        else:
            gates = f"corresponding condition of pod readiness gate {gates_pending} does not exist or is False"
            ready = _condition("Ready", not gates_pending, "ReadinessGatesNotReady", gates)
    incomplete = [r for r in view.init if not r.succeeded]
    return [
        *[dict(c) for c in view.extra_conditions],
        _condition("PodReadyToStartContainers", view.sandbox_ready and not done),
        _condition(
            "Initialized",
            initialized or done,
            "ContainersNotInitialized",
            f"containers with incomplete status: {_names(incomplete)}",
        ),
        containers_ready,
        ready,
    ]


def keep_transition_times(new: list[Obj], old: Sequence[Mapping[str, Any]], at: str) -> list[Obj]:
    """lastTransitionTime changes only when a condition's status does."""
    previous = {c.get("type"): c for c in old}
    for cond in new:
        before = previous.get(cond["type"])
        same = before is not None and before.get("status") == cond["status"] and before.get("lastTransitionTime")
        cond["lastTransitionTime"] = before["lastTransitionTime"] if same and before is not None else at
    return new


def pod_status(view: PodView, old_conditions: Sequence[Mapping[str, Any]] = (), at: str | None = None) -> Obj:
    phase = pod_phase(view.restart_policy, view.init, view.containers, view.terminal)
    status: Obj = {
        "phase": phase,
        "conditions": keep_transition_times(conditions(view, phase), old_conditions, at or now()),
        "hostIP": view.host_ip,
        "hostIPs": [{"ip": view.host_ip}],
        "initContainerStatuses": [r.to_api() for r in view.init],
        "containerStatuses": [r.to_api() for r in view.containers],
    }
    if view.pod_ip:
        status["podIP"] = view.pod_ip
        status["podIPs"] = [{"ip": view.pod_ip}]
    if view.start_time:
        status["startTime"] = view.start_time
    if view.reason:
        status["reason"] = view.reason
        status["message"] = view.message
    return status
