"""Names, labels and owner references shared by every child object."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from flotilla.api.v1alpha1 import (
    API_VERSION,
    GROUP,
    KIND,
    LABEL_COMPONENT,
    LABEL_MANAGED_BY,
    LABEL_MODEL,
    MANAGED_BY,
    SmallModel,
)

Obj = dict[str, Any]

# Hash of the desired object, so the executor can skip an apply that would change nothing.
ANNOTATION_APPLIED_HASH = f"{GROUP}/applied-hash"


def job_name(model: str, key: str) -> str:
    return f"{model}-opt-{key[:8]}"


def deployment_name(model: str, revision: str) -> str:
    return f"{model}-{revision[:8]}"


def config_map_name(model: str, revision: str) -> str:
    return f"{model}-{revision[:8]}-config"


def labels(model: SmallModel, component: str, **extra: str) -> dict[str, str]:
    return {LABEL_MODEL: model.metadata.name, LABEL_COMPONENT: component, LABEL_MANAGED_BY: MANAGED_BY, **extra}


def owner_reference(model: SmallModel) -> Obj:
    """Children are garbage-collected with their SmallModel."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": model.metadata.name,
        "uid": model.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def object_meta(model: SmallModel, name: str, component: str, **extra_labels: str) -> Obj:
    return {
        "name": name,
        "namespace": model.metadata.namespace,
        "labels": labels(model, component, **extra_labels),
        "ownerReferences": [owner_reference(model)],
    }


def pull_secrets(names: Sequence[str]) -> list[Obj]:
    """A pod spec's imagePullSecrets: LocalObjectReferences to Secrets in the pod's namespace."""
    return [{"name": name} for name in names]


def content_hash(obj: Obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def marker(generation: object, resource_version: object) -> int | None:
    """What changes when someone changes an object: metadata.generation where the kind has one
    (spec changes only; Deployments, PDBs, HTTPRoutes), else the resourceVersion (ConfigMaps,
    Services, whose status rarely moves). Both grow, so a larger one is a later write."""
    for value in (generation, resource_version):
        try:
            if value is not None and int(str(value)) > 0:
                return int(str(value))
        except ValueError:
            continue
    return None


def stamped(obj: Obj) -> Obj:
    """The object with its own content hash in an annotation (computed without it)."""
    meta = dict(obj["metadata"])
    annotations = {k: v for k, v in meta.get("annotations", {}).items() if k != ANNOTATION_APPLIED_HASH}
    bare = {**obj, "metadata": {**meta, "annotations": annotations}}
    annotations[ANNOTATION_APPLIED_HASH] = content_hash(bare)
    return {**obj, "metadata": {**meta, "annotations": annotations}}


# The restricted Pod Security profile every pod of ours runs under (optimizer, GC, serving).
POD_SECURITY: Obj = {
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "fsGroup": 1000,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY: Obj = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}
