"""Requests to the Triton pods: a lean HTTP/1.1 client with a keep-alive pool per pod.

Not aiohttp's ClientSession: on the gateway's hot path its per-request machinery (request and
response objects, header multidicts, timer contexts, payload wrappers, a writer task) cost
about as much CPU as the rest of the gateway together (docs/gateway.md, Benchmark). The
gateway needs one shape of request (a POST of a JSON body it built, to a pod a LAN hop away)
and three shapes of answer (a body with Content-Length, a chunked body, a body to EOF), which
fit on asyncio streams in a page.

`RetryableError` means the attempt failed before the pod produced an answer (connection refused,
reset or closed before the response, connect timeout, 503 from the pod), so the caller may try
another endpoint: nothing reached the client yet. Anything after a 200 is final. Closing a
stream before its end closes the connection, which is how Triton learns the client left and
cancels the request. Timeouts: `connect_timeout_seconds` for the TCP connect,
`read_timeout_seconds` for any silence of the pod (before the status line or between two reads
of the body).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

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
_DRAIN_ABOVE = 1 << 16  # write-buffer bytes above which a send waits for the socket (big bodies)
_HEAD_LIMIT = 1 << 16  # the longest status line + headers (and chunk-size line) accepted
T = TypeVar("T")


class RetryableError(Exception):
    """The attempt failed before any answer: another endpoint may take the request. `eject`:
    the endpoint could not be connected to at all, so avoid it for a while."""

    def __init__(self, message: str, eject: bool = False) -> None:
        super().__init__(message)
        self.eject = eject


class _MalformedError(Exception):
    """The pod's answer is not HTTP/1.x as this client reads it."""


class _ReadTimeoutError(TimeoutError):
    """The pod was silent for longer than read_timeout_seconds while a read waited."""


class _Conn:
    __slots__ = ("idle_since", "pool", "reader", "timeout", "writer")

    def __init__(self, pool: _Pool, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float) -> None:
        self.pool = pool
        self.reader = reader
        self.writer = writer
        self.timeout = timeout
        self.idle_since = 0.0

    async def read(self, op: Awaitable[T]) -> T:
        """`op` (a read of `reader`), failed with `_ReadTimeoutError` after `timeout` seconds.
        A timer that fails the stream, not `asyncio.timeout`: the same bound for a fraction of
        the cost (no task cancellation to undo), and the connection is discarded after it."""
        timer = asyncio.get_running_loop().call_later(self.timeout, self._expire)
        try:
            return await op
        finally:
            timer.cancel()

    def _expire(self) -> None:
        self.reader.set_exception(_ReadTimeoutError())

    def reusable(self, now: float) -> bool:
        return (
            not self.writer.transport.is_closing()
            and not self.reader.at_eof()
            and self.reader.exception() is None
            and now - self.idle_since < KEEPALIVE_SECONDS
        )


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
    """A response whose status line and headers are read; the body is read by `read()` or
    `chunks()`, then `release()` (the connection goes back to the pool when the body was read to
    its end and the pod keeps the connection alive) or `close()` (the connection is dropped)."""

    __slots__ = ("_chunked", "_conn", "_done", "_keep", "_left", "_upstream", "status")

    def __init__(
        self, upstream: Upstream, conn: _Conn, status: int, length: int | None, chunked: bool, keep: bool
    ) -> None:
        self._upstream = upstream
        self._conn: _Conn | None = conn
        self.status = status
        self._left = length  # body bytes still to read (None: chunked or to EOF)
        self._chunked = chunked
        self._keep = keep and (chunked or length is not None)
        self._done = length == 0

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body's bytes as they arrive (chunked transfer coding removed)."""
        conn = self._conn
        if conn is None or self._done:
            return
        reader = conn.reader
        if self._chunked:
            while True:
                line = await conn.read(reader.readuntil(b"\r\n"))
                try:
                    size = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise _MalformedError(f"bad chunk size line {line[:40]!r}") from None
                if size == 0:
                    while await conn.read(reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                        pass
                    break
                data = await conn.read(reader.readexactly(size + 2))
                yield data[:-2]
        elif self._left is not None:
            while self._left > 0:
                data = await conn.read(reader.read(self._left))
                if not data:
                    raise asyncio.IncompleteReadError(b"", self._left)
                self._left -= len(data)
                yield data
        else:
            while data := await conn.read(reader.read(1 << 16)):
                yield data
        self._done = True

    async def read(self) -> bytes:
        conn = self._conn
        if conn is not None and self._left is not None and not self._chunked and self._left > 0:
            # The common case in one read: the whole body is usually in the buffer already.
            data = await conn.read(conn.reader.readexactly(self._left))
            self._left = 0
            self._done = True
            return data
        return b"".join([chunk async for chunk in self.chunks()])

    def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            if self._done and self._keep:
                self._upstream._release(conn)
            else:
                self._upstream._discard(conn)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._upstream._discard(conn)


def _parse_head(raw: bytes) -> tuple[int, int | None, bool, bool]:
    """(status, content length, chunked, keep-alive) of a response's status line and headers."""
    lines = raw.split(b"\r\n")
    version, _, rest = lines[0].partition(b" ")
    if not version.startswith(b"HTTP/1."):
        raise _MalformedError(f"not an HTTP/1.x status line: {lines[0][:60]!r}")
    try:
        status = int(rest[:3])
    except ValueError:
        raise _MalformedError(f"bad status line {lines[0][:60]!r}") from None
    length: int | None = None
    chunked = False
    keep = version == b"HTTP/1.1"
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(b":")
        if not sep:
            raise _MalformedError(f"bad header line {line[:60]!r}")
        name = name.strip().lower()
        if name == b"content-length":
            try:
                length = int(value)
            except ValueError:
                raise _MalformedError(f"bad Content-Length {value[:40]!r}") from None
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif name == b"connection":
            tokens = value.lower()
            if b"close" in tokens:
                keep = False
            elif b"keep-alive" in tokens:
                keep = True
    if chunked:
        length = None  # RFC 9112: Transfer-Encoding overrides Content-Length
    return status, length, chunked, keep


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
                conn.writer.close()
            pool.idle.clear()
            while pool.hand_over(None):
                pass
        self._pools.clear()

    # ------------------------------------------------------------ the pool

    def _sweep(self, now: float) -> None:
        """Close idle connections past their keep-alive, forget pools of pods that are gone."""
        self._swept = now
        for key, pool in list(self._pools.items()):
            keep = [c for c in pool.idle if c.reusable(now)]
            for conn in pool.idle:
                if conn not in keep:
                    conn.writer.close()
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
            conn.writer.close()
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
                reader, writer = await asyncio.open_connection(endpoint.ip, endpoint.port, limit=_HEAD_LIMIT)
        except TimeoutError as err:
            self._free_slot(pool)
            raise RetryableError(f"connect to {endpoint.address} timed out", eject=True) from err
        except OSError as err:
            self._free_slot(pool)
            raise RetryableError(f"{endpoint.address}: {err}", eject=True) from err
        except BaseException:
            self._free_slot(pool)
            raise
        return _Conn(pool, reader, writer, self.read_timeout)

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
        if self._closed or conn.writer.transport.is_closing():
            self._discard(conn)
        elif not pool.hand_over(conn):
            conn.idle_since = asyncio.get_running_loop().time()
            pool.idle.append(conn)

    def _discard(self, conn: _Conn) -> None:
        conn.writer.close()
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
            conn.writer.write(b"%s%d\r\n\r\n%s" % (self._head(endpoint, path), len(body), body))
            if conn.writer.transport.get_write_buffer_size() > _DRAIN_ABOVE:
                await conn.writer.drain()
            while True:
                raw = await conn.read(conn.reader.readuntil(b"\r\n\r\n"))
                status, length, chunked, keep = _parse_head(raw)
                if status >= 200:
                    break  # 1xx: interim, the answer follows
        except _ReadTimeoutError as err:
            self._discard(conn)
            raise GatewayError("upstream_timeout", f"{endpoint.address} sent no answer in time") from err
        except (OSError, EOFError) as err:
            # Reset, or a pooled keep-alive connection the pod had closed: worth another try,
            # but no sign the pod is gone.
            self._discard(conn)
            detail = "closed the connection" if isinstance(err, EOFError) else f"{type(err).__name__}: {err}"
            raise RetryableError(f"{endpoint.address}: {detail}") from err
        except (_MalformedError, asyncio.LimitOverrunError) as err:
            self._discard(conn)
            raise GatewayError("upstream_error", f"{endpoint.address} sent a malformed answer: {err}") from err
        except BaseException:
            self._discard(conn)
            raise
        resp = _Response(self, conn, status, length, chunked, keep)
        if status == 200:
            return resp
        try:
            data = await resp.read()
        except (OSError, EOFError, _MalformedError, asyncio.LimitOverrunError):
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
        except (OSError, EOFError, _MalformedError, asyncio.LimitOverrunError) as err:
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
        except (OSError, EOFError, _MalformedError, asyncio.LimitOverrunError) as err:
            raise GatewayError("upstream_error", f"the stream was cut off: {err!r}") from err
        self._complete = True

    def close(self) -> None:
        if self._complete:
            self._resp.release()  # at EOF: the connection goes back to the pool
        else:
            self._resp.close()  # mid-body: drop the connection so Triton cancels the request
