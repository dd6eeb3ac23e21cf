"""Feeds the route table from the API server: list, then watch from the list's resourceVersion,
per kind and allowed namespace. On any watch error (410 Gone, a dropped connection, a restart of
the API server) the stream relists after a jittered exponential backoff, so the table converges
to the server's state. No API call is made per client request. `synced` is set once every
stream has completed its first full list (the gateway's /readyz)."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lightkube import AsyncClient
from lightkube.core.resource import NamespacedResource
from lightkube.resources.core_v1 import Secret
from lightkube.resources.discovery_v1 import EndpointSlice

from flotilla.api.v1alpha1 import LABEL_MANAGED_BY, MANAGED_BY
from flotilla.kube.client import SmallModelResource

from .keys import KeyRing
from .routing import RouteTable
from .settings import GatewaySettings

log = logging.getLogger(__name__)

Obj = Mapping[str, Any]
WATCH_SERVER_TIMEOUT_S = 290  # the server ends each watch; lightkube re-opens it from the last version


@dataclass
class Stream:
    what: str
    resource: type[NamespacedResource]
    namespace: str
    replace: Callable[[Sequence[Obj]], None]
    upsert: Callable[[Obj], None]
    delete: Callable[[Obj], None]
    fields: dict[str, Any] | None = None
    labels: dict[str, Any] | None = None  # filtered by the API server: not every Service's slices


def _to_dict(obj: Any) -> dict[str, Any]:
    return dict(obj.to_dict())


def _meta(obj: Obj) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace", "")), str(meta.get("name", ""))


class Watcher:
    def __init__(
        self, client: AsyncClient, table: RouteTable, settings: GatewaySettings, on_keys: Callable[[KeyRing], None]
    ) -> None:
        self.client = client
        self.table = table
        self.settings = settings
        self.on_keys = on_keys
        self.synced = asyncio.Event()
        self.streams = self._streams()
        self._unlisted = {id(s) for s in self.streams}
        self.relists = 0

    def _streams(self) -> list[Stream]:
        t = self.table
        out: list[Stream] = []
        for ns in self.settings.namespaces:
            out.append(
                Stream(
                    "SmallModel",
                    SmallModelResource,
                    ns,
                    lambda objs, ns=ns: t.replace_models(ns, objs),  # type: ignore[misc]
                    t.upsert_model,
                    lambda o: t.delete_model(*_meta(o)),
                )
            )
            out.append(
                Stream(
                    "EndpointSlice",
                    EndpointSlice,
                    ns,
                    lambda objs, ns=ns: t.replace_slices(ns, objs),  # type: ignore[misc]
                    t.upsert_slice,
                    lambda o: t.delete_slice(*_meta(o)),
                    labels={LABEL_MANAGED_BY: MANAGED_BY},  # the slices carry their Service's labels
                )
            )
        if self.settings.api_keys_secret:
            out.append(
                Stream(
                    "Secret",
                    Secret,
                    self.settings.own_namespace,
                    lambda objs: self._keys(objs[0] if objs else None),
                    self._keys,
                    lambda _: self._keys(None),
                    fields={"metadata.name": self.settings.api_keys_secret},
                )
            )
        return out

    def _keys(self, secret: Obj | None) -> None:
        ring = KeyRing.from_secret_data((secret or {}).get("data"))
        for problem in ring.problems:
            log.warning("API keys Secret entry skipped: %s", problem)
        log.info("API keys: %d loaded", len(ring.grants))
        self.on_keys(ring)

    async def run(self) -> None:
        await asyncio.gather(*(self._follow(s) for s in self.streams))

    async def _follow(self, stream: Stream) -> None:
        backoff = 0.5
        while True:
            try:
                version = await self._list(stream)
                backoff = 0.5
                await self._watch(stream, version)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # any failure: relist from scratch after a pause
                self.relists += 1
                delay = backoff * (1 + random.random())
                log.warning("%s watch in %s failed (%r); relisting in %.1fs", stream.what, stream.namespace, err, delay)
                await asyncio.sleep(delay)
                backoff = min(backoff * 2, self.settings.watch_backoff_max_seconds)

    async def _list(self, stream: Stream) -> str:
        listing = self.client.list(
            stream.resource, namespace=stream.namespace, fields=stream.fields, labels=stream.labels
        )
        objs = [_to_dict(o) async for o in listing]
        stream.replace(objs)
        self._unlisted.discard(id(stream))
        if not self._unlisted:
            self.synced.set()
        return listing.resourceVersion

    async def _watch(self, stream: Stream, version: str) -> None:
        events = self.client.watch(
            stream.resource,
            namespace=stream.namespace,
            fields=stream.fields,
            labels=stream.labels,
            resource_version=version,
            server_timeout=WATCH_SERVER_TIMEOUT_S,
        )
        async for kind, obj in events:
            body = _to_dict(obj)
            if kind == "DELETED":
                stream.delete(body)
            elif kind in {"ADDED", "MODIFIED"}:
                stream.upsert(body)
