"""The gateway in front of the real tritonserver (the session's `triton` fixture: SmolLM2 as
"chat", MiniLM as "embed"), driven with the official `openai` client. No cluster: the route
table is fed directly with the server's address, as the watches would.

The served models must carry the serving contract (docs/serving-protocol.md: finish_reason and
token counts); a model without them fails here, it is not skipped.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import numpy as np
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


def client_for(gateway: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway, api_key="none", max_retries=0, timeout=300)


def test_chat_through_the_gateway_answers_greedily(gateway: str) -> None:
    client = client_for(gateway)
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
    client = client_for(gateway)
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


# A prompt the 135M model does not end early (it rambles on past 256 tokens, greedily).
LONG_PROMPT = "Write a very long story, in many chapters, about a dragon who learns to bake bread."
LONG_TOKENS = 256


def chat_stats(triton: local.LocalTriton) -> tuple[int, int]:
    """(executions, compute_infer ns) of the chat model, from Triton's statistics extension."""
    status, body = triton.request("GET", "/v2/models/chat/stats")
    assert status == 200, body
    stats = body["model_stats"][0]
    return int(stats["execution_count"]), int(stats["inference_stats"]["compute_infer"]["ns"])


def wait_executions(triton: local.LocalTriton, at_least: int, deadline_s: float = 600) -> tuple[int, int]:
    """The python backend reports an execution when `execute` returns, after the client has its
    last response (docs/serving-protocol.md): wait for it. The deadline only keeps a broken run
    from hanging; nothing is judged on time."""
    end = time.monotonic() + deadline_s
    while True:
        found = chat_stats(triton)
        if found[0] >= at_least or time.monotonic() > end:
            return found
        time.sleep(0.2)


def test_a_client_that_leaves_mid_stream_frees_the_upstream_slot(gateway: str, triton: local.LocalTriton) -> None:
    """The client closes a 256-token stream after a few chunks; the gateway drops its upstream
    connection, Triton cancels the request and the model's decode loop stops for it
    (`_drop_cancelled`). Proven by the execution's compute time in Triton's statistics, as a
    ratio against the same 256-token stream read to its end in the same run: the full answer's
    execution decodes 256 steps, the abandoned one only until the model sees the cancellation
    (every 8 steps). Without the cancellation reaching the model the ratio is ~1."""
    client = client_for(gateway)
    messages: Any = [{"role": "user", "content": LONG_PROMPT}]
    executions, compute = wait_executions(triton, 0)

    full = client.chat.completions.create(
        model="chat", messages=messages, max_tokens=LONG_TOKENS, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(full)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["length"], f"the full answer must run to max_tokens for the comparison: {finish}"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == LONG_TOKENS
    executions, after = wait_executions(triton, executions + 1)
    full_ns, compute = after - compute, after

    left = client.chat.completions.create(
        model="chat", messages=messages, max_tokens=LONG_TOKENS, temperature=0, stream=True
    )
    read = 0
    for chunk in left:
        read += bool(chunk.choices and chunk.choices[0].delta.content)
        if read == 3:
            break
    left.close()  # the client leaves mid-stream
    assert read == 3
    executions, after = wait_executions(triton, executions + 1)
    left_ns = after - compute

    # The slot is free again: a request after it is answered (it would queue behind a runaway).
    answer = client.chat.completions.create(model="chat", messages=messages, max_tokens=4, temperature=0)
    assert answer.choices[0].finish_reason == "length"
    print(f"abandoned/full compute_infer: {left_ns / full_ns:.3f} ({left_ns / 1e6:.0f} / {full_ns / 1e6:.0f} ms)")
    assert left_ns < 0.5 * full_ns, (
        f"the abandoned stream's execution took {left_ns / full_ns:.2f} of a full 256-token one: "
        "the cancellation did not reach the model"
    )


def test_seeds_and_stop_sequences_through_the_openai_client(gateway: str) -> None:
    client = client_for(gateway)

    def sampled(seed: int) -> str:
        answer = client.completions.create(
            model="chat", prompt="Write a sentence about a dragon.", max_tokens=24, temperature=0.8, seed=seed
        )
        return answer.choices[0].text

    first = sampled(1)
    assert sampled(1) == first  # the same seed, the same text
    assert first not in {sampled(2), sampled(3)}  # and the seed is used: other seeds, other text
    days = {"model": "chat", "prompt": "List the days of the week, one per line.", "max_tokens": 40, "temperature": 0}
    full = client.completions.create(**days).choices[0].text  # type: ignore[call-overload]
    assert "Wednesday" in full, full
    cut = client.completions.create(**days, stop=["Wednesday", "no such stop"]).choices[0]  # type: ignore[call-overload]
    assert cut.text == full[: full.index("Wednesday")] and cut.finish_reason == "stop"


def test_embeddings_through_the_gateway_put_paraphrases_closer(gateway: str) -> None:
    texts = ["The cat sat on the mat.", "A cat was sitting on the rug.", "Quarterly revenue grew by eight percent."]
    data = client_for(gateway).embeddings.create(model="embed", input=texts).data
    vectors = np.array([d.embedding for d in sorted(data, key=lambda d: d.index)])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)  # cosine, whatever the served norm
    paraphrase, unrelated = float(vectors[0] @ vectors[1]), float(vectors[0] @ vectors[2])
    assert paraphrase > unrelated + 0.3


def test_errors_reach_the_openai_client_with_their_status_and_parameter(gateway: str) -> None:
    client = client_for(gateway)
    hello = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="no-such-model", messages=hello)  # type: ignore[arg-type]
    assert "no-such-model" in str(missing.value)
    with pytest.raises(openai.BadRequestError) as hot:
        client.chat.completions.create(model="chat", messages=hello, temperature=5)  # type: ignore[arg-type]
    assert isinstance(hot.value.body, dict) and hot.value.body.get("param") == "temperature"
    with pytest.raises(openai.BadRequestError) as long:
        client.chat.completions.create(model="chat", messages=hello, max_tokens=10**6)  # type: ignore[arg-type]
    assert isinstance(long.value.body, dict) and long.value.body.get("param") == "max_tokens"
    with pytest.raises(openai.BadRequestError) as wrong_task:
        client.embeddings.create(model="chat", input=["a"])
    assert wrong_task.value.status_code == 400
    # Still answering after the refusals.
    assert client.chat.completions.create(model="chat", messages=hello, max_tokens=2).choices  # type: ignore[arg-type]
