"""`python -m flotilla.gc sweep --root /artifacts --keep KEY ... --retention-seconds N`: one
GC pass, run by the GC Job (resources/gc.py). Prints the summary and writes it to the
termination message, where the operator reads it."""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from .store import ArtifactStore, DirectoryStore, ObjectStore
from .sweep import sweep


def summary_path(explicit: Path | None) -> Path | None:
    """Where the operator reads the summary: the container's termination-message path (as the
    optimizer finds it, optimize/cli.py)."""
    if explicit is not None:
        return explicit
    if env := os.environ.get("TERMINATION_MESSAGE_PATH"):
        return Path(env)
    # In a pod (the kubelet sets KUBERNETES_SERVICE_HOST in every container): the kubelet's default path.
    return Path("/dev/termination-log") if os.environ.get("KUBERNETES_SERVICE_HOST") else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flotilla.gc")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("sweep", help="delete unreferenced artifacts older than the retention")
    p.add_argument("--store", choices=["pvc", "s3"], default="pvc")
    p.add_argument("--root", type=Path, default=Path("/artifacts"), help="the artifact claim's mount (pvc)")
    p.add_argument("--keep", action="append", default=[], metavar="KEY", help="an artifact key in use (repeat)")
    p.add_argument("--retention-seconds", type=float, required=True)
    p.add_argument(
        "--summary-file",
        type=Path,
        default=None,
        help="default: $TERMINATION_MESSAGE_PATH, else /dev/termination-log in a pod, else none",
    )
    p.add_argument("--dry-run", action="store_true", help="decide and report, delete nothing")
    args = parser.parse_args(argv)
    if args.retention_seconds < 0:
        parser.error("--retention-seconds must not be negative")
    store: ArtifactStore = DirectoryStore(args.root) if args.store == "pvc" else ObjectStore()
    if args.store == "pvc" and not args.root.is_dir():
        print(f"{args.root} is not a directory", file=sys.stderr)
        return 2
    summary = sweep(
        store,
        frozenset(args.keep),
        datetime.now(UTC),
        timedelta(seconds=args.retention_seconds),
        dry_run=args.dry_run,
    )
    message = summary.to_termination_message()
    print(message, flush=True)
    path = summary_path(args.summary_file)
    try:
        if path is not None:
            path.write_text(message)
    except OSError as err:  # outside a pod there may be no termination-log
        print(f"could not write {path}: {err}", file=sys.stderr)
    return 1 if summary.errors else 0


if __name__ == "__main__":
    sys.exit(main())
