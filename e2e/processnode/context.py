"""What every pod on the node shares: settings, API client, addresses, images, events."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from . import triton
from .config import AgentConfig
from .events import Events
from .images import ImageTable
from .ipam import Ipam
from .kube import Kube
from .network import PodNetwork
from .node import HOST_IP


@dataclass
class NodeContext:
    config: AgentConfig
    kube: Kube
    ipam: Ipam
    network: PodNetwork
    images: ImageTable
    events: Events
    host_ip: str = HOST_IP
    _triton: triton.TritonRuntime | None = field(default=None, repr=False)

    @property
    def venv_bin(self) -> Path:
        return self.images.venv_bin

    def triton(self) -> triton.TritonRuntime:
        """Prepared on first use: an agent that never runs Triton never copies its backends."""
        if self._triton is None:
            self._triton = triton.prepare(self.config.state_dir)
        return self._triton
