"""`python -m flotilla optimize ...`: the optimization Job's entry point.

Exit status 0: an artifact is at --out (built now or reused), and with --upload-key it is
complete in the S3 store (uploaded now, manifest last, or found complete there: then nothing is
built). Non-zero: nothing was published; the reason is in the termination message (ArtifactSummary with ok=false), and
stdout's last line is the same JSON either way.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flotilla.api.v1alpha1 import AccuracyBudget, ArtifactSummary, CalibrationSpec
from flotilla.triton.config import TASKS

from .errors import OptimizeError
from .progress import log

DEFAULT_TERMINATION_LOG = Path("/dev/termination-log")
NAME_PATTERN = re.compile(r"^[a-z0-9]([a-z0-9_.\-]{0,61}[a-z0-9])?$")
EXIT_CODES = {
    "AccuracyBudgetExceeded": 3,
    "SourceUnavailable": 4,
    "UnsupportedModel": 5,
    "InvalidArguments": 2,
    "OutOfDisk": 6,
    "OptimizerError": 1,
    # The S3 store's (flotilla.objectstore.EXIT_CODES): retried, never permanent.
    "StoreCredentialsInvalid": 10,
    "StoreBucketMissing": 11,
    "StoreUnreachable": 12,
    "ArtifactChecksumMismatch": 13,
    "ArtifactMissing": 14,
}


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so bad arguments get a termination message too."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise OptimizeError("InvalidArguments", message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="flotilla optimize", description="Optimize a model into a Triton model repository.")
    p.add_argument(
        "--source", required=True, help="hf://org/name[@rev], s3://..., pvc://claim/path, file:///path or a path"
    )
    p.add_argument("--revision", default=None, help="pin of the source (Hub commit, tag or branch)")
    p.add_argument("--task", required=True, help=f"one of {', '.join(TASKS)}")
    p.add_argument("--precision", default="auto", choices=["auto", "int8", "int4", "fp16", "fp32"])
    p.add_argument("--target", default="onnx", choices=["onnx", "tensorrt"])
    p.add_argument("--name", required=True, help="model directory name inside the artifact")
    p.add_argument("--out", required=True, type=Path, help="artifact directory (<store>/<key>)")
    defaults = AccuracyBudget()
    p.add_argument("--max-top1-disagreement", type=float, default=defaults.max_top1_disagreement)
    p.add_argument("--max-perplexity-increase", type=float, default=defaults.max_perplexity_increase)
    p.add_argument("--min-cosine-similarity", type=float, default=defaults.min_cosine_similarity)
    p.add_argument("--max-kl-divergence", type=float, default=None, help="nats per position (default: not gated)")
    p.add_argument("--eval-text", type=Path, default=None, help="evaluation sentences, one per line")
    p.add_argument(
        "--calibration-text",
        type=Path,
        default=None,
        help="calibration text, one sentence per line (default: the shipped set's calibration slice)",
    )
    p.add_argument(
        "--calibration",
        default=None,
        help="spec.optimize.calibration as JSON (the operator passes it: it is part of the artifact key)",
    )
    p.add_argument("--gpu", action="store_true", help="ship the GPU config variant (KIND_GPU, CUDA/TensorRT EP)")
    p.add_argument("--termination-message-path", type=Path, default=None)
    p.add_argument("--recipes", default=None, help="comma-separated recipe names to try (default: by precision)")
    p.add_argument("--eval-limit", type=int, default=None, help="evaluate on at most N held-out sentences")
    p.add_argument("--speed-rounds", type=int, default=3, help="interleaved timing rounds (0: skip timing)")
    p.add_argument(
        "--screen-sentences",
        type=int,
        default=32,
        help="held-out sentences of the screening pass that drops clearly failing candidates (0: none)",
    )
    p.add_argument("--work-dir", type=Path, default=None, help="scratch space (default: beside --out)")
    p.add_argument(
        "--upload-key",
        default=None,
        help="S3 store (FLOTILLA_S3_* settings): upload --out as this key, manifest last; skip the build "
        "when the key is already complete there",
    )
    p.add_argument("--export-cache", type=Path, default=None, help="reuse fp32 exports kept here (tests, benchmarks)")
    return p


def termination_path(explicit: Path | None) -> Path | None:
    """--termination-message-path, else $TERMINATION_MESSAGE_PATH, else /dev/termination-log if writable."""
    if explicit is not None:
        return explicit
    env = os.environ.get("TERMINATION_MESSAGE_PATH")
    if env:
        return Path(env)
    parent = DEFAULT_TERMINATION_LOG.parent
    if parent.is_dir() and os.access(parent, os.W_OK):
        return DEFAULT_TERMINATION_LOG
    return None


def emit(summary: ArtifactSummary, path: Path | None) -> None:
    message = summary.to_termination_message()
    print(message, flush=True)
    if path is None:
        return
    try:
        path.write_text(message)
    except OSError as exc:
        log(f"cannot write the termination message to {path}: {exc}")


def _request(args: argparse.Namespace) -> object:
    from .pipeline import Request

    if args.task not in TASKS:
        raise OptimizeError("InvalidArguments", f"unknown task {args.task!r}; expected one of {', '.join(TASKS)}")
    if not NAME_PATTERN.match(args.name):
        raise OptimizeError("InvalidArguments", f"--name {args.name!r} is not a valid model directory name")
    try:
        budget = AccuracyBudget(
            max_top1_disagreement=args.max_top1_disagreement,
            max_perplexity_increase=args.max_perplexity_increase,
            min_cosine_similarity=args.min_cosine_similarity,
            max_kl_divergence=args.max_kl_divergence,
        )
    except ValueError as exc:
        raise OptimizeError("InvalidArguments", f"invalid accuracy budget: {exc}") from exc
    calibration = _calibration(args)
    return Request(
        source=args.source,
        revision=args.revision,
        task=args.task,
        name=args.name,
        out=args.out.resolve(),
        precision=args.precision,
        target=args.target,
        budget=budget,
        eval_text=args.eval_text,
        calibration=calibration,
        calibration_text=args.calibration_text,
        gpu=args.gpu,
        recipes=[r for r in args.recipes.split(",") if r] if args.recipes else None,
        eval_limit=args.eval_limit,
        speed_rounds=args.speed_rounds,
        screen_sentences=args.screen_sentences,
        work_dir=args.work_dir,
        export_cache=args.export_cache,
    )


def _run(args: argparse.Namespace) -> ArtifactSummary:
    from .pipeline import optimize

    request = _request(args)
    if args.upload_key:
        return _run_with_store(args.upload_key, request)
    summary, _ = optimize(request)  # type: ignore[arg-type]
    return summary


def _run_with_store(key: str, request: Any) -> ArtifactSummary:
    """Build into --out and upload it as `key`, unless the store already holds it complete.
    Store failures end the run with the store's reason (flotilla.objectstore.StoreError)."""
    from pydantic import ValidationError

    from flotilla.objectstore import Meter, S3Settings, StoreError, artifact_complete, read_manifest, upload_artifact

    from .pipeline import optimize, summary_from_manifest

    try:
        settings = S3Settings()
    except ValidationError as exc:
        raise OptimizeError("InvalidArguments", f"--upload-key needs the FLOTILLA_S3_* settings: {exc}") from exc
    where = f"s3://{settings.bucket}/{settings.object_key(key)}"
    try:
        if artifact_complete(settings, key):
            log(f"artifact {key} is already complete at {where}: not building it again")
            return summary_from_manifest(read_manifest(settings, key))
        summary, _ = optimize(request)
        log(f"uploading {request.out} to {where} (manifest last)")
        meter = Meter(f"upload {where}", say=log)
        upload_artifact(settings, key, request.out, progress=meter)
        log(meter.line())
    except StoreError as err:
        raise OptimizeError(err.reason, err.message) from err
    return summary


def _calibration(args: argparse.Namespace) -> CalibrationSpec | None:
    if args.calibration is None:
        return None
    if args.calibration_text is None:
        raise OptimizeError("InvalidArguments", "--calibration needs --calibration-text (the file to read)")
    try:
        return CalibrationSpec.model_validate_json(args.calibration)
    except ValueError as exc:
        raise OptimizeError("InvalidArguments", f"invalid --calibration: {exc}") from exc


def _failure_key(args: argparse.Namespace | None) -> str:
    """The artifact key when the arguments allow computing it, else ''."""
    if args is None:
        return ""
    try:
        request = _request(args)
        return str(request.key())  # type: ignore[attr-defined]
    except Exception:
        return ""


def _scan_termination_path(argv: Sequence[str]) -> Path | None:
    """--termination-message-path even when the rest of the arguments do not parse."""
    for i, arg in enumerate(argv):
        if arg.startswith("--termination-message-path="):
            return Path(arg.split("=", 1)[1])
        if arg == "--termination-message-path" and i + 1 < len(argv):
            return Path(argv[i + 1])
    return None


def main(argv: Sequence[str]) -> int:
    args: argparse.Namespace | None = None
    explicit_path = _scan_termination_path(argv)
    try:
        args = build_parser().parse_args(list(argv))
        explicit_path = args.termination_message_path
        summary = _run(args)
    except OptimizeError as exc:
        log(f"FAILED ({exc.reason}): {exc.message}")
        emit(
            ArtifactSummary(ok=False, key=_failure_key(args), reason=exc.reason, message=exc.message),
            termination_path(explicit_path),
        )
        return EXIT_CODES.get(exc.reason, 1)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # a bug or an unforeseen library error: still a clear ending
        log(f"FAILED (OptimizerError): {type(exc).__name__}: {exc}")
        message = f"{type(exc).__name__}: {exc}"
        emit(
            ArtifactSummary(ok=False, key=_failure_key(args), reason="OptimizerError", message=message),
            termination_path(explicit_path),
        )
        return 1
    log(f"artifact {summary.key}: {summary.recipe} ({summary.precision}), {summary.size_bytes} bytes")
    emit(summary, termination_path(explicit_path))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
