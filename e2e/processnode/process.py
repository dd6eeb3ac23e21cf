"""Container processes: start in their own process group, stop like a container runtime,
and never outlive the agent.

Each process is a session and group leader, so a signal to the group reaches everything it
started (Triton's Python backend stubs, a shell's children). Its pid, group and start time
are written to `<state>/pods/<uid>/pids/`, which lets a restarted agent kill what a crashed
one left behind, after checking the start time so that a reused pid is never signalled.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

_LIVE: dict[int, int] = {}  # pid -> process group, of every process this agent started


@dataclass
class Spawned:
    process: asyncio.subprocess.Process
    pgid: int
    pid_file: Path

    @property
    def pid(self) -> int:
        return self.process.pid


def kill_group(pgid: int, sig: int) -> bool:
    """Signal a process group; False when nothing is left in it."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    return True


def group_alive(pgid: int) -> bool:
    return kill_group(pgid, 0)


async def spawn(argv: Sequence[str], env: Mapping[str, str], cwd: Path, log_path: Path, pid_file: Path) -> Spawned:
    """Start argv with stdout and stderr appended to log_path."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        process = await asyncio.create_subprocess_exec(
            *argv,
            env=dict(env),
            cwd=str(cwd),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # its own session and group: killpg reaches all it starts
        )
    _LIVE[process.pid] = process.pid
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    created = 0.0
    with contextlib.suppress(psutil.Error):  # it may already have exited and been reaped
        created = psutil.Process(process.pid).create_time()
    pid_file.write_text(json.dumps({"pid": process.pid, "pgid": process.pid, "created": created, "argv": argv[:3]}))
    return Spawned(process, process.pid, pid_file)


def reap_group(spawned: Spawned) -> None:
    """After the leader exited: kill what it left in its group, forget the process."""
    kill_group(spawned.pgid, signal.SIGKILL)
    _LIVE.pop(spawned.pid, None)
    spawned.pid_file.unlink(missing_ok=True)


async def stop(spawned: Spawned, grace: float) -> int:
    """SIGTERM to the group, SIGKILL after `grace` seconds; returns the exit status."""
    if spawned.process.returncode is None:
        kill_group(spawned.pgid, signal.SIGTERM)
        try:
            await asyncio.wait_for(spawned.process.wait(), timeout=max(grace, 0.0))
        except TimeoutError:
            kill_group(spawned.pgid, signal.SIGKILL)
    code = await spawned.process.wait()
    reap_group(spawned)
    return code


def kill_all_now() -> None:
    """Last resort at interpreter exit: nothing this agent started may survive it."""
    for pid, pgid in list(_LIVE.items()):
        kill_group(pgid, signal.SIGKILL)
        _LIVE.pop(pid, None)


atexit.register(kill_all_now)


def _stale_groups(pods_dir: Path) -> list[tuple[int, Path]]:
    found: list[tuple[int, Path]] = []
    for pid_file in pods_dir.glob("*/pids/*.json"):
        try:
            record = json.loads(pid_file.read_text())
            pid, pgid, created = int(record["pid"]), int(record["pgid"]), float(record["created"])
        except (OSError, ValueError, KeyError):
            pid_file.unlink(missing_ok=True)
            continue
        try:
            ours = abs(psutil.Process(pid).create_time() - created) < 1.0
        except psutil.NoSuchProcess:
            # The leader is gone; members of its group may remain (the group id stays
            # reserved while any member lives, so they are ours).
            ours = bool(_group_members(pgid))
        except psutil.Error:
            ours = False
        if ours:
            found.append((pgid, pid_file))
        else:  # gone, or the pid now belongs to another process: leave it alone
            pid_file.unlink(missing_ok=True)
    return found


def _group_members(pgid: int) -> list[int]:
    members: list[int] = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(proc.pid) == pgid:
                members.append(proc.pid)
    return members


def cleanup_stale(pods_dir: Path) -> list[int]:
    """Kill the process groups a previous agent with this state directory left running."""
    killed: list[int] = []
    for pgid, pid_file in _stale_groups(pods_dir):
        if kill_group(pgid, signal.SIGKILL):
            killed.append(pgid)
        pid_file.unlink(missing_ok=True)
    return killed
