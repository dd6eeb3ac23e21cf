"""The gateway's OpenAI protocol subset: request validation, error shapes, Triton bodies, SSE."""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

import pytest

from flotilla.gateway import protocol as p
from flotilla.gateway.keys import KeyRing, authorize, digest

LIMIT = 1024


def body(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


def chat(**fields: Any) -> bytes:
    return body(model="chat", messages=[{"role": "user", "content": "hi"}], **fields)


def error_of(exc: pytest.ExceptionInfo[p.GatewayError]) -> tuple[int, dict[str, str], dict[str, Any]]:
    status, headers, raw = p.render(exc.value)
    return status, headers, json.loads(raw)["error"]


# ---------------------------------------------------------------- error cases: status, type, param


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (chat(n=2), "n"),
        (chat(max_tokens=LIMIT + 1), "max_tokens"),
        (chat(max_completion_tokens=LIMIT + 1), "max_completion_tokens"),
        (chat(temperature=3), "temperature"),
        (chat(top_p=0), "top_p"),
        (chat(stop=["a", "b", "c", "d", "e"]), "stop"),
        (chat(logprobs=True), "logprobs"),
        (chat(tools=[{"type": "function"}]), "tools"),
        (chat(presence_penalty=0.5), "presence_penalty"),
        (body(model="chat", messages=[]), "messages"),
        (body(model="chat", messages=[{"role": "wizard", "content": "x"}]), "messages.0.role"),
        (body(messages=[{"role": "user", "content": "x"}]), "model"),
    ],
)
def test_bad_chat_parameters_are_400_naming_the_parameter(raw: bytes, param: str) -> None:
    with pytest.raises(p.GatewayError) as exc:
        p.parse_chat(raw, LIMIT)
    status, headers, err = error_of(exc)
    assert (status, err["type"], err["param"]) == (400, "invalid_request_error", param)
    assert err["message"] and "Retry-After" not in headers


def test_invalid_json_is_400_without_param() -> None:
    with pytest.raises(p.GatewayError) as exc:
        p.parse_chat(b"{not json", LIMIT)
    status, _, err = error_of(exc)
    assert status == 400 and err["param"] is None and "JSON" in err["message"]


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (body(model="m", prompt=["a", "b"]), "prompt"),
        (body(model="m", prompt="a", echo=True), "echo"),
        (body(model="m", prompt="a", n=3), "n"),
        (body(model="m"), "prompt"),
    ],
)
def test_bad_completion_parameters(raw: bytes, param: str) -> None:
    with pytest.raises(p.GatewayError) as exc:
        p.parse_completion(raw, LIMIT)
    assert error_of(exc)[2]["param"] == param


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (body(model="e", input=[]), "input"),
        (body(model="e", input=["ok", ""]), "input"),
        (body(model="e", input="x", dimensions=8), "dimensions"),
        (body(model="e", input="x", encoding_format="int8"), "encoding_format"),
    ],
)
def test_bad_embedding_parameters(raw: bytes, param: str) -> None:
    with pytest.raises(p.GatewayError) as exc:
        p.parse_embedding(raw)
    assert error_of(exc)[2]["param"] == param


@pytest.mark.parametrize(
    ("kind", "status", "type_", "code"),
    [
        ("model_not_found", 404, "invalid_request_error", "model_not_found"),
        ("body_too_large", 413, "invalid_request_error", "request_too_large"),
        ("unauthorized", 401, "authentication_error", "invalid_api_key"),
        ("forbidden", 403, "permission_error", "model_not_allowed"),
        ("concurrency", 429, "rate_limit_error", "concurrency_limit_exceeded"),
        ("no_endpoint", 503, "service_unavailable", "no_ready_endpoint"),
        ("upstream_bad_request", 400, "invalid_request_error", "upstream_rejected"),
        ("upstream_error", 502, "upstream_error", "upstream_error"),
        ("upstream_timeout", 504, "upstream_error", "upstream_timeout"),
    ],
)
def test_every_failure_kind_has_its_status_and_openai_shape(
    kind: p.FailureKind, status: int, type_: str, code: str
) -> None:
    got_status, _, raw = p.render(p.GatewayError(kind, "why", "model"))
    assert got_status == status
    assert json.loads(raw) == {"error": {"message": "why", "type": type_, "param": "model", "code": code}}


def test_503_carries_retry_after() -> None:
    status, headers, _ = p.render(p.GatewayError("no_endpoint", "none", retry_after=7))
    assert status == 503 and headers == {"Retry-After": "7"}


def test_api_key_errors() -> None:
    secret = {
        "team-a": base64.b64encode(json.dumps({"key": "sk-a", "models": ["chat"]}).encode()).decode(),
        "team-b": base64.b64encode(json.dumps({"sha256": digest("sk-b"), "namespaces": ["other"]}).encode()).decode(),
        "broken": base64.b64encode(b"{").decode(),
    }
    ring = KeyRing.from_secret_data(secret)
    assert len(ring.grants) == 2 and ring.problems and ring.problems[0].startswith("broken")
    for header in (None, "Basic abc", "Bearer ", "Bearer sk-wrong"):
        with pytest.raises(p.GatewayError) as exc:
            ring.authenticate(header)
        assert p.render(exc.value)[0] == 401
    grant_a = ring.authenticate("Bearer sk-a")
    assert grant_a is not None and grant_a.client == "team-a"
    authorize(grant_a, "ml", "chat", "chat")
    with pytest.raises(p.GatewayError) as exc:
        authorize(grant_a, "ml", "embed", "embed")
    status, _, err = error_of(exc)
    assert (status, err["type"], err["param"]) == (403, "permission_error", "model")
    grant_b = ring.authenticate("bearer sk-b")
    with pytest.raises(p.GatewayError):
        authorize(grant_b, "ml", "chat", "chat")
    # A configured but missing Secret refuses everything; no Secret configured lets all in.
    with pytest.raises(p.GatewayError):
        KeyRing.from_secret_data(None).authenticate("Bearer sk-a")
    assert KeyRing(enabled=False).authenticate(None) is None


# ---------------------------------------------------------------- model names


def test_model_names() -> None:
    assert p.split_model("chat", "ml") == ("ml", "chat")
    assert p.split_model("team/chat", "ml") == ("team", "chat")
    for bad in ("/chat", "team/", "a/b/c"):
        with pytest.raises(p.GatewayError) as exc:
            p.split_model(bad, "ml")
        assert p.render(exc.value)[0] == 404
    assert p.model_id("ml", "chat", "ml") == "chat" and p.model_id("team", "chat", "ml") == "team/chat"


# ---------------------------------------------------------------- Triton bodies


def test_chat_generate_body_sends_messages_as_json_and_the_sampling_contract() -> None:
    req = p.parse_chat(
        body(
            model="chat",
            messages=[
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "hi"}]},
            ],
            temperature=0,
            top_p=0.9,
            top_k=40,
            seed=7,
            stop="\n",
            stream=True,
        ),
        LIMIT,
    )
    sent = json.loads(p.generate_body(req, 32, messages=req.messages, text="", fallback_seed=99))
    assert sent == {
        "text_input": "",
        "raw": False,
        "messages": json.dumps([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]),
        "max_tokens": 32,
        "temperature": 0,
        "top_p": 0.9,
        "top_k": 40,
        "seed": 7,
        "stop": json.dumps(["\n"]),
        "stream": True,
    }


def test_completion_generate_body_is_raw_and_sends_neutral_values_for_unset_sampling() -> None:
    """Every body carries the same keys (Triton batches only requests with the same set of
    inputs): unset sampling goes as the contract's neutral values, a missing seed as the
    caller's random one."""
    req = p.parse_completion(body(model="m", prompt=["Once"], max_tokens=5), LIMIT)
    text = p.prompt_text(req)
    sent = json.loads(p.generate_body(req, req.requested_max_tokens() or 0, messages=None, text=text, fallback_seed=42))
    assert sent == {
        "text_input": "Once",
        "messages": "",
        "raw": True,
        "max_tokens": 5,
        "temperature": 0.0,
        "top_p": 1.0,
        "top_k": 0,
        "seed": 42,
        "stop": "",
        "stream": False,
    }
    chat_req = p.parse_chat(chat(), LIMIT)
    chat_body = json.loads(p.generate_body(chat_req, 8, messages=chat_req.messages, text="", fallback_seed=1))
    assert sorted(chat_body) == sorted(sent)


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    req = p.parse_chat(chat(max_tokens=10, max_completion_tokens=20), LIMIT)
    assert req.requested_max_tokens() == 20


def test_generated_and_triton_errors() -> None:
    got = p.parse_generated(
        {"text_output": "Paris", "finish_reason": "stop", "prompt_tokens": 5, "completion_tokens": 2}
    )
    assert got == p.Generated("Paris", "stop", 5, 2)
    assert p.parse_generated({"text_output": "a", "finish_reason": ""}).finish_reason is None
    with pytest.raises(p.GatewayError) as exc:
        p.parse_generated({"error": "invalid parameter 'top_k': must be >= 0, got -1"})
    status, _, err = error_of(exc)
    assert status == 400 and "top_k" in err["message"] and err["param"] == "top_k"


def test_infer_bodies_batch_up_to_max_batch_size() -> None:
    bodies = [json.loads(b) for b in p.infer_bodies(["a", "b", "c"], 2)]
    assert [b["inputs"][0]["shape"] for b in bodies] == [[2, 1], [1, 1]]
    assert bodies[0]["inputs"][0] == {"name": "text", "datatype": "BYTES", "shape": [2, 1], "data": ["a", "b"]}
    unbatched = [json.loads(b) for b in p.infer_bodies(["a", "b"], 0)]
    assert [b["inputs"][0]["shape"] for b in unbatched] == [[1], [1]]


def test_parse_infer_and_base64_encoding() -> None:
    payload = {
        "outputs": [
            {"name": "embedding", "datatype": "FP32", "shape": [2, 2], "data": [1.0, 2.0, 3.0, 4.5]},
            {"name": "prompt_tokens", "datatype": "INT32", "shape": [2, 1], "data": [3, 4]},
        ]
    }
    got = p.parse_infer(payload)
    assert got.vectors == [[1.0, 2.0], [3.0, 4.5]] and got.prompt_tokens == 7
    encoded = p.encode_embedding([3.0, 4.5], "base64")
    assert isinstance(encoded, str)
    assert struct.unpack("<2f", base64.b64decode(encoded)) == (3.0, 4.5)
    with pytest.raises(p.GatewayError):
        p.parse_infer({"outputs": []})


# ---------------------------------------------------------------- SSE


IDENT = p.Identity("chatcmpl-1", 1700000000, "chat", "rev1")


def frames(raw: list[bytes]) -> list[Any]:
    out: list[Any] = []
    for frame in raw:
        assert frame.startswith(b"data: ") and frame.endswith(b"\n\n") and frame.count(b"\n") == 2
        data = frame[6:-2]
        out.append(data.decode() if data == b"[DONE]" else json.loads(data))
    return out


def test_chat_stream_framing_with_usage() -> None:
    enc = p.StreamEncoder(IDENT, chat=True, include_usage=True)
    raw = [
        *enc.feed(p.Generated("Par", None, None, None)),
        *enc.feed(p.Generated("is", None, None, None)),
        *enc.feed(p.Generated("", "stop", 5, 2)),
        *enc.finish(5, 2),
    ]
    got = frames(raw)
    assert got[-1] == "[DONE]"
    chunks = got[:-1]
    for chunk in chunks:
        p.ChatCompletionChunk.model_validate(chunk)  # the response model accepts every chunk
        assert chunk["id"] == "chatcmpl-1" and chunk["system_fingerprint"] == "rev1"
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["delta"].get("content") for c in chunks[1:3]] == ["Par", "is"]
    assert chunks[3]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop", "logprobs": None}
    assert all(c["usage"] is None for c in chunks[:4])
    assert chunks[4]["choices"] == [] and chunks[4]["usage"] == {
        "prompt_tokens": 5,
        "completion_tokens": 2,
        "total_tokens": 7,
    }


def test_completion_stream_without_usage_has_no_usage_key() -> None:
    enc = p.StreamEncoder(IDENT, chat=False, include_usage=False)
    got = frames([*enc.feed(p.Generated("Once", "length", 1, 1)), *enc.finish(1, 1)])
    assert [c["choices"][0]["text"] for c in got[:-1]] == ["Once", ""]
    assert got[1]["choices"][0]["finish_reason"] == "length"
    assert all("usage" not in c and c["object"] == "text_completion" for c in got[:-1])
    assert got[-1] == "[DONE]"


def test_stream_error_event() -> None:
    [err] = frames([p.StreamEncoder.error(p.GatewayError("upstream_error", "cut off"))])
    assert err["error"]["type"] == "upstream_error"


def test_sse_decoder_across_chunk_boundaries() -> None:
    stream = b'data: {"a": 1}\r\n\n: comment\nevent: x\ndata: {"b":\xc3\xa9 2}\n\ndata: [DONE]\n\n'
    for size in (1, 3, 7, len(stream)):
        dec = p.SseDecoder()
        out = [payload for i in range(0, len(stream), size) for payload in dec.feed(stream[i : i + size])]
        assert out == [b'{"a": 1}', b'{"b":\xc3\xa9 2}', b"[DONE]"], size


def test_triton_400s_are_told_apart_by_their_message() -> None:
    """Triton answers 400 for a bad parameter and for a failed batch alike."""
    bad = p.upstream_refusal("invalid parameter 'top_p': must be in (0, 1], got 0.0")
    assert p.render(bad)[0] == 400 and bad.param == "top_p"
    assert p.render(p.upstream_refusal("bad request: text_input is required"))[0] == 400
    broken = p.upstream_refusal("inference failed: onnxruntime error")
    assert p.render(broken)[0] == 502
    with pytest.raises(p.GatewayError) as exc:
        p.parse_generated({"error": "inference failed: boom"})
    assert exc.value.kind == "upstream_error"
