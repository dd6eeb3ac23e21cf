"""Running the `tritonserver` of the nvidia-pytriton wheel as a Triton image would.

DESIGN.md §4: the binary needs LD_LIBRARY_PATH set to the wheel's `nvidia_pytriton.libs`,
a `--backend-directory` with the Python backend stub for this interpreter copied into
`backends/python/`, and the virtualenv first on PATH (the stub imports numpy and
onnxruntime from it). `flotilla.local.triton` knows how; the backend directory is prepared
once per state directory under `<state>/triton/backends`.

A container's network namespace makes 0.0.0.0 mean "the pod's own address"; here every
pod shares the host's stack, so an endpoint Triton would bind to 0.0.0.0 is bound to the
pod IP instead (only when the container's args do not choose an address themselves).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from flotilla.local.triton import TritonError, find_install, library_path, prepare_backends

from .images import ImageError

ADDRESS_FLAGS = ("--http-address", "--grpc-address", "--metrics-address")


@dataclass(frozen=True)
class TritonRuntime:
    binary: Path
    libs: Path
    backends: Path

    def env(self, inherited_ld_path: str = "") -> dict[str, str]:
        return {"LD_LIBRARY_PATH": library_path(self.libs, inherited_ld_path)}

    def argv(self, argv: Sequence[str], pod_ip: str) -> list[str]:
        """The container's argv with the binary's path and what a netns would have given."""
        words = [str(self.binary), *argv[1:]]
        if not _has_flag(words, "--backend-directory"):
            words.append(f"--backend-directory={self.backends}")
        for flag in ADDRESS_FLAGS:
            if not _has_flag(words, flag):
                words.append(f"{flag}={pod_ip}")
        return words


def _has_flag(words: Sequence[str], flag: str) -> bool:
    return any(w == flag or w.startswith(flag + "=") for w in words)


def prepare(state_dir: Path) -> TritonRuntime:
    """Locate the wheel's server and build the backend directory (idempotent). The set-up is
    flotilla.local.triton's, shared with the optimizer's tests and the demo."""
    try:
        install = find_install()
        backends = prepare_backends(install, state_dir / "triton")
    except (TritonError, OSError) as err:
        raise ImageError("StartError", f"tritonserver: {err}") from None
    return TritonRuntime(install.binary, install.libs, backends)
