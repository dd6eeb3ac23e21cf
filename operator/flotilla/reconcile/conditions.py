"""metav1.Condition bookkeeping: lastTransitionTime moves only when status does."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from flotilla.api.v1alpha1 import Condition
from flotilla.api.v1alpha1.status import ConditionStatus


@dataclass(frozen=True)
class Want:
    """A condition as the planner decides it, before timestamps."""

    type: str
    status: ConditionStatus
    reason: str
    message: str = ""


def merge(previous: Iterable[Condition], wanted: Iterable[Want], generation: int, now: str) -> list[Condition]:
    """New condition list: wanted conditions in order, then any others we don't manage."""
    old = {c.type: c for c in previous}
    out: list[Condition] = []
    for want in wanted:
        before = old.pop(want.type, None)
        moved = before is None or before.status != want.status
        out.append(
            Condition(
                type=want.type,
                status=want.status,
                reason=want.reason,
                message=want.message[:32768],
                observed_generation=generation,
                last_transition_time=now if moved or before is None else before.last_transition_time,
            )
        )
    out.extend(old.values())
    return out


def transitioned(previous: Iterable[Condition], current: Iterable[Condition], type_: str) -> Condition | None:
    """The condition of `type_` if its status or reason changed."""
    before = next((c for c in previous if c.type == type_), None)
    after = next((c for c in current if c.type == type_), None)
    if after is None:
        return None
    if before is None or before.status != after.status or before.reason != after.reason:
        return after
    return None
