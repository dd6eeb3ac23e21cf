"""The only code that talks to the API server.

Children are written with server-side apply under one field manager (`flotilla`), so
a second apply of the same object is a no-op on the server and other managers' fields (an
HPA's replicas, a user's annotations) are left alone. Replicas go through the scale
subresource under a separate manager, so applies never fight the autoscaler over them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from lightkube import AsyncClient, codecs
from lightkube.core.exceptions import ApiError
from lightkube.core.resource import NamespacedResource
from lightkube.generic_resource import create_namespaced_resource
from lightkube.models.core_v1 import EventSource, ObjectReference
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.apiextensions_v1 import CustomResourceDefinition
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import Event, PersistentVolumeClaim, Pod
from lightkube.types import CascadeType, PatchType

from flotilla import telemetry
from flotilla.api.v1alpha1 import FIELD_MANAGER, GROUP, KIND, PLURAL, SCALE_MANAGER, VERSION
from flotilla.resources.meta import marker

log = logging.getLogger(__name__)

RESULT_MANAGER = f"{FIELD_MANAGER}-results"
ALL_NAMESPACES = "*"  # lightkube's ALL_NS: a list across every namespace
SmallModelResource = create_namespaced_resource(GROUP, VERSION, KIND, PLURAL)
HTTPRoute = create_namespaced_resource("gateway.networking.k8s.io", "v1", "HTTPRoute", "httproutes")
HTTP_ROUTE_CRD = "httproutes.gateway.networking.k8s.io"


def _namespaced(api_version: str, kind: str) -> type[NamespacedResource]:
    resource = codecs.resource_registry.load(api_version, kind)
    if resource is None or not issubclass(resource, NamespacedResource):
        raise ValueError(f"{api_version}/{kind} is not a namespaced resource known to lightkube")
    return resource


def _immutable(obj: Mapping[str, Any], err: ApiError) -> bool:
    return obj.get("kind") == "ConfigMap" and err.status.code == 422 and "immutable" in str(err.status.message)


class Kube:
    """A thin, typed facade over lightkube's AsyncClient, counting its requests."""

    def __init__(self, client: AsyncClient | None = None) -> None:
        self._client = client
        self.requests = 0

    def _count(self, verb: str, kind: str) -> None:
        self.requests += 1
        telemetry.API_REQUESTS.labels(verb=verb, kind=kind).inc()

    @property
    def client(self) -> AsyncClient:
        if self._client is None:  # created lazily, inside the operator's event loop
            self._client = AsyncClient(field_manager=FIELD_MANAGER)
        return self._client

    async def apply(self, obj: Mapping[str, Any]) -> int | None:
        """Server-side apply; returns the object's change marker after the write (see observed.marker)."""
        self._count("apply", str(obj["kind"]))
        resource = codecs.from_dict(dict(obj))
        try:
            written = await self.client.apply(resource, field_manager=FIELD_MANAGER, force=True)
        except ApiError as err:
            if not _immutable(obj, err):
                raise
            written = await self._replace(obj, resource)
        meta = getattr(written, "metadata", None)
        generation = getattr(meta, "generation", None)
        version = getattr(meta, "resourceVersion", None)
        return marker(generation, version)

    async def delete(self, api_version: str, kind: str, name: str, namespace: str, *, foreground: bool = False) -> None:
        self._count("delete", kind)
        resource = _namespaced(api_version, kind)
        cascade = CascadeType.FOREGROUND if foreground else CascadeType.BACKGROUND
        try:
            await self.client.delete(resource, name, namespace=namespace, cascade=cascade)
        except ApiError as err:
            if err.status.code != 404:
                raise

    async def _replace(self, obj: Mapping[str, Any], resource: Any) -> Any:
        """An immutable ConfigMap whose content must change (an operator upgrade renders a new
        config for an existing revision): delete and create it. Running pods keep the copy they
        mounted (Triton reads it at start); pods started after it read the new one."""
        name, namespace = obj["metadata"]["name"], obj["metadata"].get("namespace")
        log.warning("ConfigMap %s/%s is immutable and its content changed: replacing it", namespace, name)
        await self.delete(str(obj["apiVersion"]), str(obj["kind"]), name, namespace)
        self._count("apply", str(obj["kind"]))
        return await self.client.apply(resource, field_manager=FIELD_MANAGER, force=True)

    async def scale(self, deployment: str, namespace: str, replicas: int) -> int | None:
        """Set replicas through the scale subresource; returns the Deployment's generation after
        it (a Scale carries none, so it is read: scales are rare, one decision per interval)."""
        self._count("scale", "Deployment")
        patch = {"spec": {"replicas": replicas}}
        await self.client.patch(
            Deployment.Scale,
            deployment,
            patch,
            namespace=namespace,
            patch_type=PatchType.MERGE,
            field_manager=SCALE_MANAGER,
        )
        self._count("get", "Deployment")
        live = await self.client.get(Deployment, deployment, namespace=namespace)
        return live.metadata.generation if live.metadata is not None else None

    async def annotate(
        self, api_version: str, kind: str, name: str, namespace: str, annotations: Mapping[str, str | None]
    ) -> None:
        """Merge-patch annotations; a None value removes one."""
        self._count("patch", kind)
        resource = SmallModelResource if kind == KIND else _namespaced(api_version, kind)
        patch = {"metadata": {"annotations": dict(annotations)}}
        await self.client.patch(
            resource, name, patch, namespace=namespace, patch_type=PatchType.MERGE, field_manager=RESULT_MANAGER
        )

    async def serves_http_routes(self) -> bool:
        """Whether the API server serves Gateway API HTTPRoutes v1: their CRD is established and
        serves v1. A cluster-scoped read the chart grants in both modes; listing HTTPRoutes in
        some namespace is not (a namespaced release may read only its watched namespaces')."""
        self._count("get", "CustomResourceDefinition")
        try:
            crd = await self.client.get(CustomResourceDefinition, HTTP_ROUTE_CRD)
        except ApiError as err:
            if err.status.code != 404:
                log.warning("cannot tell whether HTTPRoutes are served: %s", err)
            return False
        conditions = (crd.status.conditions if crd.status else None) or []
        established = any(c.type == "Established" and c.status == "True" for c in conditions)
        return established and any(v.name == "v1" and v.served for v in crd.spec.versions)

    async def running_pods(self, namespace: str, labels: Mapping[str, str]) -> list[tuple[str, str]]:
        """(name, IP) of the running pods with these labels (the Flotilla gateway's, to read
        its metrics); pods without an IP yet are left out."""
        self._count("list", "Pod")
        out: list[tuple[str, str]] = []
        async for pod in self.client.list(Pod, namespace=namespace, labels=dict(labels)):
            status, meta = pod.status, pod.metadata
            if status is not None and status.phase == "Running" and status.podIP and meta is not None and meta.name:
                out.append((meta.name, status.podIP))
        return sorted(out)

    async def warning_events(self, namespace: str) -> list[dict[str, Any]]:
        """The namespace's Warning Events (core/v1), as plain objects."""
        self._count("list", "Event")
        out: list[dict[str, Any]] = []
        async for event in self.client.list(Event, namespace=namespace, fields={"type": "Warning"}):
            out.append(event.to_dict())
        return out

    async def apply_status(self, name: str, namespace: str, status: Mapping[str, Any]) -> str | None:
        """Server-side apply of the whole status: fields we stop setting are removed. Returns
        the resourceVersion the write produced."""
        self._count("apply", "SmallModel/status")
        body = SmallModelResource.Status(
            apiVersion=f"{GROUP}/{VERSION}",
            kind=KIND,
            metadata=ObjectMeta(name=name, namespace=namespace),
            status=dict(status),
        )
        written = await self.client.apply(body, field_manager=FIELD_MANAGER, force=True)
        meta = getattr(written, "metadata", None)
        return getattr(meta, "resourceVersion", None)

    async def event(self, involved: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        """A core/v1 Event on the object (a SmallModel unless the body names its kind), as
        `kubectl describe` shows them."""
        self._count("create", "Event")
        now = datetime.now(UTC)
        meta = involved["metadata"]
        event = Event(
            metadata=ObjectMeta(generateName=f"{meta['name']}.", namespace=meta["namespace"]),
            involvedObject=ObjectReference(
                apiVersion=involved.get("apiVersion") or f"{GROUP}/{VERSION}",
                kind=involved.get("kind") or KIND,
                name=meta["name"],
                namespace=meta["namespace"],
                uid=meta.get("uid"),
                resourceVersion=meta.get("resourceVersion"),
            ),
            type=type_,
            reason=reason,
            message=message[:1024],
            source=EventSource(component="flotilla"),
            reportingComponent="flotilla.dev/operator",
            reportingInstance="flotilla",
            firstTimestamp=now,
            lastTimestamp=now,
            count=1,
        )
        try:
            await self.client.create(event)
        except ApiError as err:  # events are best effort: never fail a reconcile over one
            log.warning("could not post event %s/%s: %s", reason, meta["name"], err)

    # --- artifact garbage collection (controller.collect_garbage) ---------------------------

    async def small_models(self, namespace: str) -> list[dict[str, Any]]:
        """Every SmallModel of the namespace, fresh from the API server (a quorum read)."""
        self._count("list", KIND)
        return [dict(m) async for m in self.client.list(SmallModelResource, namespace=namespace)]

    async def jobs(self, namespace: str, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        self._count("list", "Job")
        return [job.to_dict() async for job in self.client.list(Job, namespace=namespace, labels=dict(labels))]

    async def job(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._get_or_none(Job, "Job", namespace, name)

    async def job_pods(self, namespace: str, job: str) -> list[dict[str, Any]]:
        self._count("list", "Pod")
        selector: dict[str, Any] = {"batch.kubernetes.io/job-name": job}
        return [pod.to_dict() async for pod in self.client.list(Pod, namespace=namespace, labels=selector)]

    async def claim(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._get_or_none(PersistentVolumeClaim, "PersistentVolumeClaim", namespace, name)

    async def _get_or_none(self, resource: Any, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The object as a dict, or None where the API server says 404."""
        self._count("get", kind)
        try:
            return dict((await self.client.get(resource, name, namespace=namespace)).to_dict())
        except ApiError as err:
            if err.status.code == 404:
                return None
            raise

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
