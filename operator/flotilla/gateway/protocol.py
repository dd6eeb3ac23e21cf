"""The OpenAI API subset the gateway speaks, Triton's generate/infer bodies, and errors. Pure.

Requests are parsed with pydantic (unknown fields are ignored, as OpenAI-compatible servers
commonly do, but known OpenAI features we cannot honour are refused naming the parameter, so
a client never gets silently different semantics). Every failure is a `GatewayError`; `render`
maps it to the HTTP status, headers and OpenAI error body `{"error": {message, type, param,
code}}`, so the status table lives in one place.
"""

from __future__ import annotations

import base64
import json
import re
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import msgspec
from pydantic import BaseModel, ConfigDict, Field, ValidationError

# ---------------------------------------------------------------- failures

FailureKind = Literal[
    "invalid_param",
    "model_not_found",
    "wrong_task",
    "body_too_large",
    "unauthorized",
    "forbidden",
    "concurrency",
    "no_endpoint",
    "waking_timeout",
    "waking_full",
    "upstream_bad_request",
    "upstream_error",
    "upstream_timeout",
    "not_found",
    "internal",
]

# kind -> (HTTP status, OpenAI error type, code). The official clients branch on the status
# (400 BadRequestError, 401 AuthenticationError, 403 PermissionDeniedError, 404 NotFoundError,
# 413/400 BadRequest, 429 RateLimitError, 5xx InternalServerError), the type/code say why.
STATUS: dict[FailureKind, tuple[int, str, str | None]] = {
    "invalid_param": (400, "invalid_request_error", "invalid_value"),
    "model_not_found": (404, "invalid_request_error", "model_not_found"),
    "wrong_task": (400, "invalid_request_error", "model_not_supported"),
    "body_too_large": (413, "invalid_request_error", "request_too_large"),
    "unauthorized": (401, "authentication_error", "invalid_api_key"),
    "forbidden": (403, "permission_error", "model_not_allowed"),
    "concurrency": (429, "rate_limit_error", "concurrency_limit_exceeded"),
    "no_endpoint": (503, "service_unavailable", "no_ready_endpoint"),
    # A model scaled to zero: no replica became ready within the hold, or too many requests
    # already wait for one (a queue of its own, so 429 as for the per-key limit).
    "waking_timeout": (503, "service_unavailable", "scaling_from_zero"),
    "waking_full": (429, "rate_limit_error", "scale_from_zero_queue_full"),
    "upstream_bad_request": (400, "invalid_request_error", "upstream_rejected"),
    "upstream_error": (502, "upstream_error", "upstream_error"),
    "upstream_timeout": (504, "upstream_error", "upstream_timeout"),
    "not_found": (404, "invalid_request_error", "unknown_url"),
    "internal": (500, "server_error", "internal_error"),
}


@dataclass
class GatewayError(Exception):
    kind: FailureKind
    message: str
    param: str | None = None
    retry_after: int | None = None  # seconds, for 503 and 429

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


def render(failure: GatewayError) -> tuple[int, dict[str, str], bytes]:
    """HTTP status, extra headers and the OpenAI error JSON body of a failure."""
    status, type_, code = STATUS[failure.kind]
    headers = {"Retry-After": str(failure.retry_after)} if failure.retry_after is not None else {}
    body = {"error": {"message": failure.message, "type": type_, "param": failure.param, "code": code}}
    return status, headers, json.dumps(body).encode()


def invalid(param: str | None, message: str) -> GatewayError:
    return GatewayError("invalid_param", message, param)


def from_validation_error(err: ValidationError) -> GatewayError:
    """The first pydantic error as OpenAI's 400, `param` the dotted path ("messages.0.role")."""
    first = err.errors(include_url=False)[0]
    loc = ".".join(str(p) for p in first["loc"] if not str(p).startswith("function-"))
    if first["type"] == "json_invalid":
        return invalid(None, f"the body is not valid JSON: {first['msg']}")
    return invalid(loc or None, f"{loc or 'body'}: {first['msg']}")


# ---------------------------------------------------------------- requests


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class StreamOptions(_Request):
    include_usage: bool = False


class TextPart(_Request):
    type: Literal["text"]
    text: str


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class _Sampling(_Request):
    model: str = Field(min_length=1, max_length=320)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=0)  # extension: not in OpenAI's API
    seed: int | None = None
    stop: str | list[str] | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    n: int | None = Field(default=None, ge=1)
    user: str | None = None
    # Known OpenAI features the serving side cannot honour: refused when asked for.
    logprobs: bool | int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    tools: list[Any] | None = None
    response_format: dict[str, Any] | None = None

    def requested_max_tokens(self) -> int | None:
        # max_completion_tokens supersedes the deprecated max_tokens in OpenAI's API.
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None


class EmbeddingRequest(_Request):
    model: str = Field(min_length=1, max_length=320)
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None

    def inputs(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


MAX_STOP = 4
M = TypeVar("M", bound=BaseModel)
MAX_EMBEDDING_INPUTS = 2048


def _check_sampling(req: _Sampling, max_tokens_limit: int) -> None:
    if req.n not in (None, 1):
        raise invalid("n", "only n=1 is supported")
    if req.logprobs:
        raise invalid("logprobs", "logprobs are not supported")
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(req, name):
            raise invalid(name, f"{name} is not supported")
    if req.logit_bias:
        raise invalid("logit_bias", "logit_bias is not supported")
    stops = req.stop_list()
    if len(stops) > MAX_STOP or any(not s for s in stops):
        raise invalid("stop", f"stop takes up to {MAX_STOP} non-empty strings")
    wanted = req.requested_max_tokens()
    if wanted is not None and wanted > max_tokens_limit:
        param = "max_completion_tokens" if getattr(req, "max_completion_tokens", None) else "max_tokens"
        raise invalid(param, f"{param} is {wanted}; this gateway allows at most {max_tokens_limit}")


def parse_chat(body: bytes, max_tokens_limit: int) -> ChatCompletionRequest:
    req = _parse(ChatCompletionRequest, body)
    _check_sampling(req, max_tokens_limit)
    if req.tools:
        raise invalid("tools", "tools are not supported")
    if req.response_format and req.response_format.get("type", "text") != "text":
        raise invalid("response_format", "only the text response format is supported")
    return req


def parse_completion(body: bytes, max_tokens_limit: int) -> CompletionRequest:
    req = _parse(CompletionRequest, body)
    _check_sampling(req, max_tokens_limit)
    if isinstance(req.prompt, list) and len(req.prompt) != 1:
        raise invalid("prompt", "exactly one prompt per request is supported")
    # Explicit tests: `True in (None, False, 1)` would hold, True being 1.
    unsupported = {"echo": req.echo is True, "suffix": bool(req.suffix), "best_of": (req.best_of or 1) != 1}
    for name, asked in unsupported.items():
        if asked:
            raise invalid(name, f"{name} is not supported")
    return req


def parse_embedding(body: bytes) -> EmbeddingRequest:
    req = _parse(EmbeddingRequest, body)
    inputs = req.inputs()
    if not inputs or len(inputs) > MAX_EMBEDDING_INPUTS:
        raise invalid("input", f"input takes 1 to {MAX_EMBEDDING_INPUTS} strings")
    if any(not s for s in inputs):
        raise invalid("input", "input strings must not be empty")
    if req.dimensions is not None:
        raise invalid("dimensions", "dimensions is not supported: the model's width is fixed")
    return req


def _parse(cls: type[M], body: bytes) -> M:
    try:
        return cls.model_validate_json(body)
    except ValidationError as err:
        raise from_validation_error(err) from None


def prompt_text(req: CompletionRequest) -> str:
    return req.prompt if isinstance(req.prompt, str) else req.prompt[0]


# ---------------------------------------------------------------- model names


def split_model(model: str, default_namespace: str) -> tuple[str, str]:
    """`name` -> (default namespace, name); `namespace/name` -> (namespace, name)."""
    namespace, sep, name = model.partition("/")
    if not sep:
        return default_namespace, model
    if not namespace or not name or "/" in name:
        raise GatewayError("model_not_found", f"The model `{model}` does not exist", "model")
    return namespace, name


def model_id(namespace: str, name: str, default_namespace: str) -> str:
    return name if namespace == default_namespace else f"{namespace}/{name}"


# ---------------------------------------------------------------- Triton's generate extension


def generate_body(
    req: _Sampling, max_tokens: int, *, messages: Sequence[ChatMessage] | None, text: str, fallback_seed: int
) -> bytes:
    """The JSON body of POST /v2/models/<name>/generate[_stream] (the serving contract):
    chat sends `messages` (a JSON string; the model applies its own chat template) and an
    empty text_input; completions send the prompt with `raw: true` (no template).

    Every key is always sent, with the contract's neutral values for what the request does not
    use: Triton's dynamic batcher only batches requests that carry the same set of inputs
    (docs/serving-protocol.md). For the same reason a request without a seed is sent
    `fallback_seed` (the caller draws it at random: as nondeterministic as none, and batchable
    with seeded requests)."""
    drawn = req.seed if req.seed is not None else fallback_seed
    body: dict[str, Any] = {
        "text_input": "" if messages is not None else text,
        "messages": "" if messages is None else json.dumps([{"role": m.role, "content": m.text()} for m in messages]),
        "raw": messages is None,
        "max_tokens": max_tokens,
        "temperature": 0.0 if req.temperature is None else req.temperature,
        "top_p": 1.0 if req.top_p is None else req.top_p,
        "top_k": 0 if req.top_k is None else req.top_k,
        "seed": drawn,
        "stop": json.dumps(req.stop_list()) if req.stop_list() else "",
        "stream": bool(req.stream),
    }
    return dumps(body)


@dataclass(frozen=True)
class Generated:
    """One generate response, or one chunk of a generate_stream response."""

    text: str
    finish_reason: str | None  # "stop" | "length"; None on non-final chunks
    prompt_tokens: int | None
    completion_tokens: int | None


def parse_generated(payload: Mapping[str, Any]) -> Generated:
    """Triton's generate JSON; `{"error": ...}` is the model's own refusal (a 400)."""
    if "error" in payload:
        raise upstream_refusal(str(payload["error"]))
    text = payload.get("text_output", "")
    if isinstance(text, list):  # batched tensors come back as a one-element list
        text = text[0] if text else ""
    reason = _scalar(payload.get("finish_reason")) or None
    return Generated(
        text=str(text),
        finish_reason=str(reason) if reason else None,
        prompt_tokens=_int_or_none(payload.get("prompt_tokens")),
        completion_tokens=_int_or_none(payload.get("completion_tokens")),
    )


def _scalar(value: Any) -> Any:
    if isinstance(value, list):
        return value[0] if value else None
    return value


def _int_or_none(value: Any) -> int | None:
    value = _scalar(value)
    return int(value) if isinstance(value, int | float) else None


_PARAM = re.compile(r"invalid parameter '([A-Za-z_]+)'")


def upstream_refusal(message: str) -> GatewayError:
    """Triton 2.51 answers 400 on the generate endpoints for every error, the client's and the
    model's alike; only the message tells them apart. The serving contract names the bad
    parameter ("invalid parameter 'top_p': ..."): a 400 naming it. Anything else (a failed
    batch, "inference failed: ...") is the pod's fault: 502."""
    found = _PARAM.search(message)
    if found:
        return GatewayError("upstream_bad_request", message, param=found.group(1))
    if "bad request" in message or "ParameterError" in message:
        return GatewayError("upstream_bad_request", message)
    return GatewayError("upstream_error", message)


def upstream_error_message(status: int, body: bytes) -> str:
    try:
        payload = json.loads(body)
    except ValueError:
        return f"upstream answered {status}: {body[:200].decode(errors='replace')}"
    if isinstance(payload, dict) and "error" in payload:
        return str(payload["error"])
    return f"upstream answered {status}"


# ---------------------------------------------------------------- KServe infer for embeddings


def infer_bodies(inputs: Sequence[str], max_batch_size: int) -> list[bytes]:
    """POST /v2/models/<name>/infer bodies for `inputs`: `text` is a [1] STRING tensor, so a
    batching model (max_batch_size > 0) takes [batch, 1] up to max_batch_size rows per request
    and a non-batching one a single [1] per request."""
    if max_batch_size <= 0:
        return [_infer_body([text], [1]) for text in inputs]
    chunks = [inputs[i : i + max_batch_size] for i in range(0, len(inputs), max_batch_size)]
    return [_infer_body(list(chunk), [len(chunk), 1]) for chunk in chunks]


def _infer_body(texts: list[str], shape: list[int]) -> bytes:
    tensor = {"name": "text", "datatype": "BYTES", "shape": shape, "data": texts}
    return json.dumps({"inputs": [tensor]}).encode()


@dataclass(frozen=True)
class Embedded:
    vectors: list[list[float]]
    prompt_tokens: int


def parse_infer(payload: Mapping[str, Any]) -> Embedded:
    """`embedding` FP32 [batch, width] (or [width]) and `prompt_tokens` INT32 per row."""
    if "error" in payload:
        raise GatewayError("upstream_bad_request", str(payload["error"]))
    outputs = {o.get("name"): o for o in payload.get("outputs", []) if isinstance(o, dict)}
    emb = outputs.get("embedding")
    if emb is None:
        raise GatewayError("upstream_error", "the model returned no `embedding` output")
    shape, data = list(emb.get("shape", [])), list(emb.get("data", []))
    width = shape[-1] if shape else len(data)
    if width <= 0 or len(data) % width:
        raise GatewayError("upstream_error", f"embedding of shape {shape} with {len(data)} values")
    vectors = [data[i : i + width] for i in range(0, len(data), width)]
    tokens = outputs.get("prompt_tokens")
    prompt_tokens = sum(int(v) for v in tokens.get("data", [])) if tokens else 0
    return Embedded(vectors=vectors, prompt_tokens=prompt_tokens)


def encode_embedding(vector: Sequence[float], encoding: Literal["float", "base64"]) -> list[float] | str:
    """OpenAI's base64 format is the little-endian float32 bytes (the official Python client
    asks for it by default and decodes it with numpy.frombuffer)."""
    if encoding == "float":
        return list(vector)
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


# ---------------------------------------------------------------- responses


class _Response(BaseModel):
    model_config = ConfigDict(frozen=True)


class Usage(_Response):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt: int | None, completion: int | None) -> Usage:
        p, c = prompt or 0, completion or 0
        return cls(prompt_tokens=p, completion_tokens=c, total_tokens=p + c)


class AssistantMessage(_Response):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(_Response):
    index: int = 0
    message: AssistantMessage
    finish_reason: str | None
    logprobs: None = None


class ChatCompletion(_Response):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChatChoice]
    usage: Usage


class Delta(_Response):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(_Response):
    index: int = 0
    delta: Delta
    finish_reason: str | None = None
    logprobs: None = None


class ChatCompletionChunk(_Response):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class TextChoice(_Response):
    index: int = 0
    text: str
    finish_reason: str | None
    logprobs: None = None


class TextCompletion(_Response):
    """Both the whole answer and, streamed, each chunk (OpenAI uses one object type)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    system_fingerprint: str
    choices: list[TextChoice]
    usage: Usage | None = None


class EmbeddingData(_Response):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(_Response):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(_Response):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: EmbeddingUsage


class ModelCard(_Response):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(_Response):
    object: Literal["list"] = "list"
    data: list[ModelCard]


@dataclass(frozen=True)
class Identity:
    """What every response of one request carries."""

    id: str
    created: int
    model: str
    revision: str  # system_fingerprint: the serving revision that answered


# The response models above are the schema (tests validate every answer against them);
# answers are built as dicts and encoded once, which costs a fraction of model validation on
# the request path. msgspec encodes them to the same bytes as this compact stdlib encoder (a
# float may be spelt differently, the same number) in a tenth of its time; what msgspec
# refuses (an int beyond 64 bits, a lone surrogate) takes the stdlib path, which decides.
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_fast_encode = msgspec.json.Encoder().encode
_fast_decode = msgspec.json.Decoder().decode


def dumps(obj: Any) -> bytes:
    try:
        return _fast_encode(obj)
    except (msgspec.EncodeError, OverflowError, TypeError, ValueError):
        return _encode(obj).encode()


def loads(data: bytes) -> Any:
    """`json.loads`: msgspec first, the stdlib for what it refuses (NaN, a BOM, a lone
    surrogate escape), so the same documents parse and the same ones fail (ValueError)."""
    try:
        return _fast_decode(data)
    except msgspec.DecodeError:
        return json.loads(data)


def _usage(prompt: int | None, completion: int | None) -> dict[str, int]:
    p, c = prompt or 0, completion or 0
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def _answer(ident: Identity, object_: str, choice: dict[str, Any], result: Generated) -> bytes:
    return dumps(
        {
            "id": ident.id,
            "object": object_,
            "created": ident.created,
            "model": ident.model,
            "system_fingerprint": ident.revision,
            "choices": [choice],
            "usage": _usage(result.prompt_tokens, result.completion_tokens),
        }
    )


def chat_completion(ident: Identity, result: Generated) -> bytes:
    message = {"role": "assistant", "content": result.text}
    choice = {"index": 0, "message": message, "finish_reason": result.finish_reason, "logprobs": None}
    return _answer(ident, "chat.completion", choice, result)


def text_completion(ident: Identity, result: Generated) -> bytes:
    choice = {"index": 0, "text": result.text, "finish_reason": result.finish_reason, "logprobs": None}
    return _answer(ident, "text_completion", choice, result)


def embedding_list(model: str, embedded: Embedded, encoding: Literal["float", "base64"]) -> bytes:
    data = [EmbeddingData(index=i, embedding=encode_embedding(v, encoding)) for i, v in enumerate(embedded.vectors)]
    usage = EmbeddingUsage(prompt_tokens=embedded.prompt_tokens, total_tokens=embedded.prompt_tokens)
    return EmbeddingList(data=data, model=model, usage=usage).model_dump_json().encode()


# ---------------------------------------------------------------- streaming (SSE)

SSE_DONE = b"data: [DONE]\n\n"


def sse(payload: bytes) -> bytes:
    """One server-sent event; JSON has no raw newlines, so one `data:` line is enough."""
    return b"data: " + payload + b"\n\n"


@dataclass
class StreamEncoder:
    """Turns upstream deltas into OpenAI chunks for chat (`chat.completion.chunk`) or
    completions (`text_completion`): a role chunk first (chat), one chunk per non-empty delta,
    the finish_reason in its own final chunk, then the usage chunk (choices [], only with
    stream_options.include_usage; every earlier chunk then carries `usage: null`), [DONE]."""

    ident: Identity
    chat: bool
    include_usage: bool
    _started: bool = field(default=False, init=False)

    def _head(self, object_: str) -> dict[str, Any]:
        return {
            "id": self.ident.id,
            "object": object_,
            "created": self.ident.created,
            "model": self.ident.model,
            "system_fingerprint": self.ident.revision,
        }

    def _chunk(self, text: str | None, finish: str | None, *, role: bool = False) -> bytes:
        # Built as dicts, not models: this runs once per token, and a chat delta must drop its
        # unset keys (`{}` on the final chunk) while finish_reason stays an explicit null.
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
            if text is not None:
                delta["content"] = text
            body = self._head("chat.completion.chunk")
            body["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]
        else:
            body = self._head("text_completion")
            body["choices"] = [{"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}]
        if self.include_usage:
            body["usage"] = None
        return sse(dumps(body))

    def feed(self, piece: Generated) -> Iterator[bytes]:
        if not self._started:
            self._started = True
            if self.chat:
                yield self._chunk(None, None, role=True)
        if piece.text:
            yield self._chunk(piece.text, None)
        if piece.finish_reason:
            yield self._chunk(None if self.chat else "", piece.finish_reason)

    def finish(self, prompt_tokens: int | None, completion_tokens: int | None) -> Iterator[bytes]:
        if self.include_usage:
            body = self._head("chat.completion.chunk" if self.chat else "text_completion")
            body["choices"] = []
            body["usage"] = _usage(prompt_tokens, completion_tokens)
            yield sse(dumps(body))
        yield SSE_DONE

    @staticmethod
    def error(failure: GatewayError) -> bytes:
        """A failure after the stream began: an `error` event (the OpenAI client raises it)."""
        return sse(render(failure)[2])


class SseDecoder:
    """Splits an upstream text/event-stream into the payloads of its `data:` fields, across
    arbitrary chunk boundaries; comments (`:`), other fields and blank lines are skipped."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        out = []
        for raw in lines:
            line = raw.rstrip(b"\r")
            if line.startswith(b"data:"):
                out.append(line[5:].lstrip(b" "))
        return out
