"""A stand-in for a Triton pod speaking the serving contract (generate, generate_stream, infer),
for the gateway's tests and benchmark. The real tritonserver is exercised in the slow tier
(tests/slow/test_gateway_real.py); this one exists to make routing, retries, cancellation and
the gateway's own overhead observable and cheap.

Run it in the caller's loop (`await FakeTriton(...).start(host)`) or in a thread of its own
(`start_in_thread`) for synchronous tests that drive a gateway process.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from flotilla.testing import stop_process

REPO = Path(__file__).resolve().parents[3]


@dataclass
class FakeTriton:
    name: str = "fake"
    reply: str = "Paris is the capital."
    tokens_per_reply: int = 4
    token_delay_s: float = 0.0
    status: int = 200  # answer every request with this status instead (e.g. 503, 400)
    width: int = 4  # embedding width
    stream_error_after: int | None = None  # send `data: {"error": ...}` after this many pieces
    requests: int = 0
    bodies: list[dict[str, Any]] = field(default_factory=list)
    cancelled: int = 0
    keep_bodies: bool = True
    port: int = 0
    host: str = ""
    _runner: web.AppRunner | None = field(default=None, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)
    _loop: asyncio.AbstractEventLoop | None = field(default=None, repr=False)
    cancelled_event: threading.Event = field(default_factory=threading.Event, repr=False)

    # ------------------------------------------------------------ handlers

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v2/models/{model}/generate", self._generate)
        app.router.add_post("/v2/models/{model}/generate_stream", self._stream)
        app.router.add_post("/v2/models/{model}/infer", self._infer)
        app.router.add_get("/v2/health/ready", self._ready)
        return app

    async def _ready(self, _: web.Request) -> web.Response:
        return web.Response(text="")

    async def _take(self, request: web.Request) -> dict[str, Any] | web.Response:
        self.requests += 1
        body: dict[str, Any] = json.loads(await request.read())
        if self.keep_bodies:
            self.bodies.append({"model": request.match_info["model"], **body})
        if self.status == 400:
            return web.json_response({"error": "invalid parameter 'top_k': must be >= 0, got -1"}, status=400)
        if self.status != 200:
            return web.json_response({"error": "unavailable"}, status=self.status)
        return body

    def _pieces(self) -> list[str]:
        words = self.reply.split(" ")
        n = max(1, min(self.tokens_per_reply, len(words)))
        step = -(-len(words) // n)
        return [
            " ".join(words[i : i + step]) + (" " if i + step < len(words) else "") for i in range(0, len(words), step)
        ]

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        body = await self._take(request)
        if isinstance(body, web.Response):
            return body
        pieces = self._pieces()
        if self.token_delay_s:
            await asyncio.sleep(self.token_delay_s)
        return web.json_response(
            {
                "model_name": request.match_info["model"],
                "text_output": "".join(pieces),
                "finish_reason": "stop",
                "prompt_tokens": 3,
                "completion_tokens": len(pieces),
            }
        )

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        body = await self._take(request)
        if isinstance(body, web.Response):
            return body
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        pieces = self._pieces()
        try:
            for i, piece in enumerate(pieces):
                if i == self.stream_error_after:
                    await response.write(b'data: {"error": "invalid parameter \'top_k\': must be >= 0, got -1"}\n\n')
                    break
                if self.token_delay_s:
                    await asyncio.sleep(self.token_delay_s)
                last = i == len(pieces) - 1
                event: dict[str, Any] = {"text_output": piece, "finish_reason": "stop" if last else ""}
                if last:
                    event.update(prompt_tokens=3, completion_tokens=len(pieces))
                await response.write(b"data: " + json.dumps(event).encode() + b"\n\n")
        except (asyncio.CancelledError, ConnectionResetError):
            # The gateway closed the connection: what Triton sees when a client goes away.
            self.cancelled += 1
            self.cancelled_event.set()
            raise
        await response.write_eof()
        return response

    async def _infer(self, request: web.Request) -> web.StreamResponse:
        body = await self._take(request)
        if isinstance(body, web.Response):
            return body
        texts = body["inputs"][0]["data"]
        shape = body["inputs"][0]["shape"]
        rows = [[float(len(t)) + k for k in range(self.width)] for t in texts]
        response = web.json_response(
            {
                "model_name": request.match_info["model"],
                "outputs": [
                    {
                        "name": "embedding",
                        "datatype": "FP32",
                        "shape": [len(rows), self.width] if len(shape) == 2 else [self.width],
                        "data": [v for row in rows for v in row],
                    },
                    {"name": "prompt_tokens", "datatype": "INT32", "shape": [len(rows), 1], "data": [2] * len(rows)},
                ],
            }
        )
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            response.enable_compression()  # as Triton does for a client that accepts it
        return response

    # ------------------------------------------------------------ running

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> FakeTriton:
        # handler_cancellation: a dropped connection cancels the handler, as in Triton.
        self._runner = web.AppRunner(self.app(), handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, reuse_address=True)
        await site.start()
        server: Any = site._server
        self.host, self.port = host, int(server.sockets[0].getsockname()[1])
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def start_in_thread(self, host: str = "127.0.0.1", port: int = 0) -> FakeTriton:
        started = threading.Event()

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            loop.run_until_complete(self.start(host, port))
            started.set()
            loop.run_forever()
            loop.run_until_complete(self.stop())
            loop.close()

        self._thread = threading.Thread(target=serve, daemon=True, name=f"fake-triton-{host}")
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError(f"fake Triton on {host}:{port} did not start")
        return self

    def stop_thread(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop = self._thread = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


class GatewayProcess:
    """`python -m flotilla gateway` as a real process (tests, benchmark), on a free port."""

    def __init__(self, kubeconfig: Path | None, log_path: Path, settings: dict[str, str]) -> None:
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.settings = {"FLOTILLA_GATEWAY_HOST": "127.0.0.1", "FLOTILLA_GATEWAY_DRAIN_SECONDS": "0", **settings}
        self.port_file = log_path.with_suffix(".port")
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self, cpu: int | None = None, timeout: float = 30) -> GatewayProcess:
        env = {**os.environ, **self.settings, "PYTHONUNBUFFERED": "1"}
        if self.kubeconfig is not None:
            env["KUBECONFIG"] = str(self.kubeconfig)
        self.port_file.unlink(missing_ok=True)
        argv = [sys.executable, "-m", "flotilla", "gateway", "--port", "0", "--port-file", str(self.port_file)]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        if cpu is not None:
            os.sched_setaffinity(self.proc.pid, {cpu})
        deadline = time.monotonic() + timeout
        while not self.port_file.exists() or not self.port_file.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the gateway did not start; log:\n{self.log()[-3000:]}")
            time.sleep(0.05)
        self.port = int(self.port_file.read_text())
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as resp:
                return int(resp.status), resp.read().decode()
        except urllib.error.HTTPError as err:
            return int(err.code), err.read().decode()

    def wait_ready(self, timeout: float = 30) -> GatewayProcess:
        deadline = time.monotonic() + timeout
        while self.get("/readyz")[0] != 200:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the gateway never became ready; log:\n{self.log()[-3000:]}")
            time.sleep(0.1)
        return self

    def stop(self, timeout: float = 15) -> None:
        stop_process(self.proc, timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
