"""The pod network: a range of local addresses, one per pod.

Loopback addresses (127.0.0.0/8) would need no set-up, but the API server rejects them in
EndpointSlices and Endpoints ("may not be in the loopback range"), so Services would never
get endpoints. The default range is therefore 198.18.0.0/16 (RFC 2544 benchmarking space,
never routed on the internet), made local with one "AnyIP" route:

    ip route add local 198.18.0.0/16 dev lo

after which any address in it can be bound and reached on this machine, like 127.x. Adding
the route needs CAP_NET_ADMIN (root); the agent adds it when it can. When it cannot, it
falls back to 127.0.128.0/17: pods still run on their own addresses, but Services stay
without endpoints, and the Node says so (annotation and a Warning event).
"""

from __future__ import annotations

import ipaddress
import socket
import subprocess
from dataclasses import dataclass

from .ipam import usable

DEFAULT_CIDR = "198.18.0.0/16"
LOOPBACK_FALLBACK = "127.0.128.0/17"
LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")


@dataclass(frozen=True)
class PodNetwork:
    cidr: str
    mode: str  # "anyip" or "loopback"
    note: str

    @property
    def endpoints_work(self) -> bool:
        return self.mode == "anyip"


def is_loopback(cidr: str) -> bool:
    return ipaddress.IPv4Network(cidr).subnet_of(LOOPBACK)


def bindable(cidr: str) -> bool:
    """Can a process bind an address of the range (i.e. is it local)?"""
    first = usable(ipaddress.IPv4Network(cidr))[0]
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((str(first), 0))
        except OSError:
            return False
    return True


def add_local_route(cidr: str) -> str | None:
    """Route the range to lo as local addresses; None on success, else why not."""
    argv = ["ip", "route", "add", "local", cidr, "dev", "lo"]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"{' '.join(argv)}: {err}"
    if proc.returncode != 0 and "File exists" not in proc.stderr:
        return f"{' '.join(argv)}: {proc.stderr.strip() or f'exit {proc.returncode}'}"
    return None


def setup(cidr: str = DEFAULT_CIDR, add_route: bool = True) -> PodNetwork:
    if is_loopback(cidr):
        return PodNetwork(cidr, "loopback", "loopback pod addresses: Services get no endpoints")
    if bindable(cidr):
        return PodNetwork(cidr, "anyip", f"{cidr} is local (route to lo present)")
    failure = add_local_route(cidr) if add_route else "adding the route is disabled (--no-route)"
    if failure is None and bindable(cidr):
        return PodNetwork(cidr, "anyip", f"added: ip route add local {cidr} dev lo")
    return PodNetwork(
        LOOPBACK_FALLBACK,
        "loopback",
        f"{cidr} is not local and could not be made so ({failure}); using {LOOPBACK_FALLBACK}: the API "
        f"server rejects loopback addresses in EndpointSlices, so Services get no endpoints. "
        f"Fix: run `sudo ip route add local {cidr} dev lo` and restart the process node.",
    )
