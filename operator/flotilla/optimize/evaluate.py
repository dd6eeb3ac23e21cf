"""Measure candidates against the fp32 reference: accuracy on held-out text, and speed.

Accuracy is compared position by position on the same token sequences, so it needs no labels:
- text-generation: top-1 next-token agreement, mean KL(fp32 || candidate), perplexity ratio
  (candidate perplexity / fp32 perplexity on the text itself);
- feature-extraction: mean cosine similarity of the sentence embeddings (the served pooling);
- text-classification: label agreement (top-1) and mean KL of the class distributions.

Speed is measured from the saved artifacts, interleaved round by round, keeping each one's
best time: on a shared machine that is the least noisy estimate, and it never favours the
candidate that happened to run while something else was idle. Each round opens one session
at a time and frees it before the next, so memory holds one candidate, not all of them.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from flotilla.triton import python_model

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
PREFILL_TOKENS = 128
DECODE_PROMPT = 16
DECODE_STEPS = 32


@dataclass
class AccuracyFigures:
    top1_agreement: float | None = None
    kl_divergence: float | None = None
    perplexity_ratio: float | None = None
    cosine_similarity: float | None = None


@dataclass
class SpeedFigures:
    """Seconds (best of the rounds) and decode tokens/s; None where the task has no such phase."""

    prefill_b1_s: float
    prefill_b8_s: float
    decode_tokens_per_s: float | None = None


def session(onnx_path: Path, threads: int = 0) -> Any:
    return python_model.make_session(onnx_path, python_model.CPU, threads)


def _log_softmax(x: F32) -> F32:
    shifted = x - x.max(axis=-1, keepdims=True)
    result: F32 = (shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))).astype(np.float32)
    return result


def _batches(items: Sequence[list[int]], size: int) -> list[list[list[int]]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def _pad_right(batch: Sequence[list[int]], pad: int) -> tuple[I64, I64]:
    width = max(len(s) for s in batch)
    ids = np.full((len(batch), width), pad, dtype=np.int64)
    mask = np.zeros((len(batch), width), dtype=np.int64)
    for row, seq in enumerate(batch):
        ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
    return ids, mask


def decoder_feeds(sess: Any, ids: I64, mask: I64) -> dict[str, Any]:
    """Inputs for a full forward pass with an empty KV cache."""
    feeds: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
    names = {i.name for i in sess.get_inputs()}
    if "position_ids" in names:
        feeds["position_ids"] = np.clip(np.cumsum(mask, axis=1) - 1, 0, None).astype(np.int64)
    for spec in sess.get_inputs():
        if spec.name.startswith("past_key_values"):
            dtype = np.float16 if "float16" in spec.type else np.float32
            feeds[spec.name] = np.zeros((ids.shape[0], spec.shape[1], 0, spec.shape[3]), dtype=dtype)
    return feeds


def _decoder_logits(sess: Any, ids: I64, mask: I64) -> F32:
    return np.asarray(sess.run(["logits"], decoder_feeds(sess, ids, mask))[0], dtype=np.float32)


def compare_decoders(
    reference: Any, candidates: dict[str, Any], sequences: Sequence[list[int]], pad: int, batch: int = 8
) -> dict[str, AccuracyFigures]:
    """Teacher-forced comparison of next-token distributions on `sequences` (token ids)."""
    agree = {n: 0.0 for n in candidates}
    kl = {n: 0.0 for n in candidates}
    nll = {n: 0.0 for n in candidates}
    ref_nll = 0.0
    positions = 0
    for chunk in _batches(sequences, batch):
        ids, mask = _pad_right(chunk, pad)
        # Position t predicts token t+1: only positions with a real next token count.
        valid = (mask[:, 1:] == 1).astype(bool)
        targets = ids[:, 1:][valid]
        ref = _log_softmax(_decoder_logits(reference, ids, mask)[:, :-1][valid])
        ref_top = ref.argmax(axis=-1)
        ref_nll += float(-ref[np.arange(len(targets)), targets].sum())
        positions += len(targets)
        for name, sess in candidates.items():
            cand = _log_softmax(_decoder_logits(sess, ids, mask)[:, :-1][valid])
            agree[name] += float((cand.argmax(axis=-1) == ref_top).sum())
            kl[name] += float((np.exp(ref) * (ref - cand)).sum())
            nll[name] += float(-cand[np.arange(len(targets)), targets].sum())
    n = max(positions, 1)
    return {
        name: AccuracyFigures(
            top1_agreement=agree[name] / n,
            kl_divergence=kl[name] / n,
            perplexity_ratio=float(np.exp((nll[name] - ref_nll) / n)),
        )
        for name in candidates
    }


def compare_embedders(
    reference: Any, candidates: dict[str, Any], texts: Sequence[str], batch: int = 16
) -> dict[str, AccuracyFigures]:
    """Mean cosine similarity of each text's embedding to the reference's (engines normalise)."""
    sims: dict[str, list[float]] = {n: [] for n in candidates}
    for i in range(0, len(texts), batch):
        chunk = texts[i : i + batch]
        ref = reference.embed(chunk)
        ref = ref / np.clip(np.linalg.norm(ref, axis=-1, keepdims=True), 1e-12, None)
        for name, engine in candidates.items():
            cand = engine.embed(chunk)
            cand = cand / np.clip(np.linalg.norm(cand, axis=-1, keepdims=True), 1e-12, None)
            sims[name].extend(float(x) for x in (ref * cand).sum(axis=-1))
    return {name: AccuracyFigures(cosine_similarity=float(np.mean(v))) for name, v in sims.items()}


def compare_classifiers(
    reference: Any, candidates: dict[str, Any], texts: Sequence[str], batch: int = 16
) -> dict[str, AccuracyFigures]:
    agree = {n: 0.0 for n in candidates}
    kl = {n: 0.0 for n in candidates}
    for i in range(0, len(texts), batch):
        chunk = texts[i : i + batch]
        ref = np.clip(reference.scores(chunk), 1e-12, None)
        for name, engine in candidates.items():
            cand = np.clip(engine.scores(chunk), 1e-12, None)
            agree[name] += float((cand.argmax(-1) == ref.argmax(-1)).sum())
            kl[name] += float((ref * (np.log(ref) - np.log(cand))).sum())
    n = max(len(texts), 1)
    return {name: AccuracyFigures(top1_agreement=agree[name] / n, kl_divergence=kl[name] / n) for name in candidates}


def _random_ids(batch: int, length: int, vocab: int, seed: int) -> I64:
    # Skip the low ids: special tokens there can change what a model does with the rest.
    return np.random.default_rng(seed).integers(min(100, vocab - 1), vocab, (batch, length)).astype(np.int64)


def _time(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _decode_loop(sess: Any, vocab: int) -> float:
    """Seconds for DECODE_STEPS greedy steps at batch 1 after a short prompt (prefill excluded)."""
    ids = _random_ids(1, DECODE_PROMPT, vocab, 1)
    mask = np.ones_like(ids)
    outputs = [o.name for o in sess.get_outputs()]
    result = dict(zip(outputs, sess.run(outputs, decoder_feeds(sess, ids, mask)), strict=True))
    t0 = time.perf_counter()
    for _ in range(DECODE_STEPS):
        nxt = result["logits"][:, -1:].argmax(-1).astype(np.int64)
        mask = np.ones((1, mask.shape[1] + 1), dtype=np.int64)
        feeds: dict[str, Any] = {"input_ids": nxt, "attention_mask": mask}
        feeds.update(
            {k.replace("present", "past_key_values", 1): v for k, v in result.items() if k.startswith("present")}
        )
        if "position_ids" in {i.name for i in sess.get_inputs()}:
            feeds["position_ids"] = np.array([[mask.shape[1] - 1]], dtype=np.int64)
        result = dict(zip(outputs, sess.run(outputs, feeds), strict=True))
    return time.perf_counter() - t0


def _encoder_feeds(sess: Any, ids: I64) -> dict[str, Any]:
    feeds: dict[str, Any] = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    if "token_type_ids" in {i.name for i in sess.get_inputs()}:
        feeds["token_type_ids"] = np.zeros_like(ids)
    return feeds


def measure_speed(
    openers: Mapping[str, Callable[[], Any]],
    task: str,
    vocab: int,
    rounds: int = 3,
    on_round: Callable[[int], None] | None = None,
) -> dict[str, SpeedFigures]:
    """Best-of-`rounds` prefill (batch 1 and 8, 128 tokens) and decode speed of every model;
    `openers` open each one's session (from its saved artifact), called once per round."""
    decoder = task == "text-generation"
    inputs = {b: _random_ids(b, PREFILL_TOKENS, vocab, b) for b in (1, 8)}
    best: dict[str, dict[str, float]] = {n: {} for n in openers}

    def run(sess: Any, batch: int) -> None:
        ids = inputs[batch]
        feeds = decoder_feeds(sess, ids, np.ones_like(ids)) if decoder else _encoder_feeds(sess, ids)
        sess.run([sess.get_outputs()[0].name], feeds)

    for r in range(rounds):
        for name, open_session in openers.items():
            sess = open_session()
            run(sess, 1)  # warm-up: first runs allocate and pre-pack weights
            figures = {
                "prefill_b1_s": _time(functools.partial(run, sess, 1)),
                "prefill_b8_s": _time(functools.partial(run, sess, 8)),
            }
            if decoder:
                figures["decode_s"] = _decode_loop(sess, vocab)
            del sess  # freed before the next model opens
            for key, value in figures.items():
                best[name][key] = min(value, best[name].get(key, float("inf")))
        if on_round:
            on_round(r + 1)
    return {
        name: SpeedFigures(
            prefill_b1_s=b["prefill_b1_s"],
            prefill_b8_s=b["prefill_b8_s"],
            decode_tokens_per_s=DECODE_STEPS / b["decode_s"] if "decode_s" in b else None,
        )
        for name, b in best.items()
    }
