"""Pod IPs: one address per pod from a local range, unique across every agent on the machine.

Addresses are claimed with an exclusive `flock` on `<lock dir>/<ip>.lock`, a directory shared
by every process node on the machine (another engineer's cluster, the demo and a test run
can each have one). The kernel drops the lock when its holder dies, so a crashed agent never
leaks addresses. Allocation walks the range from a cursor rather than reusing the lowest
free address: an address just released may still be listed in an EndpointSlice for a moment.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
from collections.abc import Iterator
from pathlib import Path

DEFAULT_LOCK_DIR = Path("/tmp/flotilla-processnode/ipam")


class PoolExhaustedError(RuntimeError):
    pass


def usable(network: ipaddress.IPv4Network) -> list[ipaddress.IPv4Address]:
    """Host addresses of the range, without the ones ending in .0 or .255 (they look like
    network or broadcast addresses to people reading `kubectl get pods -o wide`)."""
    return [ip for ip in network.hosts() if ip.packed[-1] not in (0, 255)]


def candidates(addresses: list[ipaddress.IPv4Address], after: str | None) -> Iterator[ipaddress.IPv4Address]:
    """Every address once, starting just after `after` and wrapping around."""
    start = 0
    if after is not None:
        with contextlib.suppress(ValueError):
            start = addresses.index(ipaddress.IPv4Address(after)) + 1
    for i in range(len(addresses)):
        yield addresses[(start + i) % len(addresses)]


class Ipam:
    def __init__(self, network: str, lock_dir: Path = DEFAULT_LOCK_DIR, cursor_file: Path | None = None) -> None:
        self.network = ipaddress.IPv4Network(network)
        self.lock_dir = lock_dir
        self.cursor_file = cursor_file
        self._addresses = usable(self.network)
        self._in_pool = set(self._addresses)
        self._held: dict[str, int] = {}  # ip -> fd holding its lock
        lock_dir.mkdir(parents=True, exist_ok=True)

    @property
    def held(self) -> dict[str, int]:
        return dict(self._held)

    def _try_lock(self, ip: str, owner: str) -> bool:
        fd = os.open(self.lock_dir / f"{ip}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{owner}\n".encode())
        self._held[ip] = fd
        return True

    def _cursor(self) -> str | None:
        if self.cursor_file is None or not self.cursor_file.is_file():
            return None
        return self.cursor_file.read_text().strip() or None

    def allocate(self, owner: str, prefer: str | None = None) -> str:
        """Claim an address; `prefer` (the pod's address before an agent restart) if free."""
        if prefer and prefer in self._held:
            return prefer
        if prefer and self._in_range(prefer) and self._try_lock(prefer, owner):
            return prefer
        for ip in candidates(self._addresses, self._cursor()):
            if str(ip) not in self._held and self._try_lock(str(ip), owner):
                if self.cursor_file is not None:
                    self.cursor_file.write_text(f"{ip}\n")
                return str(ip)
        raise PoolExhaustedError(f"no free pod address in {self.network} (locks in {self.lock_dir})")

    def _in_range(self, ip: str) -> bool:
        try:
            return ipaddress.IPv4Address(ip) in self._in_pool
        except ValueError:
            return False

    def release(self, ip: str) -> None:
        fd = self._held.pop(ip, None)
        if fd is not None:
            # Unlock before closing; the file stays (deleting it could race another agent's open).
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def release_all(self) -> None:
        for ip in list(self._held):
            self.release(ip)
