"""A tiny volume provisioner: Pending claims without a storage class get a hostPath PV.

The local cluster has no provisioner, and the operator creates a `flotilla-artifacts` claim
in each namespace. A claim that is Pending, names no volume, and has no storageClassName (or
"") gets a PV named `pvc-<claim uid>` whose claimRef points at it, so the real PV controller
binds the two. The directory is `<state>/volumes/<namespace>/<claim>`: keyed by name, not
uid, so a claim deleted and created again (a namespace re-created by `make demo`) finds its
data again. PVs are Retain; once their claim is gone the agent deletes the PV object and
keeps the directory.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from lightkube.resources.core_v1 import PersistentVolume

from .kube import Kube, status_code

Obj = dict[str, Any]
PROVISIONER = "processnode.flotilla.dev"
PROVISIONED_BY_LABEL = "processnode.flotilla.dev/provisioned-by"
DEFAULT_SIZE = "1Gi"
log = logging.getLogger(__name__)


def wants_volume(claim: Obj) -> bool:
    spec = claim.get("spec") or {}
    return (
        (claim.get("status") or {}).get("phase", "Pending") == "Pending"
        and not spec.get("volumeName")
        and not spec.get("storageClassName")
        and not spec.get("selector")  # a selector asks for a particular, pre-made PV
        and not (claim.get("metadata") or {}).get("deletionTimestamp")
    )


def volume_dir(volumes_dir: Path, claim: Obj) -> Path:
    namespace: str = claim["metadata"]["namespace"]
    name: str = claim["metadata"]["name"]
    return volumes_dir / namespace / name


def pv_name(claim: Obj) -> str:
    return f"pvc-{claim['metadata']['uid']}"


def pv_manifest(claim: Obj, path: Path, node: str) -> Obj:
    meta, spec = claim["metadata"], claim.get("spec") or {}
    size = ((spec.get("resources") or {}).get("requests") or {}).get("storage", DEFAULT_SIZE)
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": pv_name(claim),
            "labels": {PROVISIONED_BY_LABEL: node},
            "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER},
        },
        "spec": {
            "capacity": {"storage": size},
            "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
            "volumeMode": spec.get("volumeMode") or "Filesystem",
            "storageClassName": spec.get("storageClassName") or "",
            "persistentVolumeReclaimPolicy": "Retain",
            "hostPath": {"path": str(path), "type": "DirectoryOrCreate"},
            "claimRef": {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "namespace": meta["namespace"],
                "name": meta["name"],
                "uid": meta["uid"],
            },
        },
    }


class Provisioner:
    def __init__(self, kube: Kube, volumes_dir: Path, node: str) -> None:
        self.kube = kube
        self.volumes_dir = volumes_dir
        self.node = node

    async def on_claim(self, claim: Obj) -> None:
        if not wants_volume(claim):
            return
        path = volume_dir(self.volumes_dir, claim)
        path.mkdir(parents=True, exist_ok=True)
        try:
            await self.kube.create(pv_manifest(claim, path, self.node))
        except Exception as err:
            if status_code(err) != 409:  # 409: made already (a re-list sees the claim again)
                raise
            return
        meta = claim["metadata"]
        log.info("provisioned %s for claim %s/%s at %s", pv_name(claim), meta["namespace"], meta["name"], path)

    async def on_claim_deleted(self, claim: Obj) -> None:
        await self._delete_pv(pv_name(claim))

    async def collect_released(self) -> None:
        """PVs we made whose claim is gone (deleted while the agent was not watching)."""
        volumes, _ = await self.kube.list(PersistentVolume, namespaced=False)
        for pv in volumes:
            ours = (pv["metadata"].get("labels") or {}).get(PROVISIONED_BY_LABEL) == self.node
            if ours and (pv.get("status") or {}).get("phase") == "Released":
                await self._delete_pv(pv["metadata"]["name"])

    async def _delete_pv(self, name: str) -> None:
        pv = await self.kube.get(PersistentVolume, name)
        if pv is None or (pv["metadata"].get("labels") or {}).get(PROVISIONED_BY_LABEL) != self.node:
            return
        try:
            await self.kube.client.delete(PersistentVolume, name)
        except Exception as err:
            if status_code(err) != 404:
                raise
