"""Runs reconciles: one at a time per SmallModel, woken by its own changes, its children's
changes, or a periodic resync. Glue between kopf (handlers.py), the pure planner and kube/.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from flotilla import telemetry
from flotilla.api.v1alpha1 import (
    COMPONENT_OPTIMIZER,
    LABEL_COMPONENT,
    LABEL_MANAGED_BY,
    MANAGED_BY,
    ArtifactSummary,
    SmallModel,
    SmallModelStatus,
    artifact_key,
)
from flotilla.config import OperatorConfig
from flotilla.executor import Applied, execute
from flotilla.gc.keep import UnknownModelError, keep_set
from flotilla.gc.sweep import Summary
from flotilla.kube import ALL_NAMESPACES, Kube
from flotilla.metrics import PodTarget, Window
from flotilla.metrics.gateway import Demand, DemandSampler, GatewayTarget
from flotilla.metrics.sampler import Sampler
from flotilla.metrics.sources import GatewaySource, MetricsSource, PrometheusSource, ScrapeSource
from flotilla.reconcile import Context, Observed, Plan, plan
from flotilla.reconcile.artifact import Building, artifact_state
from flotilla.reconcile.observed import EventView
from flotilla.reconcile.plan import needs_metrics
from flotilla.reconcile.scaling import at_zero
from flotilla.reconcile.store import single_node_mode
from flotilla.resources.gc import build_gc_job, gc_job_name, gc_labels
from flotilla.resources.store import uses_s3

log = logging.getLogger(__name__)
Key = tuple[str, str]
KICK_DEBOUNCE_SECONDS = 0.5
GC_POLL_SECONDS = 2.0  # how often a GC pass looks at its Job
GC_WAIT_SECONDS = 900.0  # the Job's own deadline (resources/gc.py) and then some
# A GC pod that has not started by then (unschedulable, a volume that does not attach, an image
# that does not pull) is deleted, so the namespace's optimizations do not wait behind it.
GC_START_SECONDS = 120.0


def render_config(model: SmallModel, summary: ArtifactSummary) -> str:
    """The revision's config.pbtxt: the artifact's I/O with this SmallModel's serving settings."""
    from flotilla.triton.config import render_model_config

    serving = model.spec.serving
    if summary.backend not in (None, "python"):
        raise ValueError(
            f"artifact {summary.key[:8]} needs the {summary.backend} backend, which this operator cannot serve"
        )
    return render_model_config(
        task=model.spec.source.task,
        max_batch_size=serving.max_batch_size,
        max_queue_delay_us=serving.max_queue_delay_microseconds,
        instance_count=serving.instance_count,
        gpu=serving.gpu.count > 0,
        intra_op_threads=cpu_threads(model),
    )


def cpu_threads(model: SmallModel) -> int:
    """onnxruntime threads per model instance from the pod's CPU (limit, else request): a pod
    asking for one core computes on one, so a second replica really adds capacity instead of
    both oversubscribing the node. 0 (all cores) without a CPU figure or on GPU serving."""
    serving = model.spec.serving
    resources = serving.resources
    cpu = (resources.limits or {}).get("cpu") or (resources.requests or {}).get("cpu")
    if cpu is None or serving.gpu.count > 0:
        return 0
    text = str(cpu)
    try:
        cores = float(text[:-1]) / 1000 if text.endswith("m") else float(text)
    except ValueError:  # not a CPU quantity: leave onnxruntime its default
        return 0
    return max(1, int(cores // max(serving.instance_count, 1)))


HTTP_ROUTE_RECHECK_SECONDS = 60.0
JOB_INDEX_GRACE_SECONDS = 30.0  # a created Job is in the watch's index well within this


def _version(resource_version: str) -> int:
    try:
        return int(resource_version)
    except ValueError:
        return 0


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Controller:
    def __init__(
        self,
        config: OperatorConfig,
        kube: Kube | None = None,
        clock: Callable[[], str] = utc_now,
        renderer: Callable[[SmallModel, ArtifactSummary], str] = render_config,
    ) -> None:
        self.config = config
        self.kube = kube or Kube()
        self.clock = clock
        self.renderer = renderer
        self._locks: dict[Key, asyncio.Lock] = {}
        self._reconciling = asyncio.Semaphore(config.workers)
        self._wakeups: dict[Key, asyncio.Event] = {}
        # Status is written only by us, so the last status we wrote is fresher than a watch
        # event that may still be in flight; a restart starts from the object's status.
        self._written: dict[Key, tuple[int, SmallModelStatus]] = {}
        self._samplers: dict[Key, Sampler] = {}
        self.metrics: MetricsSource = (
            PrometheusSource(config.prometheus_url)
            if config.prometheus_url
            else ScrapeSource(url_template=config.metrics_url_template)
        )
        self._http_route: tuple[float, bool] | None = None  # (checked at, served)
        self._demand: dict[Key, DemandSampler] = {}  # models at zero: their gateway counters
        # The fleet-wide cap on optimization Jobs: plans that may create one run one at a time,
        # and a Job we created counts until the watch has brought it into the index.
        self._job_slots = asyncio.Lock()
        self._created_jobs: dict[tuple[str, str], float] = {}
        self._queued: set[Key] = set()
        self._applied: Applied = {}  # children's markers after our writes (executor.py)
        # Artifact GC: a pass holds its namespace's lock from its check for optimization Jobs to
        # its Job's end, and a reconcile that would create an optimization Job takes it too, so
        # no optimization starts (and writes, or reuses an artifact) while a sweep runs.
        self._gc_locks: dict[str, asyncio.Lock] = {}
        self._gc_passes: dict[str, asyncio.Task[GcOutcome | None]] = {}
        self.gc_poll_seconds = GC_POLL_SECONDS
        self.gc_start_seconds = GC_START_SECONDS
        self._gc_loop: asyncio.Task[None] | None = None
        labels = ",".join(f"{k}={v}" for k, v in sorted(config.gateway_pods_labels.items()))
        self.gateway = GatewaySource(
            self._gateway_pods,
            f"pods {labels} in {config.gateway_pods_namespace}",
            port=config.gateway_pods_port,
            max_age=config.metrics_interval_seconds / 2,
        )

    async def _gateway_pods(self) -> list[GatewayTarget]:
        pods = await self.kube.running_pods(self.config.gateway_pods_namespace, self.config.gateway_pods_labels)
        return [GatewayTarget(name, ip) for name, ip in pods]

    def kick_queued(self) -> None:
        for key in list(self._queued):
            self.kick(*key)

    def _count_slots(self, observed: Observed) -> Observed:
        """Jobs running by the index, plus those we created that the index may not show yet."""
        now = time.monotonic()
        for job, at in list(self._created_jobs.items()):
            if now - at > JOB_INDEX_GRACE_SECONDS:
                del self._created_jobs[job]
        jobs = list(observed.fleet_jobs())
        running = sum(1 for _, job in jobs if not (job.complete or job.failed))
        indexed = {(namespace, job.name) for namespace, job in jobs}
        unseen = sum(1 for job in self._created_jobs if job not in indexed)
        return replace(observed, optimizations_running=running + unseen)

    def _needs_slot(self, model: SmallModel, observed: Observed) -> bool:
        if self.config.max_concurrent_optimizations == 0:
            return False
        key = artifact_key(model.spec.source, model.spec.optimize)
        state = artifact_state(model, key, observed)
        return isinstance(state, Building) and not state.exists

    def _after(self, model: SmallModel, result: Plan) -> None:
        key = (model.metadata.namespace, model.metadata.name)
        for obj in result.apply:
            if obj.get("kind") == "Job":
                self._created_jobs[(key[0], obj["metadata"]["name"])] = time.monotonic()
        optimized = result.status.condition("Optimized")
        if optimized is not None and optimized.reason == "Queued":
            self._queued.add(key)
        else:
            self._queued.discard(key)

    def kick_namespace(self, namespace: str) -> None:
        """The artifact claim of a namespace changed (bound, lost): every model there may care."""
        for key in list(self._wakeups):
            if key[0] == namespace:
                self.kick(*key)

    def kick(self, namespace: str, name: str) -> None:
        """A child changed: wake the model's loop (coalesced if it is already awake)."""
        if (event := self._wakeups.get((namespace, name))) is not None:
            event.set()

    async def wait(self, namespace: str, name: str, timeout: float, stopped: Any = None) -> None:
        """Until kicked, `stopped` (kopf's daemon flag) is set, or `timeout` passes."""
        event = self._wakeups.setdefault((namespace, name), asyncio.Event())
        waiters = [asyncio.ensure_future(event.wait())]
        if stopped is not None:
            waiters.append(asyncio.ensure_future(stopped.wait()))
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        event.clear()

    def forget(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        self._locks.pop(key, None)
        self._wakeups.pop(key, None)
        self._written.pop(key, None)
        self._samplers.pop(key, None)
        self._demand.pop(key, None)
        self._queued.discard(key)
        for child in [c for c in self._applied if c[0] == namespace]:
            if child[2] == name or child[2].startswith(f"{name}-"):
                del self._applied[child]
        telemetry.CONDITIONS.by_model.pop(key, None)
        telemetry.DESIRED_REPLICAS.by_model.pop(key, None)

    def _model(self, body: Mapping[str, Any]) -> SmallModel:
        """The model, with the status we last wrote if the body predates that write.

        A watch event may still be in flight after our own status write; but a body newer
        than our write (someone else changed status, or a restart) is the truth. Resource
        versions are etcd revisions, so newer compares greater.
        """
        model = SmallModel.from_body(body)
        written = self._written.get((model.metadata.namespace, model.metadata.name))
        if written is None or _version(model.metadata.resource_version) >= written[0]:
            return model
        return model.model_copy(update={"status": written[1]})

    async def _http_route_served(self) -> bool:
        """Whether the cluster serves HTTPRoutes (re-checked every minute)."""
        now = time.monotonic()
        if self._http_route is None or now - self._http_route[0] > HTTP_ROUTE_RECHECK_SECONDS:
            self._http_route = (now, await self.kube.serves_http_routes())
        return self._http_route[1]

    async def _gateway_demand(self, model: SmallModel, observed: Observed) -> Demand | None:
        """At zero: the gateway's requests for the model since the last look (None otherwise)."""
        key = (model.metadata.namespace, model.metadata.name)
        if not at_zero(model, observed):
            self._demand.pop(key, None)  # a fresh baseline at the next zero (see DemandSampler)
            return None
        if not self.config.gateway_pods_labels:
            return Demand(0, 0, 0.0, "no Flotilla gateway is configured (gateway_pods_labels is empty)")
        look = await self.gateway.look()
        sampler = self._demand.setdefault(key, DemandSampler())
        demand = sampler.observe(look, f"{key[0]}/{key[1]}")
        if demand.error:
            log.warning("gateway demand of %s/%s: %s", *key, demand.error)
        return demand

    async def _look(self, model: SmallModel, observed: Observed) -> tuple[Window | None, str | None, Demand | None]:
        """One metrics window of the model's serving pods, when a canary or the autoscaler needs
        it, and at zero the gateway's demand."""
        if not needs_metrics(model):
            return None, None, None
        key = (model.metadata.namespace, model.metadata.name)
        sampler = self._samplers.setdefault(key, Sampler(min_seconds=self.config.metrics_interval_seconds * 0.9))
        if sampler.last_at is not None and time.monotonic() - sampler.last_at < sampler.min_seconds:
            return None, None, None
        demand = await self._gateway_demand(model, observed)
        targets = [
            PodTarget(p.name, p.revision, p.ip, p.ready)
            for p in observed.pods
            if p.revision and p.job_name is None and not p.terminating
        ]
        try:
            readings = await self.metrics.read(model.metadata.namespace, model.metadata.name, targets)
        except Exception as err:  # the source as a whole is down: hold, and say so
            log.warning("metrics of %s/%s: %s", *key, err)
            return None, f"metrics source failed: {err}", demand
        return sampler.observe(readings, time.monotonic()), None, demand

    async def _store_warnings(self, namespace: str, observed: Observed) -> tuple[EventView, ...]:
        """Warning Events about the artifact claim and the model's pods, only while they may
        explain a wait (the claim unbound, or a pod Pending on a single-node claim): only an
        Event carries the provisioner's or attach controller's words. Steady state: no request."""
        claim = observed.artifact_claim
        if claim is None:
            return ()
        pending = {p.name for p in observed.pods if p.phase == "Pending" and not p.terminating}
        single = single_node_mode(claim, self.config.artifact_pvc_access_mode) is not None
        if claim.phase == "Bound" and not (single and pending):
            return ()
        about = {("PersistentVolumeClaim", claim.name), *(("Pod", name) for name in pending)}
        try:
            events = [EventView.from_object(e) for e in await self.kube.warning_events(namespace)]
        except Exception as err:  # an explanation, not a decision: plan without it
            log.warning("events in %s: %s", namespace, err)
            return ()
        return tuple(e for e in events if (e.kind, e.name) in about)

    async def reconcile(self, body: Mapping[str, Any], observed: Observed) -> Plan | None:
        model = self._model(body)
        if model.metadata.deletion_timestamp:
            return None
        key = (model.metadata.namespace, model.metadata.name)
        # One reconcile per model at a time, and at most `workers` of them at once: a burst of
        # 1,000 models must not become 1,000 concurrent writers to the API server.
        async with self._locks.setdefault(key, asyncio.Lock()), self._reconciling:
            model = self._model(body)
            started = time.perf_counter()
            try:
                window, metrics_error, demand = await self._look(model, observed)
                observed = replace(
                    observed,
                    metrics=window,
                    metrics_error=metrics_error,
                    gateway_demand=demand,
                    http_route_api=await self._http_route_served(),
                    warnings=await self._store_warnings(model.metadata.namespace, observed),
                )
                result, version = await self._plan_and_execute(model, observed, body)
            except Exception:
                telemetry.RECONCILES.labels(result="error").inc()
                raise
            finally:
                telemetry.RECONCILE_SECONDS.observe(time.perf_counter() - started)
            telemetry.RECONCILES.labels(result="ok").inc()
            if version is not None:
                self._written[key] = (_version(version), result.status)
            self._record(key, result)
            return result

    def _creates_job(self, model: SmallModel, observed: Observed) -> bool:
        key = artifact_key(model.spec.source, model.spec.optimize)
        state = artifact_state(model, key, observed)
        return isinstance(state, Building) and not state.exists

    async def _plan_and_execute(
        self, model: SmallModel, observed: Observed, body: Mapping[str, Any]
    ) -> tuple[Plan, str | None]:
        if self.config.artifact_gc_interval_seconds > 0 and self._creates_job(model, observed):
            async with self._gc_lock(self._gc_scope(model.metadata.namespace)):  # not while a sweep runs there
                return await self._plan_and_execute_now(model, observed, body)
        return await self._plan_and_execute_now(model, observed, body)

    async def _plan_and_execute_now(
        self, model: SmallModel, observed: Observed, body: Mapping[str, Any]
    ) -> tuple[Plan, str | None]:
        if not self._needs_slot(model, observed):
            result = plan(model, observed, Context(self.config, self.clock(), self.renderer))
            return result, await execute(self.kube, model, result, observed, dict(body), self._applied)
        async with self._job_slots:  # count, decide and create before the next model counts
            observed = self._count_slots(observed)
            result = plan(model, observed, Context(self.config, self.clock(), self.renderer))
            version = await execute(self.kube, model, result, observed, dict(body), self._applied)
            self._after(model, result)
            return result, version

    async def finalize(self, body: Mapping[str, Any], observed: Observed) -> int:
        """Delete the model's workloads before the model itself goes; return the pods still
        running. Garbage collection would remove them too, but only after the SmallModel is
        gone: holding the finalizer until the pods stop makes `kubectl delete` mean stopped."""
        model = SmallModel.from_body(body)
        ns = model.metadata.namespace
        for dep in observed.deployments:
            await self.kube.delete("apps/v1", "Deployment", dep.name, ns, foreground=True)
        for job in observed.jobs:
            await self.kube.delete("batch/v1", "Job", job.name, ns, foreground=True)
        return len(observed.pods)

    @staticmethod
    def _record(key: Key, result: Plan) -> None:
        telemetry.CONDITIONS.by_model[key] = {c.type: c.status for c in result.status.conditions}
        scaling = result.status.scaling
        if scaling is not None and scaling.desired_replicas is not None:
            telemetry.DESIRED_REPLICAS.by_model[key] = scaling.desired_replicas
        for event in result.events:
            if event.reason == "OptimizationStarted":
                telemetry.JOBS.labels(event="started").inc()
            elif event.reason == "Optimized":
                telemetry.JOBS.labels(event="succeeded").inc()
            elif event.type == "Warning" and result.status.condition("Optimized") is not None:
                cond = result.status.condition("Optimized")
                if cond is not None and cond.reason == event.reason:
                    telemetry.JOBS.labels(event="failed").inc()

    # --- artifact garbage collection ------------------------------------------------------

    def _gc_lock(self, scope: str) -> asyncio.Lock:
        return self._gc_locks.setdefault(scope, asyncio.Lock())

    def _gc_scope(self, namespace: str) -> str:
        """What a sweep covers: the namespace's claim, or ("") the one S3 bucket prefix of all."""
        return "" if uses_s3(self.config) else namespace

    async def collect_garbage(self, namespace: str | None) -> GcOutcome | None:
        """One GC pass: a Job sweeps the namespace's artifact claim (None: the S3 store, every
        watched namespace's artifacts) with the keep set of every SmallModel it serves
        (gc/keep.py); its summary becomes a log line and, when it removed something, an
        `ArtifactsCollected` Event (on the claim; S3: on the namespace the Job ran in).
        Skipped (None) while an optimization Job runs there, while a SmallModel cannot be
        read, or without a bound claim; a GC Job left by an operator that stopped is waited
        for and reported, never doubled."""
        async with self._gc_lock(namespace or ""):
            started = time.monotonic()
            name = gc_job_name(self.config)
            where = await self._left_gc_job(namespace, name)
            if where is None and (where := await self._start_gc(namespace)) is None:
                return None
            job, failed = await self._wait_gc(where, name)
            seconds = time.monotonic() - started
            pods = await self.kube.job_pods(where, name)
            if job is not None:
                _, failed = _job_finished(job)
            summary, omitted = _summary(_termination_message(pods))
            outcome = GcOutcome(where, summary, omitted, failed, seconds)
            await self._report_gc(outcome, s3=namespace is None)
            await self.kube.delete("batch/v1", "Job", name, where)
            return outcome

    async def _left_gc_job(self, namespace: str | None, name: str) -> str | None:
        """The namespace of a GC Job already there (a pass of an operator that stopped)."""
        if namespace is not None:
            return namespace if await self.kube.job(namespace, name) is not None else None
        for ns in self._watched():
            for job in await self.kube.jobs(ns, gc_labels()):
                if job["metadata"]["name"] == name:
                    return str(job["metadata"]["namespace"])
        return None

    def _watched(self) -> list[str]:
        return list(self.config.namespaces) or [ALL_NAMESPACES]

    async def _claim_usable(self, namespace: str) -> bool:
        claim = await self.kube.claim(namespace, self.config.artifact_pvc)
        if claim is None or (claim.get("status") or {}).get("phase") != "Bound":
            log.info("artifact GC in %s: skipped, the artifact claim is not bound", namespace)
            return False
        if "ReadWriteOncePod" in ((claim.get("spec") or {}).get("accessModes") or []):
            # One pod at a time: a GC pod would wait for the serving pod to stop (its deadline first).
            log.info("artifact GC in %s: skipped, a ReadWriteOncePod claim admits no GC pod beside serving", namespace)
            return False
        return True

    async def _start_gc(self, namespace: str | None) -> str | None:
        """Create the GC Job; the namespace it runs in (None: skipped, and said in the log)."""
        where = namespace or "the S3 store"
        if namespace is not None and not await self._claim_usable(namespace):
            return None
        scopes = [namespace] if namespace is not None else self._watched()
        optimizer = {LABEL_MANAGED_BY: MANAGED_BY, LABEL_COMPONENT: COMPONENT_OPTIMIZER}
        running = [j for ns in scopes for j in await self.kube.jobs(ns, optimizer) if not _job_finished(j)[0]]
        if running:
            names = ", ".join(sorted(j["metadata"]["name"] for j in running))
            log.info("artifact GC in %s: skipped while optimization Jobs run (%s); next interval", where, names)
            return None
        bodies = [m for ns in scopes for m in await self.kube.small_models(ns)]
        try:
            keep = keep_set(bodies)
        except UnknownModelError as err:
            log.warning("artifact GC in %s: skipped: %s", where, err)
            return None
        if namespace is None:  # S3: where a SmallModel is, so is the store's Secret and CA ConfigMap
            namespaces = sorted({str(b["metadata"]["namespace"]) for b in bodies})
            if not namespaces:
                log.info("artifact GC in %s: skipped, no SmallModel (no namespace to run the Job in)", where)
                return None
            namespace = namespaces[0]
        await self.kube.apply(build_gc_job(namespace, keep, self.config))
        log.info(
            "artifact GC in %s: Job started in %s, keeping %d referenced artifact key(s)", where, namespace, len(keep)
        )
        return namespace

    async def _wait_gc(self, namespace: str, name: str) -> tuple[dict[str, Any] | None, str | None]:
        """The finished Job, or (None, why) when it did not finish or its pod never started (then
        it is deleted, and gone, before the lock is released: no sweep can start after)."""
        started = time.monotonic()
        while time.monotonic() - started < GC_WAIT_SECONDS:
            job = await self.kube.job(namespace, name)
            if job is None or _job_finished(job)[0]:
                return job, None
            if time.monotonic() - started >= self.gc_start_seconds:
                pods = await self.kube.job_pods(namespace, name)
                if not any(_started(p) for p in pods):
                    await self._remove_gc_job(namespace, name)
                    why = "; ".join(filter(None, (_waiting(p) for p in pods))) or "no pod"
                    return None, f"its pod did not start within {self.gc_start_seconds:.0f} s ({why}): deleted"
            await asyncio.sleep(self.gc_poll_seconds)
        await self._remove_gc_job(namespace, name)
        return None, f"it did not finish within {GC_WAIT_SECONDS:.0f} s: deleted"

    async def _remove_gc_job(self, namespace: str, name: str) -> None:
        await self.kube.delete("batch/v1", "Job", name, namespace, foreground=True)
        started = time.monotonic()
        while time.monotonic() - started < GC_WAIT_SECONDS and await self.kube.job(namespace, name) is not None:
            await asyncio.sleep(self.gc_poll_seconds)

    async def _report_gc(self, outcome: GcOutcome, s3: bool = False) -> None:
        message = outcome.message()
        ok = outcome.summary is not None and not outcome.summary.errors and outcome.failed is None
        where = f"the S3 store (Job in {outcome.namespace})" if s3 else outcome.namespace
        (log.info if ok else log.warning)("artifact GC in %s: %s", where, message)
        if ok and not (outcome.summary and (outcome.summary.removed or outcome.omitted)):
            return  # nothing removed: the log line only (an Event per namespace per interval is noise)
        if s3:
            ns = outcome.namespace
            claim: dict[str, Any] | None = {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": ns, "namespace": ns},
            }
        else:
            claim = await self.kube.claim(outcome.namespace, self.config.artifact_pvc)
        if claim is not None:
            reason = "ArtifactsCollected" if outcome.summary is not None else "ArtifactGCFailed"
            await self.kube.event(claim, "Normal" if ok else "Warning", reason, message)

    def gc_tick(self, namespaces: Iterable[str]) -> None:
        """Start a pass in every namespace with an artifact claim (S3: one pass for the store)
        that has no pass in flight."""
        scopes: list[str | None] = [None] if uses_s3(self.config) else list(namespaces)
        for scope in scopes:
            task = self._gc_passes.get(scope or "")
            if task is None or task.done():
                self._gc_passes[scope or ""] = asyncio.create_task(self._gc_guarded(scope))

    async def _gc_guarded(self, namespace: str | None) -> GcOutcome | None:
        try:
            return await self.collect_garbage(namespace)
        except asyncio.CancelledError:
            raise
        except Exception:  # the next interval tries again
            log.exception("artifact GC in %s failed", namespace or "the S3 store")
            return None

    def start_gc(self, namespaces: Callable[[], Iterable[str]]) -> None:
        self._gc_loop = asyncio.create_task(self.gc_loop(namespaces))

    def stop_gc(self) -> None:
        if self._gc_loop is not None:
            self._gc_loop.cancel()

    async def gc_loop(self, namespaces: Callable[[], Iterable[str]]) -> None:
        """Every artifact_gc_interval_seconds, a pass per namespace (not at start: a restart
        does not sweep; a pass a stopped operator left running is picked up at the first tick)."""
        interval = self.config.artifact_gc_interval_seconds
        if interval <= 0:
            return
        try:
            while True:
                await asyncio.sleep(interval)
                self.gc_tick(namespaces())
        finally:
            for task in self._gc_passes.values():
                task.cancel()

    async def resync_loop(self, body: Mapping[str, Any], observed: Callable[[], Observed], stopped: Any) -> None:
        """Per-model loop (a kopf daemon): reconcile when kicked or every resync period."""
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        failures = 0
        while not stopped:
            period = self.config.resync_seconds
            if needs_metrics(self._model(body)):  # a canary or the autoscaler looks every interval
                period = min(period, self.config.metrics_interval_seconds)
            await self.wait(namespace, name, period if failures == 0 else min(2**failures, 60), stopped)
            if stopped:
                break
            # Coalesce a burst of child events (a Job and its pod appear and change within a
            # second) into one reconcile; the model's own changes do not wait for this.
            await asyncio.sleep(KICK_DEBOUNCE_SECONDS)
            try:
                await self.reconcile(body, observed())
                failures = 0
            except Exception:
                failures += 1
                log.exception("reconcile of %s/%s failed (attempt %d)", namespace, name, failures)


@dataclass(frozen=True)
class GcOutcome:
    """One artifact GC pass of a namespace, as the operator saw it."""

    namespace: str
    summary: Summary | None  # None: the Job reported nothing readable
    omitted: int  # removed names the summary left out (4 KiB limit)
    failed: str | None  # why the Job failed, if it did
    seconds: float  # from the Job's creation (or the pass's start) to its end

    def message(self) -> str:
        s = self.summary
        if s is None:
            return f"artifact GC Job failed: {self.failed or 'no summary'}"
        names = ", ".join(s.removed[:20]) + (
            f" and {len(s.removed) - 20 + self.omitted} more" if len(s.removed) > 20 or self.omitted else ""
        )
        removed = f"removed {len(s.removed) + self.omitted} artifact(s), {_size(s.bytes_freed)} freed"
        text = f"{removed}{': ' + names if names else ''}; kept {s.in_use} in use, {s.young} within the retention"
        if s.errors:
            text += f"; {len(s.errors)} could not be deleted: {'; '.join(s.errors[:3])}"
        return f"{text} ({self.seconds:.1f} s)"


def _size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def _job_finished(job: Mapping[str, Any]) -> tuple[bool, str | None]:
    """(finished, why it failed) from a Job's conditions."""
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("status") != "True":
            continue
        if cond.get("type") == "Complete":
            return True, None
        if cond.get("type") == "Failed":
            return True, f"{cond.get('reason', 'Failed')}: {cond.get('message', '')}".rstrip(": ")
    return False, None


def _started(pod: Mapping[str, Any]) -> bool:
    """Whether a container of the pod ever ran (running or terminated)."""
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return any({"running", "terminated"} & set((c.get("state") or {}).keys()) for c in statuses)


def _waiting(pod: Mapping[str, Any]) -> str:
    """Why a pod has not started, in the kubelet's or the scheduler's words."""
    status = pod.get("status") or {}
    for c in status.get("containerStatuses") or []:
        waiting = (c.get("state") or {}).get("waiting") or {}
        if waiting.get("reason"):
            return f"{waiting['reason']}: {waiting.get('message', '')}".rstrip(": ")
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            return f"{cond.get('reason', 'Unschedulable')}: {cond.get('message', '')}".rstrip(": ")
    return str(status.get("phase") or "")


def _termination_message(pods: list[dict[str, Any]]) -> str | None:
    for pod in pods:
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            terminated = (status.get("state") or {}).get("terminated") or {}
            if terminated.get("message"):
                return str(terminated["message"])
    return None


def _summary(message: str | None) -> tuple[Summary | None, int]:
    if not message:
        return None, 0
    import json

    try:
        data = json.loads(message.strip().splitlines()[-1])
        return Summary.from_wire(data) if isinstance(data, dict) else (None, 0)
    except (ValueError, TypeError, IndexError):
        return None, 0
