"""Artifacts in an S3 bucket: upload (manifest last), verified fetch with a node cache, list, delete.

Layout (docs/objectstore.md): every file of an artifact directory is the object
`<prefix><key>/<relative path>`; `<prefix><key>/manifest.json` is uploaded after all of them and
lists each file's sha256 and size under "store", so a key is complete iff its manifest exists.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

from .errors import StoreError, StoreReason, classify
from .settings import S3Settings

MANIFEST = "manifest.json"
CHUNK = 1 << 20
KEY = re.compile(r"^[0-9a-f]{20}$")
Progress = Callable[[int], None]


@dataclass(frozen=True)
class StoredArtifact:
    """One key in the bucket (flotilla.gc.store.ObjectStore reads these)."""

    key: str
    modified: datetime  # the manifest's LastModified when complete, else the newest object's
    complete: bool
    size: int


@dataclass(frozen=True)
class FetchResult:
    key: str
    files: int
    bytes: int
    seconds: float
    from_cache: bool


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _call(what: str, fn: Callable[[], Any], *, missing: StoreReason = "ArtifactMissing") -> Any:
    try:
        return fn()
    except StoreError:
        raise
    except Exception as exc:
        if (err := classify(exc, what, missing=missing)) is not None:
            raise err from exc
        raise


def _files(directory: Path) -> list[tuple[str, Path]]:
    out: list[tuple[str, Path]] = []
    for path in sorted(directory.rglob("*")):
        if path.is_file() and not path.is_symlink():
            rel = path.relative_to(directory).as_posix()
            if rel != MANIFEST:
                out.append((rel, path))
    return out


def build_manifest(key: str, directory: Path) -> dict[str, Any]:
    """The directory's own manifest.json (when it has one) plus key, complete and each file's
    sha256 and size under "store"."""
    try:
        data = json.loads((directory / MANIFEST).read_text())
        manifest: dict[str, Any] = data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        manifest = {}
    files = {rel: {"sha256": sha256_file(path), "size": path.stat().st_size} for rel, path in _files(directory)}
    return {**manifest, "key": key, "complete": True, "store": {"files": files}}


def _check_relative(rel: str) -> str:
    parts = PurePosixPath(rel).parts
    if not parts or rel.startswith("/") or any(p in {"..", "."} for p in parts):
        raise StoreError("ArtifactChecksumMismatch", f"manifest names an unsafe path {rel!r}")
    return rel


def manifest_files(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    files = (manifest.get("store") or {}).get("files")
    if not isinstance(files, dict) or manifest.get("complete") is not True:
        raise StoreError("ArtifactChecksumMismatch", "the manifest lists no files (not a Flotilla store manifest)")
    return {_check_relative(str(rel)): dict(meta) for rel, meta in files.items()}


def _transfer_config() -> Any:
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(multipart_threshold=64 * CHUNK, multipart_chunksize=16 * CHUNK, max_concurrency=8)


def upload_artifact(
    settings: S3Settings, key: str, directory: Path, progress: Progress | None = None
) -> dict[str, Any]:
    """Every file under <prefix><key>/, then the manifest; returns the manifest uploaded."""
    client = settings.client()
    manifest = build_manifest(key, directory)
    config = _transfer_config()
    for rel in manifest["store"]["files"]:
        name = settings.object_key(key, rel)
        source = str(directory / rel)

        def put(source: str = source, name: str = name) -> None:
            client.upload_file(source, settings.bucket, name, Config=config, Callback=progress)

        _call(f"upload s3://{settings.bucket}/{name}", put, missing="StoreBucketMissing")
    body = json.dumps(manifest, indent=2, sort_keys=True).encode()
    name = settings.object_key(key, MANIFEST)
    _call(
        f"upload s3://{settings.bucket}/{name}",
        lambda: client.put_object(Bucket=settings.bucket, Key=name, Body=body, ContentType="application/json"),
        missing="StoreBucketMissing",
    )
    return manifest


def read_manifest(settings: S3Settings, key: str, client: Any = None) -> dict[str, Any]:
    """The key's manifest; ArtifactMissing when there is none (the key is not complete)."""
    client = client or settings.client()
    name = settings.object_key(key, MANIFEST)
    response = _call(f"read s3://{settings.bucket}/{name}", lambda: client.get_object(Bucket=settings.bucket, Key=name))
    try:
        data = json.loads(response["Body"].read())
    except ValueError as exc:
        raise StoreError("ArtifactChecksumMismatch", f"s3://{settings.bucket}/{name} is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise StoreError("ArtifactChecksumMismatch", f"s3://{settings.bucket}/{name} is not a JSON object")
    return data


def artifact_complete(settings: S3Settings, key: str) -> bool:
    """Whether the key's manifest exists (it is uploaded last)."""
    client = settings.client()
    name = settings.object_key(key, MANIFEST)
    try:
        _call(f"head s3://{settings.bucket}/{name}", lambda: client.head_object(Bucket=settings.bucket, Key=name))
    except StoreError as err:
        if err.reason == "ArtifactMissing":
            # a 404 on HEAD says nothing of the bucket: ask it (NoSuchBucket -> StoreBucketMissing)
            _call(
                f"head bucket {settings.bucket}",
                lambda: client.head_bucket(Bucket=settings.bucket),
                missing="StoreBucketMissing",
            )
            return False
        raise
    return True


def verify(root: Path, files: dict[str, dict[str, Any]]) -> None:
    """Every listed file under `root` has its size and sha256; ArtifactChecksumMismatch if not."""
    for rel, meta in files.items():
        path = root / rel
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise StoreError("ArtifactChecksumMismatch", f"{rel}: missing after download ({exc})") from exc
        if size != meta.get("size"):
            raise StoreError("ArtifactChecksumMismatch", f"{rel}: {size} bytes, the manifest says {meta.get('size')}")
        if (digest := sha256_file(path)) != meta.get("sha256"):
            raise StoreError(
                "ArtifactChecksumMismatch", f"{rel}: sha256 {digest}, the manifest says {meta.get('sha256')}"
            )


def _download(
    settings: S3Settings, client: Any, key: str, manifest: dict[str, Any], into: Path, progress: Progress | None
) -> None:
    config = _transfer_config()
    files = manifest_files(manifest)
    for rel in files:
        target = into / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        name = settings.object_key(key, rel)

        def get(target: Path = target, name: str = name) -> None:
            client.download_file(settings.bucket, name, str(target), Config=config, Callback=progress)

        _call(f"download s3://{settings.bucket}/{name}", get)
    verify(into, files)
    (into / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))


def _publish(staging: Path, dest: Path) -> None:
    """Move what `staging` holds into `dest`: a rename of the whole when dest does not exist,
    else entry by entry (dest may be a mount point, e.g. the pod's emptyDir), manifest last."""
    if not dest.exists():
        staging.rename(dest)
        return
    entries = sorted(staging.iterdir(), key=lambda p: p.name == MANIFEST)
    for entry in entries:
        target = dest / entry.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
        entry.rename(target)
    staging.rmdir()


def _staging(dest: Path, tag: str) -> Path:
    """A temporary directory on dest's filesystem: inside dest when it exists (a mount point's
    parent may be read-only), else beside it."""
    if dest.is_dir():
        return Path(tempfile.mkdtemp(prefix=f".{tag}-", dir=dest))
    dest.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{dest.name}.{tag}-", dir=dest.parent))


def _read_only(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)


def _link_tree(source: Path, target: Path) -> None:
    """Hard links of every file (read-only, shared with the cache); copies across devices."""
    for path in sorted(source.rglob("*")):
        rel = path.relative_to(source)
        if path.is_dir():
            (target / rel).mkdir(parents=True, exist_ok=True)
            continue
        (target / rel).parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target / rel)
        except OSError as exc:
            if exc.errno not in {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP}:
                raise
            shutil.copy2(path, target / rel)


def _cached(cache: Path, key: str) -> Path | None:
    """The cache's verified copy of `key`, or None (missing, or corrupt: then removed)."""
    entry = cache / key
    try:
        manifest = json.loads((entry / MANIFEST).read_text())
        verify(entry, manifest_files(manifest))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, StoreError) as exc:
        _say(f"cache entry {entry} is corrupt ({exc}); fetching it again")
        _remove(entry)
        return None
    return entry


def _remove(path: Path) -> None:
    """rmtree that also removes read-only files (the cache's)."""
    doomed = path.with_name(f".{path.name}.deleting-{os.getpid()}-{time.monotonic_ns()}")
    with contextlib.suppress(FileNotFoundError):
        path.rename(doomed)
    for sub in doomed.rglob("*") if doomed.exists() else []:
        with contextlib.suppress(OSError):
            sub.chmod(0o700 if sub.is_dir() else 0o600)
    shutil.rmtree(doomed, ignore_errors=True)


def _say(text: str) -> None:
    print(f"[fetch-artifact] {text}", file=sys.stderr, flush=True)


def fetch_artifact(
    settings: S3Settings, key: str, dest: Path, cache: Path | None = None, progress: Progress | None = None
) -> FetchResult:
    """Download `key` into `dest`, every file checked against the manifest's sha256 and size
    before anything appears in dest. With `cache`, a verified copy per key is kept there and a
    hit is linked into dest without touching the store."""
    started = time.monotonic()
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        entry = _cached(cache, key)
        if entry is None:
            client = settings.client()
            manifest = read_manifest(settings, key, client)
            staging = Path(tempfile.mkdtemp(prefix=f".{key}.partial-", dir=cache))
            try:
                _download(settings, client, key, manifest, staging, progress)
                _read_only(staging)
                try:
                    staging.rename(cache / key)
                except OSError:  # another pod on this node published it first
                    _remove(staging)
                from_cache = False
            except BaseException:
                _remove(staging)
                raise
            entry = cache / key
        else:
            from_cache = True
        staging = _staging(dest, "link")
        try:
            _link_tree(entry, staging)
            _publish(staging, dest)
        except BaseException:
            _remove(staging)
            raise
        files = manifest_files(json.loads((entry / MANIFEST).read_text()))
    else:
        from_cache = False
        client = settings.client()
        manifest = read_manifest(settings, key, client)
        files = manifest_files(manifest)
        staging = _staging(dest, "fetch")
        try:
            _download(settings, client, key, manifest, staging, progress)
            _publish(staging, dest)
        except BaseException:
            _remove(staging)
            raise
    size = sum(int(meta.get("size", 0)) for meta in files.values())
    return FetchResult(key, len(files), size, time.monotonic() - started, from_cache)


def _objects(settings: S3Settings, client: Any, prefix: str) -> Iterator[dict[str, Any]]:
    paginator = client.get_paginator("list_objects_v2")
    pages = _call(
        f"list s3://{settings.bucket}/{prefix}",
        lambda: list(paginator.paginate(Bucket=settings.bucket, Prefix=prefix)),
        missing="StoreBucketMissing",
    )
    for page in pages:
        yield from page.get("Contents", [])


def list_artifacts(settings: S3Settings) -> list[StoredArtifact]:
    """Every key under the prefix (20 hex digits, as artifact_key makes them), sorted."""
    client = settings.client()
    by_key: dict[str, list[dict[str, Any]]] = {}
    for obj in _objects(settings, client, settings.prefix):
        rest = str(obj["Key"])[len(settings.prefix) :]
        key, _, _ = rest.partition("/")
        if KEY.match(key):
            by_key.setdefault(key, []).append(obj)
    out: list[StoredArtifact] = []
    for key, objects in sorted(by_key.items()):
        manifest = next((o for o in objects if o["Key"] == settings.object_key(key, MANIFEST)), None)
        modified = manifest["LastModified"] if manifest else max(o["LastModified"] for o in objects)
        size = sum(int(o.get("Size", 0)) for o in objects)
        out.append(StoredArtifact(key=key, modified=modified, complete=manifest is not None, size=size))
    return out


def delete_artifact(settings: S3Settings, key: str) -> None:
    """The manifest first (the key stops being complete), then everything else under the key."""
    if not KEY.match(key):
        raise ValueError(f"not an artifact key: {key!r}")
    client = settings.client()
    name = settings.object_key(key, MANIFEST)
    _call(
        f"delete s3://{settings.bucket}/{name}",
        lambda: client.delete_object(Bucket=settings.bucket, Key=name),
        missing="StoreBucketMissing",
    )
    names = [o["Key"] for o in _objects(settings, client, settings.object_key(key))]
    for start in range(0, len(names), 1000):
        batch = [{"Key": n} for n in names[start : start + 1000]]

        def drop(batch: list[dict[str, str]] = batch) -> None:
            client.delete_objects(Bucket=settings.bucket, Delete={"Objects": batch, "Quiet": True})

        _call(f"delete under s3://{settings.bucket}/{settings.object_key(key)}", drop, missing="StoreBucketMissing")


class Meter:
    """Bytes transferred, as progress lines on stderr at most once a second (thread-safe:
    s3transfer calls back from its worker threads)."""

    def __init__(self, what: str, say: Callable[[str], None] = _say) -> None:
        self.what, self.say = what, say
        self.bytes = 0
        self.started = self.last = time.monotonic()
        self._lock = threading.Lock()

    def __call__(self, count: int) -> None:
        with self._lock:
            self.bytes += count
            now = time.monotonic()
            if now - self.last >= 1.0:
                self.last = now
                self.say(self.line())

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        return f"{self.what}: {self.bytes / 1e6:.1f} MB, {self.bytes / 1e6 / elapsed:.1f} MB/s"
