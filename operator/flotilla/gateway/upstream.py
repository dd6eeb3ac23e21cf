"""Requests to the Triton pods: a keep-alive connection pool per pod on asyncio protocols,
responses parsed by httptools (llhttp, the parser uvicorn uses).

Not aiohttp's ClientSession: on the gateway's hot path its per-request machinery (request and
response objects, header multidicts, timer contexts, a writer task) cost about as much CPU as
the rest of the gateway together (docs/gateway.md, Benchmark). The gateway sends one shape of
request (a POST of a JSON body it built, to a pod a LAN hop away), so the request head is a
fixed prefix per pod and path; everything read from the pod goes through llhttp.

`RetryableError` means the attempt failed before the pod produced an answer (connection refused,
reset or closed before the response, connect timeout, 503 from the pod), so the caller may try
another endpoint: nothing reached the client yet. Anything after a 200 is final. Closing a
stream before its end closes the connection, which is how Triton learns the client left and
cancels the request. Timeouts: `connect_timeout_seconds` for the TCP connect,
`read_timeout_seconds` for any silence of the pod while a request waits on it (before the
status line or between two pieces of the body).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from typing import Any, cast

import httptools

from .protocol import (
    Embedded,
    GatewayError,
    Generated,
    SseDecoder,
    loads,
    parse_generated,
    parse_infer,
    upstream_error_message,
    upstream_refusal,
)
from .routing import Endpoint
from .settings import GatewaySettings

KEEPALIVE_SECONDS = 60.0  # an idle pooled connection older than this is closed, not reused
SWEEP_SECONDS = 10.0  # how often idle connections and pools of gone pods are looked over


class RetryableError(Exception):
    """The attempt failed before any answer: another endpoint may take the request. `eject`:
    the endpoint could not be connected to at all, so avoid it for a while."""

    def __init__(self, message: str, eject: bool = False) -> None:
        super().__init__(message)
        self.eject = eject


class _MalformedError(Exception):
    """llhttp refused the pod's answer."""


class _ReadTimeoutError(TimeoutError):
    """The pod was silent for longer than read_timeout_seconds while a request waited on it."""


class _ClosedError(EOFError):
    """The pod closed the connection before the answer was complete."""


class _Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection: bytes from the socket go straight into llhttp, whose
    callbacks fill the current response; a reader waits on `_waiter` for the next piece."""

    __slots__ = (
        "_last",
        "_loop",
        "_timer",
        "_waiter",
        "active",
        "body",
        "complete",
        "error",
        "framed",
        "headers_done",
        "idle_since",
        "keep",
        "lost",
        "parser",
        "pool",
        "status",
        "timeout",
        "transport",
    )

    def __init__(self, pool: _Pool, timeout: float) -> None:
        self.pool = pool
        self.timeout = timeout
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.idle_since = 0.0
        self.lost = False
        self.active = False  # a request was sent and its connection not yet released
        self._loop = asyncio.get_running_loop()
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._last = 0.0  # loop time of the last bytes received
        self._start()

    def _start(self) -> None:
        """Fresh state for the next response."""
        self.status = 0
        self.headers_done = False
        self.complete = False
        self.keep = False
        self.framed = False  # Content-Length or chunked: the end is in the bytes, not at EOF
        self.body: list[bytes] = []
        self.error: BaseException | None = None

    # ------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A TCP transport (uvloop's is not an asyncio.Transport subclass, so no isinstance).
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if not self.active:  # bytes nobody asked for: the connection is not in a known state
            self.lost = True
            self.close()
            return
        self._last = self._loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as err:
            self._fail(_MalformedError(f"{type(err).__name__}: {err}"))
            self.close()
        else:
            self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if exc is None and self.headers_done and not self.framed and not self.complete and self.error is None:
            self.complete = True  # a body delimited by the end of the connection
        elif not self.complete:
            self._fail(_ClosedError("the pod closed the connection") if exc is None else exc)
        self._wake()

    # ------------------------------------------------------------ llhttp callbacks

    def on_message_begin(self) -> None:
        if self.complete:  # bytes past the end of the answer: this connection is out of step
            self.keep = False

    def on_header(self, name: bytes, value: bytes) -> None:
        lower = name.lower()
        if lower == b"content-length" or (lower == b"transfer-encoding" and b"chunked" in value.lower()):
            self.framed = True

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:  # 1xx: interim, the answer follows as the next message
            self.framed = False
            return
        self.status = status
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        if self.headers_done:
            self.body.append(body)

    def on_message_complete(self) -> None:
        if self.headers_done:
            self.keep = self.parser.should_keep_alive()
            self.complete = True
            self._stop_timer()

    # ------------------------------------------------------------ the reading side

    def _fail(self, err: BaseException) -> None:
        if self.error is None:
            self.error = err

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def send(self, data: bytes) -> None:
        """Write a request and start watching for the pod's silence."""
        assert self.transport is not None
        self._start()
        if self.lost:  # closed by the pod after the pool looked: fail now, not after the read timeout
            self._fail(_ClosedError("the pod closed the connection"))
        self.active = True
        self._last = self._loop.time()
        self.transport.write(data)
        # Large bodies stay in the transport's buffer: they are already in memory, bounded by
        # the gateway's body limit, so waiting for the socket would only add latency.
        if self._timer is None:
            self._timer = self._loop.call_at(self._last + self.timeout, self._check)

    def _check(self) -> None:
        """One timer per request, moved along by the bytes that came meanwhile (cheaper than
        re-arming a timer for every chunk)."""
        self._timer = None
        if self.complete or self.error is not None:
            return
        deadline = self._last + self.timeout
        if self._loop.time() >= deadline:
            self._fail(_ReadTimeoutError())
            self._wake()
        else:
            self._timer = self._loop.call_at(deadline, self._check)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def _next(self) -> None:
        """Wait for more of the response (or its end, or a failure)."""
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def head(self) -> int:
        """The response's status once its headers are in."""
        while not self.headers_done:
            if self.error is not None:
                raise self.error
            await self._next()
        return self.status

    async def read(self) -> bytes:
        """The whole body."""
        while not self.complete:
            if self.error is not None:
                raise self.error
            await self._next()
        data = b"".join(self.body)
        self.body = []
        return data

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body's bytes as they arrive (chunked transfer coding removed by llhttp)."""
        while True:
            if self.body:
                data = b"".join(self.body)
                self.body = []
                yield data
            elif self.complete:
                return
            elif self.error is not None:
                raise self.error
            else:
                await self._next()

    def sent_whole(self) -> bool:
        return self.transport is not None and self.transport.get_write_buffer_size() == 0

    def alive(self) -> bool:
        return not self.lost and self.transport is not None and not self.transport.is_closing()

    def reusable(self, now: float) -> bool:
        return self.alive() and now - self.idle_since < KEEPALIVE_SECONDS

    def close(self) -> None:
        self._stop_timer()
        if self.transport is not None:
            self.transport.close()


class _Pool:
    """The connections to one pod: at most `limit` open, idle ones reused last-in first-out,
    requests over the limit wait in arrival order for one to be released."""

    __slots__ = ("idle", "limit", "open", "waiters")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0  # connections counted against the limit: idle, in use, or being connected
        self.idle: list[_Conn] = []
        self.waiters: deque[asyncio.Future[_Conn | None]] = deque()

    def hand_over(self, conn: _Conn | None) -> bool:
        """Give a released connection (or, None, a freed slot) to the oldest waiter, if any."""
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return True
        return False


class _Response:
    """A response whose headers are in; the body is read by `read()` or `chunks()`, then
    `release()` (the connection goes back to the pool when the body was read to its end and
    the pod keeps it alive) or `close()` (the connection is dropped)."""

    __slots__ = ("_conn", "_upstream", "status")

    def __init__(self, upstream: Upstream, conn: _Conn, status: int) -> None:
        self._upstream = upstream
        self._conn: _Conn | None = conn
        self.status = status

    async def read(self) -> bytes:
        assert self._conn is not None
        return await self._conn.read()

    async def chunks(self) -> AsyncIterator[bytes]:
        assert self._conn is not None
        async for data in self._conn.chunks():
            yield data

    def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            # Reused only when the answer was read to its end, the pod keeps the connection, and
            # the request went out whole (a pod that answered early would read our leftovers
            # as the next request).
            if conn.complete and conn.keep and not conn.body and conn.sent_whole():
                self._upstream._release(conn)
            else:
                self._upstream._discard(conn)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._upstream._discard(conn)


_CUT = (OSError, EOFError, _MalformedError)  # the answer could not be read to its end


class Upstream:
    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.read_timeout = settings.read_timeout_seconds
        self._pools: dict[tuple[str, int], _Pool] = {}
        self._heads: dict[tuple[str, int, str], bytes] = {}  # the request line and fixed headers
        self._swept = 0.0
        self._closed = False

    async def close(self) -> None:
        self._closed = True
        for pool in self._pools.values():
            for conn in pool.idle:
                conn.close()
            pool.idle.clear()
            while pool.hand_over(None):
                pass
        self._pools.clear()

    # ------------------------------------------------------------ the pool

    def _sweep(self, now: float) -> None:
        """Close idle connections past their keep-alive, forget pools of pods that are gone."""
        self._swept = now
        for key, pool in list(self._pools.items()):
            keep = []
            for conn in pool.idle:
                if conn.reusable(now):
                    keep.append(conn)
                else:
                    conn.close()
                    pool.open -= 1
            pool.idle = keep
            if pool.open <= 0 and not pool.waiters:
                del self._pools[key]
        if len(self._heads) > 4096:  # pods come and go
            self._heads.clear()

    async def _acquire(self, endpoint: Endpoint) -> _Conn:
        loop = asyncio.get_running_loop()
        now = loop.time()
        if now - self._swept > SWEEP_SECONDS:
            self._sweep(now)
        key = (endpoint.ip, endpoint.port)
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = _Pool(self.settings.pool_per_host)
        while pool.idle:
            conn = pool.idle.pop()
            if conn.reusable(now):
                return conn
            conn.close()
            pool.open -= 1
        if pool.open >= pool.limit:
            handed = await self._wait(pool)
            if handed is not None:
                return handed
            # A freed slot: it stays counted (pool.open) for this request, connect below.
        else:
            pool.open += 1
        try:
            async with asyncio.timeout(self.settings.connect_timeout_seconds):
                _, conn = await loop.create_connection(
                    lambda: _Conn(pool, self.read_timeout), endpoint.ip, endpoint.port
                )
        except TimeoutError as err:
            self._free_slot(pool)
            raise RetryableError(f"connect to {endpoint.address} timed out", eject=True) from err
        except OSError as err:
            self._free_slot(pool)
            raise RetryableError(f"{endpoint.address}: {err}", eject=True) from err
        except BaseException:
            self._free_slot(pool)
            raise
        return conn

    async def _wait(self, pool: _Pool) -> _Conn | None:
        """Wait for a connection of a full pool: a released one, or None for a freed slot."""
        waiter: asyncio.Future[_Conn | None] = asyncio.get_running_loop().create_future()
        pool.waiters.append(waiter)
        try:
            return await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():  # handed over, then cancelled
                got = waiter.result()
                if got is not None:
                    self._release(got)
                else:
                    self._free_slot(pool)
            raise

    def _free_slot(self, pool: _Pool) -> None:
        if not pool.hand_over(None):
            pool.open -= 1

    def _release(self, conn: _Conn) -> None:
        pool = conn.pool
        conn.active = False
        if self._closed or not conn.alive():
            self._discard(conn)
        elif not pool.hand_over(conn):
            conn.idle_since = asyncio.get_running_loop().time()
            pool.idle.append(conn)

    def _discard(self, conn: _Conn) -> None:
        conn.close()
        self._free_slot(conn.pool)

    # ------------------------------------------------------------ requests

    def _head(self, endpoint: Endpoint, path: str) -> bytes:
        key = (endpoint.ip, endpoint.port, path)
        head = self._heads.get(key)
        if head is None:
            host = f"[{endpoint.ip}]" if ":" in endpoint.ip else endpoint.ip
            # No Accept-Encoding: Triton would compress infer answers for a client that accepts
            # it. Pods are a LAN hop away: identity.
            head = self._heads[key] = (
                f"POST {path} HTTP/1.1\r\nHost: {host}:{endpoint.port}\r\n"
                "Content-Type: application/json\r\nContent-Length: "
            ).encode()
        return head

    async def _post(self, endpoint: Endpoint, path: str, body: bytes) -> _Response:
        """POST and return a 200 response with its body unread; raise RetryableError or GatewayError."""
        conn = await self._acquire(endpoint)
        try:
            conn.send(b"%s%d\r\n\r\n%s" % (self._head(endpoint, path), len(body), body))
            status = await conn.head()
        except _ReadTimeoutError as err:
            self._discard(conn)
            raise GatewayError("upstream_timeout", f"{endpoint.address} sent no answer in time") from err
        except (OSError, EOFError) as err:
            # Reset, or a pooled keep-alive connection the pod had closed: worth another try,
            # but no sign the pod is gone.
            self._discard(conn)
            detail = "closed the connection" if isinstance(err, EOFError) else f"{type(err).__name__}: {err}"
            raise RetryableError(f"{endpoint.address}: {detail}") from err
        except _MalformedError as err:
            self._discard(conn)
            raise GatewayError("upstream_error", f"{endpoint.address} sent a malformed answer: {err}") from err
        except BaseException:
            self._discard(conn)
            raise
        resp = _Response(self, conn, status)
        if status == 200:
            return resp
        try:
            data = await resp.read()
        except _CUT:
            data = b""
        finally:
            resp.release()
        if status == 503:
            raise RetryableError(f"{endpoint.address} answered 503")
        if status == 400:
            raise upstream_refusal(upstream_error_message(status, data))
        raise GatewayError("upstream_error", upstream_error_message(status, data))

    async def _read_json(self, resp: _Response) -> Any:
        try:
            data = await resp.read()
        except _ReadTimeoutError as err:
            raise GatewayError("upstream_timeout", "the model stopped answering") from err
        except _CUT as err:
            raise GatewayError("upstream_error", f"the answer was cut off: {err!r}") from err
        finally:
            resp.release()
        try:
            return loads(data)
        except ValueError as err:
            raise GatewayError("upstream_error", "the model's answer is not JSON") from err

    async def generate(self, endpoint: Endpoint, model: str, body: bytes) -> Generated:
        resp = await self._post(endpoint, f"/v2/models/{model}/generate", body)
        return parse_generated(await self._read_json(resp))

    async def infer(self, endpoint: Endpoint, model: str, body: bytes) -> Embedded:
        resp = await self._post(endpoint, f"/v2/models/{model}/infer", body)
        return parse_infer(await self._read_json(resp))

    async def open_stream(self, endpoint: Endpoint, model: str, body: bytes) -> Stream:
        return Stream(await self._post(endpoint, f"/v2/models/{model}/generate_stream", body))


class Stream:
    """An open generate_stream response: iterate `events()`, then always `close()`."""

    def __init__(self, resp: _Response) -> None:
        self._resp = resp
        self._complete = False

    async def events(self) -> AsyncIterator[Generated]:
        decoder = SseDecoder()
        try:
            async for chunk in self._resp.chunks():
                for payload in decoder.feed(chunk):
                    try:
                        event = loads(payload)
                    except ValueError as err:
                        raise GatewayError("upstream_error", "the model sent an event that is not JSON") from err
                    yield parse_generated(event)
        except _ReadTimeoutError as err:
            raise GatewayError("upstream_timeout", "the model stopped streaming") from err
        except _CUT as err:
            raise GatewayError("upstream_error", f"the stream was cut off: {err!r}") from err
        self._complete = True

    def close(self) -> None:
        if self._complete:
            self._resp.release()  # at EOF: the connection goes back to the pool
        else:
            self._resp.close()  # mid-body: drop the connection so Triton cancels the request
