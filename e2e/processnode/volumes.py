"""Pod volumes as host directories: emptyDir, configMap, secret, downwardAPI, projected
(service-account token, ConfigMap, Secret, downward API), hostPath, and PVCs whose PV is a
hostPath or local volume.

Files of ConfigMap/Secret/downward-API volumes are written once, when the pod starts (no
live update). A volume that cannot be set up yet (claim not bound, ConfigMap missing)
raises MountError; the pod retries, with a FailedMount event, like the kubelet.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightkube.models.authentication_v1 import BoundObjectReference, TokenRequestSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import (
    ConfigMap,
    PersistentVolume,
    PersistentVolumeClaim,
    Secret,
    ServiceAccountToken,
)

from .envvars import EnvError, EnvSources, field_ref, resource_ref
from .expand import expand
from .kube import Kube
from .paths import Mount

Obj = dict[str, Any]
log = logging.getLogger(__name__)
DEFAULT_MODE = 0o644


class MountError(Exception):
    """A volume cannot be set up (yet); the message goes into the FailedMount event."""


@dataclass(frozen=True)
class PodDirs:
    base: Path  # <state>/pods/<uid>

    @property
    def root(self) -> Path:
        return self.base / "root"

    @property
    def volumes(self) -> Path:
        return self.base / "volumes"

    @property
    def pids(self) -> Path:
        return self.base / "pids"


def object_bytes(obj: Obj, secret: bool) -> dict[str, bytes]:
    data: dict[str, bytes] = {}
    if secret:
        for key, value in (obj.get("data") or {}).items():
            data[key] = base64.b64decode(value)
        return data
    for key, value in (obj.get("data") or {}).items():
        data[key] = value.encode()
    for key, value in (obj.get("binaryData") or {}).items():
        data[key] = base64.b64decode(value)
    return data


def select_items(data: Mapping[str, bytes], items: list[Obj] | None, what: str, optional: bool) -> dict[str, bytes]:
    """Keys -> relative paths: all keys as files, or only the listed items."""
    if not items:
        return dict(data)
    selected: dict[str, bytes] = {}
    for item in items:
        if item["key"] not in data:
            if optional:
                continue
            raise MountError(f"configmap/secret {what}: key {item['key']!r} not found")
        selected[item["path"]] = data[item["key"]]
    return selected


def write_files(directory: Path, files: Mapping[str, bytes], mode: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for rel, content in files.items():
        target = directory / rel
        if ".." in Path(rel).parts:
            raise MountError(f"volume item path {rel!r} must not contain '..'")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_bytes(content)
        tmp.chmod(mode)
        tmp.replace(target)


class VolumeResolver:
    """Sets up one pod's volumes under its directory; returns name -> host path."""

    def __init__(self, kube: Kube, pod: Obj, dirs: PodDirs, sources: EnvSources) -> None:
        self.kube = kube
        self.pod = pod
        self.dirs = dirs
        self.sources = sources
        self.namespace: str = pod["metadata"]["namespace"]

    async def resolve_all(self) -> dict[str, Path]:
        resolved: dict[str, Path] = {}
        for volume in self.pod["spec"].get("volumes") or []:
            resolved[volume["name"]] = await self.resolve(volume)
        return resolved

    async def resolve(self, volume: Obj) -> Path:
        name: str = volume["name"]
        target = self.dirs.volumes / name
        if "emptyDir" in volume:
            target.mkdir(parents=True, exist_ok=True)
            return target
        if source := volume.get("configMap"):
            await self._config_map(source, target, source.get("defaultMode", DEFAULT_MODE))
            return target
        if source := volume.get("secret"):
            await self._secret(source, target, source.get("defaultMode", DEFAULT_MODE))
            return target
        if source := volume.get("downwardAPI"):
            write_files(target, self._downward(source.get("items") or []), source.get("defaultMode", DEFAULT_MODE))
            return target
        if source := volume.get("projected"):
            await self._projected(source, target)
            return target
        if source := volume.get("hostPath"):
            return host_path(source["path"], source.get("type") or "")
        if source := volume.get("persistentVolumeClaim"):
            return await self._claim(source["claimName"])
        kinds = sorted(k for k in volume if k != "name")
        raise MountError(f"volume {name!r}: type {kinds} is not supported by the process node")

    async def _config_map(self, source: Obj, target: Path, mode: int) -> None:
        obj = await self.kube.get(ConfigMap, source["name"], self.namespace)
        if obj is None:
            if source.get("optional"):
                target.mkdir(parents=True, exist_ok=True)
                return
            raise MountError(f'configmap "{source["name"]}" not found')
        files = select_items(
            object_bytes(obj, False), source.get("items"), source["name"], bool(source.get("optional"))
        )
        write_files(target, files, mode)

    async def _secret(self, source: Obj, target: Path, mode: int) -> None:
        name = source.get("secretName") or source.get("name") or ""
        obj = await self.kube.get(Secret, name, self.namespace)
        if obj is None:
            if source.get("optional"):
                target.mkdir(parents=True, exist_ok=True)
                return
            raise MountError(f'secret "{name}" not found')
        write_files(target, select_items(object_bytes(obj, True), source.get("items"), name, False), mode)

    def _downward(self, items: list[Obj]) -> dict[str, bytes]:
        files: dict[str, bytes] = {}
        containers = {c["name"]: c for c in self.pod["spec"]["containers"]}
        try:
            for item in items:
                if ref := item.get("fieldRef"):
                    files[item["path"]] = field_ref(self.pod, ref["fieldPath"], self.sources).encode()
                elif ref := item.get("resourceFieldRef"):
                    container = containers.get(ref.get("containerName", ""), {})
                    files[item["path"]] = resource_ref(container, ref, self.sources).encode()
        except EnvError as err:
            raise MountError(str(err)) from None
        return files

    async def _projected(self, source: Obj, target: Path) -> None:
        mode = source.get("defaultMode", DEFAULT_MODE)
        target.mkdir(parents=True, exist_ok=True)
        for part in source.get("sources") or []:
            if ref := part.get("configMap"):
                await self._config_map(ref, target, mode)
            elif ref := part.get("secret"):
                await self._secret({**ref, "secretName": ref.get("name")}, target, mode)
            elif ref := part.get("downwardAPI"):
                write_files(target, self._downward(ref.get("items") or []), mode)
            elif ref := part.get("serviceAccountToken"):
                token = await self._token(ref)
                write_files(target, {ref["path"]: token.encode()}, 0o600)

    async def _token(self, ref: Obj) -> str:
        """A bound service-account token (TokenRequest), as the kubelet mounts it."""
        meta = self.pod["metadata"]
        spec = TokenRequestSpec(
            audiences=[ref["audience"]] if ref.get("audience") else [],
            expirationSeconds=ref.get("expirationSeconds") or 3607,
            boundObjectRef=BoundObjectReference(kind="Pod", apiVersion="v1", name=meta["name"], uid=meta["uid"]),
        )
        account = self.pod["spec"].get("serviceAccountName") or "default"
        try:
            result = await self.kube.client.create(
                ServiceAccountToken(metadata=ObjectMeta(), spec=spec), name=account, namespace=self.namespace
            )
        except Exception as err:
            log.warning("token for %s/%s: %s", self.namespace, meta["name"], err)
            return ""
        return str(result.status.token) if result.status else ""

    async def _claim(self, claim_name: str) -> Path:
        claim = await self.kube.get(PersistentVolumeClaim, claim_name, self.namespace)
        if claim is None:
            raise MountError(f'persistentvolumeclaim "{claim_name}" not found')
        volume_name = (claim.get("spec") or {}).get("volumeName")
        if (claim.get("status") or {}).get("phase") != "Bound" or not volume_name:
            raise MountError(f'persistentvolumeclaim "{claim_name}" is not bound')
        pv = await self.kube.get(PersistentVolume, volume_name)
        if pv is None:
            raise MountError(f'persistentvolume "{volume_name}" not found')
        return pv_path(pv)


def pv_path(pv: Obj) -> Path:
    spec = pv.get("spec") or {}
    if source := spec.get("hostPath"):
        return host_path(source["path"], source.get("type") or "DirectoryOrCreate")
    if source := spec.get("local"):
        return host_path(source["path"], "Directory")
    kinds = sorted(k for k in spec if k not in ("capacity", "accessModes", "claimRef", "storageClassName"))
    raise MountError(f"persistentvolume {pv['metadata']['name']}: only hostPath/local volumes can be used ({kinds})")


def host_path(path: str, kind: str) -> Path:
    """A hostPath, checked or created as its `type` asks."""
    target = Path(path)
    if kind == "DirectoryOrCreate":
        target.mkdir(parents=True, exist_ok=True)
    elif kind == "FileOrCreate":
        target.parent.mkdir(parents=True, exist_ok=True)
        target.touch(exist_ok=True)
    elif kind == "Directory" and not target.is_dir():
        raise MountError(f"hostPath type check failed: {path} is not a directory")
    elif kind == "File" and not target.is_file():
        raise MountError(f"hostPath type check failed: {path} is not a file")
    elif kind not in ("", "DirectoryOrCreate", "FileOrCreate", "Directory", "File") and not target.exists():
        raise MountError(f"hostPath type check failed: {path} does not exist")
    return target


def container_mounts(container: Obj, volumes: Mapping[str, Path], env: Mapping[str, str]) -> list[Mount]:
    """A container's volumeMounts as (container path -> host path), subPath applied."""
    mounts: list[Mount] = []
    for mount in container.get("volumeMounts") or []:
        source = volumes.get(mount["name"])
        if source is None:
            raise MountError(f"volumeMount {mount['name']!r}: no such volume")
        sub = mount.get("subPath") or (expand(mount["subPathExpr"], env) if mount.get("subPathExpr") else "")
        if sub:
            if sub.startswith("/") or ".." in Path(sub).parts:
                raise MountError(f"subPath {sub!r} must be a relative path without '..'")
            source = source / sub
            if not source.exists():
                source.mkdir(parents=True)  # the kubelet creates a missing subPath directory
        mounts.append(Mount(mount["mountPath"], source))
    return mounts
