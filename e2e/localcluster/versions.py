"""Pinned versions (e2e/versions.env) and the places binaries are cached."""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

E2E_DIR = Path(__file__).resolve().parent.parent
REPO_ROOT = E2E_DIR.parent
VERSIONS_FILE = E2E_DIR / "versions.env"
TOOLS_DIR = E2E_DIR / "tools"


@dataclass(frozen=True)
class Versions:
    kubernetes: str
    etcd: str
    kwok: str
    helm: str
    kubectl_minor: str
    prometheus: str = ""
    gateway_api: str = ""
    actionlint: str = ""
    prometheus_operator: str = ""
    kind: str = ""
    kind_node_image: str = ""
    versitygw: str = ""


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
            actionlint=values["ACTIONLINT_VERSION"],
            prometheus_operator=values["PROMETHEUS_OPERATOR_VERSION"],
            kind=values["KIND_VERSION"],
            kind_node_image=values["KIND_NODE_IMAGE"],
            versitygw=values["VERSITYGW_VERSION"],
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


def tool_version(name: str, module: str) -> str:
    """Cache key of one of our own Go test tools (e2e/tools/<name>): the version of `module`
    its go.mod pins (the pin lives there, next to go.sum, not in versions.env), plus a hash
    of its go.mod, go.sum and sources, so an edit to the program is a new cache entry too."""
    src = TOOLS_DIR / name
    gomod = (src / "go.mod").read_text()
    match = re.search(rf"^\s*(?:require\s+)?{re.escape(module)}\s+(v\S+)", gomod, re.M)
    if match is None:
        raise SystemExit(f"{src / 'go.mod'}: no requirement on {module}")
    digest = hashlib.sha256()
    for path in sorted([src / "go.mod", src / "go.sum", *src.glob("*.go")]):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return f"{match.group(1)}-{digest.hexdigest()[:8]}"


def kstatus_version() -> str:
    """e2e/tools/kstatus: sigs.k8s.io/cli-utils' status.Compute on stdin's objects."""
    return tool_version("kstatus", "sigs.k8s.io/cli-utils")


def kindconfig_version() -> str:
    """e2e/tools/kindconfig: kind's own config loader and validation on a cluster config."""
    return tool_version("kindconfig", "sigs.k8s.io/kind")
