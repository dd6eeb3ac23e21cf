"""Restart control-plane components that exit, the way kubelet restarts static pods.

kwokctl starts each component detached and records its pid, then leaves; nothing restarts a
component that exits. On a real cluster kubelet does, and components rely on it:
kube-controller-manager and kube-scheduler exit on purpose when they lose their leader lease
(an API server frozen for longer than the renew deadline, 10 s, is enough), expecting to be
started again.

`up` starts one supervisor per state directory (`python -m localcluster supervise`, detached,
pid in `<state dir>/supervisor.pid`, its own log `supervisor.log`). At start it reads each
component's exact argv, working directory and environment from /proc (the processes kwokctl
started), then polls twice a second. A component that is gone (or a zombie) is started again
with that argv after a backoff of 1 s doubling to 30 s per consecutive quick exit (reset once
a run lasts 60 s), never before the components it needs are running (etcd, then
kube-apiserver, then the rest). Each exit and restart is logged to the component's own log,
the new pid is written to its pid file (so `down`, `status` and `inspect` keep working), and
the restart counts are kept in `<state dir>/supervisor.json` for `make cluster-status`.

A component whose pid file was removed (`kwokctl stop`) was stopped on purpose and is left
alone. The supervisor exits on SIGTERM (`down` stops it before anything else), when the
cluster directory disappears, or when its pid file names another process.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from .config import Settings
from .procs import is_ours, read_pid_files, stop
from .versions import E2E_DIR

# Dependency order: a component is (re)started only while the ones it needs are running.
ORDER = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok-controller")
NEEDS = {
    "kube-apiserver": ("etcd",),
    "kube-controller-manager": ("kube-apiserver",),
    "kube-scheduler": ("kube-apiserver",),
    "kwok-controller": ("kube-apiserver",),
}
INITIAL_BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0
STABLE_S = 60.0  # a run at least this long was not a crash loop: the backoff starts over
POLL_S = 0.5
START_TIMEOUT_S = 20.0


def backoff_delay(failures: int, initial: float = INITIAL_BACKOFF_S, maximum: float = MAX_BACKOFF_S) -> float:
    """Seconds to wait before restarting after `failures` consecutive quick exits: 0 for
    none, then initial, 2x, 4x, ... capped at maximum."""
    if failures <= 0:
        return 0.0
    return float(min(maximum, initial * 2 ** min(failures - 1, 62)))


@dataclass(frozen=True)
class ProcessSpec:
    """How to start a component again: exactly what kwokctl ran."""

    argv: tuple[str, ...]
    cwd: str
    env: dict[str, str]


def capture(pid: int) -> ProcessSpec | None:
    """argv, working directory and environment of a live process (from /proc), or None."""
    try:
        proc = psutil.Process(pid)
        argv = tuple(proc.cmdline())
        cwd = proc.cwd()
        env = dict(proc.environ())
    except (psutil.Error, OSError):
        return None
    return ProcessSpec(argv, cwd, env) if argv else None


def _age(pid: int) -> float:
    """Seconds since the process started (0 if unknown)."""
    try:
        return max(0.0, time.time() - psutil.Process(pid).create_time())
    except (psutil.Error, OSError):
        return 0.0


def describe_exit(returncode: int | None) -> str:
    """'exit status 1', 'killed by SIGKILL', or unknown for a process we did not start."""
    if returncode is None:
        return "exit status unknown (started by kwokctl, not our child)"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


def _now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------- the supervisor process


@dataclass
class Component:
    name: str
    spec: ProcessSpec | None
    pid: int | None
    started_at: float
    child: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    failures: int = 0  # consecutive exits after short runs
    down_since: float | None = None
    next_start: float = 0.0
    last_exit: str = ""
    last_restart: str = ""
    state: str = "running"  # running | waiting (to be restarted) | stopped (on purpose)

    def summary(self) -> dict[str, Any]:
        return {
            "pid": self.pid if self.state == "running" else None,
            "state": self.state,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
            "last_restart": self.last_restart,
        }


@dataclass
class Supervisor:
    settings: Settings
    clock: Callable[[], float] = time.monotonic
    components: dict[str, Component] = field(default_factory=dict)
    _written: str = ""

    @property
    def marker(self) -> str:
        return str(self.settings.cluster_dir)

    @property
    def pids_dir(self) -> Path:
        return self.settings.cluster_dir / "pids"

    def adopt(self) -> None:
        """Record what kwokctl started: each component's pid and how to start it again."""
        now = self.clock()
        for name, pid in read_pid_files(self.pids_dir).items():
            if name not in ORDER:
                continue
            live = pid if is_ours(pid, self.marker) else None
            spec = capture(live) if live else None
            component = Component(name, spec, live, now - _age(live) if live else now)
            if live is None:
                component.state, component.down_since = "waiting", now
            self.components[name] = component
            log(f"{name}: pid {pid}, {'argv captured' if spec else 'not running and no argv: cannot restart it'}")

    def alive(self, component: Component) -> bool:
        if component.child is not None and component.child.poll() is not None:
            return False  # our child exited (poll() also reaped it)
        return component.pid is not None and is_ours(component.pid, self.marker)

    def step(self) -> None:
        """One pass over every component, in dependency order."""
        now = self.clock()
        recorded = read_pid_files(self.pids_dir)
        for name in ORDER:
            component = self.components.get(name)
            if component is not None:
                self._tick(component, recorded.get(name), now)
        self._write_state()

    def _tick(self, component: Component, recorded: int | None, now: float) -> None:
        if recorded is None:
            if component.state != "stopped":
                component_log(self.settings, component.name, "pid file removed: stopped on purpose, not restarting")
                component.state = "stopped"
            return
        if recorded != component.pid and is_ours(recorded, self.marker):
            # Started again by someone else (`kwokctl start cluster`): adopt it.
            component.pid, component.child, component.state = recorded, None, "running"
            component.spec, component.down_since = component.spec or capture(recorded), None
        if self.alive(component):
            if now - component.started_at >= STABLE_S:
                component.failures = 0
            return
        if component.state == "running":  # just noticed
            ran = now - component.started_at
            if ran >= STABLE_S:
                component.failures = 0
            component.failures += 1
            delay = backoff_delay(component.failures)
            code = component.child.returncode if component.child is not None else None
            component.last_exit = f"{describe_exit(code)} after {ran:.0f}s at {_now_iso()}"
            component.state, component.down_since, component.next_start = "waiting", now, now + delay
            component_log(
                self.settings,
                component.name,
                f"pid {component.pid} exited ({component.last_exit}); restart {component.restarts + 1} in {delay:.0f}s",
            )
        if component.state != "waiting" or now < component.next_start or component.spec is None:
            return
        waiting_for = [n for n in NEEDS.get(component.name, ()) if not self._running(n)]
        if waiting_for:
            return
        self._restart(component, now)

    def _running(self, name: str) -> bool:
        component = self.components.get(name)
        return component is None or (component.state == "running" and self.alive(component))

    def _restart(self, component: Component, now: float) -> None:
        assert component.spec is not None
        spec = component.spec
        log_path = self.settings.cluster_dir / "logs" / f"{component.name}.log"
        try:
            with log_path.open("ab") as sink:
                child = subprocess.Popen(
                    list(spec.argv),
                    cwd=spec.cwd,
                    env=spec.env,
                    stdin=subprocess.DEVNULL,
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # like kwokctl (setsid): our exit must not take it down
                )
        except OSError as err:
            component.failures += 1
            delay = backoff_delay(component.failures)
            component.next_start = now + delay
            component_log(self.settings, component.name, f"restart failed: {err}; next try in {delay:.0f}s")
            return
        write_pid_file(self.pids_dir / f"{component.name}.pid", child.pid)
        component.child, component.pid, component.started_at = child, child.pid, now
        component.restarts += 1
        component.state, component.down_since = "running", None
        component.last_restart = _now_iso()
        component_log(self.settings, component.name, f"restarted as pid {child.pid} (restart {component.restarts})")

    def _write_state(self) -> None:
        doc = {"pid": os.getpid(), "components": {n: c.summary() for n, c in self.components.items()}}
        text = json.dumps(doc, indent=2) + "\n"
        if text != self._written:
            write_atomic(state_file(self.settings), text)
            self._written = text


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_pid_file(path: Path, pid: int) -> None:
    write_atomic(path, str(pid))  # kwokctl writes the bare number, no newline


def log(message: str) -> None:
    print(f"{_now_iso()} {message}", flush=True)


def component_log(settings: Settings, name: str, message: str) -> None:
    """One line in the component's own log (where anyone debugging it looks first)."""
    line = f"{_now_iso()} localcluster-supervisor: {name}: {message}"
    log(line.split(" ", 1)[1])
    with contextlib.suppress(OSError), (settings.cluster_dir / "logs" / f"{name}.log").open("a") as sink:
        sink.write(line + "\n")


def pid_file(settings: Settings) -> Path:
    return settings.state_dir / "supervisor.pid"


def state_file(settings: Settings) -> Path:
    return settings.state_dir / "supervisor.json"


def log_file(settings: Settings) -> Path:
    return settings.state_dir / "supervisor.log"


def run(settings: Settings, poll_s: float = POLL_S) -> int:
    """The supervisor's main loop (the `supervise` command, in the detached process)."""
    stopping = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log(f"{signal.Signals(signum).name}: stopping")
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    me = os.getpid()
    write_pid_file(pid_file(settings), me)
    log(f"supervising {settings.cluster_dir} as pid {me}")
    supervisor = Supervisor(settings)
    supervisor.adopt()
    while not stopping.is_set():
        if not settings.cluster_dir.is_dir():
            log("cluster directory is gone: exiting")
            break
        if read_pid(pid_file(settings)) != me:
            log("supervisor.pid names another process: exiting")
            break
        supervisor.step()
        stopping.wait(poll_s)
    if read_pid(pid_file(settings)) == me:
        pid_file(settings).unlink(missing_ok=True)
    return 0


# ---------------------------------------------------------------- control (from up/down/status)


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def is_supervisor(pid: int, settings: Settings) -> bool:
    """A live (not zombie) `localcluster supervise` for this state directory."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        argv = proc.cmdline()
    except (psutil.Error, OSError):
        return False
    return "supervise" in argv and str(settings.state_dir) in argv


def running_pid(settings: Settings) -> int | None:
    pid = read_pid(pid_file(settings))
    return pid if pid is not None and is_supervisor(pid, settings) else None


def command(settings: Settings) -> list[str]:
    return [
        sys.executable,
        "-m",
        "localcluster",
        "supervise",
        "--state-dir",
        str(settings.state_dir),
        "--port-base",
        str(settings.port_base),
    ]


def start(settings: Settings) -> int:
    """Start the supervisor (detached, surviving the caller) unless one runs; its pid."""
    if (pid := running_pid(settings)) is not None:
        return pid
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(E2E_DIR), os.environ.get("PYTHONPATH", "")])}
    with log_file(settings).open("ab") as sink:
        intermediate = subprocess.Popen(
            [*command(settings), "--daemon"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    intermediate.wait(timeout=START_TIMEOUT_S)  # it forks the supervisor and exits at once
    deadline = time.monotonic() + START_TIMEOUT_S
    while (pid := running_pid(settings)) is None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the supervisor did not start; see {log_file(settings)}")
        time.sleep(0.1)
    return pid


def find_supervisors(settings: Settings) -> list[int]:
    """Every live supervisor of this state dir: the one in supervisor.pid, and any whose pid
    file was lost (the state dir deleted under it), found by its command line."""
    found = {pid} if (pid := running_pid(settings)) is not None else set()
    for proc in psutil.process_iter():
        if proc.pid != os.getpid() and is_supervisor(proc.pid, settings):
            found.add(proc.pid)
    return sorted(found)


def stop_supervisor(settings: Settings) -> int | None:
    """Stop this state dir's supervisor (before stopping components, so it restarts none);
    returns its pid, None when none ran."""
    pids = find_supervisors(settings)
    if pids:
        stop(pids, grace_s=5.0)
    pid_file(settings).unlink(missing_ok=True)
    state_file(settings).unlink(missing_ok=True)
    return pids[0] if pids else None


def read_state(settings: Settings) -> dict[str, Any]:
    """supervisor.json: per component pid, state, restarts, last exit ({} when none)."""
    try:
        doc: dict[str, Any] = json.loads(state_file(settings).read_text())
    except (OSError, ValueError):
        return {}
    return doc


def restart_counts(settings: Settings) -> dict[str, int]:
    components = read_state(settings).get("components", {})
    return {name: int(info.get("restarts", 0)) for name, info in components.items()}


def daemonize() -> None:
    """Fork; the parent exits at once, the child carries on, re-parented to init (so no
    caller ever has to reap it) and not a session leader (so it never gets a terminal)."""
    if os.fork() > 0:
        os._exit(0)
