"""Run the `tritonserver` binary shipped in the nvidia-pytriton wheel (Triton 2.51) on this machine.

For tests, the demo and the process node: CPU only, python backend. What it takes (measured,
see DESIGN.md):
- LD_LIBRARY_PATH with the wheel's `nvidia_pytriton.libs`;
- a backend directory whose `python/` also holds `triton_python_backend_stub` for this Python
  version (the wheel keeps the stubs apart, under `python_backend_stubs/<major.minor>/`);
- this virtualenv's bin first on PATH, so the stub imports numpy (< 2) and onnxruntime from it;
- this interpreter's own libpython first on LD_LIBRARY_PATH (`python_libdir`): the stub is linked
  against the soname libpython3.11.so.1.0, which the loader otherwise finds in /lib (the
  system's Python, e.g. Debian's 3.11.2) while the stub's sys.path is this virtualenv's base
  interpreter's stdlib (e.g. pyenv's 3.11.7). Those extension modules do not load into an older
  patch release's libpython (`_ssl...so: undefined symbol: _PyModule_Add`), so `import ssl`
  failed inside the stub and with it urllib3, botocore and transformers (via accelerate).

`start()` binds HTTP, gRPC and metrics to free loopback ports, loads the named models with
explicit model control, waits until the server and every model are ready, and returns a
handle whose `stop()` ends the server's whole process group (the stubs included).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

NVML_NOISE = ("NVML", "DCGM", "CUDA", "nvidia")


class TritonError(RuntimeError):
    """tritonserver is missing, failed to start, or a model did not become ready."""


@dataclass(frozen=True)
class TritonInstall:
    binary: Path
    libs: Path
    backends: Path
    python_stub: Path


def find_install() -> TritonInstall:
    """Locate tritonserver and its pieces inside the installed nvidia-pytriton wheel."""
    import importlib.util

    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonError("nvidia-pytriton is not installed (the 'serve' extra)")
    package = Path(next(iter(spec.submodule_search_locations)))
    root = package / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    install = TritonInstall(
        binary=root / "bin" / "tritonserver",
        libs=package.parent / "nvidia_pytriton.libs",
        backends=root / "backends",
        python_stub=root / "python_backend_stubs" / version / "triton_python_backend_stub",
    )
    for path in (install.binary, install.libs, install.backends, install.python_stub):
        if not path.exists():
            raise TritonError(f"nvidia-pytriton install is missing {path}")
    return install


def prepare_backends(install: TritonInstall, dest: Path) -> Path:
    """A backend directory with the python stub in place (the wheel's own is read-only in spirit)."""
    backends = dest / "backends"
    if not (backends / "python" / "triton_python_backend_stub").exists():
        shutil.rmtree(backends, ignore_errors=True)
        shutil.copytree(install.backends, backends)
        shutil.copy2(install.python_stub, backends / "python" / "triton_python_backend_stub")
    return backends


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def python_libdir() -> Path | None:
    """The directory of this interpreter's shared libpython, when it was built with one: the
    Python backend stub must load the same libpython as the stdlib on its sys.path."""
    import sysconfig

    libdir, soname = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
    if not sysconfig.get_config_var("Py_ENABLE_SHARED") or not libdir or not soname:
        return None
    return Path(libdir) if (Path(libdir) / soname).exists() else None


def library_path(libs: Path, inherited: str = "") -> str:
    """LD_LIBRARY_PATH for tritonserver and its stubs: this interpreter's libpython, the wheel's
    libs (`libs`), then what was inherited."""
    libpython = python_libdir()
    paths = [*([str(libpython)] if libpython else []), str(libs), *([inherited] if inherited else [])]
    return os.pathsep.join(paths)


def server_env(install: TritonInstall, python_bin: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = library_path(install.libs, env.get("LD_LIBRARY_PATH", ""))
    bin_dir = str(python_bin or Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(p for p in (bin_dir, env.get("PATH", "")) if p)
    # Triton's python backend sizes its shared memory for big tensors; keep the default region
    # modest, it grows on demand.
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def command(
    install: TritonInstall,
    repository: Path,
    backends: Path,
    models: Sequence[str],
    ports: tuple[int, int, int],
    extra_args: Sequence[str] = (),
) -> list[str]:
    http, grpc, metrics = ports
    args = [
        str(install.binary),
        f"--model-repository={repository}",
        f"--backend-directory={backends}",
        "--model-control-mode=explicit",
        *[f"--load-model={m}" for m in models],
        "--http-address=127.0.0.1",
        f"--http-port={http}",
        "--grpc-address=127.0.0.1",
        f"--grpc-port={grpc}",
        "--metrics-address=127.0.0.1",
        f"--metrics-port={metrics}",
        "--allow-metrics=true",
        "--allow-gpu-metrics=false",
        "--metrics-config=summary_latencies=true",
        "--exit-on-error=true",
        "--strict-readiness=true",
        "--log-verbose=0",
    ]
    return args + list(extra_args)


class LocalTriton:
    """A running tritonserver. Use as a context manager or call stop()."""

    def __init__(self, process: subprocess.Popen[bytes], ports: tuple[int, int, int], log_path: Path) -> None:
        self.process = process
        self.http_port, self.grpc_port, self.metrics_port = ports
        self.log_path = log_path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def log_tail(self, chars: int = 4000) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        lines = [line for line in text.splitlines() if not any(n in line for n in NVML_NOISE)]
        return "\n".join(lines)[-chars:]

    def request(self, method: str, path: str, body: Any = None, timeout: float = 120.0) -> tuple[int, Any]:
        """(status, parsed JSON or text) of an HTTP call to the server."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw = resp.read().decode()
                status = int(resp.status)
        except urllib.error.HTTPError as exc:
            raw = exc.read().decode(errors="replace")
            status = exc.code
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw

    def generate(self, model: str, text: str, max_tokens: int | None = None) -> str:
        body: dict[str, Any] = {"text_input": text}
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        status, answer = self.request("POST", f"/v2/models/{model}/generate", body)
        if status != 200:
            raise TritonError(f"generate on {model} failed ({status}): {answer}")
        return str(answer["text_output"])

    def metrics(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=10) as resp:
            text: str = resp.read().decode()
            return text

    def ready(self, models: Sequence[str] = ()) -> bool:
        try:
            if self.request("GET", "/v2/health/ready", timeout=5)[0] != 200:
                return False
            return all(self.request("GET", f"/v2/models/{m}/ready", timeout=5)[0] == 200 for m in models)
        except (OSError, urllib.error.URLError):
            return False

    def wait_ready(self, models: Sequence[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise TritonError(f"tritonserver exited with {self.process.returncode}:\n{self.log_tail()}")
            if self.ready(models):
                return
            time.sleep(0.5)
        raise TritonError(f"tritonserver not ready after {timeout:.0f}s:\n{self.log_tail()}")

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM to the server's process group (Triton drains and unloads), then SIGKILL."""
        if self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        except ProcessLookupError:
            pass

    def __enter__(self) -> LocalTriton:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def start(
    repository: Path,
    models: Sequence[str],
    workdir: Path,
    *,
    ready_timeout: float = 300.0,
    extra_args: Sequence[str] = (),
    python_bin: Path | None = None,
) -> LocalTriton:
    """Start tritonserver on `repository`, load `models`, wait until they are ready."""
    install = find_install()
    workdir.mkdir(parents=True, exist_ok=True)
    backends = prepare_backends(install, workdir)
    ports = (free_port(), free_port(), free_port())
    log_path = workdir / f"tritonserver-{ports[0]}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command(install, repository, backends, models, ports, extra_args),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=server_env(install, python_bin),
            start_new_session=True,  # its own process group: stop() reaches the stubs too
        )
    server = LocalTriton(process, ports, log_path)
    try:
        server.wait_ready(models, ready_timeout)
    except BaseException:
        server.stop()
        raise
    return server


def serving_repository(artifact_model_dir: Path, served_name: str, repository: Path, config_text: str) -> Path:
    """Lay out one model the way the operator serves it: <repo>/<served>/config.pbtxt + 1 -> artifact's 1/."""
    model_dir = repository / served_name
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text(config_text)
    version = model_dir / "1"
    if version.is_symlink() or version.exists():
        version.unlink()
    version.symlink_to(artifact_model_dir.resolve() / "1", target_is_directory=True)
    return model_dir
