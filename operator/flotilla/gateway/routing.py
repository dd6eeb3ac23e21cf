"""The route table: SmallModels and their per-revision EndpointSlices -> where a request goes. Pure.

Fed by the watches (flotilla.gateway.watch) with objects as the API server returns them; the
request path only reads it. Rules (docs/gateway.md):

- A model is served when its status names a stable revision (`status.revisions.stable`).
  Ready alone is not the test: the operator sets Ready=False during every canary and after a
  rollback while the stable revision keeps serving, and dropping the model then would turn a
  rollout into an outage. A model with no stable revision yet is unknown (404).
- Revision first: canary with probability `canaryWeight`/100 when a canary is named, else
  stable; the RNG is injected so tests are exact.
- Endpoint second: among the revision's endpoints that are ready and not terminating, the one
  with the fewest outstanding requests from this gateway (ties at random). A retry excludes
  the endpoints already tried, and an endpoint that just refused a connection is avoided
  for a few seconds while the revision has others (passive outlier ejection: the watch
  learns of a dead pod only after its readiness probe fails).
- Spill-over: when the chosen revision has no usable endpoint, the other revision takes the
  request only if its own weight is above 0. A weight-0 canary has not been given traffic
  (or was rolled back); a weight-0 stable is being replaced at 100%.
- No usable endpoint anywhere: `NoEndpointError` (503, or a bounded hold for a model that scales
  from zero).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from pydantic import ValidationError

from flotilla.api.v1alpha1 import SmallModel

from .protocol import GatewayError

Role = Literal["stable", "canary"]
ROLES: tuple[Role, Role] = ("stable", "canary")
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
HTTP_PORT_NAME = "http"


class Rng(Protocol):
    def random(self) -> float: ...
    def choice(self, seq: list[Endpoint], /) -> Endpoint: ...


@dataclass(frozen=True)
class Endpoint:
    ip: str
    port: int
    ready: bool = True
    terminating: bool = False
    pod: str = ""
    # Derived once (the request path reads them several times per pick); not compared.
    address: str = field(init=False, repr=False, compare=False)
    usable: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "address", f"{self.ip}:{self.port}")
        object.__setattr__(self, "usable", self.ready and not self.terminating)


@dataclass(frozen=True)
class ModelRoute:
    namespace: str
    name: str  # also Triton's model name inside the pod
    task: str
    created: int  # metadata.creationTimestamp, seconds since the epoch
    stable: str | None
    canary: str | None
    canary_weight: int
    scales_from_zero: bool
    max_batch_size: int
    endpoints: Mapping[Role, tuple[Endpoint, ...]] = field(default_factory=dict)

    @property
    def served(self) -> bool:
        return self.stable is not None

    def revision(self, role: Role) -> str | None:
        return self.stable if role == "stable" else self.canary

    def weight(self, role: Role) -> int:
        if self.canary is None:
            return 100 if role == "stable" else 0
        return self.canary_weight if role == "canary" else 100 - self.canary_weight

    def usable(self, role: Role, exclude: Iterable[str] = ()) -> list[Endpoint]:
        if self.revision(role) is None:
            return []
        skip = exclude if isinstance(exclude, set | frozenset) else set(exclude)
        if not skip:
            return [e for e in self.endpoints.get(role, ()) if e.usable]
        return [e for e in self.endpoints.get(role, ()) if e.usable and e.address not in skip]


@dataclass(frozen=True)
class Pick:
    role: Role
    revision: str
    endpoint: Endpoint


class NoEndpointError(Exception):
    """No ready, non-terminating endpoint (left) for the model."""


def choose_role(route: ModelRoute, rng: Rng) -> Role:
    if route.canary is None or route.canary_weight <= 0:
        return "stable"
    return "canary" if rng.random() * 100 < route.canary_weight else "stable"


def least_outstanding(candidates: list[Endpoint], outstanding: Mapping[str, int], rng: Rng) -> Endpoint:
    if len(candidates) == 1:
        return candidates[0]
    fewest = min(outstanding.get(e.address, 0) for e in candidates)
    best = [e for e in candidates if outstanding.get(e.address, 0) == fewest]
    return best[0] if len(best) == 1 else rng.choice(best)


def serving_role(route: ModelRoute, rng: Rng, exclude: Iterable[str] = ()) -> Role:
    """The revision by weight, spilling to the other one only if that one has weight > 0 and
    the drawn one has no usable endpoint."""
    role = choose_role(route, rng)
    if not route.usable(role, exclude):
        other: Role = "canary" if role == "stable" else "stable"
        if route.weight(other) > 0 and route.usable(other, exclude):
            return other
    return role


def pick(
    route: ModelRoute,
    rng: Rng,
    outstanding: Mapping[str, int] | None = None,
    exclude: Iterable[str] = (),
    avoid: Iterable[str] = (),
    role: Role | None = None,
) -> Pick:
    """Where one attempt of a request goes; raises NoEndpointError. `exclude` is hard (the
    endpoints this request already tried); `avoid` is soft (endpoints that recently refused
    connections): used only when nothing else of the revision is left. `role` pins the
    revision (a request split over several upstream calls must not mix revisions)."""
    outstanding = outstanding or {}
    excluded = set(exclude)
    role = role or serving_role(route, rng, excluded)
    candidates = route.usable(role, excluded)
    if not candidates:
        raise NoEndpointError(f"{route.namespace}/{route.name} has no ready endpoint")
    avoided = set(avoid)
    preferred = [e for e in candidates if e.address not in avoided] if avoided else candidates
    revision = route.revision(role)
    assert revision is not None  # usable() is empty for a role without a revision
    return Pick(role, revision, least_outstanding(preferred or candidates, outstanding, rng))


# ---------------------------------------------------------------- parsing objects


def _epoch(timestamp: str | None) -> int:
    from datetime import datetime

    if not timestamp:
        return 0
    try:
        return int(datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return 0


def scales_from_zero(model: SmallModel) -> bool:
    """Requests wait (bounded) for a first endpoint only for a model the autoscaler may take to
    zero and bring back: autoscaling on with minReplicas 0. A model scaled to 0 by hand
    (`replicas: 0`, autoscaling off) has nothing that would wake it: 503 at once."""
    auto = model.spec.autoscaling
    return auto.enabled and auto.min_replicas == 0


@dataclass(frozen=True)
class ModelInfo:
    namespace: str
    name: str
    task: str
    created: int
    stable: str | None
    canary: str | None
    canary_weight: int
    scales_from_zero: bool
    max_batch_size: int


def model_info(obj: Mapping[str, Any]) -> ModelInfo | None:
    """A SmallModel as the API server returns it; None when it does not parse (a newer or
    broken object is skipped rather than stopping the gateway)."""
    try:
        model = SmallModel.from_body(obj)
    except ValidationError:
        return None
    revisions = model.status.revisions
    stable = revisions.stable if revisions else None
    canary = revisions.canary if revisions else None
    weight = (revisions.canary_weight or 0) if revisions and canary else 0
    return ModelInfo(
        namespace=model.metadata.namespace,
        name=model.metadata.name,
        task=model.spec.source.task,
        created=_epoch((obj.get("metadata") or {}).get("creationTimestamp")),
        stable=stable,
        canary=canary,
        canary_weight=max(0, min(100, weight)),
        scales_from_zero=scales_from_zero(model),
        max_batch_size=model.spec.serving.max_batch_size,
    )


def slice_endpoints(obj: Mapping[str, Any]) -> tuple[Endpoint, ...]:
    """The endpoints of one EndpointSlice on its port named `http` (none without that port).
    Per the EndpointSlice API an unset `ready` means ready and an unset `terminating` means not."""
    port = next((p.get("port") for p in obj.get("ports") or [] if p.get("name") == HTTP_PORT_NAME), None)
    if not isinstance(port, int):
        return ()
    out: list[Endpoint] = []
    for ep in obj.get("endpoints") or []:
        cond = ep.get("conditions") or {}
        ready = cond.get("ready") is not False
        terminating = cond.get("terminating") is True
        pod = (ep.get("targetRef") or {}).get("name", "")
        out.extend(Endpoint(ip, port, ready, terminating, pod) for ip in ep.get("addresses") or [])
    return tuple(out)


def service_role(model: str, service: str) -> Role | None:
    for role in ROLES:
        if service == f"{model}-{role}":
            return role
    return None


# ---------------------------------------------------------------- the table

Key = tuple[str, str]  # (namespace, name)


class RouteTable:
    """Current routes of the allowed namespaces. Objects from any other namespace are dropped
    on the way in, so nothing outside them can be routed to even if a watch misbehaved."""

    def __init__(self, namespaces: Iterable[str]) -> None:
        self.namespaces = frozenset(namespaces)
        self._models: dict[Key, ModelInfo] = {}
        # (namespace, service name) -> {slice name: endpoints}; a Service may have several slices.
        self._slices: dict[Key, dict[str, tuple[Endpoint, ...]]] = {}
        self._slice_service: dict[Key, str] = {}  # (namespace, slice name) -> service name
        self._routes: dict[Key, ModelRoute] = {}
        self.listeners: list[Callable[[], None]] = []

    # -------- writes (from the watches)

    def upsert_model(self, obj: Mapping[str, Any]) -> None:
        info = model_info(obj)
        if info is None or info.namespace not in self.namespaces:
            return
        self._models[(info.namespace, info.name)] = info
        self._rebuild(info.namespace, info.name)

    def delete_model(self, namespace: str, name: str) -> None:
        if self._models.pop((namespace, name), None) is not None:
            self._rebuild(namespace, name)

    def replace_models(self, namespace: str, objs: Iterable[Mapping[str, Any]]) -> None:
        """A fresh list of one namespace: objects absent from it are gone."""
        if namespace not in self.namespaces:
            return
        for key in [k for k in self._models if k[0] == namespace]:
            del self._models[key]
        for obj in objs:
            info = model_info(obj)
            if info is not None and info.namespace == namespace:
                self._models[(namespace, info.name)] = info
        self._rebuild_namespace(namespace)

    def upsert_slice(self, obj: Mapping[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        namespace, name = meta.get("namespace", ""), meta.get("name", "")
        service = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
        if namespace not in self.namespaces or not name:
            return
        self._drop_slice(namespace, name)
        if service:
            self._slices.setdefault((namespace, service), {})[name] = slice_endpoints(obj)
            self._slice_service[(namespace, name)] = service
        self._rebuild_service(namespace, service)

    def delete_slice(self, namespace: str, name: str) -> None:
        service = self._drop_slice(namespace, name)
        if service:
            self._rebuild_service(namespace, service)

    def replace_slices(self, namespace: str, objs: Iterable[Mapping[str, Any]]) -> None:
        if namespace not in self.namespaces:
            return
        for key in [k for k in self._slices if k[0] == namespace]:
            del self._slices[key]
        for key in [k for k in self._slice_service if k[0] == namespace]:
            del self._slice_service[key]
        for obj in objs:
            meta = obj.get("metadata") or {}
            service = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
            if meta.get("namespace") == namespace and service and meta.get("name"):
                self._slices.setdefault((namespace, service), {})[meta["name"]] = slice_endpoints(obj)
                self._slice_service[(namespace, meta["name"])] = service
        self._rebuild_namespace(namespace)

    def _drop_slice(self, namespace: str, name: str) -> str | None:
        service = self._slice_service.pop((namespace, name), None)
        if service is not None:
            slices = self._slices.get((namespace, service), {})
            slices.pop(name, None)
            if not slices:
                self._slices.pop((namespace, service), None)
        return service

    # -------- derived routes

    def _endpoints(self, namespace: str, service: str) -> tuple[Endpoint, ...]:
        slices = self._slices.get((namespace, service), {})
        return tuple(e for name in sorted(slices) for e in slices[name])

    def _rebuild(self, namespace: str, name: str) -> None:
        info = self._models.get((namespace, name))
        if info is None:
            self._routes.pop((namespace, name), None)
        else:
            endpoints = {role: self._endpoints(namespace, f"{name}-{role}") for role in ROLES}
            self._routes[(namespace, name)] = ModelRoute(
                namespace=info.namespace,
                name=info.name,
                task=info.task,
                created=info.created,
                stable=info.stable,
                canary=info.canary,
                canary_weight=info.canary_weight,
                scales_from_zero=info.scales_from_zero,
                max_batch_size=info.max_batch_size,
                endpoints=endpoints,
            )
        self._changed()

    def _rebuild_service(self, namespace: str, service: str | None) -> None:
        if not service:
            return
        for role in ROLES:
            model = service.removesuffix(f"-{role}")
            if model != service and (namespace, model) in self._models:
                self._rebuild(namespace, model)

    def _rebuild_namespace(self, namespace: str) -> None:
        for key in [k for k in self._routes if k[0] == namespace and k not in self._models]:
            del self._routes[key]
        for key in [k for k in self._models if k[0] == namespace]:
            self._rebuild(*key)
        self._changed()

    def _changed(self) -> None:
        for listener in self.listeners:
            listener()

    # -------- reads (the request path)

    def get(self, namespace: str, name: str) -> ModelRoute | None:
        return self._routes.get((namespace, name))

    def resolve(self, namespace: str, name: str, shown: str) -> ModelRoute:
        """The served model, or 404 (`shown` is the name the client used). A namespace outside
        the allowed ones is the same 404 as an unknown model: nothing about it is revealed."""
        route = self._routes.get((namespace, name)) if namespace in self.namespaces else None
        if route is None or not route.served:
            raise GatewayError("model_not_found", f"The model `{shown}` does not exist", "model")
        return route

    def served(self) -> list[ModelRoute]:
        return sorted((r for r in self._routes.values() if r.served), key=lambda r: (r.namespace, r.name))


def seeded(seed: int | None = None) -> random.Random:
    return random.Random(seed)
