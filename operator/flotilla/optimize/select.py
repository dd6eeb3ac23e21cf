"""The accuracy gate and the pick: pure functions over measured candidates."""

from __future__ import annotations

import math
from collections.abc import Callable
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


EPS = 1e-12  # equal to the limit passes: a budget of 0.03 admits exactly 97% agreement
TOKEN_TASKS = {"text-generation", "text-classification"}  # figures over next-token (or label) distributions
GATED_TASKS = {*TOKEN_TASKS, "feature-extraction"}


@dataclass(frozen=True)
class _Limit:
    figure: str  # as messages name it
    value: float | None
    broken: Callable[[float], bool]
    message: Callable[[float], str]


def _limits(task: str, a: AccuracyFigures, budget: AccuracyBudget) -> list[_Limit]:
    """The figures the budget names for `task`, each with its limit."""
    limits: list[_Limit] = []
    top1, ppl, kl = budget.max_top1_disagreement, budget.max_perplexity_increase, budget.max_kl_divergence
    if task in TOKEN_TASKS:
        limits.append(
            _Limit(
                "top-1 agreement",
                a.top1_agreement,
                lambda v: 1.0 - v > top1 + EPS,
                lambda v: f"top-1 disagreement {1.0 - v:.3f} > {top1:.3f}",
            )
        )
    if task == "text-generation":
        limits.append(
            _Limit(
                "perplexity ratio",
                a.perplexity_ratio,
                lambda v: v - 1.0 > ppl + EPS,
                lambda v: f"perplexity +{v - 1.0:.3f} > +{ppl:.3f}",
            )
        )
    if task in TOKEN_TASKS and kl is not None:
        kl_limit = kl
        limits.append(
            _Limit(
                "KL divergence",
                a.kl_divergence,
                lambda v: v > kl_limit + EPS,
                lambda v: f"KL divergence {v:.4f} > {kl_limit:.4f}",
            )
        )
    if task == "feature-extraction":
        cos = budget.min_cosine_similarity
        limits.append(
            _Limit(
                "cosine similarity",
                a.cosine_similarity,
                lambda v: v < cos - EPS,
                lambda v: f"cosine {v:.4f} < {cos:.4f}",
            )
        )
    return limits


def gate(task: str, accuracy: AccuracyFigures, budget: AccuracyBudget) -> list[str]:
    """Which budget limits `accuracy` breaks (empty: within budget).

    It fails closed: a figure the budget names for `task` that the evaluation did not produce, or
    that is not a number, is a violation, never a pass (NaN compares False with every limit, so
    `nan > limit` alone would let it through).
    """
    if task not in GATED_TASKS:
        return [f"no accuracy gate for task {task!r}"]
    problems: list[str] = []
    if task not in TOKEN_TASKS and budget.max_kl_divergence is not None:
        problems.append(f"maxKLDivergence does not apply to {task} (no next-token distribution)")
    for limit in _limits(task, accuracy, budget):
        value = limit.value
        if value is None:
            problems.append(f"{limit.figure} was not measured")
        elif not math.isfinite(value):
            problems.append(f"{limit.figure} is {value}, not a number")
        elif limit.broken(value):
            problems.append(limit.message(value))
    return problems


# Screening (the first held-out sentences, before full evaluation and timing) drops only
# candidates that clearly cannot pass. Top-1 disagreement is a proportion over positions: drop when
# even the lower end of its one-sided Wilson interval at z = 3.29 (99.95%) is above the limit.
# Positions within a sentence are not independent, so the interval is too narrow by some factor;
# z = 3.29 rather than 1.64 leaves room for that. Perplexity, KL and cosine have no cheap interval:
# drop when the slice's figure is past SCREEN_MARGIN times the budget's allowance.
SCREEN_Z = 3.29
SCREEN_MARGIN = 3.0


def wilson_lower(rate: float, n: int, z: float = SCREEN_Z) -> float:
    """Lower end of the Wilson score interval of a proportion `rate` observed over `n` trials."""
    if n <= 0:
        return 0.0
    centre = rate + z * z / (2 * n)
    spread = z * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n))
    return max(0.0, (centre - spread) / (1 + z * z / n))


def hopeless(task: str, accuracy: AccuracyFigures, positions: int, budget: AccuracyBudget) -> list[str]:
    """Why a candidate measured on a screening slice of `positions` positions (texts for
    encoders) cannot pass the full gate; empty: keep it for the full evaluation. A figure missing
    here is left to the full gate, which fails closed."""
    reasons: list[str] = []
    top1, ppl, kl, cos = (
        accuracy.top1_agreement,
        accuracy.perplexity_ratio,
        accuracy.kl_divergence,
        accuracy.cosine_similarity,
    )
    if task in TOKEN_TASKS and top1 is not None and math.isfinite(top1):
        low = wilson_lower(1.0 - top1, positions)
        if low > budget.max_top1_disagreement + EPS:
            reasons.append(
                f"top-1 disagreement {1.0 - top1:.3f} on {positions} positions "
                f"(at least {low:.3f} at 99.95%) > {budget.max_top1_disagreement:.3f}"
            )
    allowance = SCREEN_MARGIN * budget.max_perplexity_increase
    if task == "text-generation" and ppl is not None and math.isfinite(ppl) and ppl - 1.0 > allowance + EPS:
        reasons.append(
            f"perplexity +{ppl - 1.0:.3f} > {SCREEN_MARGIN:g}x the budget's +{budget.max_perplexity_increase:.3f}"
        )
    limit = budget.max_kl_divergence
    if task in TOKEN_TASKS and limit is not None and kl is not None and kl > SCREEN_MARGIN * limit + EPS:
        reasons.append(f"KL divergence {kl:.4f} > {SCREEN_MARGIN:g}x the budget's {limit:.4f}")
    gap = 1.0 - budget.min_cosine_similarity
    if task == "feature-extraction" and cos is not None and 1.0 - cos > SCREEN_MARGIN * gap + EPS:
        reasons.append(f"cosine {cos:.4f} < 1 - {SCREEN_MARGIN:g}x the budget's gap {gap:.4f}")
    return reasons


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
