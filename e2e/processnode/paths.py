"""Container paths on a machine without mount namespaces.

Each pod gets a private tree, `<state>/pods/<uid>/root/`, that mirrors the container's view
of every path a pod spec names: each volumeMount's mountPath is a symlink there to the
volume's directory (or file, for a subPath), and each container's terminationMessagePath
is a real file. A process cannot see that tree as `/`, so the strings the kubelet would
hand over unchanged (args, env values, workingDir) are rewritten: an absolute path that
starts at the beginning of the value, or after whitespace, `=`, `:`, `,` or a quote, and
that equals or lies below a mount path, gets the tree's root prepended. Every other path
is the host's (the host filesystem plays the image). A directory above a mount path counts
too: the container has it, holding the mount point. Pure, except `build_tree`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

# A path starts at the value's start or after a delimiter and runs to the next delimiter.
_CANDIDATE = re.compile(r"""(?:^|(?<=[\s=:,'"]))/[^\s=:,'"]*""")


def _normalise(path: str) -> str:
    return "/" + "/".join(part for part in path.split("/") if part)


@dataclass(frozen=True)
class PathMap:
    root: Path  # the pod's tree on the host
    prefixes: tuple[str, ...]  # container paths that live inside the tree

    @classmethod
    def of(cls, root: Path, container_paths: Iterable[str]) -> PathMap:
        # "/" would capture every path on the machine; a pod cannot mount over the image root.
        kept = {_normalise(p) for p in container_paths if _normalise(p) != "/"}
        return cls(root, tuple(sorted(kept, key=len, reverse=True)))

    def covers(self, path: str) -> bool:
        """A mount path, a path below one, or a directory above one (the container has such a
        directory to hold the mount point: `--model-repository=/models` for a mount at
        `/models/m/1`)."""
        if path.startswith("//"):  # part of a URL (file:///x, http://host/x), never a container path
            return False
        plain = _normalise(path)
        if plain == "/":
            return False
        return any(plain == p or plain.startswith(p + "/") or p.startswith(plain + "/") for p in self.prefixes)

    def host(self, container_path: str) -> Path:
        """Where a container path lives on the host (no check that it is covered)."""
        return self.root / _normalise(container_path).lstrip("/")

    def rewrite(self, value: str) -> str:
        """Rewrite covered container paths inside one argument or environment value, once."""

        def replace(match: re.Match[str]) -> str:
            path = match.group(0)
            return f"{self.root}{path}" if self.covers(path) else path

        return _CANDIDATE.sub(replace, value)

    def rewrite_all(self, values: Sequence[str]) -> list[str]:
        return [self.rewrite(v) for v in values]


@dataclass(frozen=True)
class Mount:
    container_path: str
    source: Path  # host directory or file the mount shows


def build_tree(root: Path, mounts: Sequence[Mount]) -> None:
    """Create the symlinks of a pod's tree; parents first so nested mounts land inside."""
    root.mkdir(parents=True, exist_ok=True)
    for mount in sorted(mounts, key=lambda m: _normalise(m.container_path).count("/")):
        link = root / _normalise(mount.container_path).lstrip("/")
        # A parent that is itself a mount resolves into that volume: the kubelet also creates
        # the mount point of a nested mount inside the outer volume.
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.is_file():
            link.unlink()
        elif link.is_dir():
            # An empty directory (e.g. the mount point of a previous run) gives way to the link.
            link.rmdir()
        link.symlink_to(mount.source)


def touch_file(path: Path) -> None:
    """An empty, writable regular file (a termination-message path), truncating an old one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
