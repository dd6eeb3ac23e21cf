"""The accuracy gate and the pick: pure functions over measured candidates."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from flotilla.api.v1alpha1 import AccuracyBudget

from .evaluate import AccuracyFigures, SpeedFigures

GENERATED_TOKENS = 64


@dataclass
class Candidate:
    recipe: str
    precision: str
    size_bytes: int
    accuracy: AccuracyFigures
    speed: SpeedFigures | None = None
    size_ratio: float = 1.0
    prefill_speedup_b1: float | None = None
    prefill_speedup_b8: float | None = None
    decode_speedup: float | None = None
    request_speedup: float | None = None  # text-generation: 128-token prompt + 64 new tokens
    violations: list[str] = field(default_factory=list)

    @property
    def within_budget(self) -> bool:
        return not self.violations

    @property
    def prefill_speedup(self) -> float | None:
        """Geometric mean of batch 1 and batch 8."""
        if self.prefill_speedup_b1 is None or self.prefill_speedup_b8 is None:
            return None
        return math.sqrt(self.prefill_speedup_b1 * self.prefill_speedup_b8)

    @property
    def score(self) -> float:
        """What `auto` maximises: the speedup of a typical request.

        text-generation: a 128-token prompt plus 64 generated tokens at batch 1 (decode
        dominates what a user waits for); encoders: the geometric mean of batch 1 and 8.
        """
        if self.request_speedup is not None:
            return self.request_speedup
        return self.prefill_speedup or 0.0


def gate(task: str, accuracy: AccuracyFigures, budget: AccuracyBudget) -> list[str]:
    """Which budget limits `accuracy` breaks (empty: within budget)."""
    problems: list[str] = []
    if task in {"text-generation", "text-classification"} and accuracy.top1_agreement is not None:
        disagreement = 1.0 - accuracy.top1_agreement
        if disagreement > budget.max_top1_disagreement + 1e-12:
            problems.append(f"top-1 disagreement {disagreement:.3f} > {budget.max_top1_disagreement:.3f}")
    if task == "text-generation" and accuracy.perplexity_ratio is not None:
        increase = accuracy.perplexity_ratio - 1.0
        if increase > budget.max_perplexity_increase + 1e-12:
            problems.append(f"perplexity +{increase:.3f} > +{budget.max_perplexity_increase:.3f}")
    cosine = accuracy.cosine_similarity
    if task == "feature-extraction" and cosine is not None and cosine < budget.min_cosine_similarity - 1e-12:
        problems.append(f"cosine {cosine:.4f} < {budget.min_cosine_similarity:.4f}")
    return problems


def attach_speedups(candidate: Candidate, reference: SpeedFigures | None, reference_size: int) -> None:
    candidate.size_ratio = candidate.size_bytes / reference_size if reference_size else 1.0
    speed = candidate.speed
    if speed is None or reference is None:
        return
    candidate.prefill_speedup_b1 = reference.prefill_b1_s / speed.prefill_b1_s
    candidate.prefill_speedup_b8 = reference.prefill_b8_s / speed.prefill_b8_s
    if speed.decode_tokens_per_s and reference.decode_tokens_per_s:
        candidate.decode_speedup = speed.decode_tokens_per_s / reference.decode_tokens_per_s
        ref_request = reference.prefill_b1_s + GENERATED_TOKENS / reference.decode_tokens_per_s
        candidate.request_speedup = ref_request / (speed.prefill_b1_s + GENERATED_TOKENS / speed.decode_tokens_per_s)


def pick(candidates: list[Candidate]) -> Candidate | None:
    """Fastest candidate within budget (ties: the smaller one); None if none fits."""
    fitting = [c for c in candidates if c.within_budget]
    if not fitting:
        return None
    return max(fitting, key=lambda c: (c.score, -c.size_bytes))


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(candidates: list[Candidate]) -> str:
    """A compact plain-text table (fits a termination message for a handful of recipes)."""
    lines = ["recipe size top1 kl ppl cos prefill decode ok"]
    for c in candidates:
        a = c.accuracy
        lines.append(
            " ".join(
                [
                    c.recipe,
                    _fmt(c.size_ratio, 2),
                    _fmt(a.top1_agreement),
                    _fmt(a.kl_divergence, 4),
                    _fmt(a.perplexity_ratio),
                    _fmt(a.cosine_similarity, 4),
                    _fmt(c.prefill_speedup, 2),
                    _fmt(c.decode_speedup, 2),
                    "yes" if c.within_budget else "no",
                ]
            )
        )
    return "\n".join(lines)
