"""One exception type for every way an optimization ends without an artifact."""

from __future__ import annotations

from typing import Any

from flotilla.api.v1alpha1 import FailureReason


class OptimizeError(Exception):
    """Ends the run: `reason` becomes the Optimized condition's reason, `message` its text."""

    def __init__(self, reason: FailureReason, message: str, candidates: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.reason: FailureReason = reason
        self.message = message
        # For AccuracyBudgetExceeded: every candidate measured (manifest records), for benchmarks.
        self.candidates = candidates or []
