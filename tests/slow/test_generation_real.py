"""The serving contract of docs/serving-protocol.md against the real tritonserver serving the
optimized SmolLM2 ("chat", decoupled) and MiniLM ("embed"): chat messages, sampling and seeds,
stop strings, finish reasons, usage, streaming over /generate_stream, parameter errors.

Reuses the session's artifacts and server (conftest.py).
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from flotilla.api.v1alpha1 import ArtifactSummary
from flotilla.local import triton as local

pytestmark = pytest.mark.slow

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


def generate(server: local.LocalTriton, body: dict[str, Any], model: str = "chat") -> tuple[int, dict[str, Any]]:
    status, answer = server.request("POST", f"/v2/models/{model}/generate", body)
    assert isinstance(answer, dict), answer
    return status, answer


def ok(server: local.LocalTriton, body: dict[str, Any]) -> dict[str, Any]:
    status, answer = generate(server, body)
    assert status == 200, answer
    return answer


@dataclass(frozen=True)
class Chunk:
    at: float  # time.monotonic() when its line arrived
    data: dict[str, Any]


def stream(server: local.LocalTriton, body: dict[str, Any], model: str = "chat") -> tuple[float, int, list[Chunk]]:
    """POST /generate_stream: (send time, HTTP status, every SSE event with its arrival time)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=300)
    try:
        sent = time.monotonic()
        connection.request(
            "POST", f"/v2/models/{model}/generate_stream", json.dumps(body), {"Content-Type": "application/json"}
        )
        response = connection.getresponse()
        chunks = []
        for raw in iter(response.readline, b""):  # de-chunked, a line as soon as it arrives
            line = raw.decode().strip()
            if line.startswith("data:"):
                chunks.append(Chunk(time.monotonic(), json.loads(line[len("data:") :])))
        return sent, response.status, chunks
    finally:
        connection.close()


@pytest.fixture(scope="module")
def tokenizer(smol_artifact: tuple[ArtifactSummary, Path]) -> Any:
    from transformers import AutoTokenizer

    summary, out = smol_artifact
    return AutoTokenizer.from_pretrained(out / str(summary.model_name) / "1")


def chat_prompt_tokens(tokenizer: Any, messages: list[dict[str, str]]) -> int:
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return len(tokenizer(rendered, add_special_tokens=False)["input_ids"])


def test_chat_messages_answer_paris_with_usage(triton: local.LocalTriton, tokenizer: Any) -> None:
    answer = ok(triton, {"text_input": "", "messages": json.dumps(FRANCE), "max_tokens": 32})
    assert "Paris" in answer["text_output"]
    assert answer["finish_reason"] in {"stop", "length"}
    assert answer["prompt_tokens"] == chat_prompt_tokens(tokenizer, FRANCE)
    # text_input alone is wrapped as one user message: the same prompt, the same greedy answer.
    same = ok(triton, {"text_input": FRANCE[0]["content"], "max_tokens": 32})
    assert same == answer
    # SmolLM2's template adds its own system prompt when there is none: the count follows the template.
    with_system = [{"role": "system", "content": "You answer in one word."}, *FRANCE]
    other = ok(triton, {"text_input": "", "messages": json.dumps(with_system), "max_tokens": 8})
    assert other["prompt_tokens"] == chat_prompt_tokens(tokenizer, with_system) != answer["prompt_tokens"]


def test_raw_prompt_skips_the_chat_template(triton: local.LocalTriton, tokenizer: Any) -> None:
    prompt = "The capital of France is"
    answer = ok(triton, {"text_input": prompt, "raw": True, "max_tokens": 4})
    assert answer["prompt_tokens"] == len(tokenizer(prompt)["input_ids"])
    assert (answer["finish_reason"], answer["completion_tokens"]) == ("length", 4)
    assert "Paris" in answer["text_output"]


def test_finish_reason_length_and_stop_with_token_counts(triton: local.LocalTriton, tokenizer: Any) -> None:
    cut = ok(triton, {"text_input": "Tell me a long story about the sea.", "max_tokens": 5})
    assert (cut["finish_reason"], cut["completion_tokens"]) == ("length", 5)
    short = ok(triton, {"text_input": "", "messages": json.dumps(FRANCE), "max_tokens": 200})
    assert short["finish_reason"] == "stop" and 0 < short["completion_tokens"] < 200  # EOS
    # EOS is not counted: the completion tokens are the answer's own tokens.
    assert short["completion_tokens"] == len(tokenizer(short["text_output"], add_special_tokens=False)["input_ids"])


def test_stop_strings_cut_before_the_stop(triton: local.LocalTriton) -> None:
    body = {"text_input": "List the days of the week, one per line.", "max_tokens": 40}
    full = ok(triton, body)["text_output"]
    assert "Wednesday" in full, full
    answer = ok(triton, {**body, "stop": json.dumps(["Wednesday", "no such stop"])})
    assert answer["text_output"] == full[: full.index("Wednesday")]
    assert answer["finish_reason"] == "stop" and answer["completion_tokens"] < 40


def sampled(seed: int, max_tokens: int = 24) -> dict[str, Any]:
    return {
        "text_input": "Write a sentence about a dragon.",
        "max_tokens": max_tokens,
        "temperature": 0.8,
        "seed": seed,
    }


def test_same_seed_same_text_different_seeds_differ(triton: local.LocalTriton) -> None:
    first = ok(triton, sampled(1))
    assert ok(triton, sampled(1)) == first
    others = {ok(triton, sampled(s))["text_output"] for s in (2, 3)}
    assert first["text_output"] not in others


def test_generate_stream_yields_chunks_before_the_answer_is_done(triton: local.LocalTriton) -> None:
    body = {"text_input": "Tell me a long story about the sea.", "max_tokens": 32}
    sent, status, chunks = stream(triton, {**body, "stream": True})
    assert status == 200 and len(chunks) >= 4
    # Token by token: the first text arrives well before the last (a buffered answer would
    # deliver every chunk together at the end).
    assert chunks[0].at - sent < 0.5 * (chunks[-1].at - sent)
    assert [c.data["finish_reason"] for c in chunks] == [""] * (len(chunks) - 1) + ["length"]
    assert chunks[-1].data["completion_tokens"] == 32
    whole = ok(triton, body)
    assert "".join(c.data["text_output"] for c in chunks) == whole["text_output"]
    assert chunks[-1].data["prompt_tokens"] == whole["prompt_tokens"]


def test_generate_stream_with_stream_false_is_one_event(triton: local.LocalTriton) -> None:
    _, status, chunks = stream(triton, {"text_input": "Hi", "max_tokens": 4})
    assert status == 200 and len(chunks) == 1 and chunks[0].data["finish_reason"] == "length"


def test_concurrent_streams_with_different_seeds_do_not_interfere(triton: local.LocalTriton) -> None:
    alone = {seed: ok(triton, sampled(seed, 16))["text_output"] for seed in (11, 12)}
    assert alone[11] != alone[12]
    texts: dict[int, str] = {}
    gate = threading.Barrier(2)

    def one(seed: int) -> None:
        gate.wait()  # released together, so they share a dynamic batch (same set of inputs)
        _, status, chunks = stream(triton, {**sampled(seed, 16), "stream": True})
        assert status == 200
        texts[seed] = "".join(c.data["text_output"] for c in chunks)

    threads = [threading.Thread(target=one, args=(seed,)) for seed in (11, 12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert texts == alone


@pytest.mark.parametrize(
    ("extra", "parameter"),
    [
        ({"temperature": 5.0}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_k": -3}, "top_k"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"stop": "not json"}, "stop"),
        ({"stop": json.dumps(["a", "b", "c", "d", "e"])}, "stop"),
        ({"messages": "[{]"}, "messages"),
    ],
)
def test_bad_parameter_is_a_400_naming_it(triton: local.LocalTriton, extra: dict[str, Any], parameter: str) -> None:
    status, answer = generate(triton, {"text_input": "Hi", **extra})
    assert status == 400, answer
    assert f"'{parameter}'" in answer["error"]


def test_a_bad_request_does_not_fail_its_batch(triton: local.LocalTriton) -> None:
    results: dict[str, tuple[int, dict[str, Any]]] = {}
    gate = threading.Barrier(3)

    def one(name: str, body: dict[str, Any]) -> None:
        gate.wait()
        results[name] = generate(triton, body)

    bodies = {
        "good": {"text_input": "Hi", "max_tokens": 3, "temperature": 0.0},
        "bad": {"text_input": "Hi", "max_tokens": 3, "temperature": -1.0},
        "good2": {"text_input": "Hello", "max_tokens": 3, "temperature": 0.0},
    }
    threads = [threading.Thread(target=one, args=item) for item in bodies.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert results["bad"][0] == 400 and "'temperature'" in results["bad"][1]["error"]
    assert results["good"][0] == results["good2"][0] == 200
    assert results["good"][1]["completion_tokens"] == 3


def test_bad_parameter_on_a_stream_is_an_error_event(triton: local.LocalTriton) -> None:
    _, status, chunks = stream(triton, {"text_input": "Hi", "stream": True, "top_k": -1})
    assert status == 400 and len(chunks) == 1 and "'top_k'" in chunks[0].data["error"]


def test_kserve_http_infer_is_refused_for_the_decoupled_model(triton: local.LocalTriton) -> None:
    """Pinned Triton 2.51 behaviour: generation callers use /generate (or gRPC streaming)."""
    body = {"inputs": [{"name": "text_input", "shape": [1, 1], "datatype": "BYTES", "data": ["Hi"]}]}
    status, answer = triton.request("POST", "/v2/models/chat/infer", body)
    assert status != 200 and "decoupled" in str(answer)


def test_embeddings_report_prompt_tokens(triton: local.LocalTriton, minilm_dir: Path) -> None:
    from transformers import AutoTokenizer

    texts = ["The cat sat on the mat.", "Photosynthesis turns light into sugar, mostly in leaves."]
    body = {"inputs": [{"name": "text", "shape": [2, 1], "datatype": "BYTES", "data": texts}]}
    status, answer = triton.request("POST", "/v2/models/embed/infer", body)
    assert status == 200, answer
    outputs = {o["name"]: o for o in answer["outputs"]}
    counts = [len(ids) for ids in AutoTokenizer.from_pretrained(minilm_dir)(texts)["input_ids"]]
    assert outputs["prompt_tokens"]["datatype"] == "INT32"
    assert outputs["prompt_tokens"]["data"] == counts and counts[0] != counts[1]
