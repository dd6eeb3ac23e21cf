"""Known answers for the gate's metrics (optimize/evaluate.py), computed by hand on tiny inputs:
top-1 agreement, KL(fp32 || candidate), perplexity ratio, cosine similarity, label agreement."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from flotilla.optimize import evaluate


@dataclass
class Input:
    name: str
    type: str = "tensor(int64)"


class TableDecoder:
    """An ONNX-session stand-in whose next-token log-probabilities depend only on the current
    token: logits[b, t] = log(table[ids[b, t]])."""

    def __init__(self, table: list[list[float]]) -> None:
        self.log_table = np.log(np.asarray(table, dtype=np.float64))

    def get_inputs(self) -> list[Input]:
        return [Input("input_ids"), Input("attention_mask")]

    def run(self, outputs: list[str], feeds: dict[str, Any]) -> list[Any]:
        assert outputs == ["logits"]
        return [self.log_table[feeds["input_ids"]].astype(np.float32)]


REFERENCE = [[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [1 / 3, 1 / 3, 1 / 3]]
CANDIDATE = [[0.2, 0.7, 0.1], [0.1, 0.3, 0.6], [1 / 3, 1 / 3, 1 / 3]]


def test_decoder_metrics_match_the_hand_computed_values() -> None:
    # One sequence 0 -> 1 -> 2: position 0 (token 0) predicts 1, position 1 (token 1) predicts 2.
    # Position 0: fp32's top token is 0, the candidate's is 1 (disagree); position 1: identical.
    figures = evaluate.compare_decoders(TableDecoder(REFERENCE), {"c": TableDecoder(CANDIDATE)}, [[0, 1, 2]], pad=0)[
        "c"
    ]
    assert figures.top1_agreement == pytest.approx(0.5)
    # KL(p || q) at position 0 = 0.7 ln(0.7/0.2) + 0.2 ln(0.2/0.7) + 0.1 ln 1 = 0.5 ln 3.5; 0 at position 1.
    assert figures.kl_divergence == pytest.approx(0.5 * math.log(3.5) / 2, rel=1e-5)
    # NLL of the real next tokens: fp32 -ln 0.2 - ln 0.6, candidate -ln 0.7 - ln 0.6, over 2 positions.
    assert figures.perplexity_ratio == pytest.approx(math.sqrt(0.2 / 0.7), rel=1e-5)


def test_identical_decoders_agree_fully_and_padding_is_not_counted() -> None:
    # Two sequences of different length in one batch: the pad positions predict nothing.
    same = evaluate.compare_decoders(
        TableDecoder(REFERENCE), {"same": TableDecoder(REFERENCE)}, [[0, 1, 2], [1, 0]], pad=2
    )["same"]
    assert (same.top1_agreement, same.perplexity_ratio) == (pytest.approx(1.0), pytest.approx(1.0))
    assert same.kl_divergence == pytest.approx(0.0, abs=1e-6)
    # 3 real positions: (0->1 disagree), (1->2 agree), (1->0 agree).
    other = evaluate.compare_decoders(
        TableDecoder(REFERENCE), {"c": TableDecoder(CANDIDATE)}, [[0, 1, 2], [1, 0]], pad=2
    )["c"]
    assert other.top1_agreement == pytest.approx(2 / 3)
    assert other.kl_divergence == pytest.approx(0.5 * math.log(3.5) / 3, rel=1e-5)


class Embedder:
    def __init__(self, vectors: list[list[float]]) -> None:
        self.vectors = np.asarray(vectors, dtype=np.float64)

    def embed(self, texts: list[str]) -> Any:
        return self.vectors[[int(t) for t in texts]]


def test_cosine_similarity_is_the_mean_over_texts() -> None:
    reference = Embedder([[1.0, 0.0], [0.0, 2.0]])
    candidate = Embedder([[1.0, 1.0], [0.0, 3.0]])  # 45 degrees off, then the same direction
    figures = evaluate.compare_embedders(reference, {"c": candidate}, ["0", "1"])["c"]
    assert figures.cosine_similarity == pytest.approx((1 / math.sqrt(2) + 1.0) / 2)


class Classifier:
    def __init__(self, scores: list[list[float]]) -> None:
        self.table = np.asarray(scores, dtype=np.float64)

    def scores(self, texts: list[str]) -> Any:
        return self.table[[int(t) for t in texts]]


def test_label_agreement_and_kl_of_a_classifier() -> None:
    reference = Classifier([[0.9, 0.1], [0.4, 0.6]])
    candidate = Classifier([[0.6, 0.4], [0.7, 0.3]])  # same label, then the other one
    figures = evaluate.compare_classifiers(reference, {"c": candidate}, ["0", "1"])["c"]
    assert figures.top1_agreement == pytest.approx(0.5)
    kl_first = 0.9 * math.log(0.9 / 0.6) + 0.1 * math.log(0.1 / 0.4)
    kl_second = 0.4 * math.log(0.4 / 0.7) + 0.6 * math.log(0.6 / 0.3)
    assert figures.kl_divergence == pytest.approx((kl_first + kl_second) / 2, rel=1e-6)
