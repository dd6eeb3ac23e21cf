"""The gateway's client to the pods (flotilla.gateway.upstream: a pool of asyncio protocols,
answers parsed by httptools) against scripted raw-socket servers: the three body framings,
keep-alive reuse and its limits, the pool's cap, a stream left midway, and the failure
taxonomy the retries rely on (RetryableError vs GatewayError)."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest
import uvloop

from flotilla.gateway.protocol import GatewayError
from flotilla.gateway.routing import Endpoint
from flotilla.gateway.settings import GatewaySettings
from flotilla.gateway.upstream import RetryableError, Upstream
from flotilla.testing import free_port

GENERATED = json.dumps({"text_output": "hi", "finish_reason": "stop", "prompt_tokens": 3, "completion_tokens": 1})
Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture(autouse=True, params=["asyncio", "uvloop"])
def loop_kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test on both loops: the gateway runs on uvloop, whose transports are not
    asyncio's classes."""
    monkeypatch.setattr(sys.modules[__name__], "RUN", uvloop.run if request.param == "uvloop" else asyncio.run)
    return str(request.param)


RUN: Callable[[Coroutine[Any, Any, None]], None] = asyncio.run


def settings(**extra: object) -> GatewaySettings:
    return GatewaySettings(namespaces=["ml"], host="127.0.0.1", port=0, **extra)  # type: ignore[arg-type]


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length"))
    return head + await reader.readexactly(length)


def answer(body: str, *extra: str, status: str = "200 OK") -> bytes:
    headers = "".join(f"{h}\r\n" for h in extra)
    return f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{headers}\r\n{body}".encode()


def run(script: Script, test: Callable[[Upstream, Endpoint, list[int]], Awaitable[None]], **cfg: object) -> None:
    """`script` serves each accepted connection; `test` gets the client, the endpoint and a
    one-element list counting the connections the server accepted."""

    async def main() -> None:
        accepted = [0]

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted[0] += 1
            try:
                await script(reader, writer)
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        upstream = Upstream(settings(**cfg))
        try:
            await test(upstream, Endpoint("127.0.0.1", port), accepted)
        finally:
            await upstream.close()
            server.close()

    RUN(main())


async def keep_alive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        await read_request(reader)
        writer.write(answer(GENERATED))
        await writer.drain()


def test_content_length_answers_reuse_one_connection() -> None:
    async def check(up: Upstream, ep: Endpoint, accepted: list[int]) -> None:
        for _ in range(3):
            got = await up.generate(ep, "chat", b"{}")
            assert (got.text, got.finish_reason, got.completion_tokens) == ("hi", "stop", 1)
        assert accepted == [1]

    run(keep_alive, check)


def test_the_request_on_the_wire() -> None:
    seen: list[bytes] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await read_request(reader))
        writer.write(answer(GENERATED))

    async def check(up: Upstream, ep: Endpoint, _: list[int]) -> None:
        await up.generate(ep, "chat", b'{"a":1}')

    run(script, check)
    head, _, body = seen[0].partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /v2/models/chat/generate HTTP/1.1" and body == b'{"a":1}'
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines[1:])}
    assert headers[b"content-type"] == b"application/json" and headers[b"content-length"] == b"7"
    assert b"accept-encoding" not in headers and b"user-agent" not in headers  # identity, nothing extra


def test_chunked_stream_with_extensions_and_trailers_then_reuse() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        events = [
            b'data: {"text_output": "a", "finish_reason": ""}\n\n',
            b'data: {"text_output": "b", "finish_reason": "stop"}\n\n',
        ]
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/event-stream\r\n\r\n")
        for event in events:  # the second event split across two chunks
            for part in (event[:7], event[7:]):
                writer.write(b"%x;ext=1\r\n%s\r\n" % (len(part), part))
                await writer.drain()
        writer.write(b"0\r\nX-Trailer: 1\r\n\r\n")
        await keep_alive(reader, writer)

    async def check(up: Upstream, ep: Endpoint, accepted: list[int]) -> None:
        stream = await up.open_stream(ep, "chat", b"{}")
        pieces = [piece async for piece in stream.events()]
        stream.close()
        assert [(p.text, p.finish_reason) for p in pieces] == [("a", None), ("b", "stop")]
        assert (await up.generate(ep, "chat", b"{}")).text == "hi"
        assert accepted == [1]  # the stream read to its end gave the connection back

    run(script, check)


def test_a_body_to_eof_and_connection_close_are_not_reused() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        if len(accepted_at) % 2:
            writer.write(answer(GENERATED, "Connection: close"))
        else:
            writer.write(f"HTTP/1.1 200 OK\r\n\r\n{GENERATED}".encode())  # no length: the body ends at EOF
        accepted_at.append(1)

    accepted_at: list[int] = []

    async def check(up: Upstream, ep: Endpoint, accepted: list[int]) -> None:
        for _ in range(4):
            assert (await up.generate(ep, "chat", b"{}")).text == "hi"
        assert accepted == [4]

    run(script, check)


def test_interim_1xx_is_skipped() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n" + answer(GENERATED))

    async def check(up: Upstream, ep: Endpoint, _: list[int]) -> None:
        assert (await up.generate(ep, "chat", b"{}")).text == "hi"

    run(script, check)


def test_a_closed_pooled_connection_is_retryable_without_ejection() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer(GENERATED))
        await read_request(reader)  # the second request on this connection: closed unanswered

    async def check(up: Upstream, ep: Endpoint, _: list[int]) -> None:
        await up.generate(ep, "chat", b"{}")
        with pytest.raises(RetryableError) as err:
            await up.generate(ep, "chat", b"{}")
        assert not err.value.eject

    run(script, check)


def test_refused_is_retryable_with_ejection_and_statuses_map() -> None:
    async def main() -> None:
        up = Upstream(settings())
        with pytest.raises(RetryableError) as err:
            await up.generate(Endpoint("127.0.0.1", free_port()), "chat", b"{}")
        assert err.value.eject
        await up.close()

    RUN(main())

    def status(code: str, body: str) -> Script:
        async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                await read_request(reader)
                writer.write(answer(body, status=code))

        return script

    async def busy(up: Upstream, ep: Endpoint, accepted: list[int]) -> None:
        for _ in range(2):
            with pytest.raises(RetryableError) as err:
                await up.generate(ep, "chat", b"{}")
            assert not err.value.eject
        assert accepted == [1]  # a non-200 read to its end keeps the connection

    run(status("503 Service Unavailable", '{"error": "busy"}'), busy)

    async def refused(up: Upstream, ep: Endpoint, _: list[int]) -> None:
        with pytest.raises(GatewayError) as err:
            await up.generate(ep, "chat", b"{}")
        assert err.value.kind == "upstream_bad_request" and err.value.param == "top_k"

    run(status("400 Bad Request", '{"error": "invalid parameter \'top_k\': must be >= 0"}'), refused)

    async def broken(up: Upstream, ep: Endpoint, _: list[int]) -> None:
        with pytest.raises(GatewayError) as err:
            await up.generate(ep, "chat", b"{}")
        assert err.value.kind == "upstream_error"

    run(status("200 OK", "not json"), broken)


def test_silence_is_an_upstream_timeout() -> None:
    async def script(reader: asyncio.StreamReader, _: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.Event().wait()  # never answers

    async def check(up: Upstream, ep: Endpoint, _: list[int]) -> None:
        with pytest.raises(GatewayError) as err:
            await up.generate(ep, "chat", b"{}")
        assert err.value.kind == "upstream_timeout"

    run(script, check, read_timeout_seconds=0.2)


def test_the_pool_caps_connections_per_pod_and_queues_the_rest() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            await asyncio.sleep(0.01)
            writer.write(answer(GENERATED))

    async def check(up: Upstream, ep: Endpoint, accepted: list[int]) -> None:
        got = await asyncio.gather(*(up.generate(ep, "chat", b"{}") for _ in range(12)))
        assert [g.text for g in got] == ["hi"] * 12
        assert accepted == [3]

    run(script, check, pool_per_host=3)


def test_a_cancelled_request_drops_its_connection_and_frees_its_slot() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        if accepted_at:
            writer.write(answer(GENERATED))
            await keep_alive(reader, writer)
        accepted_at.append(1)
        await asyncio.Event().wait()  # the first connection never answers

    accepted_at: list[int] = []

    async def check(up: Upstream, ep: Endpoint, accepted: list[int]) -> None:
        task = asyncio.create_task(up.generate(ep, "chat", b"{}"))
        while not accepted_at:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (await up.generate(ep, "chat", b"{}")).text == "hi"  # the slot (cap 1) was freed
        assert accepted == [2]

    run(script, check, pool_per_host=1)


@pytest.mark.parametrize(
    ("head", "connections"),
    [
        ("HTTP/1.1 200 OK", 1),  # HTTP/1.1 keeps the connection unless told otherwise
        ("HTTP/1.1 200 OK\r\nConnection: close", 3),
        ("HTTP/1.0 200 OK", 3),  # HTTP/1.0 closes unless told otherwise
        ("HTTP/1.0 200 OK\r\nConnection: keep-alive", 1),
    ],
)
def test_keep_alive_follows_the_version_and_connection_header(head: str, connections: int) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while not reader.at_eof():
            await read_request(reader)
            writer.write(f"{head}\r\nContent-Length: {len(GENERATED)}\r\n\r\n{GENERATED}".encode())
            await writer.drain()

    async def check(up: Upstream, ep: Endpoint, accepted: list[int]) -> None:
        for _ in range(3):
            assert (await up.generate(ep, "chat", b"{}")).text == "hi"
        assert accepted == [connections]

    run(script, check)


@pytest.mark.parametrize(
    "raw",
    [
        b"SPDY/3 200 OK\r\n\r\n",  # not HTTP/1.x
        b"HTTP/1.1 2x0 OK\r\n\r\n",  # a status that is not a number
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",  # both framings
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",  # a bad chunk size
    ],
)
def test_a_malformed_answer_is_an_upstream_error_not_a_retry(raw: bytes) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(raw)
        await writer.drain()
        await asyncio.sleep(0.2)  # keep it open: the refusal comes from the parser, not from EOF

    async def check(up: Upstream, ep: Endpoint, _: list[int]) -> None:
        with pytest.raises(GatewayError) as err:
            await up.generate(ep, "chat", b"{}")
        assert err.value.kind == "upstream_error"

    run(script, check)


def test_a_stream_closed_midway_drops_its_connection() -> None:
    closed = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        event = b'data: {"text_output": "a", "finish_reason": ""}\n\n'
        writer.write(b"%x\r\n%s\r\n" % (len(event), event))
        await writer.drain()
        assert await reader.read() == b""  # no second request: the client closed the connection
        closed.set()

    async def check(up: Upstream, ep: Endpoint, accepted: list[int]) -> None:
        stream = await up.open_stream(ep, "chat", b"{}")
        async for piece in stream.events():
            assert piece.text == "a"
            break
        stream.close()  # what the gateway does when its client leaves
        await asyncio.wait_for(closed.wait(), 5)
        assert accepted == [1]

    run(script, check)


def test_bytes_past_the_end_of_an_answer_retire_the_connection() -> None:
    """A pod that sends more than its Content-Length: the answer is read, the connection is not
    reused (its next answer would start mid-message), and the next request gets a fresh one."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while not reader.at_eof():
            await read_request(reader)
            writer.write(answer(GENERATED) + b"HTTP/1.1 2")  # the start of an answer nobody asked for
            await writer.drain()

    async def check(up: Upstream, ep: Endpoint, accepted: list[int]) -> None:
        for _ in range(2):
            assert (await up.generate(ep, "chat", b"{}")).text == "hi"
        assert accepted == [2]

    run(script, check)
