"""The agent's only door to the API server: lightkube's AsyncClient, dicts in and out.

The agent works on plain dicts (what `kubectl get -o json` shows); lightkube's models are
converted at this boundary.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx2
from lightkube import ALL_NS, AsyncClient, KubeConfig, codecs
from lightkube.core.exceptions import ApiError
from lightkube.core.generic_client import BasicRequest
from lightkube.core.resource import Resource
from lightkube.types import PatchType

Obj = dict[str, Any]
FIELD_MANAGER = "processnode"
log = logging.getLogger(__name__)


def status_code(err: BaseException) -> int | None:
    return err.status.code if isinstance(err, ApiError) and err.status is not None else None


def to_dict(obj: Any) -> Obj:
    return obj.to_dict() if hasattr(obj, "to_dict") else dict(obj)


class Kube:
    def __init__(self, kubeconfig: Path) -> None:
        self.config = KubeConfig.from_file(kubeconfig)
        self.client = AsyncClient(config=self.config, field_manager=FIELD_MANAGER, timeout=httpx2.Timeout(20.0))

    @property
    def server(self) -> tuple[str, int]:
        """The API server's host and port (for KUBERNETES_SERVICE_* style hints)."""
        single = self.config.get()
        url = urlparse(single.cluster.server if single else "https://127.0.0.1:6443")
        return url.hostname or "127.0.0.1", url.port or 443

    async def close(self) -> None:
        await self.client.close()

    async def get(self, res: type[Resource], name: str, namespace: str | None = None) -> Obj | None:
        try:
            if namespace is None:
                return to_dict(await self.client.get(res, name))
            return to_dict(await self.client.get(res, name, namespace=namespace))
        except ApiError as err:
            if status_code(err) == 404:
                return None
            raise

    async def list(
        self, res: Any, fields: dict[str, str] | None = None, namespaced: bool = True
    ) -> tuple[list[Obj], str]:
        """Every object (all namespaces) and the list's resourceVersion, to watch from."""
        kwargs: dict[str, Any] = {"fields": fields} if fields else {}
        if namespaced:
            kwargs["namespace"] = ALL_NS
        listing = self.client.list(res, **kwargs)
        items = [to_dict(obj) async for obj in listing]
        return items, listing.resourceVersion

    async def watch(
        self, res: Any, resource_version: str, fields: dict[str, str] | None = None, namespaced: bool = True
    ) -> AsyncIterator[tuple[str, Obj]]:
        """Events after resource_version; raises on any error (the caller re-lists)."""
        kwargs: dict[str, Any] = {"fields": fields} if fields else {}
        if namespaced:
            kwargs["namespace"] = ALL_NS
        async for kind, obj in self.client.watch(res, resource_version=resource_version, server_timeout=300, **kwargs):
            yield kind, to_dict(obj)

    async def create(self, obj: Obj) -> Obj:
        return to_dict(await self.client.create(codecs.from_dict(obj)))

    async def patch(
        self,
        res: type[Resource],
        name: str,
        body: Obj,
        namespace: str | None = None,
        patch_type: PatchType = PatchType.STRATEGIC,
    ) -> Obj:
        kwargs: dict[str, Any] = {"patch_type": patch_type}
        if namespace is not None:
            kwargs["namespace"] = namespace
        return to_dict(await self.client.patch(res, name, body, **kwargs))

    async def _raw(self, method: str, url: str, body: Obj | None = None) -> Any:
        """One request lightkube has no method for (its generic client; the only private use)."""
        generic = self.client._client
        request = BasicRequest(method=method, url=url, response_type=None, data=body)
        return await generic.send(generic.build_adapter_request(request))  # type: ignore[no-untyped-call]

    async def server_version(self) -> str:
        response = await self._raw("GET", "version")
        response.raise_for_status()
        return str(response.json().get("gitVersion", "v0.0.0"))

    async def delete_pod_now(self, namespace: str, name: str, uid: str) -> None:
        """DELETE with gracePeriodSeconds=0 and a uid precondition: what a kubelet sends once
        a pod's containers are gone. The precondition keeps a same-named successor safe.
        lightkube's delete() sends no body, hence the raw request."""
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0, "preconditions": {"uid": uid}}
        response = await self._raw("DELETE", f"api/v1/namespaces/{namespace}/pods/{name}", body)
        if response.status_code in (404, 409):  # gone already, or a successor holds the name
            return
        self.client._client.raise_for_status(response)  # type: ignore[no-untyped-call]
