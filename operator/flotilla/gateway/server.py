"""The gateway's HTTP server (aiohttp): OpenAI-compatible endpoints over the route table.

Handlers parse (protocol), decide (routing, keys) and delegate (upstream); every failure is a
`protocol.GatewayError` rendered in one place. `main` is `flotilla gateway`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import random
import secrets
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError

from . import protocol as p
from .keys import OPEN, Grant, KeyRing, authorize
from .metrics import GatewayMetrics
from .routing import ModelRoute, NoEndpointError, Pick, Rng, Role, RouteTable, pick, serving_role
from .settings import GatewaySettings
from .upstream import RetryableError, Stream, Upstream

log = logging.getLogger(__name__)
T = TypeVar("T")
Api = Literal["chat", "completions", "embeddings", "models"]


_UNLIMITED = contextlib.nullcontext()
_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)


def _uuid4_hex() -> str:
    """`uuid.uuid4().hex` (the version and variant bits set) without building a UUID object."""
    return f"{(int.from_bytes(os.urandom(16)) & _UUID4_CLEAR) | _UUID4_SET:032x}"


def _seed() -> int:
    """A request without a seed still sends one (see protocol.generate_body): fresh entropy."""
    return secrets.randbits(63)


@dataclass
class Call:
    """What one request has learnt so far, for its metrics and error labels."""

    api: Api
    started: float
    model: str = ""  # namespace/name once resolved
    revision: str = ""


class Gateway:
    def __init__(
        self,
        settings: GatewaySettings,
        table: RouteTable,
        upstream: Upstream,
        metrics: GatewayMetrics | None = None,
        rng: Rng | None = None,
    ) -> None:
        self.settings = settings
        self.table = table
        self.upstream = upstream
        self.metrics = metrics or GatewayMetrics()
        self.rng: Rng = rng or random.Random()
        # Fail closed: with a Secret configured, nothing passes until it is read.
        self.keys: KeyRing = KeyRing(enabled=True) if settings.api_keys_secret else OPEN
        self.outstanding: dict[str, int] = {}  # endpoint address -> requests in flight
        self.per_key: dict[str, int] = {}
        self.waiting: dict[tuple[str, str], int] = {}  # (namespace, model) -> requests held at zero
        self.draining = False  # set on SIGTERM: /readyz fails while requests are still served
        self.ejected: dict[str, float] = {}  # endpoint address -> loop time its ejection ends
        self.synced = asyncio.Event()
        self._change = asyncio.Event()
        table.listeners.append(self._notify)

    def set_keys(self, ring: KeyRing) -> None:
        self.keys = ring

    def _notify(self) -> None:
        self._change.set()
        self._change = asyncio.Event()

    # ------------------------------------------------------------ common steps

    async def _body(self, request: web.Request) -> bytes:
        limit = self.settings.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise p.GatewayError("body_too_large", f"The body is over {limit} bytes")
        try:
            length = request.content_length
            if length and "Content-Encoding" not in request.headers:
                # The common case in one read; request.read() loops on readany() (and is what
                # a compressed or chunked body needs: aiohttp inflates and enforces the limit).
                try:
                    return await request.content.readexactly(length)
                except asyncio.IncompleteReadError as cut:
                    return cut.partial  # as request.read() of a cut body: invalid JSON, 400
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise p.GatewayError("body_too_large", f"The body is over {limit} bytes") from None

    def _resolve(self, model: str, grant: Grant | None, call: Call) -> tuple[ModelRoute, str]:
        home = self.settings.home_namespace
        namespace, name = p.split_model(model, home)
        route = self.table.resolve(namespace, name, model)
        authorize(grant, namespace, name, model)
        call.model = f"{namespace}/{name}"
        return route, p.model_id(namespace, name, home)

    def _admit(self, grant: Grant | None) -> contextlib.AbstractContextManager[None]:
        if grant is None or self.settings.per_key_concurrency == 0:
            return _UNLIMITED
        return self._count_key(grant)

    @contextlib.contextmanager
    def _count_key(self, grant: Grant) -> Iterator[None]:
        limit = self.settings.per_key_concurrency
        if self.per_key.get(grant.client, 0) >= limit:
            raise p.GatewayError("concurrency", f"More than {limit} requests in flight for this key", retry_after=1)
        self.per_key[grant.client] = self.per_key.get(grant.client, 0) + 1
        try:
            yield
        finally:
            self.per_key[grant.client] -= 1

    def _unavailable(self, message: str) -> p.GatewayError:
        return p.GatewayError("no_endpoint", message, retry_after=self.settings.retry_after_seconds)

    async def _pick(self, route: ModelRoute, tried: list[str], role: Role | None = None) -> Pick:
        """An endpoint, holding the request (bounded) while a scale-from-zero model has none."""
        loop = asyncio.get_running_loop()
        current = self.table.get(route.namespace, route.name) or route
        try:
            return pick(current, self.rng, self.outstanding, tried, self._avoided(loop.time()), role)
        except NoEndpointError:
            # A retry (tried) found the pods it had failing: that is not a model at zero.
            if tried or not current.scales_from_zero or self.settings.scale_from_zero_hold_seconds <= 0:
                detail = "every endpoint tried failed" if tried else "no ready endpoint"
                raise self._unavailable(f"The model `{route.name}` has {detail}") from None
        return await self._wake(current, role)

    async def _wake(self, route: ModelRoute, role: Role | None) -> Pick:
        """Hold a request for a model scaled to zero until the watch brings it a ready endpoint.

        Bounded in time (scale_from_zero_hold_seconds: then 503) and in count per model
        (scale_from_zero_max_waiting: over it 429 at once). No polling: the request sleeps on the
        route table's change event. While held it is counted in `flotilla_gateway_waiting_requests`,
        and every arrival in `flotilla_gateway_scale_from_zero_requests_total`: the demand the
        operator reads to wake the model (it has no pods to read it from).
        """
        loop = asyncio.get_running_loop()
        key = (route.namespace, route.name)
        wake = self.metrics.wake(f"{route.namespace}/{route.name}")
        wake.arrived.inc()
        hold, limit = self.settings.scale_from_zero_hold_seconds, self.settings.scale_from_zero_max_waiting
        retry_after = self.settings.retry_after_seconds
        if self.waiting.get(key, 0) >= limit:
            raise p.GatewayError(
                "waking_full",
                f"The model `{route.name}` is scaling from zero and {limit} requests already wait for it",
                retry_after=retry_after,
            )
        self.waiting[key] = self.waiting.get(key, 0) + 1
        wake.waiting.inc()
        started = loop.time()
        try:
            while True:
                change = self._change  # before looking: a change after the look still wakes us
                current = self.table.get(*key)
                if current is None or not current.served:
                    raise p.GatewayError("model_not_found", f"The model `{route.name}` is no longer served", "model")
                try:
                    return pick(current, self.rng, self.outstanding, (), self._avoided(loop.time()), role)
                except NoEndpointError:
                    pass
                if not current.scales_from_zero:  # autoscaling turned off meanwhile: nothing will wake it
                    raise self._unavailable(f"The model `{route.name}` has no ready endpoint")
                remaining = started + hold - loop.time()
                if remaining <= 0:
                    raise p.GatewayError(
                        "waking_timeout",
                        f"The model `{route.name}` is scaling from zero: no replica became ready within {hold:g}s",
                        retry_after=retry_after,
                    )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(change.wait(), remaining)
        finally:
            left = self.waiting.get(key, 1) - 1
            if left <= 0:
                self.waiting.pop(key, None)
            else:
                self.waiting[key] = left
            wake.waiting.dec()
            wake.waited.observe(loop.time() - started)

    def _avoided(self, now: float) -> list[str]:
        if not self.ejected:
            return []
        for addr in [a for a, until in self.ejected.items() if until <= now]:
            del self.ejected[addr]
        return list(self.ejected)

    def _hold(self, chosen: Pick, call: Call) -> None:
        addr = chosen.endpoint.address
        self.outstanding[addr] = self.outstanding.get(addr, 0) + 1
        self.metrics.series(call.model, chosen.revision).in_flight.inc()

    def _release(self, chosen: Pick, call: Call) -> None:
        self.metrics.series(call.model, chosen.revision).in_flight.dec()
        addr = chosen.endpoint.address
        left = self.outstanding.get(addr, 1) - 1
        if left <= 0:
            self.outstanding.pop(addr, None)
        else:
            self.outstanding[addr] = left

    async def _attempt(
        self, route: ModelRoute, call: Call, send: Callable[[Pick], Awaitable[T]], role: Role | None = None
    ) -> tuple[Pick, T]:
        """`send` on one endpoint after another until one answers or the retries are spent.
        The returned pick is held (counted outstanding) until the caller releases it."""
        tried: list[str] = []
        last: Exception | None = None
        for _ in range(self.settings.retries + 1):
            chosen = await self._pick(route, tried, role)
            call.revision = chosen.revision
            self._hold(chosen, call)
            try:
                return chosen, await send(chosen)
            except RetryableError as err:
                self._release(chosen, call)
                tried.append(chosen.endpoint.address)
                if err.eject:
                    eject_until = asyncio.get_running_loop().time() + self.settings.eject_seconds
                    self.ejected[chosen.endpoint.address] = eject_until
                self.metrics.series(call.model, chosen.revision).retries.inc()
                last = err
                log.info("%s: retrying elsewhere after %s", call.model, err)
            except BaseException:
                self._release(chosen, call)
                raise
        raise self._unavailable(f"The model `{route.name}` did not answer after {len(tried)} attempts: {last}")

    def _identity(self, prefix: str, shown: str, revision: str) -> p.Identity:
        return p.Identity(f"{prefix}-{_uuid4_hex()}", int(time.time()), shown, revision)

    def _tokens(self, call: Call, prompt: int | None, completion: int | None) -> None:
        series = self.metrics.series(call.model, call.revision)
        if prompt is not None:
            series.prompt_tokens.observe(prompt)
        if completion is not None:
            series.completion_tokens.observe(completion)

    # ------------------------------------------------------------ handlers

    async def serve(
        self, request: web.Request, api: Api, handler: Callable[[web.Request, Call], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        call = Call(api, asyncio.get_running_loop().time())
        code = 500
        try:
            response = await handler(request, call)
            code = response.status
            return response
        except p.GatewayError as failure:
            code = self._count(failure, call)
            return _error(failure)
        except Exception:  # a bug: still an OpenAI-shaped answer, and the traceback in the log
            log.exception("%s request for %r failed", api, call.model)
            bug = p.GatewayError("internal", "The gateway failed to answer; see its log")
            code = self._count(bug, call)
            return _error(bug)
        finally:
            elapsed = asyncio.get_running_loop().time() - call.started
            if call.model:
                self.metrics.observe_latency(call.model, call.revision, api, str(code), elapsed)

    def _count(self, failure: p.GatewayError, call: Call) -> int:
        self.metrics.errors.labels(call.model, call.revision, failure.kind).inc()
        return p.STATUS[failure.kind][0]

    async def chat(self, request: web.Request, call: Call) -> web.StreamResponse:
        grant = self.keys.authenticate(request.headers.get("Authorization"))
        req = p.parse_chat(await self._body(request), self.settings.max_tokens_limit)
        route, shown = self._generation_route(req.model, grant, call)
        body = p.generate_body(req, self._max_tokens(req), messages=req.messages, text="", fallback_seed=_seed())
        with self._admit(grant):
            return await self._generate(request, call, route, shown, body, req, chat=True)

    async def completions(self, request: web.Request, call: Call) -> web.StreamResponse:
        grant = self.keys.authenticate(request.headers.get("Authorization"))
        req = p.parse_completion(await self._body(request), self.settings.max_tokens_limit)
        route, shown = self._generation_route(req.model, grant, call)
        body = p.generate_body(
            req, self._max_tokens(req), messages=None, text=p.prompt_text(req), fallback_seed=_seed()
        )
        with self._admit(grant):
            return await self._generate(request, call, route, shown, body, req, chat=False)

    async def embeddings(self, request: web.Request, call: Call) -> web.StreamResponse:
        grant = self.keys.authenticate(request.headers.get("Authorization"))
        req = p.parse_embedding(await self._body(request))
        route, shown = self._resolve(req.model, grant, call)
        if route.task != "feature-extraction":
            raise p.GatewayError(
                "wrong_task", f"`{shown}` is a {route.task} model: embeddings need feature-extraction", "model"
            )
        # One revision for every batch of the request: vectors of two revisions do not compare.
        role = serving_role(route, self.rng)
        bodies = p.infer_bodies(req.inputs(), route.max_batch_size)
        with self._admit(grant):
            parts = await asyncio.gather(*(self._infer(route, call, body, role) for body in bodies))
        merged = p.Embedded([v for part in parts for v in part.vectors], sum(x.prompt_tokens for x in parts))
        self._tokens(call, merged.prompt_tokens, None)
        return _json(p.embedding_list(shown, merged, req.encoding_format))

    async def _infer(self, route: ModelRoute, call: Call, body: bytes, role: Role) -> p.Embedded:
        chosen, result = await self._attempt(
            route, call, lambda c: self.upstream.infer(c.endpoint, route.name, body), role
        )
        self._release(chosen, call)
        return result

    async def models(self, request: web.Request, call: Call) -> web.StreamResponse:
        grant = self.keys.authenticate(request.headers.get("Authorization"))
        home = self.settings.home_namespace
        cards = [
            p.ModelCard(id=p.model_id(r.namespace, r.name, home), created=r.created, owned_by=r.namespace)
            for r in self.table.served()
            if grant is None or grant.allows(r.namespace, r.name)
        ]
        return _json(p.ModelList(data=cards).model_dump_json().encode())

    def _generation_route(self, model: str, grant: Grant | None, call: Call) -> tuple[ModelRoute, str]:
        route, shown = self._resolve(model, grant, call)
        if route.task != "text-generation":
            raise p.GatewayError("wrong_task", f"`{shown}` is a {route.task} model, not a text-generation one", "model")
        return route, shown

    def _max_tokens(self, req: p.ChatCompletionRequest | p.CompletionRequest) -> int:
        return req.requested_max_tokens() or min(self.settings.default_max_tokens, self.settings.max_tokens_limit)

    async def _generate(
        self,
        request: web.Request,
        call: Call,
        route: ModelRoute,
        shown: str,
        body: bytes,
        req: p.ChatCompletionRequest | p.CompletionRequest,
        *,
        chat: bool,
    ) -> web.StreamResponse:
        prefix = "chatcmpl" if chat else "cmpl"
        if req.stream:
            chosen, stream = await self._attempt(
                route, call, lambda c: self.upstream.open_stream(c.endpoint, route.name, body)
            )
            try:
                ident = self._identity(prefix, shown, chosen.revision)
                encoder = p.StreamEncoder(ident, chat=chat, include_usage=req.include_usage)
                return await self._relay(request, call, stream, encoder)
            finally:
                stream.close()
                self._release(chosen, call)
        chosen, result = await self._attempt(
            route, call, lambda c: self.upstream.generate(c.endpoint, route.name, body)
        )
        self._release(chosen, call)
        self._tokens(call, result.prompt_tokens, result.completion_tokens)
        ident = self._identity(prefix, shown, chosen.revision)
        return _json(p.chat_completion(ident, result) if chat else p.text_completion(ident, result))

    async def _relay(
        self, request: web.Request, call: Call, stream: Stream, encoder: p.StreamEncoder
    ) -> web.StreamResponse:
        """Upstream deltas to SSE frames. Headers go out with the first frame, so a failure
        before it (Triton refusing a parameter in its first event) is still a plain HTTP error;
        after it nothing is retried and a failure becomes an `error` event. A client that
        leaves cancels the handler (or makes a write fail), and the caller's `stream.close()`
        drops the upstream connection."""
        loop = asyncio.get_running_loop()
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Request-Id": encoder.ident.id}
        )
        prompt = completion = None
        last: float | None = None
        series = self.metrics.series(call.model, call.revision)
        ttft, itl = series.ttft, series.itl

        async def send(frames: Iterable[bytes]) -> None:
            for frame in frames:
                if not response.prepared:
                    await response.prepare(request)
                await response.write(frame)

        try:
            async for piece in stream.events():
                if piece.text:
                    now = loop.time()
                    if last is None:
                        ttft.observe(now - call.started)
                    else:
                        itl.observe(now - last)
                    last = now
                await send(encoder.feed(piece))
                prompt = piece.prompt_tokens if piece.prompt_tokens is not None else prompt
                completion = piece.completion_tokens if piece.completion_tokens is not None else completion
            await send(encoder.finish(prompt, completion))
        except p.GatewayError as failure:
            if not response.prepared:
                raise
            self.metrics.errors.labels(call.model, call.revision, failure.kind).inc()
            await send([p.StreamEncoder.error(failure)])
        except ConnectionResetError:
            # The client left between two frames: nothing to answer, and not a gateway error.
            self.metrics.errors.labels(call.model, call.revision, "client_disconnected").inc()
            return response
        self._tokens(call, prompt, completion)
        await response.write_eof()
        return response


def _error(failure: p.GatewayError) -> web.Response:
    status, headers, body = p.render(failure)
    return web.Response(status=status, headers=headers, body=body, content_type="application/json")


def _json(body: bytes, status: int = 200) -> web.Response:
    # The header given as is: content_type= parses and rebuilds it on every response.
    return web.Response(status=status, body=body, headers={"Content-Type": "application/json"})


# ---------------------------------------------------------------- the app


def build_app(gateway: Gateway) -> web.Application:
    # aiohttp enforces the body limit while reading; the handler turns it into OpenAI's 413.
    app = web.Application(client_max_size=gateway.settings.max_body_bytes)

    def route(
        api: Api, handler: Callable[[web.Request, Call], Awaitable[web.StreamResponse]]
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def run(request: web.Request) -> web.StreamResponse:
            return await gateway.serve(request, api, handler)

        return run

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readyz(_: web.Request) -> web.Response:
        if gateway.draining:
            return web.Response(status=503, text="shutting down")
        if gateway.synced.is_set():
            return web.Response(text="ok")
        return web.Response(status=503, text="waiting for the first list of SmallModels and EndpointSlices")

    async def metrics(_: web.Request) -> web.Response:
        body = generate_latest(gateway.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def unknown(request: web.Request) -> web.Response:
        return _error(p.GatewayError("not_found", f"Unknown request URL: {request.method} {request.path}"))

    app.router.add_get("/v1/models", route("models", gateway.models))
    app.router.add_post("/v1/chat/completions", route("chat", gateway.chat))
    app.router.add_post("/v1/completions", route("completions", gateway.completions))
    app.router.add_post("/v1/embeddings", route("embeddings", gateway.embeddings))
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_route("*", "/{tail:.*}", unknown)
    return app


async def start_site(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    # handler_cancellation: a client that disconnects cancels its handler at once, which
    # closes the upstream connection even while Triton is still silent (prefill).
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024, reuse_address=True)
    await site.start()
    server = site._server
    sockets = getattr(server, "sockets", None) or []
    bound = sockets[0].getsockname()[1] if sockets else port
    return runner, int(bound)


async def run(settings: GatewaySettings, ready: Callable[[int], None] | None = None) -> None:
    """The whole gateway: watches feeding the table, the upstream pool, the HTTP server."""
    from lightkube import AsyncClient

    from .watch import Watcher

    table = RouteTable(settings.namespaces)
    upstream = Upstream(settings)
    gateway = Gateway(settings, table, upstream)
    client = AsyncClient()
    watcher = Watcher(client, table, settings, gateway.set_keys)
    gateway.synced = watcher.synced
    runner, port = await start_site(build_app(gateway), settings.host, settings.port)
    log.info("gateway listening on %s:%d for namespaces %s", settings.host, port, ",".join(settings.namespaces))
    if ready:
        ready(port)
    watching = asyncio.create_task(watcher.run())
    try:
        await _until_signalled()
        # Unready first, then keep serving while load balancers notice, then stop listening
        # (aiohttp lets in-flight requests finish).
        gateway.draining = True
        log.info("draining for %gs", settings.drain_seconds)
        await asyncio.sleep(settings.drain_seconds)
    finally:
        watching.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watching
        await runner.cleanup()
        await upstream.close()
        await client.close()


async def _until_signalled() -> None:
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="flotilla gateway", description="The OpenAI-compatible gateway.")
    parser.add_argument("--port", type=int, help="overrides FLOTILLA_GATEWAY_PORT")
    parser.add_argument("--port-file", help="write the bound port here once listening (tests, port 0)")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    try:
        settings = GatewaySettings()
    except ValidationError as err:
        print(f"flotilla gateway: invalid settings:\n{err}", file=sys.stderr)
        return 2
    if args.port is not None:
        settings = settings.model_copy(update={"port": args.port})
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for name in ("httpx", "httpx2"):  # lightkube's HTTP client logs every request
        logging.getLogger(name).setLevel(logging.WARNING)

    def ready(port: int) -> None:
        if args.port_file:
            from pathlib import Path

            Path(args.port_file).write_text(str(port))

    import uvloop

    uvloop.run(run(settings, ready))
    return 0
