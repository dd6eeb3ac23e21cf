"""The operator's watches: every resource it watches besides SmallModels is filtered by the
API server, so a cluster's unrelated Pods, ConfigMaps and claims never reach the operator."""

from __future__ import annotations

import asyncio

import kopf
from kopf._cogs.structs.references import Resource

import flotilla.handlers  # noqa: F401  (registers the handlers)
from flotilla import telemetry
from flotilla.config import OperatorConfig
from flotilla.handlers import CHILDREN, CLAIMS, SMALLMODEL, configure


def _watched() -> set[tuple[str, str, str]]:
    registry = kopf.get_default_registry()
    handlers = [*registry._indexing.get_all_handlers(), *registry._watching.get_all_handlers()]
    return {(h.selector.group or "", h.selector.version or "", h.selector.any_name or "") for h in handlers}


def _settings(pvc: str = "flotilla-artifacts") -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    memo = kopf.Memo(config=OperatorConfig(artifact_pvc=pvc))
    indexes = {name: {} for name in ("jobs", "pods", "deployments", "objects", "claims")}
    asyncio.run(configure(settings=settings, memo=memo, **indexes))
    return settings


def _resource(group: str, version: str, plural: str) -> Resource:
    return Resource(group=group, version=version, plural=plural)


def test_every_watched_resource_but_smallmodels_has_a_server_side_selector() -> None:
    settings = _settings()
    watched = _watched() - {SMALLMODEL}
    assert len(watched) >= 9  # jobs, pods, deployments, services, configmaps, pdbs, slices, routes, claims
    for group, version, plural in watched:
        resource = _resource(group, version, plural)
        selectors = settings.watching.label_selectors.collect(resource)
        selectors += settings.watching.field_selectors.collect(resource)
        assert selectors, f"{group}/{version}/{plural} is watched unfiltered"


def test_children_are_selected_by_our_labels_and_claims_by_the_artifact_claims_name() -> None:
    settings = _settings(pvc="models-store")
    for resource in CHILDREN:
        (selector,) = settings.watching.label_selectors.collect(_resource(*_full(resource)))
        assert selector == "app.kubernetes.io/managed-by=flotilla,flotilla.dev/model"
    assert settings.watching.field_selectors.collect(_resource(*_full(CLAIMS))) == ["metadata.name=models-store"]
    # The SmallModels themselves: every one is ours.
    assert not settings.watching.label_selectors.collect(_resource(*SMALLMODEL))


def _full(resource: tuple[str, ...]) -> tuple[str, str, str]:
    return ("", *resource) if len(resource) == 2 else (resource[0], resource[1], resource[2])  # type: ignore[return-value]


def test_indexed_objects_are_counted_per_index_at_scrape_time() -> None:
    telemetry.INDEXED.indexes = {"pods": {("ns", "a"): [1, 2], ("ns", "b"): [3]}, "claims": {}}
    try:
        (family,) = telemetry.INDEXED.collect()
        assert {s.labels["index"]: s.value for s in family.samples} == {"pods": 3.0, "claims": 0.0}
    finally:
        telemetry.INDEXED.indexes = {}
