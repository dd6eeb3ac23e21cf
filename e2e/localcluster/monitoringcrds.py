"""The Prometheus operator's ServiceMonitor and PodMonitor CRDs, for checking the chart's
monitors against the real schema (tests/integration/test_chart.py).

Nothing is built: the `github.com/prometheus-operator/prometheus-operator` Go module ships the
CRDs under `example/prometheus-operator-crd/`. `python -m localcluster build` fetches the module
through the Go module proxy (checksum-verified) and caches the two files by version under
`~/.cache/flotilla/manifests/prometheus-operator-<v>/`. They are not installed by `up`: a test
applies them when it needs them.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

from .build import RETRY_HINT, BuildError, classify_failure, module_download
from .versions import load_versions, manifests_dir

MODULE = "github.com/prometheus-operator/prometheus-operator"
CRD_DIR = "example/prometheus-operator-crd"
FILES = ("monitoring.coreos.com_servicemonitors.yaml", "monitoring.coreos.com_podmonitors.yaml")


def read_files(info: dict[str, Any]) -> dict[str, str]:
    """FILES from the module's extracted directory, else from its zip (`<module>@<v>/` prefix)."""
    directory = Path(info.get("Dir") or "/nonexistent")
    if all((directory / CRD_DIR / f).is_file() for f in FILES):
        return {f: (directory / CRD_DIR / f).read_text() for f in FILES}
    archive = Path(info.get("Zip") or "/nonexistent")
    if not archive.is_file():
        return {}
    with zipfile.ZipFile(archive) as zipped:
        names = {n.rpartition(f"/{CRD_DIR}/")[2]: n for n in zipped.namelist() if f"/{CRD_DIR}/" in n}
        return {f: zipped.read(names[f]).decode() for f in FILES if f in names}


def fetch(version: str, work: Path, out: Path) -> None:
    """Build step of the `prometheus-operator` group: cache FILES of `version` in `out`."""
    info = module_download(MODULE, version, work)
    files = read_files(info)
    if set(files) != set(FILES):
        cause = info.get("Error") or f"{MODULE}@{version} lacks {CRD_DIR}/{{{','.join(FILES)}}}; {RETRY_HINT}"
        raise BuildError(classify_failure("go mod download", str(cause)))
    for name, text in files.items():
        (out / name).write_text(text)


def crd_paths(version: str | None = None) -> list[Path]:
    """The cached CRD files (default version: PROMETHEUS_OPERATOR_VERSION in versions.env)."""
    directory = manifests_dir("prometheus-operator", version or load_versions().prometheus_operator)
    paths = [directory / f for f in FILES]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{missing[0]} is missing: run `make cluster-binaries` (python -m localcluster build)")
    return paths
