"""A real Prometheus for tests: the binary built from Go modules (group `prometheus`), one
process per test or session, on 127.0.0.1, its data in a directory of the caller's.

    with prometheus.start(scrape_config(["127.0.0.1:9100"]), tmp_path) as prom:
        prom.query('up{job="test"}')        # -> the `result` list of /api/v1/query

The binary has no service discovery plugins but file and http (built with `remove_all_sd`):
use `static_configs` (or `file_sd_configs`). The web UI is not built in; the HTTP API,
/-/ready, /-/reload and /-/quit are.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from .build import ensure_binaries
from .procs import stop
from .versions import bin_dir, load_versions

READY_TIMEOUT_S = 60.0
RETENTION = "2h"


def binary(version: str | None = None) -> Path:
    """Where the pinned (or given) Prometheus lives: ~/.cache/flotilla/bin/prometheus-<v>/prometheus."""
    return bin_dir("prometheus", version or load_versions().prometheus) / "prometheus"


def scrape_config(
    targets: Sequence[str],
    job: str = "test",
    interval: str = "1s",
    metrics_path: str = "/metrics",
    **scrape: Any,
) -> dict[str, Any]:
    """A configuration scraping `targets` ("host:port") every `interval`; extra keyword
    arguments go into the scrape config (e.g. scheme="https", params={...})."""
    job_config: dict[str, Any] = {
        "job_name": job,
        "metrics_path": metrics_path,
        "static_configs": [{"targets": list(targets)}],
        **scrape,
    }
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": [job_config],
    }


def render_config(config: dict[str, Any] | str) -> str:
    """The prometheus.yml text: a dict is dumped as YAML, a string is used as it is (after
    checking it is a YAML mapping, so a typo fails here rather than in Prometheus' log)."""
    if isinstance(config, str):
        parsed = yaml.safe_load(config) if config.strip() else {}
        if not isinstance(parsed, dict):
            raise ValueError("a Prometheus configuration must be a YAML mapping")
        return config
    return yaml.safe_dump(config, sort_keys=False)


def argv(
    prometheus: Path,
    config_file: Path,
    data_dir: Path,
    port: int,
    retention: str = RETENTION,
    extra: Sequence[str] = (),
) -> list[str]:
    return [
        str(prometheus),
        f"--config.file={config_file}",
        f"--storage.tsdb.path={data_dir}",
        f"--storage.tsdb.retention.time={retention}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--web.enable-lifecycle",  # POST /-/reload after rewriting the config file
        "--log.level=info",
        *extra,
    ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrometheusError(RuntimeError):
    pass


@dataclass
class Prometheus:
    """A running Prometheus. `url` is http://127.0.0.1:<port>."""

    port: int
    workdir: Path
    config_file: Path
    log_file: Path
    process: subprocess.Popen[bytes]
    argv: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def _http(self, method: str, path: str, timeout: float = 10.0) -> bytes:
        req = urllib.request.Request(self.url + path, method=method)
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body: bytes = resp.read()
        return body

    def ready(self) -> bool:
        try:
            self._http("GET", "/-/ready", timeout=2.0)
        except (OSError, urllib.error.URLError):
            return False
        return True

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>?params; returns `data` (raises PrometheusError on an error status)."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            doc = json.loads(self._http("GET", f"/api/v1/{path}{query}"))
        except urllib.error.HTTPError as err:
            doc = json.loads(err.read() or b"{}")
        if doc.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {doc.get('errorType')}: {doc.get('error')}")
        return doc["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query; the `result` list (each item has `metric` and `value`)."""
        result: list[dict[str, Any]] = self.api("query", query=expr)["result"]
        return result

    def reload(self, config: dict[str, Any] | str | None = None) -> None:
        """Rewrite the configuration (if given) and make Prometheus re-read it."""
        if config is not None:
            self.config_file.write_text(render_config(config))
        self._http("POST", "/-/reload")

    def stop(self, grace_s: float = 10.0) -> None:
        if self.process.poll() is None:
            stop([self.process.pid], grace_s=grace_s)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=grace_s)

    def __enter__(self) -> Prometheus:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def start(
    config: dict[str, Any] | str,
    workdir: Path,
    port: int | None = None,
    *,
    retention: str = RETENTION,
    extra_args: Sequence[str] = (),
    timeout: float = READY_TIMEOUT_S,
) -> Prometheus:
    """Start Prometheus with this configuration (dict or YAML text) and return once
    /-/ready answers. Its config, data (`data/`) and log (`prometheus.log`) live in
    `workdir`. Without `port`, a free one is picked (and another tried if it is taken
    before Prometheus binds it). Builds the binary first if it is not cached."""
    prometheus = binary()
    if not prometheus.is_file():
        ensure_binaries(only=("prometheus",))
    workdir.mkdir(parents=True, exist_ok=True)
    config_file = workdir / "prometheus.yml"
    config_file.write_text(render_config(config))
    data_dir = workdir / "data"
    log_file = workdir / "prometheus.log"
    attempts = 1 if port is not None else 3
    failure = ""
    for _ in range(attempts):
        chosen = port if port is not None else free_port()
        args = argv(prometheus, config_file, data_dir, chosen, retention, extra_args)
        with log_file.open("ab") as sink:
            process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT)
        handle = Prometheus(chosen, workdir, config_file, log_file, process, args)
        deadline = time.monotonic() + timeout
        while process.poll() is None and time.monotonic() < deadline:
            if handle.ready():
                return handle
            time.sleep(0.1)
        handle.stop()
        lines = [ln for ln in handle.log().splitlines() if ln.strip()]
        failure = lines[-1] if lines else "no output"
        if "address already in use" not in failure:
            break
    raise PrometheusError(f"Prometheus did not become ready: {failure} (log: {log_file})")
