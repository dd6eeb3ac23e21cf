"""What the demo's steps share: paths, the namespace, the cluster once it is up."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localcluster.cluster import Cluster
from localcluster.config import Settings

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "01-smollm2"
NAMESPACE = "flotilla-demo"
MODEL = "smollm2"


@dataclass
class Demo:
    settings: Settings
    state_dir: Path
    cluster: Cluster | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @classmethod
    def create(cls) -> Demo:
        settings = Settings.from_env()
        state = settings.state_dir / "demo"
        state.mkdir(parents=True, exist_ok=True)
        return cls(settings, state)

    @property
    def kube(self) -> Cluster:
        if self.cluster is None:
            raise RuntimeError("the cluster step has not run")
        return self.cluster

    @property
    def gateway_url(self) -> str:
        port_file = self.state_dir / "gateway.port"
        port = port_file.read_text().strip() if port_file.exists() else "?"
        return f"http://127.0.0.1:{port}"

    @property
    def operator_log(self) -> Path:
        return self.state_dir / "operator.log"

    @property
    def node_state(self) -> Path:
        return self.settings.state_dir / "processnode" / "local-0"

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        return self.kube.kubectl(*args, input=input, check=check).stdout

    def get(self, *args: str) -> Any:
        proc = self.kube.kubectl("get", *args, "-o", "json", check=False)
        return json.loads(proc.stdout) if proc.returncode == 0 else None
