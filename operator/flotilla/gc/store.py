"""The stores a sweep walks: a directory (the artifact claim, mounted in the GC Job) and S3
(through flotilla.objectstore). Both list what they hold and delete one artifact by name.

The directory's layout (optimize/repository.py, optimize/pipeline.py):

    <root>/<key>/manifest.json + model dirs   a published artifact ("complete": true, last written)
    <root>/.<key>.partial-XXXX/               a publish in progress (renamed to <key>/ when done)
    <root>/.<key>.work-XXXX/                  an optimization's work directory
    <root>/.<key>.deleting-XXXX/              an artifact a sweep is deleting (renamed first)
    <root>/.exports/<id>/                     the fp32 export cache (reuse_exports)

Only names of these shapes are touched: anything else on the volume (lost+found, a user's
files) is never listed, so never deleted. Export-cache entries are listed under the name
`.exports/<id>`, which no SmallModel references: a cache entry older than the retention goes
(the next optimization of that source exports again).
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import stat
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from .decide import Stored

MANIFEST = "manifest.json"
EXPORTS = ".exports"
KEY = re.compile(r"^[0-9a-f]{20}$")
TEMP = re.compile(r"^\.([0-9a-f]{20})\.(partial|work|deleting)-[^/]+$")
EXPORT = re.compile(r"^[0-9a-f]{16}$")


class ArtifactStore(Protocol):
    def list(self) -> list[Stored]: ...

    def delete(self, name: str) -> None: ...


def _walk(path: Path) -> Iterator[os.stat_result]:
    """Stats of the directory and everything under it (not following links)."""
    yield path.lstat()
    for dirpath, dirnames, filenames in os.walk(path):
        for name in (*dirnames, *filenames):
            try:
                yield (Path(dirpath) / name).lstat()
            except FileNotFoundError:  # removed while we walk (a cleanup of its own)
                continue


def _complete(path: Path, key: str) -> os.stat_result | None:
    """The manifest's stat when `path` holds a complete artifact with this key."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        stat = (path / MANIFEST).stat()
    except (OSError, ValueError):
        return None
    ok = isinstance(manifest, dict) and manifest.get("key") == key and manifest.get("complete") is True
    return stat if ok else None


class DirectoryStore:
    """Artifacts as directories under `root` (the artifact claim's mount)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _entries(self) -> Iterator[tuple[str, str, Path]]:
        """(key, name, path) of every entry the sweep may consider."""
        for path in sorted(self.root.iterdir()):
            if not path.is_dir() or path.is_symlink():
                continue
            if KEY.match(path.name):
                yield path.name, path.name, path
            elif match := TEMP.match(path.name):
                yield match.group(1), path.name, path
        exports = self.root / EXPORTS
        if exports.is_dir() and not exports.is_symlink():
            for path in sorted(exports.iterdir()):
                if (
                    path.is_dir()
                    and not path.is_symlink()
                    and (EXPORT.match(path.name) or path.name.startswith(".export-"))
                ):
                    name = f"{EXPORTS}/{path.name}"
                    yield name, name, path

    def list(self) -> list[Stored]:
        out: list[Stored] = []
        for key, name, path in self._entries():
            try:
                stats = list(_walk(path))
            except FileNotFoundError:
                continue
            size = sum(s.st_size for s in stats if not _is_dir(s))
            manifest = _complete(path, key) if KEY.match(name) else None
            if name.startswith(EXPORTS):  # a finished cache entry is whole; its metadata says when
                manifest = _stat(path / "export-metadata.json")
            newest = manifest.st_mtime if manifest is not None else max(s.st_mtime for s in stats)
            modified = datetime.fromtimestamp(newest, UTC)
            out.append(Stored(key=key, name=name, modified=modified, complete=manifest is not None, size=size))
        return out

    def delete(self, name: str) -> None:
        if not (KEY.match(name) or TEMP.match(name) or name.startswith(f"{EXPORTS}/")):
            raise ValueError(f"not an artifact entry: {name!r}")
        target = self.root / name
        if target.parent not in (self.root, self.root / EXPORTS) or target.is_symlink():
            raise ValueError(f"not an artifact entry: {name!r}")
        # Unpublish first: a rename is atomic, so no reader sees a half-deleted artifact under its
        # key; a sweep cut short leaves a name the next sweep lists (and deletes) again.
        token = uuid.uuid4().hex[:12]  # unique: a leftover of a pass cut short is never in the way
        if (temp := TEMP.match(name)) is not None:
            doomed = target.with_name(f".{temp.group(1)}.deleting-{token}")
        elif target.parent == self.root:
            doomed = target.with_name(f".{name}.deleting-{token}")
        else:
            doomed = target.with_name(f".export-deleting-{token}")
        target.rename(doomed)
        shutil.rmtree(doomed)


def _is_dir(st: os.stat_result) -> bool:
    return stat.S_ISDIR(st.st_mode)


def _stat(path: Path) -> os.stat_result | None:
    try:
        return path.stat()
    except OSError:
        return None


class ObjectStore:
    """S3-compatible storage through flotilla.objectstore's documented functions:
    `list_artifacts(settings) -> [StoredArtifact(key, modified, complete, size)]` and
    `delete_artifact(settings, key)`, settings `S3Settings` (env prefix FLOTILLA_S3_).
    Imported when used: the PVC sweep needs no S3 client."""

    def __init__(self, settings: Any = None) -> None:
        self._module: Any = importlib.import_module("flotilla.objectstore")
        self.settings = settings if settings is not None else self._module.S3Settings()

    def list(self) -> list[Stored]:
        out: list[Stored] = []
        for art in self._module.list_artifacts(self.settings):
            modified = art.modified if art.modified.tzinfo else art.modified.replace(tzinfo=UTC)
            out.append(Stored(key=art.key, name=art.key, modified=modified, complete=bool(art.complete), size=art.size))
        return out

    def delete(self, name: str) -> None:
        self._module.delete_artifact(self.settings, name)
