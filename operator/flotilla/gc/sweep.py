"""One GC pass over a store: list, decide, delete, and a summary the operator reads.

The summary is compact JSON within the kubelet's 4 KiB termination message (the way the
optimizer reports, api/v1alpha1/artifact.py): the names removed (cut with a count past the
limit), the bytes freed, how many were kept in use or young, and deletions that failed.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from .decide import decide
from .store import ArtifactStore

SUMMARY_LIMIT = 4096


@dataclass
class Summary:
    removed: list[str] = field(default_factory=list)
    bytes_freed: int = 0
    in_use: int = 0
    young: int = 0
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_wire(self) -> dict[str, Any]:
        return {
            "removed": self.removed,
            "bytesFreed": self.bytes_freed,
            "inUse": self.in_use,
            "young": self.young,
            "errors": self.errors,
            "seconds": round(self.seconds, 3),
        }

    def to_termination_message(self) -> str:
        data = self.to_wire()
        text = json.dumps(data, separators=(",", ":"))
        while len(text.encode()) > SUMMARY_LIMIT and (data["removed"] or data["errors"]):
            longer = "errors" if len(data["errors"]) > len(data["removed"]) / 4 else "removed"
            data[longer] = data[longer][: len(data[longer]) // 2]
            data[f"{longer}Omitted"] = len(getattr(self, longer)) - len(data[longer])
            text = json.dumps(data, separators=(",", ":"))
        return text

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> tuple[Summary, int]:
        """The summary and how many removed names the message left out."""
        summary = cls(
            removed=[str(n) for n in data.get("removed", [])],
            bytes_freed=int(data.get("bytesFreed", 0)),
            in_use=int(data.get("inUse", 0)),
            young=int(data.get("young", 0)),
            errors=[str(e) for e in data.get("errors", [])],
            seconds=float(data.get("seconds", 0.0)),
        )
        return summary, int(data.get("removedOmitted", 0))


def sweep(
    store: ArtifactStore, keep: frozenset[str], now: datetime, retention: timedelta, *, dry_run: bool = False
) -> Summary:
    started = time.monotonic()
    decision = decide(store.list(), keep, now, retention)
    summary = Summary(in_use=len(decision.in_use), young=len(decision.young))
    for item in decision.delete:
        try:
            if not dry_run:
                store.delete(item.name)
        except Exception as err:  # one stuck entry must not stop the rest of the pass
            summary.errors.append(f"{item.name}: {err}")
            continue
        summary.removed.append(item.name)
        summary.bytes_freed += item.size
    summary.seconds = time.monotonic() - started
    return summary
