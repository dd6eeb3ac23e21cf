"""The artifact on disk: a Triton model repository plus manifest.json, published atomically.

    DIR/manifest.json
    DIR/<NAME>/config.pbtxt          default serving settings; the operator renders its own
    DIR/<NAME>/1/model.py            flotilla.triton.python_model
    DIR/<NAME>/1/flotilla.json       what model.py needs to know (task, ONNX file, ...)
    DIR/<NAME>/1/model.onnx[.data]   the chosen recipe's graph
    DIR/<NAME>/1/tokenizer files

Everything is written into a temporary directory beside DIR and renamed into place, so a
reader sees no artifact or a complete one. manifest.json is written last inside the temporary
directory and carries `"complete": true`.
"""

from __future__ import annotations

import errno
import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from flotilla.triton import config as triton_config
from flotilla.triton import python_model

from .errors import OptimizeError
from .export import TOKENIZER_FILES

MANIFEST = "manifest.json"
VERSION_DIR = "1"


def read_manifest(out: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return data


def complete_manifest(out: Path, key: str) -> dict[str, Any] | None:
    """The manifest of a finished artifact with this key under `out`, or None."""
    manifest = read_manifest(out)
    if not manifest or manifest.get("key") != key or manifest.get("complete") is not True:
        return None
    name = manifest.get("modelName")
    if not name or not (out / str(name) / "config.pbtxt").is_file() or not (out / str(name) / VERSION_DIR).is_dir():
        return None
    return manifest


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in {errno.ENOSPC, errno.EDQUOT}


@contextmanager
def disk_errors(what: str) -> Iterator[None]:
    """OSError -> OptimizeError(OutOfDisk) when the disk is full, else OptimizerError."""
    try:
        yield
    except OptimizeError:
        raise
    except OSError as exc:
        if is_disk_full(exc):
            raise OptimizeError("OutOfDisk", f"{what}: no space left on device ({exc.filename or ''})") from exc
        raise OptimizeError("OptimizerError", f"{what}: {exc}") from exc


def write_model_dir(
    version_dir: Path, onnx_path: Path, tokenizer_dir: Path, metadata: dict[str, Any], *, move: bool = False
) -> None:
    """Fill `version_dir` with the graph (+ external data), tokenizer files, model.py and flotilla.json."""
    version_dir.mkdir(parents=True, exist_ok=True)
    for f in onnx_path.parent.iterdir():
        if f.name.startswith(onnx_path.name):
            target = version_dir / f.name.replace(onnx_path.stem, "model", 1)
            shutil.move(str(f), target) if move else shutil.copy2(f, target)
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copy2(tokenizer_dir / name, version_dir / name)
    shutil.copy2(Path(python_model.__file__), version_dir / "model.py")
    meta = dict(metadata)
    meta["onnx"] = "model.onnx"
    (version_dir / python_model.METADATA_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def render_default_config(task: str, gpu: bool, execution_provider: str = "auto") -> str:
    """The config.pbtxt shipped inside the artifact, validated against Triton's protobuf."""
    text = triton_config.render_model_config(
        task,  # type: ignore[arg-type]
        gpu=gpu,
        execution_provider=execution_provider,  # type: ignore[arg-type]
    )
    triton_config.validate(text)
    return text


def _files(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}


def publish(
    out: Path,
    name: str,
    config_text: str,
    fill: Any,
    manifest: dict[str, Any],
) -> dict[str, Any]:
    """Build the artifact in a temp dir beside `out` (`fill(version_dir)` writes the model), then rename.

    Returns the manifest as written (with the file list). Leaves nothing behind on failure.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        with disk_errors("writing the artifact"):
            model_dir = staging / name
            fill(model_dir / VERSION_DIR)
            (model_dir / "config.pbtxt").write_text(config_text)
            written = dict(manifest)
            written["files"] = _files(staging)
            written["complete"] = True
            (staging / MANIFEST).write_text(json.dumps(written, indent=2, sort_keys=True) + "\n")
            if out.exists():
                # An incomplete or differently-keyed leftover: the caller decided to replace it.
                shutil.rmtree(out)
            staging.rename(out)
        return written
    finally:
        shutil.rmtree(staging, ignore_errors=True)
