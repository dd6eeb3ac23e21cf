"""Artifact GC sweep benchmark: how long one pass over a claim's directory takes.

Builds N fake artifacts (each a manifest, config.pbtxt and F model files of S bytes) in a
temporary directory, half of them referenced, all older than the retention, and times
`flotilla.gc.sweep` over a DirectoryStore: the listing (a walk and a stat of every file) and
the deletions (a rename, then rmtree). The figure is the sweep itself, as the GC Job runs it,
without the Job's start (seconds on the local cluster: tests/integration/test_artifact_gc.py).

    python bench/artifact_gc.py [--artifacts 1000] [--files 12] [--size 4096]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from flotilla.gc.store import DirectoryStore
from flotilla.gc.sweep import sweep


def build(root: Path, count: int, files: int, size: int) -> list[str]:
    keys = [f"{i:020x}" for i in range(count)]
    old = time.time() - 30 * 86400
    for key in keys:
        model = root / key / "m" / "1"
        model.mkdir(parents=True)
        for j in range(files):
            (model / f"f{j}").write_bytes(b"\0" * size)
        (root / key / "m" / "config.pbtxt").write_text('backend: "python"\n')
        (root / key / "manifest.json").write_text(json.dumps({"key": key, "complete": True, "modelName": "m"}))
        for p in [*(root / key).rglob("*"), root / key]:
            os.utime(p, (old, old))
    return keys


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--artifacts", type=int, default=1000)
    parser.add_argument("--files", type=int, default=12)
    parser.add_argument("--size", type=int, default=4096)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        keys = build(root, args.artifacts, args.files, args.size)
        store = DirectoryStore(root)
        started = time.perf_counter()
        listed = store.list()
        listing = time.perf_counter() - started
        keep = frozenset(keys[::2])
        summary = sweep(store, keep, datetime.now(UTC), timedelta(days=7))
        files = args.artifacts * (args.files + 2)
        print(
            f"{args.artifacts} artifacts ({files} files): listing {listing * 1000:.0f} ms, "
            f"a sweep that removed {len(summary.removed)} and kept {summary.in_use}: {summary.seconds * 1000:.0f} ms "
            f"({len(listed)} listed)"
        )


if __name__ == "__main__":
    main()
