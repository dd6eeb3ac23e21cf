"""Kubernetes Events about pods and the node, as `kubectl describe` shows them.

Sent in the background (a slow API server never delays a container), and a repeat of the
same event (same object, reason, message) bumps the count of the first instead of adding
another, like client-go's event aggregation.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Any

from lightkube.resources.core_v1 import Event
from lightkube.types import PatchType

from .kube import Kube
from .status import now

Obj = dict[str, Any]
COMPONENT = "processnode"
log = logging.getLogger(__name__)


def pod_ref(pod: Obj, container: str | None = None, init: bool = False) -> Obj:
    meta = pod["metadata"]
    ref: Obj = {
        "apiVersion": "v1",
        "kind": "Pod",
        "namespace": meta["namespace"],
        "name": meta["name"],
        "uid": meta["uid"],
    }
    if container:
        ref["fieldPath"] = f"spec.{'initContainers' if init else 'containers'}{{{container}}}"
    return ref


def node_ref(name: str, uid: str) -> Obj:
    return {"apiVersion": "v1", "kind": "Node", "name": name, "uid": uid, "namespace": ""}


def event_body(ref: Obj, kind: str, reason: str, message: str, node: str, at: str) -> Obj:
    namespace = ref.get("namespace") or "default"
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{ref['name']}.{secrets.token_hex(8)}", "namespace": namespace},
        "involvedObject": ref,
        "type": kind,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": COMPONENT, "host": node},
        "reportingComponent": COMPONENT,
        "reportingInstance": node,
        "firstTimestamp": at,
        "lastTimestamp": at,
        "count": 1,
    }


class Events:
    def __init__(self, kube: Kube, node: str) -> None:
        self.kube = kube
        self.node = node
        self._sent: dict[tuple[str, str, str, str], tuple[str, str, int]] = {}  # key -> (ns, name, count)
        self._tasks: set[asyncio.Task[None]] = set()

    def emit(self, ref: Obj, kind: str, reason: str, message: str) -> None:
        task = asyncio.get_running_loop().create_task(self._send(ref, kind, reason, message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, ref: Obj, kind: str, reason: str, message: str) -> None:
        key = (str(ref.get("uid")), str(ref.get("fieldPath", "")), reason, message)
        at = now()
        try:
            if key in self._sent:
                namespace, name, count = self._sent[key]
                self._sent[key] = (namespace, name, count + 1)
                bump: Obj = {"count": count + 1, "lastTimestamp": at}
                await self.kube.patch(Event, name, bump, namespace=namespace, patch_type=PatchType.MERGE)
                return
            body = event_body(ref, kind, reason, message, self.node, at)
            await self.kube.create(body)
            self._sent[key] = (body["metadata"]["namespace"], body["metadata"]["name"], 1)
        except Exception as err:
            log.debug("event %s %s not recorded: %s", reason, ref.get("name"), err)
            self._sent.pop(key, None)

    def forget(self, uid: str) -> None:
        """Drop the aggregation keys of a deleted object."""
        for key in [k for k in self._sent if k[0] == uid]:
            del self._sent[key]

    async def flush(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
