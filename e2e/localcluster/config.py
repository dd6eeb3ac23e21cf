"""Where a local cluster lives, which ports it uses, and the kwokctl configuration for it.

Pure: nothing here starts a process, so the layout and the generated kwokctl file are
unit-tested. `Settings.from_env()` is the one place environment variables are read.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .nodes import KWOK_ANNOTATION
from .versions import E2E_DIR, REPO_ROOT, Versions

CLUSTER_NAME = "flotilla"
STAGES_FILE = E2E_DIR / "cluster" / "kwok-stages.yaml"
# A fixed, documented range (see e2e/README.md) rather than random ports: a stale process
# from a crashed run is found where we expect it, and a second cluster (CI beside a
# developer's) chooses another base with FLOTILLA_CLUSTER_PORT_BASE.
DEFAULT_PORT_BASE = 16440
COMPONENT_OFFSETS: dict[str, int] = {
    "kube-apiserver": 0,
    "etcd": 1,
    "etcd-peer": 2,
    "kwok-controller": 3,
    "kube-controller-manager": 4,
    "kube-scheduler": 5,
}
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Settings:
    state_dir: Path  # <repo>/.flotilla unless FLOTILLA_CLUSTER_DIR says otherwise
    port_base: int

    @classmethod
    def from_env(cls) -> Settings:
        state = os.environ.get("FLOTILLA_CLUSTER_DIR") or str(REPO_ROOT / ".flotilla")
        raw_base = os.environ.get("FLOTILLA_CLUSTER_PORT_BASE", str(DEFAULT_PORT_BASE))
        try:
            base = int(raw_base)
        except ValueError:
            raise ValueError(f"FLOTILLA_CLUSTER_PORT_BASE={raw_base!r} is not a port number") from None
        if not 1024 <= base <= 65535 - len(COMPONENT_OFFSETS):
            raise ValueError(f"FLOTILLA_CLUSTER_PORT_BASE={base} is outside 1024-{65535 - len(COMPONENT_OFFSETS)}")
        return cls(state_dir=Path(state).resolve(), port_base=base)

    @property
    def ports(self) -> dict[str, int]:
        return {name: self.port_base + offset for name, offset in COMPONENT_OFFSETS.items()}

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def kwok_workdir(self) -> Path:
        """KWOK_WORKDIR for kwokctl; the cluster itself lives in clusters/<name>/ below it."""
        return self.state_dir / "kwok"

    @property
    def cluster_dir(self) -> Path:
        return self.kwok_workdir / "clusters" / CLUSTER_NAME

    @property
    def state_file(self) -> Path:
        return self.state_dir / "cluster.json"

    @property
    def kwokctl_config(self) -> Path:
        return self.state_dir / "kwokctl.yaml"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "up.log"

    @property
    def api_url(self) -> str:
        return f"https://{LOOPBACK}:{self.ports['kube-apiserver']}"


def kwokctl_configuration(settings: Settings, versions: Versions, binaries: dict[str, Path]) -> dict[str, Any]:
    """The KwokctlConfiguration document: local binaries only, loopback only, fixed ports."""
    ports = settings.ports
    options: dict[str, Any] = {
        "runtime": "binary",
        "kubeVersion": versions.kubernetes,
        "bindAddress": LOOPBACK,
        "securePort": True,
        "kubeAuthorization": True,  # --authorization-mode=Node,RBAC
        "kubeAdmission": True,
        # A test cluster on 2 cores: client-side throttling in KCM only slows GC and Jobs.
        "disableQPSLimits": True,
        "kubeApiserverPort": ports["kube-apiserver"],
        "etcdPort": ports["etcd"],
        "etcdPeerPort": ports["etcd-peer"],
        "kwokControllerPort": ports["kwok-controller"],
        "kubeControllerManagerPort": ports["kube-controller-manager"],
        "kubeSchedulerPort": ports["kube-scheduler"],
        # Every binary is a local path: kwokctl symlinks local paths and would download
        # only for http(s) sources, so nothing is fetched at run time.
        "etcdBinary": str(binaries["etcd"]),
        "etcdctlBinary": str(binaries["etcdctl"]),
        "kubeApiserverBinary": str(binaries["kube-apiserver"]),
        "kubeControllerManagerBinary": str(binaries["kube-controller-manager"]),
        "kubeSchedulerBinary": str(binaries["kube-scheduler"]),
        "kubectlBinary": str(binaries["kubectl"]),  # kwokctl polls /version with it
        "kwokControllerBinary": str(binaries["kwok"]),
    }
    selector = f"{KWOK_ANNOTATION[0]}={KWOK_ANNOTATION[1]}"
    return {
        "kind": "KwokctlConfiguration",
        "apiVersion": "config.kwok.x-k8s.io/v1alpha1",
        "options": options,
        # kwokctl's binary runtime always passes --manage-all-nodes=true to the controller;
        # the process node (a real node agent) must stay out of KWOK's hands, so override it
        # and manage only nodes carrying the annotation.
        "componentsPatches": [
            {
                "name": "kwok-controller",
                "extraArgs": [
                    {"key": "manage-all-nodes", "value": "false", "override": True},
                    {"key": "manage-nodes-with-annotation-selector", "value": selector},
                ],
            }
        ],
    }


def kwok_configuration() -> dict[str, Any]:
    """Options for the kwok controller itself (kwokctl copies this into its kwok.yaml)."""
    # kwokctl re-serialises this document without applying kwok's defaults, and kwok then
    # refuses zero parallelism ("node leases parallelism must be greater than 0"), so every
    # defaulted option is restated with kwok v0.8.0's default value.
    options: dict[str, Any] = {
        "cidr": "10.244.0.1/16",  # default is a /24: a scale test may want more than 254 pods
        "podPlayStageParallelism": 4,
        "nodePlayStageParallelism": 4,
        "nodeLeaseParallelism": 4,
        "podsOnNodeSyncParallelism": 1,
        "enablePodsOnNodeSyncListPager": True,
        "enablePodsOnNodeSyncStreamWatch": False,
        "enableDebuggingHandlers": True,
        "enableContentionProfiling": False,
        "enableProfilingHandler": True,
    }
    return {"kind": "KwokConfiguration", "apiVersion": "config.kwok.x-k8s.io/v1alpha1", "options": options}


def render_kwokctl_config(settings: Settings, versions: Versions, binaries: dict[str, Path]) -> str:
    """kwokctl's -c file: our two configuration documents, then the stages file verbatim."""
    docs = [kwokctl_configuration(settings, versions, binaries), kwok_configuration()]
    head = yaml.safe_dump_all(docs, sort_keys=False)
    # Stages are copied as text (their templates stay readable in the generated file), minus
    # the comment-only header, which YAML would read as an empty document.
    return head + "".join(f"---\n{doc}" for doc in _documents(STAGES_FILE.read_text()))


def _documents(text: str) -> list[str]:
    chunks = re.split(r"^---[ \t]*$\n?", text, flags=re.M)
    return [c for c in chunks if any(ln.strip() and not ln.lstrip().startswith("#") for ln in c.splitlines())]
