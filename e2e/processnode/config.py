"""The agent's settings and the layout of its state directory. Pure."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from .network import DEFAULT_CIDR

NODE_LABEL = "flotilla.dev/process-node"
NODE_SELECTOR = {NODE_LABEL: "true"}
TAINT = {"key": NODE_LABEL, "value": "true", "effect": "NoSchedule"}
DEFAULT_NAME = "local-0"
ARCH = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def machine_capacity() -> dict[str, str]:
    return {
        "cpu": str(os.cpu_count() or 1),
        "memory": f"{psutil.virtual_memory().total // 1024}Ki",
        "pods": "110",
    }


@dataclass(frozen=True)
class AgentConfig:
    kubeconfig: Path
    state_dir: Path
    name: str = DEFAULT_NAME
    gpus: int = 0
    gpu_product: str = ""
    capacity: dict[str, str] = field(default_factory=machine_capacity)
    labels: dict[str, str] = field(default_factory=dict)
    taint: bool = False
    pod_cidr: str = DEFAULT_CIDR
    add_route: bool = True
    ipam_dir: Path | None = None
    image_aliases: dict[str, str] = field(default_factory=dict)
    backoff_seconds: float = 10.0
    max_backoff_seconds: float = 300.0
    lease_seconds: int = 40
    lease_renew_seconds: float = 10.0
    status_seconds: float = 60.0
    shutdown_grace_seconds: float = 10.0
    parent_pid: int | None = None

    @property
    def pods_dir(self) -> Path:
        return self.state_dir / "pods"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def volumes_dir(self) -> Path:
        return self.state_dir / "volumes"

    @property
    def ready_file(self) -> Path:
        """Written once the Node is registered and Ready; read by `processnode.start`."""
        return self.state_dir / "agent.json"

    def log_path(self, namespace: str, pod: str, container: str) -> Path:
        return self.logs_dir / f"{namespace}_{pod}_{container}.log"

    def node_labels(self) -> dict[str, str]:
        labels = {
            "kubernetes.io/hostname": self.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": ARCH.get(platform.machine(), platform.machine()),
            NODE_LABEL: "true",
        }
        if self.gpus:
            labels["nvidia.com/gpu.present"] = "true"
            labels["nvidia.com/gpu.count"] = str(self.gpus)
            if self.gpu_product:
                labels["nvidia.com/gpu.product"] = self.gpu_product
        return {**labels, **self.labels}

    def node_capacity(self) -> dict[str, str]:
        capacity = dict(self.capacity)
        if self.gpus:
            capacity["nvidia.com/gpu"] = str(self.gpus)
        return capacity
