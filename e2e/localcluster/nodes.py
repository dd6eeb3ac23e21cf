"""The simulated fleet: e2e/cluster/nodes.yaml -> Node objects that KWOK keeps Ready.

Pure: parsing and rendering only, so the file's rules are unit-tested without a cluster.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .versions import E2E_DIR

NODES_FILE = E2E_DIR / "cluster" / "nodes.yaml"
KWOK_ANNOTATION = ("kwok.x-k8s.io/node", "fake")  # the selector KWOK is started with
POOL_LABEL = "localcluster.flotilla.dev/pool"
GPU_TAINT: dict[str, str] = {"key": "nvidia.com/gpu", "effect": "NoSchedule"}
MIG_STRATEGIES = ("single", "mixed")


class NodeFileError(ValueError):
    """The node file is malformed; the message names the file and the pool."""


@dataclass(frozen=True)
class Mig:
    strategy: str
    devices: dict[str, int]  # profile (e.g. "1g.10gb") -> instances per GPU


@dataclass(frozen=True)
class Gpu:
    product: str
    count: int
    memory_mib: int | None = None
    family: str | None = None
    compute: str | None = None  # "9.0"
    mig: Mig | None = None


@dataclass(frozen=True)
class Pool:
    name: str
    count: int
    cpu: str
    memory: str
    pods: str
    labels: dict[str, str] = field(default_factory=dict)
    gpu: Gpu | None = None

    def node_names(self) -> list[str]:
        return [f"{self.name}-{i}" for i in range(self.count)]


def _require(cond: bool, where: str, message: str) -> None:
    if not cond:
        raise NodeFileError(f"{where}: {message}")


def _parse_mig(raw: Any, where: str) -> Mig:
    _require(isinstance(raw, dict), where, "gpu.mig must be a mapping")
    strategy = str(raw.get("strategy", "mixed"))
    _require(strategy in MIG_STRATEGIES, where, f"gpu.mig.strategy must be one of {MIG_STRATEGIES}")
    devices = raw.get("devices")
    _require(isinstance(devices, dict) and bool(devices), where, "gpu.mig.devices must map profile -> instances")
    parsed: dict[str, int] = {}
    for profile, per_gpu in devices.items():
        _require(re.fullmatch(r"\d+g\.\d+gb", str(profile)) is not None, where, f"bad MIG profile {profile!r}")
        _require(isinstance(per_gpu, int) and per_gpu > 0, where, f"MIG {profile}: instances must be a positive int")
        parsed[str(profile)] = per_gpu
    return Mig(strategy=strategy, devices=parsed)


def _parse_gpu(raw: Any, where: str) -> Gpu:
    _require(isinstance(raw, dict), where, "gpu must be a mapping")
    product, count = raw.get("product"), raw.get("count")
    _require(isinstance(product, str) and " " not in product, where, "gpu.product must be a GFD name (no spaces)")
    _require(isinstance(count, int) and count > 0, where, "gpu.count must be a positive int")
    memory = raw.get("memory")
    _require(memory is None or isinstance(memory, int), where, "gpu.memory is MiB per GPU, an int")
    compute = raw.get("compute")
    _require(compute is None or re.fullmatch(r"\d+\.\d+", str(compute)) is not None, where, "gpu.compute is like '9.0'")
    return Gpu(
        product=str(product),
        count=int(count),
        memory_mib=memory,
        family=raw.get("family"),
        compute=None if compute is None else str(compute),
        mig=None if raw.get("mig") is None else _parse_mig(raw["mig"], where),
    )


def _parse_pool(raw: Any, defaults: dict[str, Any], index: int, path: Path) -> Pool:
    where = f"{path}: pools[{index}]"
    _require(isinstance(raw, dict), where, "must be a mapping")
    name = raw.get("name")
    _require(
        isinstance(name, str) and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name) is not None,
        where,
        "name must be a DNS label (lowercase letters, digits, '-')",
    )
    where = f"{path}: pool {name}"
    count = raw.get("count", 1)
    _require(isinstance(count, int) and count >= 0, where, "count must be an int >= 0")
    merged = {**defaults, **raw}
    labels = {**defaults.get("labels", {}), **raw.get("labels", {})}
    _require(all(isinstance(v, str) for v in labels.values()), where, "label values must be strings")
    return Pool(
        name=str(name),
        count=int(count),
        cpu=str(merged.get("cpu", "8")),
        memory=str(merged.get("memory", "32Gi")),
        pods=str(merged.get("pods", "110")),
        labels=labels,
        gpu=None if raw.get("gpu") is None else _parse_gpu(raw["gpu"], where),
    )


def parse_pools(text: str, path: Path = NODES_FILE) -> list[Pool]:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise NodeFileError(f"{path}: not valid YAML: {err}") from None
    _require(isinstance(doc, dict) and isinstance(doc.get("pools"), list), str(path), "needs a `pools:` list")
    defaults = doc.get("defaults") or {}
    _require(isinstance(defaults, dict), str(path), "`defaults:` must be a mapping")
    pools = [_parse_pool(raw, defaults, i, path) for i, raw in enumerate(doc["pools"])]
    names = [n for p in pools for n in p.node_names()]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    _require(not duplicates, str(path), f"duplicate node names {duplicates}")
    return pools


def load_pools(path: Path = NODES_FILE) -> list[Pool]:
    return parse_pools(path.read_text(), path)


def gfd_labels(gpu: Gpu) -> dict[str, str]:
    """Labels as NVIDIA GPU feature discovery writes them (the subset schedulers use)."""
    labels = {
        "nvidia.com/gpu.present": "true",
        "nvidia.com/gpu.product": gpu.product,
        "nvidia.com/gpu.count": str(gpu.count),
    }
    if gpu.memory_mib is not None:
        labels["nvidia.com/gpu.memory"] = str(gpu.memory_mib)
    if gpu.family:
        labels["nvidia.com/gpu.family"] = gpu.family
    if gpu.compute:
        labels["nvidia.com/gpu.compute.major"], labels["nvidia.com/gpu.compute.minor"] = gpu.compute.split(".")
    if gpu.mig:
        labels["nvidia.com/mig.strategy"] = gpu.mig.strategy
        for profile, per_gpu in gpu.mig.devices.items():
            slices = profile.split("g.", 1)[0]
            prefix = f"nvidia.com/mig-{profile}"
            labels[f"{prefix}.count"] = str(per_gpu * gpu.count)
            labels[f"{prefix}.product"] = f"{gpu.product}-MIG-{profile}"
            labels[f"{prefix}.slices.gi"] = slices
            labels[f"{prefix}.slices.ci"] = slices
    return labels


def gpu_resources(gpu: Gpu) -> dict[str, str]:
    """Extended resources the NVIDIA device plugin would advertise."""
    if gpu.mig is None:
        return {"nvidia.com/gpu": str(gpu.count)}
    # Every GPU is partitioned: under the mixed strategy each profile is its own resource
    # and no whole GPU is left; under single, all instances are advertised as nvidia.com/gpu.
    if gpu.mig.strategy == "single":
        return {"nvidia.com/gpu": str(gpu.count * sum(gpu.mig.devices.values()))}
    resources = {"nvidia.com/gpu": "0"}
    for profile, per_gpu in gpu.mig.devices.items():
        resources[f"nvidia.com/mig-{profile}"] = str(per_gpu * gpu.count)
    return resources


def node_manifest(pool: Pool, name: str) -> dict[str, Any]:
    labels = {
        "type": "kwok",
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        POOL_LABEL: pool.name,
        **pool.labels,
    }
    capacity = {"cpu": pool.cpu, "memory": pool.memory, "pods": pool.pods}
    taints: list[dict[str, str]] = []
    if pool.gpu:
        labels.update(gfd_labels(pool.gpu))
        capacity.update(gpu_resources(pool.gpu))
        taints.append(dict(GPU_TAINT))
    # Status is kept on create, and KWOK's node-initialize stage keeps capacity/allocatable
    # while it adds conditions and addresses, so the fleet is fully described here.
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels, "annotations": {KWOK_ANNOTATION[0]: KWOK_ANNOTATION[1]}},
        "spec": {"taints": taints} if taints else {},
        "status": {"capacity": capacity, "allocatable": dict(capacity)},
    }


def node_manifests(pools: list[Pool]) -> list[dict[str, Any]]:
    return [node_manifest(pool, name) for pool in pools for name in pool.node_names()]
