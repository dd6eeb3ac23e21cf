"""A container's environment as the kubelet builds it (pkg/kubelet/kubelet_pods.go). Pure.

Order: `envFrom` sources first, then `env` entries; each value is `$(VAR)`-expanded against
the variables defined before it. Values are in the container's view here (paths still
`/models/...`); `paths.PathMap` rewrites them once the whole set is known.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import quantity
from .expand import expand

Obj = dict[str, Any]
CONFIG_ERROR = "CreateContainerConfigError"
_LABEL_PATH = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


class EnvError(Exception):
    """The container cannot be configured (reason CreateContainerConfigError)."""


@dataclass
class EnvSources:
    """Objects the environment reads; None marks one that does not exist."""

    config_maps: dict[str, Obj | None] = field(default_factory=dict)
    secrets: dict[str, Obj | None] = field(default_factory=dict)
    pod_ip: str = ""
    host_ip: str = "127.0.0.1"
    allocatable: Mapping[str, str] = field(default_factory=dict)  # node allocatable (limits' default)


def references(container: Obj) -> tuple[set[str], set[str]]:
    """Names of the ConfigMaps and Secrets a container's environment reads."""
    config_maps: set[str] = set()
    secrets: set[str] = set()
    for source in container.get("envFrom") or []:
        if ref := source.get("configMapRef"):
            config_maps.add(ref["name"])
        if ref := source.get("secretRef"):
            secrets.add(ref["name"])
    for var in container.get("env") or []:
        value_from = var.get("valueFrom") or {}
        if ref := value_from.get("configMapKeyRef"):
            config_maps.add(ref["name"])
        if ref := value_from.get("secretKeyRef"):
            secrets.add(ref["name"])
    return config_maps, secrets


def object_data(obj: Obj, secret: bool) -> dict[str, str]:
    """A ConfigMap's data (plus binaryData) or a Secret's data, decoded to text."""
    data: dict[str, str] = {}
    if secret:
        for key, value in (obj.get("data") or {}).items():
            data[key] = base64.b64decode(value).decode(errors="replace")
        data.update(obj.get("stringData") or {})
        return data
    data.update(obj.get("data") or {})
    for key, value in (obj.get("binaryData") or {}).items():
        data[key] = base64.b64decode(value).decode(errors="replace")
    return data


def field_ref(pod: Obj, path: str, sources: EnvSources) -> str:
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.hostIP": sources.host_ip,
        "status.hostIPs": sources.host_ip,
        "status.podIP": sources.pod_ip,
        "status.podIPs": sources.pod_ip,
    }
    if path in simple:
        return str(simple[path])
    if match := _LABEL_PATH.match(path):
        return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
    if path in ("metadata.labels", "metadata.annotations"):
        values = meta.get(path.split(".", 1)[1]) or {}
        return "\n".join(f'{k}="{v}"' for k, v in sorted(values.items()))
    raise EnvError(f"unsupported fieldRef path {path!r}")


def resource_ref(container: Obj, ref: Obj, sources: EnvSources) -> str:
    """requests.cpu / limits.memory / ...: limits default to the node's allocatable."""
    resource = ref["resource"]
    kind, _, name = resource.partition(".")
    resources = container.get("resources") or {}
    raw = (resources.get(kind) or {}).get(name)
    if raw is None and kind == "limits":
        raw = sources.allocatable.get(name)
    if raw is None:
        raw = "0"
    divisor = quantity.parse(ref.get("divisor") or "1")
    return str(quantity.ceil_div(quantity.parse(raw), divisor))


def _key_ref(ref: Obj, objects: dict[str, Obj | None], secret: bool) -> str | None:
    kind = "secret" if secret else "configmap"
    obj = objects.get(ref["name"])
    if obj is None:
        if ref.get("optional"):
            return None
        raise EnvError(f'{kind} "{ref["name"]}" not found')
    data = object_data(obj, secret)
    if ref["key"] not in data:
        if ref.get("optional"):
            return None
        raise EnvError(f"couldn't find key {ref['key']} in {kind} {ref['name']}")
    return data[ref["key"]]


def _value_from(pod: Obj, container: Obj, value_from: Obj, sources: EnvSources) -> str | None:
    if ref := value_from.get("fieldRef"):
        return field_ref(pod, ref["fieldPath"], sources)
    if ref := value_from.get("resourceFieldRef"):
        return resource_ref(container, ref, sources)
    if ref := value_from.get("configMapKeyRef"):
        return _key_ref(ref, sources.config_maps, secret=False)
    if ref := value_from.get("secretKeyRef"):
        return _key_ref(ref, sources.secrets, secret=True)
    raise EnvError(f"unsupported valueFrom {sorted(value_from)}")


def _env_from(source: Obj, sources: EnvSources) -> dict[str, str]:
    secret = "secretRef" in source
    ref = source.get("secretRef") or source.get("configMapRef") or {}
    objects = sources.secrets if secret else sources.config_maps
    obj = objects.get(ref.get("name", ""))
    if obj is None:
        if ref.get("optional"):
            return {}
        raise EnvError(f'{"secret" if secret else "configmap"} "{ref.get("name")}" not found')
    prefix = source.get("prefix", "")
    return {prefix + k: v for k, v in object_data(obj, secret).items()}


def container_env(pod: Obj, container: Obj, sources: EnvSources) -> dict[str, str]:
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        env.update(_env_from(source, sources))
    for var in container.get("env") or []:
        if var.get("valueFrom"):
            value = _value_from(pod, container, var["valueFrom"], sources)
            if value is None:
                continue
        else:
            value = expand(var.get("value") or "", env)
        env[var["name"]] = value
    return env


def command_line(container: Obj, env: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """command and args with `$(VAR)` expanded against the container's environment."""
    command = [expand(word, env) for word in container.get("command") or []]
    args = [expand(word, env) for word in container.get("args") or []]
    return command, args
