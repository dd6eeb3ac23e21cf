"""Processes and ports of a local cluster: find ours by pid, stop them, explain a busy port.

A process counts as ours only when its command line names our cluster directory (every
component gets a kubeconfig, certificate or data path under it), so a pid file left by a
crashed run whose number the kernel has since reused never gets an unrelated process killed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import time
from collections.abc import Iterable
from pathlib import Path

import psutil


def read_pid_files(pids_dir: Path) -> dict[str, int]:
    """kwokctl's pid files (<component>.pid); unreadable ones are skipped, not fatal."""
    found: dict[str, int] = {}
    for path in sorted(pids_dir.glob("*.pid")) if pids_dir.is_dir() else []:
        try:
            found[path.stem] = int(path.read_text().strip())
        except (OSError, ValueError):
            continue
    return found


def freeze(pid: int, seconds: float) -> None:
    """SIGSTOP a process for `seconds` (an outage that keeps its pid and state), then SIGCONT,
    whatever happens meanwhile."""
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        os.kill(pid, signal.SIGCONT)


def cmdline(pid: int) -> str:
    try:
        return " ".join(psutil.Process(pid).cmdline())
    except (psutil.Error, OSError):
        return ""


def is_ours(pid: int, marker: str) -> bool:
    """Alive, not a zombie, and started for this cluster: its executable lives under
    `marker` (kwokctl runs each component from a symlink in <cluster dir>/bin)."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        argv = proc.cmdline()
    except (psutil.Error, OSError):
        return False
    return bool(argv) and argv[0].startswith(marker.rstrip("/") + "/")


def processes_mentioning(marker: str, names: Iterable[str]) -> list[int]:
    """Live processes run from under `marker` with one of `names`: finds components whose
    pid file was lost (a crash between fork and write), still one exact pid at a time."""
    wanted = set(names)
    found = []
    for proc in psutil.process_iter():
        if (
            proc.pid != os.getpid()
            and is_ours(proc.pid, marker)
            and Path(cmdline(proc.pid).split(" ")[0]).name in wanted
        ):
            found.append(proc.pid)
    return found


def stop(pids: Iterable[int], grace_s: float = 10.0) -> list[int]:
    """SIGTERM, wait up to grace_s, then SIGKILL what is left. Returns the pids signalled."""
    targets = sorted(set(pids))
    for pid in targets:
        _signal(pid, signal.SIGTERM)
    _wait_gone(targets, grace_s)
    for pid in targets:
        if _alive(pid):
            _signal(pid, signal.SIGKILL)
    # Wait for the kernel too: until a killed process is gone its sockets still hold the
    # ports, and an `up` right after `down` would report them in use.
    _wait_gone(targets, 10.0)
    return targets


def _wait_gone(pids: list[int], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # exited since we looked
        os.kill(pid, sig)


def _alive(pid: int) -> bool:
    """Still holding resources. A Go program's main thread turns zombie while its other
    threads are still exiting with the open sockets, so a zombie with threads counts."""
    try:
        if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
            return True
    except (psutil.Error, OSError):
        return False
    try:
        return sum(1 for _ in Path(f"/proc/{pid}/task").iterdir()) > 1
    except OSError:
        return False


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing listens on host:port (TIME_WAIT leftovers of a stopped cluster are fine)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                return False
            raise
    return True


def port_owner(port: int) -> str:
    """'pid 123 (kube-apiserver)' for a listener on port, or a vaguer phrase if hidden."""
    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.Error, OSError):
        return "another process"
    for conn in conns:
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
            if conn.pid is None:
                return "a process of another user"
            try:
                return f"pid {conn.pid} ({psutil.Process(conn.pid).name()})"
            except (psutil.Error, OSError):
                return f"pid {conn.pid}"
    return "another process"
