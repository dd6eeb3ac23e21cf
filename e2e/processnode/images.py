"""The image table: which local executable plays which container image.

There is no container runtime, so an image is only a name for "what this container runs".
Each known repository (tag and digest ignored) lists the commands it provides; a container's
command (or, without one, the image's entrypoint) is looked up by the basename of argv[0]:

| image repository                          | commands                      | runs                                 |
|-------------------------------------------|-------------------------------|--------------------------------------|
| ghcr.io/flotilla-dev/flotilla-optimizer   | python, python3, flotilla     | this virtualenv's python / flotilla  |
| ghcr.io/flotilla-dev/flotilla-operator    | python, python3, flotilla     | this virtualenv's python / flotilla  |
| nvcr.io/nvidia/tritonserver               | tritonserver                  | the nvidia-pytriton wheel's binary   |
| ghcr.io/flotilla-dev/flotilla-triton      | tritonserver                  | the nvidia-pytriton wheel's binary   |
| flotilla.local/python (tests, examples)   | python, python3, sh, bash,    | venv python; the host's sh, bash,    |
|                                           | cat, sleep, true, false, test | cat, sleep, true, false, test        |

Pure: resolution returns a `Launch` description; nothing is started here.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path, PurePosixPath


class Kind(Enum):
    PYTHON = "python"  # this virtualenv's interpreter
    VENV_SCRIPT = "venv-script"  # a console script installed in this virtualenv
    TRITON = "tritonserver"  # needs the Triton runtime set-up (libraries, backends)
    HOST = "host"  # a host executable found on PATH


@dataclass(frozen=True)
class Image:
    repository: str
    commands: Mapping[str, Kind]
    entrypoint: tuple[str, ...]  # the image's ENTRYPOINT: used when a container sets no command
    cmd: tuple[str, ...]  # the image's CMD: default arguments when a container sets neither
    description: str


FLOTILLA_COMMANDS = {"python": Kind.PYTHON, "python3": Kind.PYTHON, "flotilla": Kind.VENV_SCRIPT}
TRITON_COMMANDS = {"tritonserver": Kind.TRITON}
GENERIC_COMMANDS = {
    "python": Kind.PYTHON,
    "python3": Kind.PYTHON,
    **{name: Kind.HOST for name in ("sh", "bash", "cat", "sleep", "true", "false", "test")},
}

IMAGES: tuple[Image, ...] = (
    Image(
        "ghcr.io/flotilla-dev/flotilla-optimizer",
        FLOTILLA_COMMANDS,
        ("python", "-m", "flotilla"),
        ("optimize",),
        "the optimizer Job (python -m flotilla optimize)",
    ),
    Image("ghcr.io/flotilla-dev/flotilla-operator", FLOTILLA_COMMANDS, ("flotilla",), ("run",), "the operator"),
    Image("nvcr.io/nvidia/tritonserver", TRITON_COMMANDS, ("tritonserver",), (), "NVIDIA Triton Inference Server"),
    Image("ghcr.io/flotilla-dev/flotilla-triton", TRITON_COMMANDS, ("tritonserver",), (), "Flotilla's Triton runtime"),
    Image("flotilla.local/python", GENERIC_COMMANDS, ("python",), (), "generic test image"),
)


class ImageError(Exception):
    """The container cannot start; `reason` is the kubelet-style waiting/terminated reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def repository(image: str) -> str:
    """`nvcr.io/nvidia/tritonserver:25.10-py3@sha256:...` -> `nvcr.io/nvidia/tritonserver`.

    Docker Hub short names are normalised (`python` -> `docker.io/library/python`) so an
    alias can name them either way.
    """
    name = image.split("@", 1)[0]
    last_slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > last_slash:
        name = name[:colon]
    parts = name.split("/")
    if len(parts) == 1:
        return f"docker.io/library/{name}"
    if "." not in parts[0] and ":" not in parts[0] and parts[0] != "localhost":
        return f"docker.io/{name}"
    return name


@dataclass(frozen=True)
class Launch:
    argv: tuple[str, ...]
    kind: Kind
    image: Image


@dataclass(frozen=True)
class ImageTable:
    images: Mapping[str, Image] = field(default_factory=lambda: {i.repository: i for i in IMAGES})
    python: str = sys.executable
    venv_bin: Path = Path(sys.executable).parent

    def with_aliases(self, aliases: Mapping[str, str]) -> ImageTable:
        """`{"my.registry/triton": "nvcr.io/nvidia/tritonserver"}`: another name for a known image."""
        images = dict(self.images)
        for alias, target in aliases.items():
            known = images.get(repository(target))
            if known is None:
                raise ValueError(f"image alias {alias}={target}: {target} is not in the image table")
            images[repository(alias)] = known
        return ImageTable(images, self.python, self.venv_bin)

    def lookup(self, image: str) -> Image:
        found = self.images.get(repository(image))
        if found is None:
            known = ", ".join(sorted(self.images))
            raise ImageError(
                "ErrImagePull",
                f'image "{image}" is not in the process node\'s image table (known repositories: {known})',
            )
        return found

    def resolve(self, image: str, command: Sequence[str], args: Sequence[str]) -> Launch:
        """argv for a container, as the runtime would build it from entrypoint/command/args."""
        known = self.lookup(image)
        # Kubernetes' rule: command replaces ENTRYPOINT (and drops CMD); args replace CMD.
        words = [*command, *args] if command else [*known.entrypoint, *(args or known.cmd)]
        name = PurePosixPath(words[0]).name
        kind = known.commands.get(name)
        if kind is None:
            provided = ", ".join(sorted(known.commands))
            raise ImageError(
                "StartError",
                f'exec: "{words[0]}": executable file not found in image {known.repository} '
                f"(the process node provides: {provided})",
            )
        return Launch((self._executable(kind, name), *words[1:]), kind, known)

    def _executable(self, kind: Kind, name: str) -> str:
        if kind is Kind.PYTHON:
            return self.python
        if kind is Kind.VENV_SCRIPT:
            return str(self.venv_bin / name)
        if kind is Kind.TRITON:
            return "tritonserver"  # replaced by the Triton runtime's binary when launched
        found = shutil.which(name, path="/usr/local/bin:/usr/bin:/bin")
        if found is None:
            raise ImageError("StartError", f'exec: "{name}": executable file not found on this machine')
        return found
