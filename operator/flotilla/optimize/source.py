"""Where a model comes from: hf://, s3://, pvc://, file:// or a plain local path -> a local path.

A source resolves to a directory holding either a Hugging Face checkpoint (config.json and
weights) or a single `.gguf` file, which transformers loads with `gguf_file=`.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import OptimizeError

# pvc://claim/path is read where the Job mounts the claim: $FLOTILLA_PVC_ROOT/<claim>/<path>.
PVC_ROOT_ENV = "FLOTILLA_PVC_ROOT"
DEFAULT_PVC_ROOT = "/mnt/flotilla/pvc"


@dataclass(frozen=True)
class Source:
    uri: str  # canonical form, as the SmallModel spec would carry it (the artifact key hashes it)
    revision: str | None
    path: Path  # directory of the checkpoint or of the .gguf file
    gguf_file: str | None = None  # file name inside `path`


def canonical_uri(uri: str) -> str:
    """A plain path becomes file:///abs/path (the only local form the api accepts)."""
    if "://" in uri:
        return uri
    return "file://" + str(Path(uri).expanduser().resolve())


def split_revision(uri: str, revision: str | None) -> tuple[str, str | None]:
    """hf://org/name@rev -> (hf://org/name, rev); an explicit --revision wins."""
    if uri.startswith("hf://") and "@" in uri:
        base, _, rev = uri.partition("@")
        return base, revision or rev
    return uri, revision


def _local(path: Path, uri: str) -> Path:
    if not path.exists():
        raise OptimizeError("SourceUnavailable", f"source {uri}: {path} does not exist")
    if not os.access(path, os.R_OK) or (path.is_dir() and not os.access(path, os.X_OK)):
        raise OptimizeError("SourceUnavailable", f"source {uri}: {path} is not readable")
    return path


def _from_hub(repo: str, revision: str | None, uri: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError as exc:  # pragma: no cover - huggingface_hub comes with transformers
        raise OptimizeError("SourceUnavailable", f"source {uri}: huggingface_hub is not installed") from exc
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}
    try:
        return Path(snapshot_download(repo_id=repo, revision=revision, local_files_only=offline))
    except LocalEntryNotFoundError as exc:
        why = "HF_HUB_OFFLINE is set and the files are not in the cache" if offline else "the Hub cannot be reached"
        raise OptimizeError("SourceUnavailable", f"source {uri}: {why} ({exc.__class__.__name__})") from exc
    except Exception as exc:
        raise OptimizeError("SourceUnavailable", f"source {uri}: {exc}") from exc


def _from_s3(uri: str, workdir: Path) -> Path:
    try:
        import boto3
    except ImportError as exc:
        raise OptimizeError("SourceUnavailable", f"source {uri}: s3:// needs the optional 's3' extra (boto3)") from exc
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    target = Path(tempfile.mkdtemp(prefix="s3-", dir=workdir))
    try:
        s3 = boto3.client("s3")
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                rel = obj["Key"][len(prefix) :].lstrip("/") or Path(obj["Key"]).name
                dest = target / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                s3.download_file(bucket, obj["Key"], str(dest))
    except Exception as exc:
        raise OptimizeError("SourceUnavailable", f"source {uri}: {exc}") from exc
    files = list(target.iterdir())
    if len(files) == 1 and files[0].suffix == ".gguf":
        return files[0]
    return target


def _locate(path: Path, uri: str) -> tuple[Path, str | None]:
    """(checkpoint dir, gguf file name or None) for a path that is a dir or a .gguf file."""
    if path.is_file():
        if path.suffix != ".gguf":
            raise OptimizeError("SourceUnavailable", f"source {uri}: a file source must be a .gguf file")
        return path.parent, path.name
    if (path / "config.json").is_file():
        return path, None
    ggufs = sorted(p.name for p in path.glob("*.gguf"))
    if len(ggufs) == 1:
        return path, ggufs[0]
    if len(ggufs) > 1:
        raise OptimizeError("SourceUnavailable", f"source {uri}: several .gguf files ({', '.join(ggufs)}); name one")
    raise OptimizeError("SourceUnavailable", f"source {uri}: no config.json and no .gguf file in {path}")


def resolve(uri: str, revision: str | None, workdir: Path) -> Source:
    """Make the source readable locally. `workdir` receives downloads (s3)."""
    uri, revision = split_revision(canonical_uri(uri), revision)
    if uri.startswith("file://"):
        path = _local(Path(uri.removeprefix("file://")), uri)
    elif uri.startswith("pvc://"):
        claim, _, rel = uri.removeprefix("pvc://").partition("/")
        path = _local(Path(os.environ.get(PVC_ROOT_ENV, DEFAULT_PVC_ROOT)) / claim / rel, uri)
    elif uri.startswith("hf://"):
        path = _from_hub(uri.removeprefix("hf://"), revision, uri)
    elif uri.startswith("s3://"):
        path = _from_s3(uri, workdir)
    else:
        raise OptimizeError("InvalidArguments", f"source {uri}: unknown scheme (use hf://, s3://, pvc://, file://)")
    directory, gguf = _locate(path, uri)
    return Source(uri=uri, revision=revision, path=directory, gguf_file=gguf)
