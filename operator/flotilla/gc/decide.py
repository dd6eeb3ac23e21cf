"""Which stored artifacts a sweep deletes (pure).

An artifact is deleted only when no SmallModel references it (the keep set) AND it is older
than the retention. "Older" is by its newest write: a complete artifact's manifest, an
incomplete one's newest file, so an upload in progress (no complete manifest yet, files
still being written) is young and stays. An incomplete artifact older than the retention is
a crashed upload and goes like any other unreferenced artifact. A key in the keep set is
never deleted, whatever its age or state. A write in the future (a skewed clock) is young.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True)
class Stored:
    """One artifact in a store. `key`: its content address (a partial upload: the key it was
    being published under); `name`: its entry in the store (a directory, an S3 prefix)."""

    key: str
    name: str
    modified: datetime  # its newest write (timezone-aware)
    complete: bool  # a complete manifest: servable
    size: int  # bytes


@dataclass(frozen=True)
class Decision:
    delete: tuple[Stored, ...]
    in_use: tuple[Stored, ...]  # referenced: kept whatever their age
    young: tuple[Stored, ...]  # unreferenced, within the retention: kept for now


def decide(stored: list[Stored], keep: frozenset[str], now: datetime, retention: timedelta) -> Decision:
    if retention < timedelta(0):
        raise ValueError("retention must not be negative")
    delete: list[Stored] = []
    in_use: list[Stored] = []
    young: list[Stored] = []
    for item in sorted(stored, key=lambda s: s.name):
        if item.key in keep:
            in_use.append(item)
        elif now - item.modified < retention:
            young.append(item)
        else:
            delete.append(item)
    return Decision(tuple(delete), tuple(in_use), tuple(young))
