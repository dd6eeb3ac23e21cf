"""Read every serving pod's Triton metrics endpoint directly (no Prometheus needed).

All pods are read concurrently, each under its own timeout, so one slow pod costs one
timeout, not one per pod. A pod that cannot be read yields a PodReading with the reason in
`error` (timeout, refused, HTTP status, unparseable text, model not exported), never an
exception: the Sampler lists it and averages nothing in for it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

import aiohttp

from flotilla.metrics.triton import MetricsFormatError, parse_model
from flotilla.metrics.types import PodReading, PodTarget

DEFAULT_PORT = 8002  # Triton's --metrics-port default, and what the operator's pods expose
Clock = Callable[[], float]


async def scrape(
    targets: Sequence[PodTarget],
    model: str,
    port: int = DEFAULT_PORT,
    timeout: float = 2.0,
    session: aiohttp.ClientSession | None = None,
    clock: Clock = time.monotonic,
    url_template: str | None = None,
    namespace: str = "",
) -> list[PodReading]:
    """One reading per target that has an IP (a pod without one has served nothing yet).

    `url_template` (the operator's metrics_url_template setting) says where a pod's metrics
    are, with {ip}, {port}, {namespace} and {pod} filled in; by default http://<ip>:<port>/metrics.

    `model` is the Triton model name, which is the SmallModel's name. Pass a `session` to
    reuse connections across looks; without one a session lives for this call only.
    """
    readable = [t for t in targets if t.ip]
    if not readable:
        return []
    urls = {t.pod: endpoint(t, port, url_template, namespace) for t in readable}
    if session is None:
        async with aiohttp.ClientSession() as own:
            return await _scrape_all(own, readable, urls, model, timeout, clock)
    return await _scrape_all(session, readable, urls, model, timeout, clock)


async def _scrape_all(
    session: aiohttp.ClientSession,
    targets: Sequence[PodTarget],
    urls: dict[str, str],
    model: str,
    timeout: float,
    clock: Clock,
) -> list[PodReading]:
    return list(await asyncio.gather(*(_read_one(session, t, urls[t.pod], model, timeout, clock) for t in targets)))


def endpoint(target: PodTarget, port: int, url_template: str | None = None, namespace: str = "") -> str:
    assert target.ip is not None
    host = f"[{target.ip}]" if ":" in target.ip else target.ip  # IPv6 pod IPs need brackets in a URL
    if url_template:
        return url_template.format(ip=host, port=port, namespace=namespace, pod=target.pod)
    return f"http://{host}:{port}/metrics"


async def _read_one(
    session: aiohttp.ClientSession, target: PodTarget, url: str, model: str, timeout: float, clock: Clock
) -> PodReading:

    def failed(error: str) -> PodReading:
        return PodReading(target.pod, target.revision, clock(), None, f"{url}: {error}")

    try:
        text = await _fetch(session, url, timeout)
    except TimeoutError:
        return failed(f"timed out after {timeout:g}s")
    except _HTTPStatusError as exc:
        return failed(str(exc))
    except aiohttp.ClientError as exc:
        # Refused, reset, DNS, bad payload: aiohttp's message names the cause.
        return failed(f"{type(exc).__name__}: {exc}")
    at = clock()
    try:
        counters = parse_model(text, model)
    except MetricsFormatError as exc:
        return failed(str(exc))
    if counters is None:
        return failed(f"model {model!r} not in the metrics (not loaded?)")
    return PodReading(target.pod, target.revision, at, counters)


class _HTTPStatusError(Exception):
    pass


async def _fetch(session: aiohttp.ClientSession, url: str, timeout: float) -> str:
    # asyncio.timeout bounds connect + read together (aiohttp's own total timeout would too,
    # but raising TimeoutError from one place keeps the error text the same everywhere).
    async with asyncio.timeout(timeout), session.get(url) as response:
        if response.status != 200:
            raise _HTTPStatusError(f"HTTP {response.status} {response.reason or ''}".rstrip())
        return await response.text()


class ScrapeSource:
    """MetricsSource that scrapes each pod's Triton metrics endpoint."""

    def __init__(
        self,
        port: int = DEFAULT_PORT,
        timeout: float = 2.0,
        session: aiohttp.ClientSession | None = None,
        clock: Clock = time.monotonic,
        url_template: str | None = None,
    ) -> None:
        self.port, self.timeout, self.session, self.clock = port, timeout, session, clock
        self.url_template = url_template

    async def read(self, namespace: str, model: str, targets: Sequence[PodTarget]) -> list[PodReading]:
        """`namespace` only fills {namespace} in url_template: pod IPs are unique in the cluster."""
        return await scrape(
            targets, model, self.port, self.timeout, self.session, self.clock, self.url_template, namespace
        )
