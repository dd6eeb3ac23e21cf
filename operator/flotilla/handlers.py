"""Every kopf decorator of the operator. Handlers only parse what kopf hands them and
delegate to the Controller (kept in kopf's memo); no decisions are made here.

Every handler is a coroutine: kopf runs plain functions in a thread pool, which costs a
thread hop per event on the hot path (each child event hits an index and a kick).

Children are indexed in memory (kopf indexes: kopf fills them before any handler runs, so a
restarted operator sees the Jobs it already created), and each child event wakes its
SmallModel's loop.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import kopf

from flotilla import telemetry
from flotilla.api.v1alpha1 import (
    ANNOTATION_ABORT,
    ANNOTATION_PREFIX,
    ANNOTATION_PROMOTE,
    FINALIZER,
    GROUP,
    LABEL_MANAGED_BY,
    LABEL_MODEL,
    MANAGED_BY,
    PLURAL,
    VERSION,
)
from flotilla.controller import Controller
from flotilla.reconcile import DeploymentView, JobView, ObjectView, Observed, PodView
from flotilla.reconcile.observed import ClaimView

CHILD: dict[str, Any] = {LABEL_MANAGED_BY: MANAGED_BY, LABEL_MODEL: kopf.PRESENT}
CHILD_SELECTOR = f"{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_MODEL}"  # CHILD, for the API server
Key = tuple[str, str]


def _owner(body: kopf.Body) -> Key:
    """(namespace, model name) of a child, from its labels."""
    return (body.metadata.namespace or "", body.metadata.labels[LABEL_MODEL])


SMALLMODEL = (GROUP, VERSION, PLURAL)
JOBS = ("batch", "v1", "jobs")
PODS = ("v1", "pods")
DEPLOYMENTS = ("apps", "v1", "deployments")
SERVICES = ("v1", "services")
CONFIGMAPS = ("v1", "configmaps")
PDBS = ("policy", "v1", "poddisruptionbudgets")
ENDPOINTSLICES = ("discovery.k8s.io", "v1", "endpointslices")
HTTPROUTES = ("gateway.networking.k8s.io", "v1", "httproutes")
CHILDREN = (JOBS, PODS, DEPLOYMENTS, SERVICES, CONFIGMAPS, PDBS, ENDPOINTSLICES, HTTPROUTES)
CLAIMS = ("v1", "persistentvolumeclaims")
FINALIZE_RETRIES = 60  # x 2 s: how long deletion waits for the model's pods to stop


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **kwargs: Any) -> None:
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    # kopf's per-kind worker limit stays unbounded: a worker that has indexed its object waits,
    # holding its slot, until every index is full, so a restart that finds more children of one
    # kind than the limit never gets there (kopf issue #1243; measured here: 10 Jobs under a
    # limit of 4 never reconciled). The Controller bounds concurrent reconciles instead.
    settings.queueing.worker_limit = None
    # An idle per-object worker keeps its slot this long; kopf's 5 s default capped a burst
    # at worker_limit / 5 s (10 objects/s measured with 64 workers, 15-17 with this).
    settings.queueing.idle_timeout = 0.5
    settings.posting.level = logging.WARNING  # our own Events say what happened
    settings.watching.server_timeout = 300
    # Filtered by the API server, not only by the handlers' own `labels=` (kopf checks those
    # after it has received, parsed and queued every event): an operator that watches Pods
    # and ConfigMaps cluster-wide would otherwise stream every one of the cluster's.
    for resource in CHILDREN:
        settings.watching.label_selectors[resource] = CHILD_SELECTOR
    # Of the claims, only whether each namespace has the artifact claim matters.
    settings.watching.field_selectors[CLAIMS] = f"metadata.name={memo.config.artifact_pvc}"
    settings.networking.request_timeout = 60
    memo.controller = Controller(memo.config)
    # kopf hands startup handlers the same (still empty) index objects it fills later.
    telemetry.INDEXED.indexes = _indexes(kwargs)
    # Artifact GC: a plain task, not a kopf daemon or timer on the claims (those would put our
    # finalizer on every artifact claim, holding a namespace's deletion while the operator is away).
    claims_index = kwargs["claims"]
    memo.controller.start_gc(lambda: sorted({ns for ns, _ in claims_index}))


@kopf.on.cleanup()
async def close(memo: kopf.Memo, **_: Any) -> None:
    memo.controller.stop_gc()
    await memo.controller.kube.close()


# --- indexes of children, keyed by (namespace, model name) --------------------------------


@kopf.index(*JOBS, labels=CHILD)
async def jobs(body: kopf.Body, **_: Any) -> dict[Key, JobView]:
    return {_owner(body): JobView.from_object(body)}


@kopf.index(*PODS, labels=CHILD)
async def pods(body: kopf.Body, **_: Any) -> dict[Key, PodView]:
    return {_owner(body): PodView.from_object(body)}


@kopf.index(*DEPLOYMENTS, labels=CHILD)
async def deployments(body: kopf.Body, **_: Any) -> dict[Key, DeploymentView]:
    return {_owner(body): DeploymentView.from_object(body)}


@kopf.index(*SERVICES, labels=CHILD)
@kopf.index(*CONFIGMAPS, labels=CHILD)
@kopf.index(*PDBS, labels=CHILD)
@kopf.index(*ENDPOINTSLICES, labels=CHILD)
# Watched only where the Gateway API's CRDs exist (kopf picks them up when they appear).
@kopf.index(*HTTPROUTES, labels=CHILD)
async def objects(body: kopf.Body, **_: Any) -> dict[Key, ObjectView]:
    return {_owner(body): ObjectView.from_object(body)}


@kopf.index(*CLAIMS)
async def claims(body: kopf.Body, **_: Any) -> dict[Key, ClaimView]:
    return {(body.metadata.namespace or "", body.metadata.name or ""): ClaimView.from_object(body)}


# A claim that binds (or is lost) changes what every model of its namespace waits for.
@kopf.on.event(*CLAIMS)
async def claim_changed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    memo.controller.kick_namespace(body.metadata.namespace or "")


def _key(body: kopf.Body) -> Key:
    return (body.metadata.namespace or "", body.metadata.name or "")


def _observed(memo: kopf.Memo, key: Key, indexes: dict[str, Any]) -> Observed:

    def get(index: str) -> tuple[Any, ...]:
        values: Iterable[Any] = indexes[index].get(key, ())
        return tuple(values)

    claim = next(iter(indexes["claims"].get((key[0], memo.config.artifact_pvc), ())), None)
    return Observed(
        jobs=get("jobs"),
        pods=get("pods"),
        deployments=get("deployments"),
        others=get("objects"),
        artifact_pvc_exists=claim is not None,
        artifact_claim=claim,
        fleet_jobs=lambda: ((owner[0], job) for owner, views in indexes["jobs"].items() for job in views),
    )


def _indexes(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: kwargs[k] for k in ("jobs", "pods", "deployments", "objects", "claims")}


# --- children wake their model ----------------------------------------------------------


@kopf.on.event(*JOBS, labels=CHILD)
@kopf.on.event(*PODS, labels=CHILD)
@kopf.on.event(*DEPLOYMENTS, labels=CHILD)
# Services and ConfigMaps too: a hand edit of one is put back at once (executor.py).
@kopf.on.event(*SERVICES, labels=CHILD)
@kopf.on.event(*CONFIGMAPS, labels=CHILD)
async def child_changed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    memo.controller.kick(*_owner(body))
    if body.get("kind") == "Job":  # a finished Job frees a slot for a queued model
        memo.controller.kick_queued()


# --- SmallModel -------------------------------------------------------------------------


@kopf.on.event(*SMALLMODEL, annotations={ANNOTATION_PROMOTE: kopf.PRESENT})
@kopf.on.event(*SMALLMODEL, annotations={ANNOTATION_ABORT: kopf.PRESENT})
async def command(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """`flotilla promote|abort`: wake the model's loop, which honours and clears the annotation."""
    memo.controller.kick(*_key(body))


@kopf.on.resume(*SMALLMODEL)
@kopf.on.create(*SMALLMODEL)
@kopf.on.update(*SMALLMODEL, field="spec")
async def reconcile(body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
    await memo.controller.reconcile(body, _observed(memo, _key(body), _indexes(kwargs)))


@kopf.daemon(*SMALLMODEL, cancellation_timeout=2.0)
async def resync(body: kopf.Body, memo: kopf.Memo, stopped: kopf.DaemonStopped, **kwargs: Any) -> None:
    indexes = _indexes(kwargs)
    await memo.controller.resync_loop(body, lambda: _observed(memo, _key(body), indexes), stopped)


@kopf.on.delete(*SMALLMODEL)
async def delete(body: kopf.Body, memo: kopf.Memo, retry: int, logger: kopf.Logger, **kwargs: Any) -> None:
    remaining = await memo.controller.finalize(body, _observed(memo, _key(body), _indexes(kwargs)))
    if remaining and retry < FINALIZE_RETRIES:
        raise kopf.TemporaryError(f"waiting for {remaining} pod(s) to stop", delay=2)
    if remaining:  # a node that is gone never confirms; do not hold the model forever
        logger.warning("releasing with %d pod(s) not confirmed stopped", remaining)
    memo.controller.forget(*_key(body))
