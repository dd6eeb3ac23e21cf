"""The Node object, its status and its Lease: registration and heartbeats like a kubelet.

The node lifecycle controller marks a node NotReady (and taints it) when its Lease in
kube-node-lease is not renewed within the grace period, so the Lease is renewed every 10 s;
the Ready condition's heartbeat is refreshed less often, as the kubelet does.
"""

from __future__ import annotations

import logging
import platform
import socket
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lightkube.resources.coordination_v1 import Lease
from lightkube.resources.core_v1 import Node
from lightkube.types import PatchType

from . import __version__
from .config import TAINT, AgentConfig
from .kube import Kube, status_code
from .network import PodNetwork
from .status import now

Obj = dict[str, Any]
LEASE_NAMESPACE = "kube-node-lease"
NETWORK_ANNOTATION = "processnode.flotilla.dev/pod-network"
HOST_IP = "127.0.0.1"
log = logging.getLogger(__name__)


def micro_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def node_manifest(config: AgentConfig, network: PodNetwork) -> Obj:
    """The Node as registered. Not annotated for KWOK: KWOK manages only annotated nodes."""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": config.name,
            "labels": config.node_labels(),
            "annotations": {NETWORK_ANNOTATION: f"{network.mode} {network.cidr}"},
        },
        "spec": {"taints": [dict(TAINT)] if config.taint else []},
    }


def merge_taints(existing: list[Obj], want_ours: bool) -> list[Obj]:
    """Ours added or removed; taints of others (node lifecycle controller) kept."""
    kept = [t for t in existing if t.get("key") != TAINT["key"]]
    return [*kept, dict(TAINT)] if want_ours else kept


def ready_conditions(at: str, message: str = "process node agent is posting ready status") -> list[Obj]:
    def cond(kind: str, status: str, reason: str, text: str) -> Obj:
        return {
            "type": kind,
            "status": status,
            "reason": reason,
            "message": text,
            "lastHeartbeatTime": at,
            "lastTransitionTime": at,
        }

    return [
        cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
        cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
        cond("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
        cond("Ready", "True", "KubeletReady", message),
    ]


def keep_transitions(new: list[Obj], old: list[Obj]) -> list[Obj]:
    previous = {c.get("type"): c for c in old}
    for cond in new:
        before = previous.get(cond["type"])
        if before and before.get("status") == cond["status"] and before.get("lastTransitionTime"):
            cond["lastTransitionTime"] = before["lastTransitionTime"]
    return new


def node_status(config: AgentConfig, kube_version: str, old_conditions: list[Obj], at: str) -> Obj:
    capacity = config.node_capacity()
    return {
        "capacity": capacity,
        "allocatable": dict(capacity),
        "conditions": keep_transitions(ready_conditions(at), old_conditions),
        "addresses": [{"type": "InternalIP", "address": HOST_IP}, {"type": "Hostname", "address": config.name}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},  # no kubelet API: kubectl logs/exec cannot work
        "nodeInfo": {
            "machineID": _machine_id(),
            "systemUUID": str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{socket.gethostname()}/{config.name}")),
            "bootID": _boot_id(),
            "kernelVersion": platform.release(),
            "osImage": f"process node on {platform.system()} ({socket.gethostname()})",
            "containerRuntimeVersion": f"processnode://{__version__}",
            "kubeletVersion": kube_version,
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": config.node_labels()["kubernetes.io/arch"],
        },
    }


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def _machine_id() -> str:
    return _read("/etc/machine-id") or uuid.uuid5(uuid.NAMESPACE_DNS, socket.gethostname()).hex


def _boot_id() -> str:
    return _read("/proc/sys/kernel/random/boot_id")


def lease_manifest(config: AgentConfig, node_uid: str) -> Obj:
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": config.name,
            "namespace": LEASE_NAMESPACE,
            # Garbage-collected with the Node, as the kubelet's lease is.
            "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": config.name, "uid": node_uid}],
        },
        "spec": {
            "holderIdentity": config.name,
            "leaseDurationSeconds": config.lease_seconds,
            "renewTime": micro_now(),
        },
    }


class NodeAgent:
    """Registers the Node and keeps its Lease and status fresh."""

    def __init__(self, kube: Kube, config: AgentConfig, network: PodNetwork) -> None:
        self.kube = kube
        self.config = config
        self.network = network
        self.uid = ""
        self.kube_version = "v0.0.0"
        self._conditions: list[Obj] = []

    async def register(self) -> Obj:
        self.kube_version = await self.kube.server_version()
        wanted = node_manifest(self.config, self.network)
        existing = await self.kube.get(Node, self.config.name)
        if existing is None:
            node = await self.kube.create(wanted)
        else:
            spec = {"taints": merge_taints((existing.get("spec") or {}).get("taints") or [], self.config.taint)}
            body = {"metadata": {**wanted["metadata"], "resourceVersion": existing["metadata"]["resourceVersion"]}}
            node = await self.kube.patch(Node, self.config.name, {**body, "spec": spec}, patch_type=PatchType.MERGE)
        self.uid = node["metadata"]["uid"]
        self._conditions = (node.get("status") or {}).get("conditions") or []
        await self.post_status()
        await self.renew_lease()
        return node

    async def post_status(self) -> None:
        status = node_status(self.config, self.kube_version, self._conditions, now())
        try:
            node = await self.kube.patch(Node.Status, self.config.name, {"status": status})
        except Exception as err:
            if status_code(err) != 404:
                raise
            await self._register_again()
            return
        self._conditions = (node.get("status") or {}).get("conditions") or []

    async def renew_lease(self) -> None:
        lease = lease_manifest(self.config, self.uid)
        try:
            await self.kube.patch(
                Lease,
                self.config.name,
                {"spec": lease["spec"], "metadata": {"ownerReferences": lease["metadata"]["ownerReferences"]}},
                namespace=LEASE_NAMESPACE,
                patch_type=PatchType.MERGE,
            )
        except Exception as err:
            if status_code(err) != 404:
                raise
            node = await self.kube.get(Node, self.config.name)
            if node is None or node["metadata"]["uid"] != self.uid:
                await self._register_again()  # the lease went with a deleted Node
                return
            await self.kube.create(lease)

    async def _register_again(self) -> None:
        """Someone deleted the Node (`kubectl delete node`): register anew, as at start."""
        log.warning("node %s was deleted from the API: registering it again", self.config.name)
        await self.register()
