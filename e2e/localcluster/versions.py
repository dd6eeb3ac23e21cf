"""Pinned versions (e2e/versions.env) and the places binaries are cached."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

E2E_DIR = Path(__file__).resolve().parent.parent
REPO_ROOT = E2E_DIR.parent
VERSIONS_FILE = E2E_DIR / "versions.env"


@dataclass(frozen=True)
class Versions:
    kubernetes: str
    etcd: str
    kwok: str
    helm: str
    kubectl_minor: str
    prometheus: str = ""
    gateway_api: str = ""


def read_env_file(path: Path) -> dict[str, str]:
    """Parse KEY=VALUE lines; '#' starts a comment. Shared with make (`include`)."""
    values: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def load_versions(path: Path = VERSIONS_FILE) -> Versions:
    values = read_env_file(path)
    try:
        return Versions(
            kubernetes=values["KUBERNETES_VERSION"],
            etcd=values["ETCD_VERSION"],
            kwok=values["KWOK_VERSION"],
            helm=values["HELM_VERSION"],
            kubectl_minor=values["KUBECTL_MINOR"],
            prometheus=values["PROMETHEUS_VERSION"],
            gateway_api=values["GATEWAY_API_VERSION"],
        )
    except KeyError as missing:
        raise SystemExit(f"{path}: missing {missing.args[0]}") from None


def cache_root() -> Path:
    """~/.cache/flotilla (XDG_CACHE_HOME honoured); FLOTILLA_CACHE overrides for tests."""
    if override := os.environ.get("FLOTILLA_CACHE"):
        return Path(override)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "flotilla"


def bin_dir(component: str, version: str) -> Path:
    return cache_root() / "bin" / f"{component}-{version}"


def manifests_dir(component: str, version: str) -> Path:
    """Cached upstream manifests (not binaries), e.g. the Gateway API CRDs, by version."""
    return cache_root() / "manifests" / f"{component}-{version}"
