"""Read the Flotilla gateway pods' /metrics: requests held for models scaled to zero.

The gateway's replicas each hold their own requests, so every pod is read (not the Service,
which would answer from one of them at random). The pods are found by whoever builds the
source (`find`: the controller lists them through kube/), so this module talks only HTTP.
One look serves every model that asks within `max_age` seconds: a fleet of models at zero
costs one read of each gateway pod per interval, not one per model.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence

import aiohttp

from flotilla.metrics.gateway import GatewayLook, GatewayReading, GatewayTarget, parse_gateway
from flotilla.metrics.triton import MetricsFormatError

from .scrape import _fetch, _HTTPStatusError

DEFAULT_PORT = 8080  # the gateway's HTTP port (API, /metrics) in the chart
Clock = Callable[[], float]
Finder = Callable[[], Awaitable[Sequence[GatewayTarget]]]


class GatewaySource:
    def __init__(
        self,
        find: Finder,
        where: str,
        port: int = DEFAULT_PORT,
        timeout: float = 2.0,
        max_age: float = 5.0,
        session: aiohttp.ClientSession | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        """`where` names the pods in messages (e.g. `pods app.kubernetes.io/name=flotilla-gateway
        in flotilla-system`)."""
        self.find, self.where, self.port, self.timeout = find, where, port, timeout
        self.max_age, self.session, self.clock = max_age, session, clock
        self._last: GatewayLook | None = None
        self._lock = asyncio.Lock()

    async def look(self) -> GatewayLook:
        """The newest look, read again when older than `max_age`. Never raises: a failure is
        the look's `error` (or a reading's), for the autoscaler to report."""
        async with self._lock:  # models asking together share one read
            if self._last is not None and self.clock() - self._last.at < self.max_age:
                return self._last
            self._last = await self._read()
            return self._last

    async def _read(self) -> GatewayLook:
        try:
            targets = list(await self.find())
        except Exception as err:  # the API server, RBAC: reported, never taken as "no demand"
            return GatewayLook(self.clock(), (), f"cannot list the gateway {self.where}: {err}")
        if not targets:
            return GatewayLook(self.clock(), (), f"no gateway {self.where} is running")
        if self.session is None:
            async with aiohttp.ClientSession() as own:
                readings = await self._read_all(own, targets)
        else:
            readings = await self._read_all(self.session, targets)
        return GatewayLook(self.clock(), tuple(readings))

    async def _read_all(self, session: aiohttp.ClientSession, targets: Sequence[GatewayTarget]) -> list[GatewayReading]:
        return list(await asyncio.gather(*(self._read_one(session, t) for t in targets)))

    async def _read_one(self, session: aiohttp.ClientSession, target: GatewayTarget) -> GatewayReading:
        host = f"[{target.ip}]" if ":" in target.ip else target.ip
        url = f"http://{host}:{self.port}/metrics"
        try:
            counts = parse_gateway(await _fetch(session, url, self.timeout))
        except TimeoutError:
            return GatewayReading(target.pod, None, f"{url}: timed out after {self.timeout:g}s")
        except (_HTTPStatusError, MetricsFormatError) as err:
            return GatewayReading(target.pod, None, f"{url}: {err}")
        except aiohttp.ClientError as err:
            return GatewayReading(target.pod, None, f"{url}: {type(err).__name__}: {err}")
        return GatewayReading(target.pod, counts)
