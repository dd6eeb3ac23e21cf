"""The gateway in front of the real tritonserver (the session's `triton` fixture: SmolLM2 as
"chat", MiniLM as "embed"), driven with the official `openai` client. No cluster: the route
table is fed directly with the server's address, as the watches would.

The served models must carry the serving contract (docs/serving-protocol.md: finish_reason and
token counts); a model without them fails here, it is not skipped.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import openai
import pytest

from flotilla.gateway.routing import RouteTable
from flotilla.gateway.server import Gateway, build_app, start_site
from flotilla.gateway.settings import GatewaySettings
from flotilla.gateway.upstream import Upstream
from flotilla.local import triton as local
from tests.gateway_objects import endpoint, endpoint_slice, smallmodel, smallmodel_status

pytestmark = pytest.mark.slow


def outputs(triton: local.LocalTriton, model: str) -> set[str]:
    status, config = triton.request("GET", f"/v2/models/{model}/config")
    assert status == 200, config
    return {o["name"] for o in config.get("output", [])}


def needs_contract(triton: local.LocalTriton) -> None:
    assert "finish_reason" in outputs(triton, "chat"), "the served chat model lacks the finish_reason output"
    assert "prompt_tokens" in outputs(triton, "embed"), "the served embedding model lacks the prompt_tokens output"


@pytest.fixture(scope="module")
def gateway(triton: local.LocalTriton) -> Iterator[str]:
    """The gateway app in a thread of its own, in front of the real server; yields its /v1 URL."""
    needs_contract(triton)
    url = urlparse(triton.url)
    host, port = url.hostname or "127.0.0.1", url.port or 8000
    settings = GatewaySettings(namespaces=["ml"], host="127.0.0.1", port=0)
    table = RouteTable(settings.namespaces)
    table.upsert_model(smallmodel("chat", status=smallmodel_status("r1")))
    table.upsert_model(smallmodel("embed", status=smallmodel_status("e1"), task="feature-extraction", max_batch_size=4))
    for name in ("chat", "embed"):
        # The table keys endpoints by IP; the slice names the server's port as the pods' `http`.
        table.upsert_slice(endpoint_slice(name, "stable", [endpoint(host)], port=port))
    loop = asyncio.new_event_loop()
    bound: list[int] = []
    started = threading.Event()

    async def serve() -> Any:
        gw = Gateway(settings, table, Upstream(settings))
        gw.synced.set()
        runner, p = await start_site(build_app(gw), "127.0.0.1", 0)
        bound.append(p)
        started.set()
        return runner

    thread = threading.Thread(target=lambda: (loop.run_until_complete(serve()), loop.run_forever()), daemon=True)
    thread.start()
    assert started.wait(30)
    yield f"http://127.0.0.1:{bound[0]}/v1"
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def test_chat_through_the_gateway_answers_greedily(gateway: str) -> None:
    client = openai.OpenAI(base_url=gateway, api_key="none", max_retries=0, timeout=300)
    answer = client.chat.completions.create(
        model="chat",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=16,
        temperature=0,
    )
    assert "Paris" in (answer.choices[0].message.content or "")
    assert answer.choices[0].finish_reason in {"stop", "length"}
    assert answer.usage is not None and answer.usage.prompt_tokens > 0 and answer.usage.completion_tokens > 0


def test_streaming_and_embeddings_through_the_gateway(gateway: str) -> None:
    client = openai.OpenAI(base_url=gateway, api_key="none", max_retries=0, timeout=300)
    stream = client.chat.completions.create(
        model="chat",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=16,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Paris" in text and chunks[-1].usage is not None
    emb = client.embeddings.create(model="embed", input=["a cat", "a dog"])
    assert len(emb.data) == 2 and len(emb.data[0].embedding) == 384 and emb.usage.prompt_tokens > 0
