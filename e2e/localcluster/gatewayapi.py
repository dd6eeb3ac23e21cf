"""Gateway API CRDs (standard channel) on the local control plane.

Nothing is built: the `sigs.k8s.io/gateway-api` Go module ships the CRD YAML under
`config/crd/standard/`. `python -m localcluster build` fetches the module through the Go
module proxy and caches the CRDs by version (`~/.cache/flotilla/manifests/gateway-api-<v>/`:
the upstream files verbatim plus `crds.json`, the CRD objects in one file that loads fast).

`up` installs them (server-side apply, then waits for Established) unless
FLOTILLA_CLUSTER_GATEWAY_API=0, in which case it removes them: the operator's "no Gateway
API" path is tested on the same cluster. Tests switch at run time with `install(cluster)` and
`uninstall(cluster)` (or the `gateway_api` / `no_gateway_api` fixtures).

Only CustomResourceDefinitions are applied. The standard channel also ships a
ValidatingAdmissionPolicy (`safe-upgrades`) that refuses experimental or older CRDs over
these; a throwaway test cluster has no use for it and tests may need to swap versions.
"""

from __future__ import annotations

import json
import os
import time
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from .build import RETRY_HINT, BuildError, classify_failure, module_download
from .kubeapi import ApiError, KubeAPI
from .versions import load_versions, manifests_dir

if TYPE_CHECKING:
    from .cluster import Cluster

MODULE = "sigs.k8s.io/gateway-api"
STANDARD_DIR = "config/crd/standard"
CRDS_FILE = "crds.json"
GROUPS = ("gateway.networking.k8s.io", "gateway.networking.x-k8s.io")
ENV = "FLOTILLA_CLUSTER_GATEWAY_API"
BUNDLE_ANNOTATION = "gateway.networking.k8s.io/bundle-version"
FIELD_MANAGER = "flotilla-localcluster"
CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
TIMEOUT_S = 60.0


# ---------------------------------------------------------------- fetch (build step)


def standard_crd_files(names: Iterable[str]) -> list[str]:
    """The standard channel's YAML files among a module's file names (paths relative to the
    module root, or inside the module zip with its `<module>@<version>/` prefix): direct
    children of config/crd/standard/, without kustomization.yaml. Sorted."""
    found = []
    for name in names:
        parent, _, base = name.rpartition("/")
        in_standard = parent == STANDARD_DIR or parent.endswith("/" + STANDARD_DIR)
        if in_standard and base.endswith(".yaml") and base != "kustomization.yaml":
            found.append(name)
    return sorted(found)


def crd_documents(texts: Iterable[str]) -> list[dict[str, Any]]:
    """Every CustomResourceDefinition in these YAML texts (other kinds, such as the
    safe-upgrades admission policy, and empty documents are dropped)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRDs are ~1 MB of YAML
    docs: list[dict[str, Any]] = []
    for text in texts:
        for doc in yaml.load_all(text, Loader=loader):
            if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                docs.append(doc)
    return docs


def read_module_files(info: dict[str, Any]) -> dict[str, str]:
    """The standard CRD files of a downloaded module, by base name, from its extracted
    directory or, failing that, straight from the verified zip. (`go mod download` refuses
    to extract a module whose go.mod wants a newer Go than the local one, e.g. gateway-api
    v1.7.0 asks for go 1.27; only its YAML is needed, so the toolchain does not matter.)"""
    directory = Path(info.get("Dir") or "/nonexistent")
    if (directory / STANDARD_DIR).is_dir():
        names = [str(p.relative_to(directory)) for p in (directory / STANDARD_DIR).iterdir()]
        return {Path(n).name: (directory / n).read_text() for n in standard_crd_files(names)}
    archive = Path(info.get("Zip") or "/nonexistent")
    if archive.is_file():
        with zipfile.ZipFile(archive) as zipped:
            return {Path(n).name: zipped.read(n).decode() for n in standard_crd_files(zipped.namelist())}
    return {}


def fetch(version: str, work: Path, out: Path) -> None:
    """Build step of the `gateway-api` group: cache the standard CRDs of `version` in `out`."""
    info = module_download(MODULE, version, work)
    files = read_module_files(info)
    if not files:
        cause = info.get("Error") or f"no {STANDARD_DIR}/*.yaml in {MODULE}@{version}"
        raise BuildError(classify_failure("go mod download", str(cause)))
    crds = crd_documents(files.values())
    if not crds:
        raise BuildError(f"{MODULE}@{version}: no CustomResourceDefinition in {STANDARD_DIR}; {RETRY_HINT}")
    (out / "standard").mkdir()
    for name, text in files.items():
        (out / "standard" / name).write_text(text)
    (out / CRDS_FILE).write_text(json.dumps(crds))


# ---------------------------------------------------------------- install / uninstall


def enabled(environ: dict[str, str] | None = None) -> bool:
    """FLOTILLA_CLUSTER_GATEWAY_API: on unless 0/false/no/off."""
    value = (environ if environ is not None else os.environ).get(ENV, "1")
    return value.strip().lower() not in ("0", "false", "no", "off")


def crds_file(version: str | None = None) -> Path:
    """The cached crds.json of `version` (default: GATEWAY_API_VERSION in versions.env)."""
    return manifests_dir("gateway-api", version or load_versions().gateway_api) / CRDS_FILE


def load_crds(version: str | None = None) -> list[dict[str, Any]]:
    path = crds_file(version)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run `make cluster-binaries` (python -m localcluster build)")
    crds: list[dict[str, Any]] = json.loads(path.read_text())
    return crds


def _established(crd: dict[str, Any]) -> bool:
    conditions = crd.get("status", {}).get("conditions", [])
    return any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions)


def _bundle(crd: dict[str, Any]) -> str | None:
    annotations: dict[str, str] = crd["metadata"].get("annotations") or {}
    return annotations.get(BUNDLE_ANNOTATION)


def _get(api: KubeAPI, name: str) -> dict[str, Any] | None:
    try:
        found: dict[str, Any] = api.get(f"{CRD_PATH}/{name}")
    except ApiError as err:
        if err.status == 404:
            return None
        raise
    return found


def _wait(what: str, done: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)


def apply(api: KubeAPI, version: str | None = None, timeout: float = TIMEOUT_S) -> list[str]:
    """Server-side apply every standard CRD (skipping those already at this bundle version
    and Established) and wait until all are Established. Returns the CRD names."""
    crds = load_crds(version)
    names = []
    for crd in crds:
        name = crd["metadata"]["name"]
        names.append(name)
        current = _get(api, name)
        if current and _established(current) and _bundle(current) == _bundle(crd):
            continue
        api.request(
            "PATCH",
            f"{CRD_PATH}/{name}?fieldManager={FIELD_MANAGER}&force=true",
            crd,
            "application/apply-patch+yaml",  # JSON is YAML
        )
    _wait(
        f"{len(names)} Gateway API CRDs to be Established",
        lambda: all((c := _get(api, n)) and _established(c) for n in names),
        timeout,
    )
    return names


def installed_names(api: KubeAPI) -> list[str]:
    """CRDs of the Gateway API groups now on the cluster (whatever version put them there)."""
    items = api.get(CRD_PATH)["items"]
    return sorted(c["metadata"]["name"] for c in items if c["spec"]["group"] in GROUPS)


def remove(api: KubeAPI, timeout: float = TIMEOUT_S) -> list[str]:
    """Delete every Gateway API CRD (their objects go with them) and wait until they are gone."""
    names = installed_names(api)
    for name in names:
        try:
            api.delete(f"{CRD_PATH}/{name}")
        except ApiError as err:
            if err.status != 404:
                raise
    _wait(f"{len(names)} Gateway API CRDs to be deleted", lambda: not installed_names(api), timeout)
    return names


def _api(cluster: Cluster) -> KubeAPI:
    api = cluster.api
    api.timeout_s = TIMEOUT_S  # the HTTPRoute CRD alone is ~0.5 MB; a busy 2-core machine is slow
    return api


def install(cluster: Cluster, version: str | None = None, timeout: float = TIMEOUT_S) -> list[str]:
    """Make the Gateway API (standard channel, GATEWAY_API_VERSION unless given) available on
    this cluster; returns once every CRD is Established. Idempotent."""
    return apply(_api(cluster), version, timeout)


def uninstall(cluster: Cluster, timeout: float = TIMEOUT_S) -> list[str]:
    """Remove the Gateway API CRDs (and so every Gateway API object); returns the names removed."""
    return remove(_api(cluster), timeout)


def installed_bundle(api: KubeAPI) -> str:
    """The bundle version of the HTTPRoute CRD when it is Established, else ""."""
    crd = _get(api, "httproutes.gateway.networking.k8s.io")
    return (_bundle(crd) or "unknown") if crd and _established(crd) else ""


def is_installed(cluster: Cluster) -> bool:
    """True when HTTPRoute is served (its CRD is Established)."""
    crd = _get(cluster.api, "httproutes.gateway.networking.k8s.io")
    return bool(crd and _established(crd))
