"""The gateway's HTTP app in-process, in front of stand-in Triton pods on loopback (no cluster:
the route table is fed directly, as the watches would). Each test runs its own event loop."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import random
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from flotilla.gateway import protocol
from flotilla.gateway.keys import KeyRing
from flotilla.gateway.routing import RouteTable
from flotilla.gateway.server import Gateway, build_app, start_site
from flotilla.gateway.settings import GatewaySettings
from flotilla.gateway.testing import FakeTriton
from flotilla.gateway.upstream import Upstream
from flotilla.gateway.watch import Watcher
from flotilla.testing import free_port
from tests.gateway_objects import endpoint, endpoint_slice, smallmodel, smallmodel_status

Env = dict[str, Any]


def settings(**extra: Any) -> GatewaySettings:
    return GatewaySettings(namespaces=["ml", "team"], host="127.0.0.1", port=0, **extra)


def add_pod(table: RouteTable, model: str, pod: FakeTriton, role: str = "stable", **cond: bool) -> None:
    """One slice per pod: each stand-in listens on its own port of 127.0.0.1."""
    table.upsert_slice(
        endpoint_slice(model, role, [endpoint(pod.host, **cond)], port=pod.port, suffix=f"{pod.port}-{len(cond)}")
    )


def serve(
    test: Callable[[Env], Awaitable[None]], pods: int = 2, cfg: GatewaySettings | None = None, **pod_args: Any
) -> None:
    async def main() -> None:
        cfg_ = cfg or settings()
        fakes = [await FakeTriton(name=f"p{i}", **pod_args).start() for i in range(pods)]
        table = RouteTable(cfg_.namespaces)
        table.upsert_model(smallmodel("chat", status=smallmodel_status("r1")))
        table.upsert_model(
            smallmodel("embed", status=smallmodel_status("e1"), task="feature-extraction", max_batch_size=2)
        )
        for fake in fakes:
            add_pod(table, "chat", fake)
            add_pod(table, "embed", fake)
        upstream = Upstream(cfg_)
        gateway = Gateway(cfg_, table, upstream, rng=random.Random(0))
        gateway.synced.set()
        runner, port = await start_site(build_app(gateway), "127.0.0.1", 0)
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as client:
            try:
                await test({"client": client, "gateway": gateway, "table": table, "pods": fakes, "port": port})
            finally:
                await runner.cleanup()
                await upstream.close()
                for fake in fakes:
                    await fake.stop()

    asyncio.run(main())


async def post(env: Env, path: str, body: dict[str, Any], **headers: str) -> tuple[int, Any, Any]:
    async with env["client"].post(path, json=body, headers=headers) as resp:
        raw = await resp.read()
        ctype = resp.headers.get("Content-Type", "")
        return resp.status, (json.loads(raw) if "json" in ctype else raw), resp.headers


CHAT = {"model": "chat", "messages": [{"role": "user", "content": "Capital of France?"}], "max_tokens": 8}


def test_chat_completion_round_trip() -> None:
    async def check(env: Env) -> None:
        status, body, headers = await post(env, "/v1/chat/completions", {**CHAT, "temperature": 0})
        assert status == 200, body
        assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
        assert headers["Content-Type"].startswith("application/json")
        protocol.ChatCompletion.model_validate(body)  # the answer matches the response schema
        assert body["model"] == "chat" and body["system_fingerprint"] == "r1"
        assert body["choices"][0]["message"] == {"role": "assistant", "content": "Paris is the capital."}
        assert body["choices"][0]["finish_reason"] == "stop"
        assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
        [sent] = [b for pod in env["pods"] for b in pod.bodies]
        assert sent["model"] == "chat" and sent["text_input"] == "" and sent["temperature"] == 0
        assert json.loads(sent["messages"]) == [{"role": "user", "content": "Capital of France?"}]
        assert env["gateway"].outstanding == {}

    serve(check)


def test_completion_is_raw() -> None:
    async def check(env: Env) -> None:
        status, body, _ = await post(env, "/v1/completions", {"model": "ml/chat", "prompt": "Once", "max_tokens": 3})
        assert status == 200 and body["object"] == "text_completion" and body["model"] == "chat"
        protocol.TextCompletion.model_validate(body)
        [sent] = [b for pod in env["pods"] for b in pod.bodies]
        assert sent["raw"] is True and sent["text_input"] == "Once" and sent["max_tokens"] == 3
        await post(env, "/v1/completions", {"model": "chat", "prompt": "Once"})
        assert [b["max_tokens"] for pod in env["pods"] for b in pod.bodies][-1] == 100  # the default

    serve(check, cfg=settings(default_max_tokens=100))


def test_a_bug_is_an_openai_shaped_500(monkeypatch: pytest.MonkeyPatch) -> None:
    async def check(env: Env) -> None:
        def broken(*_: Any, **__: Any) -> Any:
            raise KeyError("oops")

        monkeypatch.setattr(env["gateway"].upstream, "generate", broken)
        status, body, _ = await post(env, "/v1/chat/completions", CHAT)
        assert status == 500 and body["error"]["type"] == "server_error"
        assert env["gateway"].outstanding == {}

    serve(check)


def test_streaming_frames_and_done() -> None:
    async def check(env: Env) -> None:
        body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
        async with env["client"].post("/v1/chat/completions", json=body) as resp:
            assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
            raw = (await resp.read()).decode()
        events = [line[6:] for line in raw.split("\n\n") if line]
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
        assert text == "Paris is the capital."
        assert chunks[-1]["usage"]["completion_tokens"] == 4 and chunks[-1]["choices"] == []
        [sent] = [b for pod in env["pods"] for b in pod.bodies]
        assert sent["stream"] is True

    serve(check)


def test_a_stream_error_is_http_400_before_the_first_frame_and_an_event_after() -> None:
    async def check(env: Env) -> None:
        pod = env["pods"][0]
        pod.stream_error_after = 0
        status, body, _ = await post(env, "/v1/completions", {"model": "chat", "prompt": "x", "stream": True})
        assert status == 400 and "top_k" in body["error"]["message"]
        pod.stream_error_after = 2
        async with env["client"].post("/v1/completions", json={"model": "chat", "prompt": "x", "stream": True}) as resp:
            assert resp.status == 200
            events = [e[6:] for e in (await resp.read()).decode().split("\n\n") if e]
        assert [json.loads(e)["choices"][0]["text"] for e in events[:2]] == ["Paris ", "is "]
        assert json.loads(events[2])["error"]["code"] == "upstream_rejected" and len(events) == 3

    serve(check, pods=1)


def test_a_refused_endpoint_is_retried_elsewhere() -> None:
    async def check(env: Env) -> None:
        table: RouteTable = env["table"]
        dead = FakeTriton()
        dead.host, dead.port = "127.0.0.1", free_port()  # nothing listens there
        for pod in env["pods"]:
            table.delete_slice("ml", f"chat-stable-{pod.port}-0")
        add_pod(table, "chat", dead)
        add_pod(table, "chat", env["pods"][0])
        live = env["pods"][0]
        env["gateway"].outstanding[live.address] = 1  # so least-outstanding tries the dead one first
        status, body, _ = await post(env, "/v1/chat/completions", CHAT)
        assert status == 200, body
        env["gateway"].outstanding.clear()
        for _ in range(5):
            status, body, _ = await post(env, "/v1/chat/completions", CHAT)
            assert status == 200, body
        assert env["pods"][0].requests == 6
        assert env["gateway"].outstanding == {}
        metrics = await (await env["client"].get("/metrics")).text()
        # Once refused, the dead endpoint is avoided (ejected): at most one request paid a retry.
        assert 'flotilla_gateway_retries_total{model="ml/chat",revision="r1"} 1.0' in metrics
        assert list(env["gateway"].ejected) == [dead.address]

    serve(check)


def test_a_503_from_a_pod_is_retried_and_a_400_is_surfaced() -> None:
    async def check(env: Env) -> None:
        busy, good = env["pods"]
        busy.status = 503
        for _ in range(4):
            status, _, _ = await post(env, "/v1/chat/completions", CHAT)
            assert status == 200
        assert good.requests == 4
        busy.status = good.status = 400
        status, body, _ = await post(env, "/v1/chat/completions", CHAT)
        assert status == 400 and "top_k" in body["error"]["message"]
        busy.status = good.status = 503
        status, body, headers = await post(env, "/v1/chat/completions", CHAT)
        assert status == 503 and headers["Retry-After"] == "5"

    serve(check)


def test_no_endpoint_is_503_with_retry_after_at_once() -> None:
    async def check(env: Env) -> None:
        env["table"].replace_slices("ml", [])
        started = asyncio.get_running_loop().time()
        status, body, headers = await post(env, "/v1/chat/completions", CHAT)
        assert status == 503 and headers["Retry-After"] == "5" and body["error"]["code"] == "no_ready_endpoint"
        assert asyncio.get_running_loop().time() - started < 1  # minReplicas 1: no hold

    serve(check)


LAZY = {**CHAT, "model": "lazy"}


def at_zero(table: RouteTable, name: str = "lazy") -> None:
    """A model the autoscaler took to zero: served (a stable revision), no endpoint."""
    table.upsert_model(smallmodel(name, status=smallmodel_status("z1"), min_replicas=0, autoscaling=True))


async def sample(env: Env, name: str, model: str = "ml/lazy") -> float | None:
    """One series of the gateway's /metrics, parsed as Prometheus would."""
    from prometheus_client.parser import text_string_to_metric_families

    text = await (await env["client"].get("/metrics")).text()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels.get("model") == model:
                return float(s.value)
    return None


async def held(env: Env, count: int, timeout: float = 5.0) -> None:
    """Until the gateway holds `count` requests for ml/lazy (the gauge the operator reads)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while await sample(env, "flotilla_gateway_waiting_requests") != count:
        assert asyncio.get_running_loop().time() < deadline, f"never {count} held"
        await asyncio.sleep(0.02)


def test_scale_from_zero_holds_a_request_until_an_endpoint_appears() -> None:
    async def check(env: Env) -> None:
        table: RouteTable = env["table"]
        at_zero(table)
        request = asyncio.create_task(post(env, "/v1/chat/completions", LAZY))
        await held(env, 1)
        assert not request.done()  # held, not failed
        assert await sample(env, "flotilla_gateway_scale_from_zero_requests_total") == 1
        add_pod(table, "lazy", env["pods"][0])  # what the EndpointSlice watch does once a pod is ready
        status, body, _ = await request
        assert status == 200 and body["system_fingerprint"] == "z1"
        assert await sample(env, "flotilla_gateway_waiting_requests") == 0
        assert await sample(env, "flotilla_gateway_scale_from_zero_wait_seconds_count") == 1
        assert env["gateway"].waiting == {}
        # Now it has an endpoint: answered at once, not counted as an arrival at zero.
        assert (await post(env, "/v1/chat/completions", LAZY))[0] == 200
        assert await sample(env, "flotilla_gateway_scale_from_zero_requests_total") == 1

    serve(check, cfg=settings(scale_from_zero_hold_seconds=10))


def test_scale_from_zero_hold_times_out_with_503_and_retry_after() -> None:
    async def check(env: Env) -> None:
        at_zero(env["table"])
        started = asyncio.get_running_loop().time()
        status, body, headers = await post(env, "/v1/chat/completions", LAZY)
        waited = asyncio.get_running_loop().time() - started
        assert status == 503 and headers["Retry-After"] == "5" and 0.5 <= waited < 3
        assert body["error"]["code"] == "scaling_from_zero" and "scaling from zero" in body["error"]["message"]
        assert await sample(env, "flotilla_gateway_waiting_requests") == 0
        metrics = await (await env["client"].get("/metrics")).text()
        assert 'flotilla_gateway_errors_total{kind="waking_timeout",model="ml/lazy",revision=""} 1.0' in metrics

    serve(check, cfg=settings(scale_from_zero_hold_seconds=0.6))


def test_scale_from_zero_caps_held_requests_per_model() -> None:
    async def check(env: Env) -> None:
        at_zero(env["table"])
        first = [asyncio.create_task(post(env, "/v1/chat/completions", LAZY)) for _ in range(2)]
        await held(env, 2)
        status, body, headers = await post(env, "/v1/chat/completions", LAZY)
        assert status == 429 and headers["Retry-After"] == "5"
        assert body["error"]["code"] == "scale_from_zero_queue_full"
        # Refused requests are demand too: the operator counts every arrival at zero.
        assert await sample(env, "flotilla_gateway_scale_from_zero_requests_total") == 3
        add_pod(env["table"], "lazy", env["pods"][0])
        assert [(await r)[0] for r in first] == [200, 200]

    serve(check, cfg=settings(scale_from_zero_hold_seconds=10, scale_from_zero_max_waiting=2))


def test_a_client_that_leaves_while_held_is_no_longer_counted() -> None:
    async def check(env: Env) -> None:
        at_zero(env["table"])
        request = asyncio.create_task(post(env, "/v1/chat/completions", LAZY))
        await held(env, 1)
        request.cancel()  # the client closes its connection: aiohttp cancels the handler
        with contextlib.suppress(asyncio.CancelledError):
            await request
        await held(env, 0)
        assert env["gateway"].waiting == {}

    serve(check, cfg=settings(scale_from_zero_hold_seconds=10))


def test_models_not_at_zero_get_503_at_once() -> None:
    async def check(env: Env) -> None:
        table: RouteTable = env["table"]
        table.upsert_model(smallmodel("manual", status=smallmodel_status("m1"), min_replicas=0))  # autoscaling off
        table.upsert_model(smallmodel("floor", status=smallmodel_status("f1"), autoscaling=True))  # min 1
        for name in ("manual", "floor", "chat"):
            if name == "chat":
                table.replace_slices("ml", [])
            started = asyncio.get_running_loop().time()
            status, body, headers = await post(env, "/v1/chat/completions", {**CHAT, "model": name})
            assert status == 503 and headers["Retry-After"] == "5" and body["error"]["code"] == "no_ready_endpoint"
            assert asyncio.get_running_loop().time() - started < 1, name
        assert await sample(env, "flotilla_gateway_scale_from_zero_requests_total", "ml/manual") is None

    serve(check, cfg=settings(scale_from_zero_hold_seconds=10))


def test_embeddings_are_held_too_and_keep_one_revision() -> None:
    async def check(env: Env) -> None:
        table: RouteTable = env["table"]
        table.upsert_model(
            smallmodel(
                "lazy-embed",
                status=smallmodel_status("ze"),
                task="feature-extraction",
                max_batch_size=1,
                min_replicas=0,
                autoscaling=True,
            )
        )
        request = asyncio.create_task(post(env, "/v1/embeddings", {"model": "lazy-embed", "input": ["a", "bb"]}))
        deadline = asyncio.get_running_loop().time() + 5
        while await sample(env, "flotilla_gateway_waiting_requests", "ml/lazy-embed") != 2:  # one per batch
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.02)
        add_pod(table, "lazy-embed", env["pods"][1])
        status, body, _ = await request
        assert status == 200 and len(body["data"]) == 2

    serve(check, cfg=settings(scale_from_zero_hold_seconds=10))


def test_errors_before_routing() -> None:
    async def check(env: Env) -> None:
        cases = [
            ({**CHAT, "model": "nope"}, 404, "model"),
            ({**CHAT, "model": "elsewhere/chat"}, 404, "model"),  # not an allowed namespace
            ({**CHAT, "model": "embed"}, 400, "model"),  # chat on an embedding model
            ({**CHAT, "n": 2}, 400, "n"),
            ({**CHAT, "max_tokens": 10**6}, 400, "max_tokens"),
        ]
        for body, want, param in cases:
            status, got, _ = await post(env, "/v1/chat/completions", body)
            assert (status, got["error"]["param"]) == (want, param), (body, got)
        status, got, _ = await post(env, "/v1/embeddings", {"model": "chat", "input": "x"})
        assert status == 400 and got["error"]["param"] == "model"
        big = {**CHAT, "messages": [{"role": "user", "content": "x" * 5000}]}
        status, got, _ = await post(env, "/v1/chat/completions", big)
        assert status == 413 and got["error"]["code"] == "request_too_large"
        async with env["client"].get("/v1/nothing") as resp:
            assert resp.status == 404 and (await resp.json())["error"]["type"] == "invalid_request_error"

    serve(check, cfg=settings(max_body_bytes=4096))


def test_embeddings_float_and_base64_batched_by_max_batch_size() -> None:
    async def check(env: Env) -> None:
        body = {"model": "embed", "input": ["a", "bb", "ccc"], "encoding_format": "float"}
        status, got, _ = await post(env, "/v1/embeddings", body)
        assert status == 200, got
        assert [d["embedding"][0] for d in got["data"]] == [1.0, 2.0, 3.0]
        assert got["usage"]["prompt_tokens"] == 6
        shapes = sorted(tuple(b["inputs"][0]["shape"]) for pod in env["pods"] for b in pod.bodies)
        assert shapes == [(1, 1), (2, 1)]
        status, got, _ = await post(
            env, "/v1/embeddings", {"model": "embed", "input": "hello", "encoding_format": "base64"}
        )
        assert status == 200
        vec = struct.unpack("<4f", base64.b64decode(got["data"][0]["embedding"]))
        assert vec == (5.0, 6.0, 7.0, 8.0)

    serve(check)


def test_one_embedding_request_never_mixes_revisions() -> None:
    async def check(env: Env) -> None:
        table: RouteTable = env["table"]
        stable, canary = env["pods"]
        table.replace_slices("ml", [])
        table.upsert_model(
            smallmodel("embed", status=smallmodel_status("e1", "e2", 50), task="feature-extraction", max_batch_size=2)
        )
        add_pod(table, "embed", stable)
        add_pod(table, "embed", canary, role="canary")
        for _ in range(12):
            before = (stable.requests, canary.requests)
            status, _, _ = await post(
                env, "/v1/embeddings", {"model": "embed", "input": ["a", "b", "c", "d", "e", "f"]}
            )
            assert status == 200
            grew = (stable.requests - before[0], canary.requests - before[1])
            assert sorted(grew) == [0, 3], grew  # three batches, all on one revision
        assert stable.requests and canary.requests  # both revisions took whole requests

    serve(check)


def test_models_lists_served_models_and_keys_filter_it() -> None:
    async def check(env: Env) -> None:
        table: RouteTable = env["table"]
        table.upsert_model(smallmodel("pending", status=smallmodel_status(None, ready="False", reason="Optimizing")))
        table.upsert_model(smallmodel("other", namespace="team", status=smallmodel_status("o1")))
        async with env["client"].get("/v1/models") as resp:
            assert resp.status == 401
        key = {"k": base64.b64encode(json.dumps({"key": "sk-1", "models": ["chat", "team/other"]}).encode()).decode()}
        env["gateway"].set_keys(KeyRing.from_secret_data(key))
        async with env["client"].get("/v1/models", headers={"Authorization": "Bearer sk-1"}) as resp:
            listed = await resp.json()
        assert [m["id"] for m in listed["data"]] == ["chat", "team/other"]
        assert listed["data"][1]["owned_by"] == "team" and listed["data"][0]["object"] == "model"
        status, got, _ = await post(
            env, "/v1/embeddings", {"model": "embed", "input": "x"}, Authorization="Bearer sk-1"
        )
        assert status == 403 and got["error"]["type"] == "permission_error"
        status, got, _ = await post(env, "/v1/chat/completions", CHAT, Authorization="Bearer sk-2")
        assert status == 401 and got["error"]["code"] == "invalid_api_key"

    serve(check, cfg=settings(api_keys_secret="keys"))


def test_per_key_concurrency_is_429() -> None:
    async def check(env: Env) -> None:
        key = {"k": base64.b64encode(json.dumps({"key": "sk-1"}).encode()).decode()}
        env["gateway"].set_keys(KeyRing.from_secret_data(key))
        auth = {"Authorization": "Bearer sk-1"}
        results = await asyncio.gather(*(post(env, "/v1/chat/completions", CHAT, **auth) for _ in range(4)))
        statuses = sorted(r[0] for r in results)
        assert statuses.count(200) == 2 and statuses.count(429) == 2, statuses
        status, _, _ = await post(env, "/v1/chat/completions", CHAT, **auth)
        assert status == 200  # slots are given back
        assert env["gateway"].per_key == {"k": 0}

    serve(check, cfg=settings(api_keys_secret="keys", per_key_concurrency=2), token_delay_s=0.3)


def test_client_disconnect_mid_stream_closes_the_upstream() -> None:
    async def check(env: Env) -> None:
        pod = env["pods"][0]
        body = {**CHAT, "stream": True}
        resp = await env["client"].post("/v1/chat/completions", json=body)
        assert resp.status == 200
        await resp.content.readuntil(b"\n\n")  # the role chunk
        await resp.content.readuntil(b"\n\n")  # the first delta
        resp.close()  # the client leaves
        for _ in range(100):
            if pod.cancelled:
                break
            await asyncio.sleep(0.05)
        assert pod.cancelled == 1
        for _ in range(50):
            if not env["gateway"].outstanding:
                break
            await asyncio.sleep(0.05)
        assert env["gateway"].outstanding == {}

    serve(check, pods=1, reply=" ".join(["word"] * 50), tokens_per_reply=50, token_delay_s=0.05)


def test_health_readiness_and_metrics() -> None:
    async def check(env: Env) -> None:
        env["gateway"].synced.clear()
        async with env["client"].get("/readyz") as resp:
            assert resp.status == 503
        env["gateway"].synced.set()
        async with env["client"].get("/readyz") as resp:
            assert resp.status == 200
        env["gateway"].draining = True
        async with env["client"].get("/readyz") as resp:
            assert resp.status == 503
        env["gateway"].draining = False
        body = {**CHAT, "stream": True}
        async with env["client"].post("/v1/chat/completions", json=body) as resp:
            await resp.read()
        await post(env, "/v1/chat/completions", {**CHAT, "model": "nope"})
        text = await (await env["client"].get("/metrics")).text()
        for name in (
            "flotilla_gateway_request_duration_seconds_bucket",
            "flotilla_gateway_time_to_first_token_seconds_bucket",
            "flotilla_gateway_inter_token_seconds_bucket",
            "flotilla_gateway_completion_tokens_bucket",
        ):
            assert f"{name}{{" in text and 'model="ml/chat"' in text, name
        assert 'flotilla_gateway_errors_total{kind="model_not_found",model="",revision=""} 1.0' in text
        assert "summary" not in text.split("flotilla_gateway_request_duration_seconds")[0][-200:]

    serve(check)


# ---------------------------------------------------------------- watches: allowed namespaces only


class RecordingClient:
    """Stands in for lightkube's AsyncClient to record which namespaces are listed/watched."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str | None]] = []
        self.labels: dict[str, Any] = {}

    def list(self, res: Any, *, namespace: str, fields: Any = None, labels: Any = None) -> Any:
        self.calls.append(("list", res.__name__, namespace))
        self.labels[res.__name__] = labels

        class Listing:
            resourceVersion = "1"  # noqa: N815  (lightkube's name)

            def __aiter__(self) -> Any:
                return self

            async def __anext__(self) -> Any:
                raise StopAsyncIteration

        return Listing()

    def watch(self, res: Any, *, namespace: str, **_: Any) -> Any:
        self.calls.append(("watch", res.__name__, namespace))

        async def never() -> Any:
            await asyncio.Event().wait()
            yield None

        return never()


def test_watches_cover_only_the_allowed_namespaces_and_readiness_waits_for_lists() -> None:
    async def main() -> None:
        cfg = settings(api_keys_secret="keys", own_namespace="gw")
        client = RecordingClient()
        keys: list[KeyRing] = []
        watcher = Watcher(client, RouteTable(cfg.namespaces), cfg, keys.append)  # type: ignore[arg-type]
        assert not watcher.synced.is_set()
        task = asyncio.create_task(watcher.run())
        await asyncio.wait_for(watcher.synced.wait(), 5)
        await asyncio.sleep(0.05)
        task.cancel()
        namespaces = {ns for _, kind, ns in client.calls if kind != "Secret"}
        assert namespaces == {"ml", "team"}
        assert {ns for _, kind, ns in client.calls if kind == "Secret"} == {"gw"}
        assert keys and keys[0].enabled and not keys[0].grants  # missing Secret: fail closed
        # Only the slices of our Services, selected by the API server (they carry its labels).
        assert client.labels["EndpointSlice"] == {"app.kubernetes.io/managed-by": "flotilla"}

    asyncio.run(main())


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOTILLA_GATEWAY_NAMESPACES", "ml, team")
    monkeypatch.setenv("FLOTILLA_GATEWAY_RETRIES", "3")
    got = GatewaySettings()
    assert got.namespaces == ["ml", "team"] and got.home_namespace == "ml" and got.retries == 3
    monkeypatch.setenv("FLOTILLA_GATEWAY_DEFAULT_NAMESPACE", "elsewhere")
    with pytest.raises(ValueError, match="default_namespace"):
        GatewaySettings()
    monkeypatch.delenv("FLOTILLA_GATEWAY_NAMESPACES")
    monkeypatch.delenv("FLOTILLA_GATEWAY_DEFAULT_NAMESPACE")
    with pytest.raises(ValueError, match="namespaces"):
        GatewaySettings()


class FlakyClient(RecordingClient):
    """The first watch of each stream fails; the relist then finds a SmallModel."""

    def __init__(self) -> None:
        super().__init__()
        self.failed: set[tuple[str, str]] = set()

    def list(self, res: Any, *, namespace: str, fields: Any = None, labels: Any = None) -> Any:
        listing = super().list(res, namespace=namespace, fields=fields)
        relisted = (res.__name__, namespace) in self.failed
        if res.__name__ == "SmallModel" and namespace == "ml" and relisted:
            items = [smallmodel("chat", status=smallmodel_status("r1"))]

            class Found:
                resourceVersion = "2"  # noqa: N815  (lightkube's name)

                async def __aiter__(self) -> Any:
                    for item in items:
                        yield type("Obj", (), {"to_dict": lambda self, item=item: item})()

            return Found()
        return listing

    def watch(self, res: Any, *, namespace: str, **kw: Any) -> Any:
        key = (res.__name__, namespace)
        if key not in self.failed:
            self.failed.add(key)
            self.calls.append(("watch", res.__name__, namespace))

            async def broken() -> Any:
                raise ConnectionError("watch dropped")
                yield None

            return broken()
        return super().watch(res, namespace=namespace, **kw)


def test_a_failed_watch_relists_and_the_table_converges() -> None:
    async def main() -> None:
        cfg = settings()
        client = FlakyClient()
        table = RouteTable(cfg.namespaces)
        watcher = Watcher(client, table, cfg, lambda _: None)  # type: ignore[arg-type]
        task = asyncio.create_task(watcher.run())
        for _ in range(60):
            if table.get("ml", "chat") is not None:
                break
            await asyncio.sleep(0.05)
        task.cancel()
        assert table.get("ml", "chat") is not None
        assert watcher.relists >= 4  # every stream failed once and listed again
        lists = [c for c in client.calls if c[0] == "list" and c[1] == "SmallModel" and c[2] == "ml"]
        assert len(lists) == 2

    asyncio.run(main())


def test_the_cli_knows_the_gateway_and_refuses_bad_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from flotilla import cli
    from flotilla.gateway import server

    assert "gateway" in cli.COMMANDS
    monkeypatch.delenv("FLOTILLA_GATEWAY_NAMESPACES", raising=False)
    assert server.main([]) == 2
