"""The accuracy gate and the auto pick (pure)."""

from __future__ import annotations

from flotilla.api.v1alpha1 import AccuracyBudget
from flotilla.optimize.evaluate import AccuracyFigures, SpeedFigures
from flotilla.optimize.select import Candidate, attach_speedups, gate, pick, table

REFERENCE = SpeedFigures(prefill_b1_s=1.0, prefill_b8_s=8.0, decode_tokens_per_s=10.0)


def candidate(name: str, top1: float, ppl: float, speed: SpeedFigures, size: int = 100) -> Candidate:
    c = Candidate(
        name, "int4", size, AccuracyFigures(top1_agreement=top1, kl_divergence=0.01, perplexity_ratio=ppl), speed
    )
    attach_speedups(c, REFERENCE, 400)
    c.violations = gate("text-generation", c.accuracy, AccuracyBudget())
    return c


def test_gate_per_task() -> None:
    budget = AccuracyBudget(max_top1_disagreement=0.03, max_perplexity_increase=0.05, min_cosine_similarity=0.99)
    assert gate("text-generation", AccuracyFigures(top1_agreement=0.97, perplexity_ratio=1.05), budget) == []
    assert len(gate("text-generation", AccuracyFigures(top1_agreement=0.96, perplexity_ratio=1.06), budget)) == 2
    assert gate("feature-extraction", AccuracyFigures(cosine_similarity=0.995), budget) == []
    assert gate("feature-extraction", AccuracyFigures(cosine_similarity=0.98), budget) == ["cosine 0.9800 < 0.9900"]
    assert gate("text-classification", AccuracyFigures(top1_agreement=0.9), budget) != []


def test_pick_is_the_fastest_request_within_budget() -> None:
    fast_wrong = candidate("fast", 0.90, 1.0, SpeedFigures(0.5, 4.0, 40.0))
    decode_fast = candidate("decode", 0.98, 1.0, SpeedFigures(1.2, 9.0, 20.0))
    prefill_fast = candidate("prefill", 0.99, 1.0, SpeedFigures(0.6, 5.0, 11.0))
    assert not fast_wrong.within_budget
    # 64 generated tokens dominate a request: the decode-fast candidate wins.
    assert decode_fast.request_speedup is not None and prefill_fast.request_speedup is not None
    assert decode_fast.request_speedup > prefill_fast.request_speedup
    assert pick([fast_wrong, decode_fast, prefill_fast]) is decode_fast
    assert pick([fast_wrong]) is None
    assert decode_fast.size_ratio == 0.25


def test_table_lists_every_candidate() -> None:
    text = table([candidate("a", 0.99, 1.0, REFERENCE), candidate("b", 0.5, 2.0, REFERENCE)])
    lines = text.splitlines()
    assert lines[0].startswith("recipe") and lines[1].startswith("a ") and lines[1].endswith("yes")
    assert lines[2].startswith("b ") and lines[2].endswith("no")


def test_the_gate_fails_closed_on_a_figure_it_names_but_did_not_get() -> None:
    budget = AccuracyBudget()
    within = AccuracyFigures(top1_agreement=0.99, kl_divergence=0.01, perplexity_ratio=1.01)
    assert gate("text-generation", within, budget) == []  # a correct gate must accept this
    no_ppl = AccuracyFigures(top1_agreement=0.99, kl_divergence=0.01)
    assert gate("text-generation", no_ppl, budget) == ["perplexity ratio was not measured"]
    nan_top1 = AccuracyFigures(top1_agreement=float("nan"), perplexity_ratio=1.0)
    assert gate("text-generation", nan_top1, budget) == ["top-1 agreement is nan, not a number"]
    assert gate("text-classification", AccuracyFigures(), budget) == ["top-1 agreement was not measured"]
    assert gate("feature-extraction", AccuracyFigures(cosine_similarity=float("inf")), budget) == [
        "cosine similarity is inf, not a number"
    ]
    assert gate("feature-extraction", AccuracyFigures(top1_agreement=1.0), budget) == [
        "cosine similarity was not measured"
    ]
    assert gate("text-to-image", within, budget) == ["no accuracy gate for task 'text-to-image'"]


def test_max_kl_divergence_gates_only_when_set() -> None:
    figures = AccuracyFigures(top1_agreement=0.99, kl_divergence=0.08, perplexity_ratio=1.01)
    assert gate("text-generation", figures, AccuracyBudget()) == []  # measured, not gated by default
    assert gate("text-generation", figures, AccuracyBudget(max_kl_divergence=0.08)) == []  # the limit passes
    assert gate("text-generation", figures, AccuracyBudget(max_kl_divergence=0.05)) == ["KL divergence 0.0800 > 0.0500"]
    unmeasured = AccuracyFigures(top1_agreement=1.0, perplexity_ratio=1.0)
    assert gate("text-generation", unmeasured, AccuracyBudget(max_kl_divergence=1.0)) == [
        "KL divergence was not measured"
    ]
    labels = AccuracyFigures(top1_agreement=1.0, kl_divergence=0.2)
    assert gate("text-classification", labels, AccuracyBudget(max_kl_divergence=0.1)) == [
        "KL divergence 0.2000 > 0.1000"
    ]


def test_wilson_lower_bound_matches_the_textbook_value() -> None:
    from flotilla.optimize.select import wilson_lower

    # 50 of 100 at z = 1.96: the Wilson interval is (0.4038, 0.5962).
    assert abs(wilson_lower(0.5, 100, z=1.96) - 0.4038) < 1e-4
    assert wilson_lower(0.0, 300) == 0.0 and wilson_lower(0.3, 0) == 0.0


def test_screening_drops_only_what_clearly_cannot_pass() -> None:
    from flotilla.optimize.select import hopeless

    budget = AccuracyBudget()  # top-1 disagreement <= 0.03, perplexity <= +5%
    broken = AccuracyFigures(top1_agreement=0.385, kl_divergence=1.04, perplexity_ratio=1.98)  # int8 dynamic
    assert len(hopeless("text-generation", broken, 300, budget)) == 2
    # 0.047 observed on 300 positions: could still be <= 0.03 over the full set, so it is kept
    # for the full gate (which then refuses it on its own figures).
    near = AccuracyFigures(top1_agreement=0.953, kl_divergence=0.006, perplexity_ratio=1.004)
    assert hopeless("text-generation", near, 300, budget) == []
    assert gate("text-generation", near, budget) != []
    # The same observed rate on 3,000 positions is no longer plausible.
    assert hopeless("text-generation", near, 3000, budget) != []
    clearly_off = AccuracyFigures(top1_agreement=0.90, perplexity_ratio=1.01)
    assert hopeless("text-generation", clearly_off, 300, budget)[0].startswith("top-1 disagreement 0.100 on 300")
    assert hopeless("text-generation", AccuracyFigures(top1_agreement=1.0, perplexity_ratio=1.12), 300, budget) == []
    assert hopeless("text-generation", AccuracyFigures(top1_agreement=1.0, perplexity_ratio=1.16), 300, budget)
    assert hopeless("text-generation", AccuracyFigures(), 300, budget) == []  # missing: the full gate decides
    assert hopeless("feature-extraction", AccuracyFigures(cosine_similarity=0.98), 32, budget) == []
    assert hopeless("feature-extraction", AccuracyFigures(cosine_similarity=0.96), 32, budget)
    kl_budget = AccuracyBudget(max_kl_divergence=0.01)
    assert hopeless("text-classification", AccuracyFigures(top1_agreement=1.0, kl_divergence=0.05), 32, kl_budget)
