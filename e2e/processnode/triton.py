"""Running the `tritonserver` of the nvidia-pytriton wheel as a Triton image would.

DESIGN.md §4: the binary needs LD_LIBRARY_PATH set to the wheel's `nvidia_pytriton.libs`,
a `--backend-directory` with the Python backend stub for this interpreter copied into
`backends/python/`, and the virtualenv first on PATH (the stub imports numpy and
onnxruntime from it). The backend directory is prepared once per agent under
`<state>/triton/backends`.

A container's network namespace makes 0.0.0.0 mean "the pod's own address"; here every
pod shares the host's stack, so an endpoint Triton would bind to 0.0.0.0 is bound to the
pod IP instead (only when the container's args do not choose an address themselves).
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .images import ImageError

ADDRESS_FLAGS = ("--http-address", "--grpc-address", "--metrics-address")


@dataclass(frozen=True)
class TritonRuntime:
    binary: Path
    libs: Path
    backends: Path

    def env(self, inherited_ld_path: str = "") -> dict[str, str]:
        paths = [str(self.libs), *([inherited_ld_path] if inherited_ld_path else [])]
        return {"LD_LIBRARY_PATH": ":".join(paths)}

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


def _pytriton_dir() -> Path:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ImageError("StartError", f"tritonserver: the nvidia-pytriton wheel is not installed in {sys.prefix}")
    return Path(next(iter(spec.submodule_search_locations)))


def prepare(state_dir: Path) -> TritonRuntime:
    """Locate the wheel's server and build the backend directory (idempotent)."""
    package = _pytriton_dir()
    server = package / "tritonserver"
    libs = package.parent / "nvidia_pytriton.libs"
    binary = server / "bin" / "tritonserver"
    if not binary.is_file():
        raise ImageError("StartError", f"tritonserver: {binary} is missing from the nvidia-pytriton wheel")
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = server / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise ImageError("StartError", f"tritonserver: no Python backend stub for Python {version} in {server}")
    backends = state_dir / "triton" / "backends"
    target_stub = backends / "python" / "triton_python_backend_stub"
    if not target_stub.is_file():
        staging = backends.with_name("backends.tmp")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(server / "backends", staging, symlinks=True)
        shutil.copy2(stub, staging / "python" / "triton_python_backend_stub")
        shutil.rmtree(backends, ignore_errors=True)
        staging.rename(backends)
    return TritonRuntime(binary, libs, backends)
