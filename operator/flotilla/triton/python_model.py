"""The Triton python-backend model of every Flotilla artifact (copied into it as `1/model.py`).

Self-contained on purpose: the serving image has numpy, onnxruntime and transformers (for the
tokenizer and chat template) but not necessarily Flotilla. Everything the model needs is next
to this file: the ONNX graph, the tokenizer files and `flotilla.json` (what the optimizer
decided: task, ONNX file, preferred GPU provider, generation and pooling settings). Runtime
choices (execution provider, threads) come from the config.pbtxt parameters, which the
operator renders per serving revision.

The engines (`Generator`, `Embedder`, `Classifier`) know nothing about Triton, so the
optimizer evaluates exactly the code that serves, and unit tests run it without a server.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

METADATA_FILE = "flotilla.json"
DEFAULT_MAX_TOKENS = 64
CPU = "CPUExecutionProvider"
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


def make_session(onnx_path: Path, provider: str = CPU, intra_op_threads: int = 0, device_id: int = 0) -> Any:
    """An onnxruntime session on `provider`, falling back to CPU if this onnxruntime lacks it."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if intra_op_threads > 0:
        options.intra_op_num_threads = intra_op_threads
    # One request batch at a time per instance: inter-op parallelism only adds contention.
    options.inter_op_num_threads = 1
    available = ort.get_available_providers()
    providers: list[Any] = []
    if provider != CPU and provider not in available:
        # Visible in Triton's log: a GPU config on an onnxruntime without that provider.
        print(f"flotilla model.py: {provider} not in onnxruntime {available}; using CPU", file=sys.stderr)
    if provider != CPU and provider in available:
        provider_options: dict[str, Any] = {"device_id": device_id}
        if provider == "TensorrtExecutionProvider":
            # Engines are specific to the GPU they were built on; cache them per instance.
            cache = Path(os.environ.get("FLOTILLA_TRT_CACHE", "/tmp/flotilla-trt-cache")) / onnx_path.parent.name
            cache.mkdir(parents=True, exist_ok=True)
            provider_options |= {
                "trt_fp16_enable": True,
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": str(cache),
            }
        providers.append((provider, provider_options))
    providers.append(CPU)
    return ort.InferenceSession(str(onnx_path), options, providers=providers)


def load_tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    auto: Any = AutoTokenizer  # untyped in transformers' stubs
    return auto.from_pretrained(str(model_dir))


class Engine(Protocol):
    def run(self, texts: Sequence[str], max_tokens: Sequence[int | None]) -> list[dict[str, Any]]: ...


def _softmax(x: FloatArray) -> FloatArray:
    shifted = x - x.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    result: FloatArray = (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)
    return result


# Text generation: parameters, sampling, incremental text, the batched decode loop.

FINISH_STOP = "stop"  # EOS or a stop string
FINISH_LENGTH = "length"  # max_tokens (which the context length bounds) reached
FINISH_ABANDONED = "abandoned"  # internal: the request was cancelled, never sent to a client
MAX_STOPS = 4
REPLACEMENT_CHAR = "\ufffd"  # what a decode of an incomplete UTF-8 sequence ends with


class ParameterError(ValueError):
    """A request parameter out of range or malformed: that request fails, its batch does not."""

    def __init__(self, parameter: str, detail: str) -> None:
        super().__init__(f"invalid parameter '{parameter}': {detail}")
        self.parameter = parameter


@dataclass(frozen=True)
class Sampling:
    """temperature 0 is greedy (argmax, no RNG); top_k 0 and top_p 1 switch those filters off."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None

    def validate(self) -> None:
        if not math.isfinite(self.temperature) or not 0.0 <= self.temperature <= 2.0:
            raise ParameterError("temperature", f"must be between 0 and 2, got {self.temperature}")
        if not math.isfinite(self.top_p) or not 0.0 < self.top_p <= 1.0:
            raise ParameterError("top_p", f"must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ParameterError("top_k", f"must be >= 0, got {self.top_k}")

    def rng(self) -> np.random.Generator:
        """This row's own RNG: from the seed (any int64; negative ones wrap to uint64), else fresh."""
        if self.seed is None:
            return np.random.default_rng()
        return np.random.default_rng(self.seed & 0xFFFFFFFFFFFFFFFF)


@dataclass(frozen=True)
class GenerationRequest:
    """One text to continue. `messages` (chat) wins over `text`; `raw` skips the chat template."""

    text: str = ""
    messages: tuple[dict[str, str], ...] | None = None
    raw: bool = False
    max_tokens: int | None = None
    sampling: Sampling = field(default_factory=Sampling)
    stop: tuple[str, ...] = ()
    stream: bool = False

    def validate(self) -> None:
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ParameterError("max_tokens", f"must be >= 1, got {self.max_tokens}")
        if len(self.stop) > MAX_STOPS:
            raise ParameterError("stop", f"at most {MAX_STOPS} stop strings, got {len(self.stop)}")
        if any(not s for s in self.stop):
            raise ParameterError("stop", "stop strings must not be empty")
        self.sampling.validate()


def parse_messages(text: str) -> tuple[dict[str, str], ...] | None:
    """The `messages` input: a JSON list of {"role", "content"}; "" means no messages."""
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ParameterError("messages", f"not valid JSON: {exc}") from exc
    if not isinstance(value, list) or not value:
        raise ParameterError("messages", "must be a non-empty JSON list of {role, content} objects")
    messages = []
    for i, item in enumerate(value):
        if not isinstance(item, dict) or not isinstance(item.get("role"), str):
            raise ParameterError("messages", f"item {i} must be an object with a string 'role'")
        content = item.get("content")
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise ParameterError("messages", f"item {i}: 'content' must be a string")
        messages.append({"role": item["role"], "content": content})
    return tuple(messages)


def parse_stop(text: str) -> tuple[str, ...]:
    """The `stop` input: a JSON list of up to MAX_STOPS strings; "" means none."""
    if not text:
        return ()
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ParameterError("stop", f"not valid JSON: {exc}") from exc
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise ParameterError("stop", "must be a JSON list of strings")
    return tuple(value)


def top_k_mask(logits: npt.NDArray[Any], k: int) -> BoolArray:
    """True for the k highest logits (all when k is 0 or covers the vocabulary)."""
    mask = np.zeros(logits.shape, dtype=bool)
    mask[_top_k(logits, k)] = True
    return mask


def top_p_mask(probs: npt.NDArray[Any], p: float) -> BoolArray:
    """True for the smallest set of most likely tokens whose probability sums to at least p."""
    mask = np.zeros(probs.shape, dtype=bool)
    mask[_nucleus(probs, p)] = True
    return mask


def _top_k(logits: npt.NDArray[Any], k: int) -> IntArray:
    if k <= 0 or k >= logits.size:
        return np.arange(logits.size)
    indices: IntArray = np.argpartition(-logits, k - 1)[:k]
    return indices


def _nucleus(probs: npt.NDArray[Any], p: float) -> IntArray:
    """Positions of the top-p set. Sorting the whole vocabulary costs ~10 ms per token, so only
    a head big enough to hold p is sorted (the head grows until it does)."""
    if p >= 1.0:
        return np.arange(probs.size)
    size = min(probs.size, 256)
    while True:
        head = np.argpartition(-probs, size - 1)[:size] if size < probs.size else np.arange(probs.size)
        head = head[np.argsort(-probs[head], kind="stable")]
        cumulative = np.cumsum(probs[head])
        if cumulative[-1] >= p or size == probs.size:
            kept: IntArray = head[: min(int(np.searchsorted(cumulative, p, side="left")) + 1, size)]
            return kept
        size = min(probs.size, size * 8)


def _kept(logits: FloatArray, sampling: Sampling) -> tuple[IntArray, npt.NDArray[np.float64]]:
    """The tokens that may be drawn and their temperature-scaled logits (top-k, then top-p)."""
    scaled = logits.astype(np.float64) / sampling.temperature
    tokens = _top_k(scaled, sampling.top_k)
    if sampling.top_p < 1.0:
        probs = np.exp(scaled[tokens] - scaled[tokens].max())
        tokens = tokens[_nucleus(probs / probs.sum(), sampling.top_p)]
    return tokens, scaled[tokens]


def sampling_distribution(logits: FloatArray, sampling: Sampling) -> npt.NDArray[np.float64]:
    """The distribution one sampled token is drawn from: temperature, then top-k, then top-p."""
    tokens, scores = _kept(logits, sampling)
    full = np.zeros(logits.size, dtype=np.float64)
    full[tokens] = np.exp(scores - scores.max())
    result: npt.NDArray[np.float64] = full / full.sum()
    return result


def pick_token(logits: FloatArray, sampling: Sampling, rng: np.random.Generator) -> int:
    """Greedy at temperature 0 (exactly argmax); else a Gumbel-max draw from the row's RNG.

    argmax(scaled logits + Gumbel noise) over the kept tokens samples their softmax exactly.
    The row's RNG gives one Gumbel per vocabulary entry per token, whatever was kept, so a
    seed replays; and a batch's float noise in the logits (~1e-4) changes the draw only when
    the two best noisy scores are that close. An inverse-CDF draw was measured to flip once in
    a few hundred tokens on SmolLM2: the noise of every token before the drawn one adds up in
    the cumulative sum.
    """
    if sampling.temperature == 0.0:
        return int(np.argmax(logits))
    noise = rng.gumbel(size=logits.size)
    tokens, scores = _kept(logits, sampling)
    return int(tokens[np.argmax(scores + noise[tokens])])


def first_stop(text: str, stops: Sequence[str]) -> int | None:
    """Index of the earliest stop string in text, if any."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


def held_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of text that could still grow into a stop string."""
    longest = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:k]):
                longest = k
                break
    return longest


class TextStream:
    """Stable text deltas from successive decodes of one row's whole token sequence.

    Decoding the whole sequence (not token by token) keeps merged and multi-byte tokens right;
    a trailing U+FFFD (an incomplete UTF-8 sequence) and any suffix that may be the start of a
    stop string are held back until the next token settles them. The concatenated deltas are
    the final text: everything before the first stop string.
    """

    def __init__(self, stops: Sequence[str] = ()) -> None:
        self.stops = tuple(stops)
        self.text = ""  # what has been emitted

    def advance(self, decoded: str) -> tuple[str, bool]:
        """(new stable text, whether a stop string ended the text)."""
        cut = first_stop(decoded, self.stops)
        if cut is not None:
            return self._emit(decoded[:cut]), True
        stable = decoded.rstrip(REPLACEMENT_CHAR)
        return self._emit(stable[: len(stable) - held_back(stable, self.stops)]), False

    def finish(self, decoded: str) -> str:
        """Everything not yet emitted: the sequence ended, nothing is held back any more."""
        cut = first_stop(decoded, self.stops)
        return self._emit(decoded if cut is None else decoded[:cut])

    def _emit(self, upto: str) -> str:
        # Emitted text is never taken back; a decode that rewrote earlier characters (no
        # tokenizer we serve does) would only lose those characters from the stream.
        if len(upto) <= len(self.text):
            return ""
        delta = upto[len(self.text) :]
        self.text = upto
        return delta


@dataclass(frozen=True)
class Completion:
    """One row after one decode step; finish_reason "" while it runs."""

    delta: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


class Row:
    """One sequence being generated: its limit, sampling, RNG, tokens and text. No Triton here."""

    def __init__(
        self,
        prompt_ids: list[int],
        limit: int,
        sampling: Sampling,
        stops: Sequence[str],
        incremental: bool,
        decode: Callable[[list[int]], str],
        eos_ids: set[int],
    ) -> None:
        self.prompt_ids = prompt_ids
        self.limit = limit
        self.sampling = sampling
        self.rng = sampling.rng()
        self.stream = TextStream(stops)
        # Decoding every step costs a tokenizer call; only streams and stop strings need it.
        self.incremental = incremental or bool(stops)
        self.decode = decode
        self.eos_ids = eos_ids
        self.tokens: list[int] = []
        self.finish_reason = ""

    @property
    def done(self) -> bool:
        return bool(self.finish_reason)

    @property
    def text(self) -> str:
        return self.stream.text

    def abandon(self) -> None:
        """Stop decoding this row (its request is answered or gone); its text stays as it is."""
        if not self.finish_reason:
            self.finish_reason = FINISH_ABANDONED

    def choose(self, logits: FloatArray) -> int:
        return pick_token(logits, self.sampling, self.rng)

    def accept(self, token: int) -> Completion:
        """Take the next token; EOS is not part of the text nor of completion_tokens."""
        if token in self.eos_ids:
            return self._finish(FINISH_STOP)
        self.tokens.append(token)
        delta = ""
        if self.incremental:
            delta, stopped = self.stream.advance(self.decode(self.tokens))
            if stopped:
                self.finish_reason = FINISH_STOP
                return self._completion(delta)
        if len(self.tokens) >= self.limit:
            return self._finish(FINISH_LENGTH, delta)
        return self._completion(delta)

    def _finish(self, reason: str, delta: str = "") -> Completion:
        self.finish_reason = reason
        return self._completion(delta + self.stream.finish(self.decode(self.tokens)))

    def _completion(self, delta: str) -> Completion:
        return Completion(delta, self.finish_reason, len(self.prompt_ids), len(self.tokens))


class Generator:
    """Batched decoding with the KV cache on an optimum `text-generation-with-past` export or
    on the fused graph of onnxruntime-genai's model builder (flotilla.json `padding_side`).

    optimum's graph: prompts of one batch are left-padded so every sequence's next token sits
    in the last column; position ids follow the attention mask so padding does not shift
    positions. The fused graph's GroupQueryAttention takes each row's length from the mask's
    sum (positions and KV slots included), so there prompts are right-padded and each row's
    first token is read at its own last prompt position. Each row samples with its own
    parameters and RNG and finishes on its own.
    """

    def __init__(self, session: Any, tokenizer: Any, meta: dict[str, Any]) -> None:
        self.session = session
        self.tokenizer = tokenizer
        gen = meta.get("generation", {})
        self.has_chat_template = bool(getattr(tokenizer, "chat_template", None))
        self.use_chat_template = bool(gen.get("chat_template", False)) and self.has_chat_template
        self.eos_ids = {int(i) for i in gen.get("eos_token_ids", [])}
        if tokenizer.eos_token_id is not None:
            self.eos_ids.add(int(tokenizer.eos_token_id))
        self.max_positions = int(gen.get("max_positions", 2048))
        # The context bounds max_tokens (flotilla.json's older `max_tokens_limit` is ignored).
        self.default_max_tokens = min(int(gen.get("default_max_tokens", DEFAULT_MAX_TOKENS)), self.max_positions - 1)
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.eos_ids or {0}))
        self.right_padded = gen.get("padding_side", "left") == "right"
        self.input_names = {i.name for i in session.get_inputs()}
        self.past_inputs = [i for i in session.get_inputs() if i.name.startswith("past_key_values")]
        self.output_names = [o.name for o in session.get_outputs()]
        self.past_dtype = np.float16 if self.past_inputs and "float16" in self.past_inputs[0].type else np.float32

    def _chat_ids(self, messages: Sequence[dict[str, str]]) -> list[int]:
        rendered = self.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
        return [int(i) for i in self.tokenizer(rendered, add_special_tokens=False)["input_ids"]]

    def prompt_ids(self, text: str, raw: bool = False) -> list[int]:
        """text as one user message when the model has a chat template, else (or raw) as is."""
        if self.use_chat_template and not raw:
            return self._chat_ids([{"role": "user", "content": text}])
        return [int(i) for i in self.tokenizer(text)["input_ids"]]

    def request_ids(self, request: GenerationRequest) -> list[int]:
        if request.messages is None:
            ids = self.prompt_ids(request.text, request.raw)
        elif not self.has_chat_template:
            raise ParameterError("messages", "this model has no chat template; send text_input with raw=true")
        else:
            try:
                ids = self._chat_ids(request.messages)
            except Exception as exc:  # a template's own raise_exception(), e.g. for an unknown role
                raise ParameterError("messages", f"the chat template refused them: {exc}") from exc
        if not ids:
            raise ParameterError("text_input", "the prompt is empty after tokenization")
        return ids

    def limit(self, max_tokens: int | None) -> int:
        requested = self.default_max_tokens if max_tokens is None else max_tokens
        return max(1, min(requested, self.max_positions - 1))

    def row(self, request: GenerationRequest) -> Row:
        """Validate and tokenize one request (raises ParameterError)."""
        request.validate()
        limit = self.limit(request.max_tokens)
        # Keep the end of an over-long prompt: that is where the question is.
        ids = self.request_ids(request)[-(self.max_positions - limit) :]
        return Row(ids, limit, request.sampling, request.stop, request.stream, self._decode, self.eos_ids)

    def _decode(self, tokens: list[int]) -> str:
        return str(self.tokenizer.decode(tokens, skip_special_tokens=True))

    def _feeds(self, ids: IntArray, mask: IntArray, positions: IntArray, past: dict[str, Any]) -> dict[str, Any]:
        feeds: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
        if "position_ids" in self.input_names:
            feeds["position_ids"] = positions
        batch = ids.shape[0]
        for spec in self.past_inputs:
            if spec.name in past:
                feeds[spec.name] = past[spec.name]
            else:
                heads, head_dim = spec.shape[1], spec.shape[3]
                feeds[spec.name] = np.zeros((batch, heads, 0, head_dim), dtype=self.past_dtype)
        return feeds

    def _step(
        self, ids: IntArray, mask: IntArray, positions: IntArray, past: dict[str, Any], last: IntArray | None = None
    ) -> tuple[FloatArray, dict[str, Any]]:
        """Logits at each row's `last` column (default: the final one) and the new KV cache."""
        outputs = self.session.run(self.output_names, self._feeds(ids, mask, positions, past))
        by_name = dict(zip(self.output_names, outputs, strict=True))
        present = {k.replace("present", "past_key_values", 1): v for k, v in by_name.items() if k.startswith("present")}
        logits = by_name["logits"]
        at = np.full(len(ids), logits.shape[1] - 1) if last is None else last
        return np.asarray(logits[np.arange(len(ids)), at, :], dtype=np.float32), present

    def _prefill(self, rows: Sequence[Row]) -> tuple[FloatArray, IntArray, IntArray, dict[str, Any]]:
        width = max(len(r.prompt_ids) for r in rows)
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        lengths = np.array([len(r.prompt_ids) for r in rows], dtype=np.int64)
        for i, r in enumerate(rows):
            cols = slice(0, lengths[i]) if self.right_padded else slice(width - lengths[i], width)
            ids[i, cols] = r.prompt_ids
            mask[i, cols] = 1
        positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None).astype(np.int64)
        logits, past = self._step(ids, mask, positions, {}, lengths - 1 if self.right_padded else None)
        # The next token's position is each row's length, whichever side the padding is on.
        return logits, mask, (lengths - 1)[:, None], past

    def decode(self, rows: Sequence[Row]) -> Iterator[list[Completion | None]]:
        """Decode all rows as one batch; after every step, each running row's Completion.

        A row that has finished gets None from then on (it still occupies its batch slot, fed
        padding, until the longest row is done).
        """
        if not rows:
            return
        logits, mask, positions, past = self._prefill(rows)
        while True:
            tokens = np.full(len(rows), self.pad_id, dtype=np.int64)
            events: list[Completion | None] = [None] * len(rows)
            for i, r in enumerate(rows):
                if not r.done:
                    tokens[i] = r.choose(logits[i])
                    events[i] = r.accept(int(tokens[i]))
            yield events
            if all(r.done for r in rows):
                return
            mask = np.concatenate([mask, np.ones((len(rows), 1), dtype=np.int64)], axis=1)
            positions = positions[:, -1:] + 1
            logits, past = self._step(tokens[:, None], mask, positions, past)

    def complete(self, requests: Sequence[GenerationRequest]) -> list[dict[str, Any]]:
        """Run requests to the end (no streaming): text, finish_reason and usage per request."""
        rows = [self.row(r) for r in requests]
        for _ in self.decode(rows):
            pass
        return [
            {
                "text_output": r.text,
                "finish_reason": r.finish_reason,
                "prompt_tokens": len(r.prompt_ids),
                "completion_tokens": len(r.tokens),
            }
            for r in rows
        ]

    def generate_ids(self, prompts: Sequence[list[int]], max_tokens: Sequence[int]) -> list[list[int]]:
        """Greedy continuation of each prompt, at most max_tokens[i] tokens, stopping at EOS."""
        rows = [
            Row(list(p), m, Sampling(), (), False, self._decode, self.eos_ids)
            for p, m in zip(prompts, max_tokens, strict=True)
        ]
        for _ in self.decode(rows):
            pass
        return [r.tokens for r in rows]

    def run(self, texts: Sequence[str], max_tokens: Sequence[int | None]) -> list[dict[str, Any]]:
        """Greedy, the way the optimizer and the Engine protocol call it."""
        return self.complete([GenerationRequest(text=t, max_tokens=m) for t, m in zip(texts, max_tokens, strict=True)])


class Embedder:
    """Sentence embeddings the sentence-transformers way: mean over real tokens, then L2."""

    def __init__(self, session: Any, tokenizer: Any, meta: dict[str, Any]) -> None:
        self.session = session
        self.tokenizer = tokenizer
        pooling = meta.get("pooling", {})
        self.mode = str(pooling.get("mode", "mean"))
        self.normalize = bool(pooling.get("normalize", True))
        self.max_length = int(meta.get("max_length", 256))
        self.input_names = {i.name for i in session.get_inputs()}
        self.output_name = session.get_outputs()[0].name

    def embed(self, texts: Sequence[str]) -> FloatArray:
        return self.embed_with_counts(texts)[0]

    def embed_with_counts(self, texts: Sequence[str]) -> tuple[FloatArray, IntArray]:
        """The vectors and each text's token count (special tokens included, after truncation)."""
        enc = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="np"
        )
        feeds = {k: np.asarray(v, dtype=np.int64) for k, v in enc.items() if k in self.input_names}
        hidden = np.asarray(self.session.run([self.output_name], feeds)[0], dtype=np.float32)
        counts: IntArray = np.asarray(enc["attention_mask"], dtype=np.int64).sum(axis=1)
        mask = feeds["attention_mask"][..., None].astype(np.float32)
        if self.mode == "cls":
            pooled = hidden[:, 0, :]
        else:
            pooled = (hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
        if self.normalize:
            pooled = pooled / np.clip(np.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12, None)
        return pooled.astype(np.float32), counts

    def run(self, texts: Sequence[str], max_tokens: Sequence[int | None]) -> list[dict[str, Any]]:
        vectors, counts = self.embed_with_counts(texts)
        return [{"embedding": row, "prompt_tokens": int(n)} for row, n in zip(vectors, counts, strict=True)]


class Classifier:
    """Sequence classification: softmax scores and the label with the highest score."""

    def __init__(self, session: Any, tokenizer: Any, meta: dict[str, Any]) -> None:
        self.session = session
        self.tokenizer = tokenizer
        self.labels = [str(x) for x in meta.get("labels", [])]
        self.max_length = int(meta.get("max_length", 256))
        self.input_names = {i.name for i in session.get_inputs()}

    def scores(self, texts: Sequence[str]) -> FloatArray:
        enc = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="np"
        )
        feeds = {k: np.asarray(v, dtype=np.int64) for k, v in enc.items() if k in self.input_names}
        logits = np.asarray(self.session.run(["logits"], feeds)[0], dtype=np.float32)
        return _softmax(logits)

    def run(self, texts: Sequence[str], max_tokens: Sequence[int | None]) -> list[dict[str, Any]]:
        results = []
        for row in self.scores(texts):
            best = int(row.argmax())
            label = self.labels[best] if best < len(self.labels) else f"LABEL_{best}"
            results.append({"label": label, "scores": row})
        return results


ENGINES: dict[str, type[Generator] | type[Embedder] | type[Classifier]] = {
    "text-generation": Generator,
    "feature-extraction": Embedder,
    "text-classification": Classifier,
}


def read_metadata(model_dir: Path) -> dict[str, Any]:
    meta: dict[str, Any] = json.loads((model_dir / METADATA_FILE).read_text())
    return meta


def choose_provider(requested: str, meta: dict[str, Any], on_gpu: bool) -> str:
    """'auto': the artifact's preferred GPU provider on a GPU instance, else CPU."""
    if requested and requested != "auto":
        return requested
    return str(meta.get("gpu_provider", "CUDAExecutionProvider")) if on_gpu else CPU


def load_engine(
    model_dir: Path, provider: str = "auto", intra_op_threads: int = 0, on_gpu: bool = False, device_id: int = 0
) -> Generator | Embedder | Classifier:
    """The engine for the artifact version directory `model_dir` (the one holding model.py)."""
    meta = read_metadata(model_dir)
    session = make_session(
        model_dir / str(meta.get("onnx", "model.onnx")),
        choose_provider(provider, meta, on_gpu),
        intra_op_threads,
        device_id,
    )
    return ENGINES[str(meta["task"])](session, load_tokenizer(model_dir), meta)


# Triton's python backend only from here on. `triton_python_backend_utils` exists inside the
# backend's stub process, so it is imported there and nowhere else.

# How often (decode steps) execute() asks whether clients gave up: an IPC round trip per request.
CANCEL_CHECK_STEPS = 8

OUTPUT_TYPES: dict[str, Any] = {
    "text_output": np.object_,
    "finish_reason": np.object_,
    "prompt_tokens": np.int32,
    "completion_tokens": np.int32,
    "label": np.object_,
    "embedding": np.float32,
    "scores": np.float32,
}


def _as_texts(values: npt.NDArray[Any]) -> list[str]:
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values.reshape(-1)]


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _column(pb: Any, request: Any, name: str, rows: int, convert: Callable[[Any], Any], default: Any) -> list[Any]:
    """An optional input as one value per text: absent -> default, one value -> every text."""
    tensor = pb.get_input_tensor_by_name(request, name)
    if tensor is None:
        return [default] * rows
    values = list(tensor.as_numpy().reshape(-1))
    if len(values) == 1:
        values *= rows
    if len(values) != rows:
        raise ParameterError(name, f"has {len(values)} values for {rows} texts")
    try:
        return [convert(v) for v in values]
    except (TypeError, ValueError, OverflowError) as exc:
        raise ParameterError(name, str(exc)) from exc


def read_generation(pb: Any, request: Any) -> list[GenerationRequest]:
    """The generate tensors of one Triton request, one GenerationRequest per text (validated)."""
    tensor = pb.get_input_tensor_by_name(request, "text_input")
    if tensor is None:
        raise ParameterError("text_input", "is required")
    texts = _as_texts(tensor.as_numpy())
    n = len(texts)
    if n == 0:
        raise ParameterError("text_input", "has no text")

    def column(name: str, convert: Callable[[Any], Any], default: Any) -> list[Any]:
        return _column(pb, request, name, n, convert, default)

    messages = column("messages", lambda v: parse_messages(_text(v)), None)
    stops = column("stop", lambda v: parse_stop(_text(v)), ())
    raw, stream = column("raw", bool, False), column("stream", bool, False)
    max_tokens = column("max_tokens", int, None)
    temperature, top_p = column("temperature", float, 0.0), column("top_p", float, 1.0)
    top_k, seed = column("top_k", int, 0), column("seed", int, None)
    if any(stream) and n != 1:
        raise ParameterError("stream", f"a streaming request carries one text_input, got {n}")
    requests = [
        GenerationRequest(
            text=texts[i],
            messages=messages[i],
            raw=raw[i],
            max_tokens=max_tokens[i],
            sampling=Sampling(temperature[i], top_p[i], top_k[i], seed[i]),
            stop=stops[i],
            stream=stream[i],
        )
        for i in range(n)
    ]
    for r in requests:
        r.validate()
    return requests


@dataclass
class _Job:
    """The rows of one Triton request inside the batch: rows[start:start + count]."""

    index: int
    rows: list[Row]
    start: int
    stream: bool
    answered: bool = False

    def close(self) -> None:
        """Answered (or given up): its rows stop decoding, the batch's others go on."""
        self.answered = True
        for r in self.rows:
            r.abandon()


def _drop_cancelled(jobs: Sequence[_Job], replies: _Replies) -> None:
    for job in jobs:
        if not job.answered and replies.cancelled(job.index):
            job.close()
            replies.error(job.index, "the request was cancelled", "CANCELLED")


class _Replies:
    """Where the responses of one execute() go: each request's response sender when the model
    is decoupled (streams, and early answers for requests that finish first), else the list
    execute() returns."""

    def __init__(self, pb: Any, requests: Sequence[Any], decoupled: bool) -> None:
        self.pb = pb
        self.decoupled = decoupled
        self.senders = [r.get_response_sender() for r in requests] if decoupled else []
        self.responses: list[Any] = [None] * len(requests)

    def chunk(self, index: int, response: Any) -> bool:
        return self._send(index, response, 0)

    def final(self, index: int, response: Any) -> bool:
        if not self.decoupled:
            self.responses[index] = response
            return True
        # The last response and the final flag in one send: /generate (not streaming) requires
        # exactly one response, and one message is one IPC round trip less.
        return self._send(index, response, self.pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def _send(self, index: int, response: Any, flags: int) -> bool:
        """False when this request's response could not be sent (its sender closed): that
        request is dropped, the batch goes on. A transport problem is not the model's failure."""
        try:
            self.senders[index].send(response, flags=flags)
        except Exception as exc:
            print(f"flotilla model.py: dropping a request, sending its response failed: {exc}", file=sys.stderr)
            return False
        return True

    def error(self, index: int, message: str, code: str = "INVALID_ARG") -> bool:
        # INVALID_ARG: the HTTP frontend answers 400 (the client's mistake), not 500.
        value = getattr(self.pb.TritonError, code, None)
        error = self.pb.TritonError(message) if value is None else self.pb.TritonError(message, value)
        return self.final(index, self.pb.InferenceResponse(error=error))

    def cancelled(self, index: int) -> bool:
        """Whether the client gave up on this request (Triton 2.51's sender knows)."""
        check = getattr(self.senders[index], "is_cancelled", None) if self.decoupled else None
        return bool(check()) if check is not None else False

    def returned(self) -> list[Any] | None:
        # A decoupled model's execute must return None.
        return None if self.decoupled else self.responses


def _generation_result(completion: Completion, text: str | None = None) -> dict[str, Any]:
    return {
        "text_output": completion.delta if text is None else text,
        "finish_reason": completion.finish_reason,
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion.completion_tokens,
    }


def _row_result(row: Row) -> dict[str, Any]:
    return {
        "text_output": row.text,
        "finish_reason": row.finish_reason,
        "prompt_tokens": len(row.prompt_ids),
        "completion_tokens": len(row.tokens),
    }


class TritonPythonModel:
    """Triton entry point. Requests of one execute() call run as one batch.

    Concurrent executions (several instances) share nothing but the engine: everything about
    a request lives in locals of execute().
    """

    def initialize(self, args: dict[str, str]) -> None:
        import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]

        self.pb = pb_utils
        config = json.loads(args["model_config"])
        params = {k: str(v.get("string_value", "")) for k, v in config.get("parameters", {}).items()}
        self.batching = int(config.get("max_batch_size", 0)) > 0
        self.decoupled = bool(config.get("model_transaction_policy", {}).get("decoupled", False))
        on_gpu = args.get("model_instance_kind", "CPU").upper() == "GPU"
        self.engine = load_engine(
            Path(__file__).resolve().parent,
            provider=params.get("execution_provider", "auto"),
            intra_op_threads=int(params.get("intra_op_threads", "0") or 0),
            on_gpu=on_gpu,
            device_id=int(args.get("model_instance_device_id", "0") or 0),
        )

    def _response(self, results: list[dict[str, Any]]) -> Any:
        tensors = []
        for name in results[0]:
            dtype = OUTPUT_TYPES[name]
            if dtype is np.object_:
                array = np.array([[r[name].encode("utf-8")] for r in results], dtype=np.object_)
            elif np.ndim(results[0][name]) == 0:
                array = np.array([[r[name]] for r in results], dtype=dtype)  # dims [1] per text
            else:
                array = np.stack([np.asarray(r[name], dtype=dtype) for r in results])
            if not self.batching:
                array = array[0]
            tensors.append(self.pb.Tensor(name, array))
        return self.pb.InferenceResponse(output_tensors=tensors)

    def execute(self, requests: list[Any]) -> list[Any] | None:
        if isinstance(self.engine, Generator):
            replies = _Replies(self.pb, requests, self.decoupled)
            self._generate(requests, replies)
            return replies.returned()
        return self._encode(requests)

    def _jobs(self, requests: list[Any], replies: _Replies, engine: Generator) -> list[_Job]:
        """Every well-formed request as a job; the others answered with their error at once."""
        jobs: list[_Job] = []
        start = 0
        for index, request in enumerate(requests):
            try:
                wanted = read_generation(self.pb, request)
                if wanted[0].stream and not self.decoupled:
                    raise ParameterError("stream", "this model is not decoupled; use /generate, not streaming")
                rows = [engine.row(w) for w in wanted]
            except Exception as exc:  # a malformed request fails alone, not its batch
                replies.error(index, str(exc) if isinstance(exc, ParameterError) else f"bad request: {exc}")
                continue
            jobs.append(_Job(index, rows, start, wanted[0].stream))
            start += len(rows)
        return jobs

    def _generate(self, requests: list[Any], replies: _Replies) -> None:
        engine = self.engine
        assert isinstance(engine, Generator)
        jobs = self._jobs(requests, replies, engine)
        try:
            for step, events in enumerate(engine.decode([r for job in jobs for r in job.rows]), start=1):
                for job in jobs:
                    self._deliver(job, events[job.start : job.start + len(job.rows)], replies)
                if step % CANCEL_CHECK_STEPS == 0:
                    _drop_cancelled(jobs, replies)
        except Exception as exc:
            # Raised, not sent as error responses: Triton 2.51 counts an error response as a
            # success and only an exception from execute in nv_inference_request_failure, which
            # the canary judge reads; in decoupled mode too (the stub reports the exception for
            # the whole batch and the backend answers every request not yet answered). A
            # malformed request (above) stays a per-request error: the client's mistake.
            raise RuntimeError(f"inference failed: {exc}") from exc

    def _deliver(self, job: _Job, events: list[Completion | None], replies: _Replies) -> None:
        """After one decode step: a stream's new text, or a request's answer once all its rows end."""
        if job.answered:
            return
        if job.stream:
            event = events[0]
            if event is None or not (event.delta or event.finish_reason):
                return  # this step's text is held back (partial character or stop string)
            response = self._response([_generation_result(event)])
            sent = replies.final(job.index, response) if event.finish_reason else replies.chunk(job.index, response)
            if event.finish_reason or not sent:
                job.close()
        elif all(r.done for r in job.rows):
            job.close()
            replies.final(job.index, self._response([_row_result(r) for r in job.rows]))

    def _encode(self, requests: list[Any]) -> list[Any]:
        """Embeddings and classification: every text of every request in one engine run."""
        parsed: list[list[str] | None] = []
        errors: list[str | None] = []
        for request in requests:
            try:
                parsed.append(_as_texts(self.pb.get_input_tensor_by_name(request, "text").as_numpy()))
                errors.append(None)
            except Exception as exc:  # a malformed request fails alone, not its batch
                parsed.append(None)
                errors.append(f"bad request: {exc}")
        texts = [t for p in parsed if p for t in p]
        try:
            results = self.engine.run(texts, [None] * len(texts)) if texts else []
        except Exception as exc:
            # Raised, not returned as error responses: see _generate.
            raise RuntimeError(f"inference failed: {exc}") from exc
        responses = []
        cursor = 0
        for p, error in zip(parsed, errors, strict=True):
            if p is None:
                responses.append(self.pb.InferenceResponse(error=self.pb.TritonError(error or "bad request")))
                continue
            responses.append(self._response(results[cursor : cursor + len(p)]))
            cursor += len(p)
        return responses

    def finalize(self) -> None:
        self.engine = None  # type: ignore[assignment]
