"""`python -m flotilla.objectstore fetch --key K --dest D [--cache C]`: the fetch-artifact init
container; the artifact lands in D/K/ (the serving container mounts D/K/<model>/1). Progress
on stderr; on failure the reason goes to the termination message as an ArtifactSummary
(ok=false), the shape flotilla.reconcile.observed reads, and the exit code names it
(EXIT_CODES: 10-14; 2 bad arguments or settings; 1 anything else)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from flotilla.api.v1alpha1 import ArtifactSummary, FailureReason

from .errors import EXIT_CODES, StoreError
from .settings import S3Settings
from .store import Meter, fetch_artifact

DEFAULT_TERMINATION_LOG = Path("/dev/termination-log")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m flotilla.objectstore", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    fetch = sub.add_parser("fetch", help="download and verify an artifact (settings: FLOTILLA_S3_*)")
    fetch.add_argument("--key", required=True)
    fetch.add_argument(
        "--dest",
        required=True,
        type=Path,
        help="the download volume: the artifact goes to DEST/<key>/, the artifact claim's layout, which the "
        "serving container's subPath mounts (<key>/<model>/1) expect",
    )
    fetch.add_argument("--cache", type=Path, default=None, help="node cache of verified downloads")
    fetch.add_argument("--termination-message-path", type=Path, default=None)
    return p


def termination_path(explicit: Path | None) -> Path | None:
    """--termination-message-path, else $TERMINATION_MESSAGE_PATH, else /dev/termination-log if writable."""
    if explicit is not None:
        return explicit
    if env := os.environ.get("TERMINATION_MESSAGE_PATH"):
        return Path(env)
    if DEFAULT_TERMINATION_LOG.exists() and os.access(DEFAULT_TERMINATION_LOG, os.W_OK):
        return DEFAULT_TERMINATION_LOG
    return None


def _fail(key: str, reason: FailureReason, message: str, path: Path | None) -> None:
    text = ArtifactSummary(ok=False, key=key, reason=reason, message=message).to_termination_message()
    print(f"[fetch-artifact] FAILED ({reason}): {message}", file=sys.stderr, flush=True)
    if path is not None:
        try:
            path.write_text(text)
        except OSError as exc:
            print(f"[fetch-artifact] cannot write {path}: {exc}", file=sys.stderr, flush=True)


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    path = termination_path(args.termination_message_path)
    try:
        settings = S3Settings()
    except ValidationError as exc:
        _fail(args.key, "InvalidArguments", f"FLOTILLA_S3_* settings: {exc}", path)
        return 2
    meter = Meter(f"s3://{settings.bucket}/{settings.object_key(args.key)}")
    try:
        result = fetch_artifact(settings, args.key, args.dest / args.key, args.cache, progress=meter)
    except StoreError as err:
        _fail(args.key, err.reason, err.message, path)
        return EXIT_CODES[err.reason]
    except Exception as exc:
        _fail(args.key, "OptimizerError", f"{type(exc).__name__}: {exc}", path)
        return 1
    seconds = max(result.seconds, 1e-9)
    how = "linked from the node cache" if result.from_cache else "downloaded and verified"
    print(
        f"[fetch-artifact] {args.key}: {result.files} files, {result.bytes / 1e6:.1f} MB {how}"
        f" in {result.seconds:.2f} s ({result.bytes / 1e6 / seconds:.1f} MB/s)",
        file=sys.stderr,
        flush=True,
    )
    return 0
