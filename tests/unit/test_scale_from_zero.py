"""Scale from zero, operator side: the gateway's /metrics -> per-model demand (parsing, deltas,
the source over HTTP), and the planner waking a model at zero on it, or holding it there and
saying why when the gateway cannot be read."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import generate_latest

from flotilla.config import OperatorConfig
from flotilla.controller import Controller
from flotilla.gateway.metrics import GatewayMetrics
from flotilla.metrics import Interval, MetricsFormatError, Window
from flotilla.metrics.gateway import (
    Demand,
    DemandSampler,
    GatewayCounts,
    GatewayLook,
    GatewayReading,
    GatewayTarget,
    parse_gateway,
)
from flotilla.metrics.sources import GatewaySource
from flotilla.reconcile import Context, Plan, plan
from flotilla.reconcile.scaling import COLD_START_KEY, at_zero
from flotilla.resources.meta import deployment_name

from .objects import (
    NOW,
    context,
    deployment_object,
    job_object,
    key_of,
    model,
    observed,
    revision_of,
    serving_pod_object,
    summary,
)

ZERO = {
    "enabled": True,
    "minReplicas": 0,
    "maxReplicas": 4,
    "latencyObjective": {"percentile": 95, "thresholdMs": 250},
    "scaleDownDelaySeconds": 60,
}


def gateway_text(waiting: dict[str, int], arrived: dict[str, int]) -> str:
    """What a real gateway's /metrics says (its own GatewayMetrics), so the names cannot drift."""
    metrics = GatewayMetrics()
    for model_, n in arrived.items():
        metrics.wake(model_).arrived.inc(n)
    for model_, n in waiting.items():
        metrics.wake(model_).waiting.inc(n)
    metrics.series("ml/other", "r1").in_flight.inc()  # other families are ignored
    return generate_latest(metrics.registry).decode()


# ---------------------------------------------------------------- parsing and deltas


def test_parse_reads_the_gateways_own_metrics() -> None:
    counts = parse_gateway(gateway_text({"ml/chat": 2}, {"ml/chat": 5, "ml/idle": 1}))
    assert counts == {"ml/chat": GatewayCounts(2, 5), "ml/idle": GatewayCounts(0, 1)}
    assert parse_gateway("") == {}
    with pytest.raises(MetricsFormatError):
        parse_gateway("flotilla_gateway_waiting_requests{model=ml/chat 1\n")


def look(at: float, *pods: tuple[str, dict[str, GatewayCounts] | None]) -> GatewayLook:
    return GatewayLook(at, tuple(GatewayReading(p, c, None if c is not None else "refused") for p, c in pods))


def test_demand_sums_pods_and_counts_arrivals_since_the_last_look() -> None:
    sampler = DemandSampler()
    first = sampler.observe(look(0, ("g0", {"ml/chat": GatewayCounts(1, 4)}), ("g1", {})), "ml/chat")
    # First look: the counter is a baseline (it holds everything since the gateway started);
    # the gauge counts at once.
    assert (first.waiting, first.arrived, first.seconds, first.error) == (1, 0, 0.0, None)
    second = sampler.observe(
        look(10, ("g0", {"ml/chat": GatewayCounts(0, 6)}), ("g1", {"ml/chat": GatewayCounts(3, 3)})), "ml/chat"
    )
    # g0: +2; g1 was a baseline of 0 (model absent) -> +3; g1's three are held now.
    assert (second.waiting, second.arrived, second.seconds, second.requests) == (3, 5, 10.0, 5)
    restarted = sampler.observe(look(20, ("g0", {"ml/chat": GatewayCounts(0, 1)})), "ml/chat")
    assert restarted.arrived == 1  # the counter went down: a new process, all of it is new


def test_an_unreadable_gateway_pod_is_an_error_not_zero() -> None:
    sampler = DemandSampler()
    sampler.observe(look(0, ("g0", {"ml/chat": GatewayCounts(0, 2)})), "ml/chat")
    failed = sampler.observe(look(10, ("g0", None), ("g1", {})), "ml/chat")
    assert failed.requests == 0 and failed.error == "g0: refused"
    # g0 kept its baseline: what it counted meanwhile is seen once it answers again.
    back = sampler.observe(look(20, ("g0", {"ml/chat": GatewayCounts(0, 5)})), "ml/chat")
    assert back.arrived == 3 and back.error is None
    nothing = sampler.observe(GatewayLook(30, (), "no gateway pods is running"), "ml/chat")
    assert nothing.error == "no gateway pods is running" and nothing.requests == 0


# ---------------------------------------------------------------- the source over HTTP


def test_the_source_reads_every_gateway_pod_once_per_max_age() -> None:
    async def main() -> None:
        served = {"n": 0}

        async def metrics(_: web.Request) -> web.Response:
            served["n"] += 1
            return web.Response(text=gateway_text({"ml/chat": 1}, {"ml/chat": 1}))

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        clock = {"t": 100.0}

        async def pods() -> list[GatewayTarget]:
            return [GatewayTarget("g0", "127.0.0.1"), GatewayTarget("g1", "127.0.0.2")]  # g1: nothing listens

        source = GatewaySource(pods, "pods x in y", port=port, timeout=1, max_age=5, clock=lambda: clock["t"])
        try:
            first = await source.look()
            assert first.error is None
            by_pod = {r.pod: r for r in first.readings}
            assert by_pod["g0"].counts == {"ml/chat": GatewayCounts(1, 1)}
            assert by_pod["g1"].counts is None and "127.0.0.2" in (by_pod["g1"].error or "")
            assert await source.look() is first and served["n"] == 1  # shared within max_age
            clock["t"] += 6
            await source.look()
            assert served["n"] == 2
        finally:
            await runner.cleanup()

        async def none() -> list[GatewayTarget]:
            return []

        async def forbidden() -> list[GatewayTarget]:
            raise PermissionError("pods is forbidden")

        assert "no gateway pods x in y" in ((await GatewaySource(none, "pods x in y").look()).error or "")
        assert "forbidden" in ((await GatewaySource(forbidden, "pods x in y").look()).error or "")

    asyncio.run(main())


# ---------------------------------------------------------------- the planner at zero


def zero_plan(demand: Demand | None, status: Any = None, now: str = NOW) -> tuple[Plan, Any]:
    """A served model whose Deployment the autoscaler took to 0 replicas, at one look."""
    m = model(autoscaling=ZERO)
    key, rev = key_of(m), revision_of(m)
    if status is None:
        status = plan(m, observed(job_object(m, complete=True, result=summary(key))), context()).status
    m = m.model_copy(update={"status": status})
    obs = replace(
        observed(
            job_object(m, complete=True, result=summary(key)),
            deployment_object(m, rev, key, replicas=0, ready=0),
            metrics=Window(at=0, seconds=10, intervals={}),  # a look: no pods, nothing to read
        ),
        gateway_demand=demand,
    )
    return plan(m, obs, Context(OperatorConfig(), now, context().render_config)), m


def test_gateway_demand_wakes_a_model_at_zero_and_times_the_cold_start() -> None:
    p, m = zero_plan(Demand(waiting=2, arrived=3, seconds=10))
    scaling = p.status.scaling
    assert scaling is not None and scaling.desired_replicas is not None and scaling.desired_replicas >= 1
    assert "waking" in (scaling.reason or "") and "gateway: 2 waiting, 3 arrived" in (scaling.reason or "")
    rev = revision_of(m)
    assert [s.replicas for s in p.scale if s.deployment == deployment_name("chat", rev)] == [scaling.desired_replicas]
    assert scaling.state is not None and COLD_START_KEY in scaling.state
    # 45 s later the first pod is ready: the cold start is measured and recorded.
    key = key_of(m)
    woken = m.model_copy(update={"status": p.status})
    pod = serving_pod_object(woken, rev, "p0", "10.0.0.1")
    later = "2026-11-29T12:00:45Z"
    again = plan(
        woken,
        observed(
            job_object(woken, complete=True, result=summary(key)),
            deployment_object(woken, rev, key, replicas=1, ready=1),
            pod,
            metrics=Window(at=10, seconds=10, intervals={rev: Interval(rev, 10.0, 5, 0, 5e5, 0, 2e5, 5, 5, 1)}),
        ),
        Context(OperatorConfig(), later, context().render_config),
    )
    assert again.status.scaling is not None and again.status.scaling.cold_start_seconds == 45.0
    assert COLD_START_KEY not in (again.status.scaling.state or {})


def test_a_look_before_the_scale_shows_keeps_the_cold_start_clock() -> None:
    p, _ = zero_plan(Demand(1, 1, 10))
    assert p.status.scaling is not None
    started = (p.status.scaling.state or {})[COLD_START_KEY]
    # The Deployment still shows 0 replicas at the next look: the clock is not restarted.
    again, _ = zero_plan(Demand(1, 0, 10), status=p.status, now="2026-11-29T12:00:10Z")
    assert again.status.scaling is not None and (again.status.scaling.state or {})[COLD_START_KEY] == started


def test_no_gateway_demand_stays_at_zero() -> None:
    p, _ = zero_plan(Demand(0, 0, 10))
    assert p.status.scaling is not None and p.status.scaling.desired_replicas == 0
    assert "scaled to zero, no requests" in (p.status.scaling.reason or "")
    assert not [s for s in p.scale if s.replicas > 0]


def test_a_failing_gateway_holds_at_zero_and_says_why() -> None:
    p, _ = zero_plan(Demand(0, 0, 10, error="gw-0: http://10.0.0.9:8080/metrics: timed out after 2s"))
    assert p.status.scaling is not None and p.status.scaling.desired_replicas == 0
    assert "staying at zero" in (p.status.scaling.reason or "")
    cond = p.status.condition("LatencyObjectiveMet")
    assert cond is not None and (cond.status, cond.reason) == ("Unknown", "NoMetrics")
    assert "timed out" in cond.message and "demand is unknown" in cond.message
    # Demand seen on another gateway pod still wakes it: more demand than counted, never less.
    woken, _ = zero_plan(Demand(1, 0, 10, error="gw-0: refused"))
    assert woken.status.scaling is not None and (woken.status.scaling.desired_replicas or 0) >= 1


# ---------------------------------------------------------------- the controller's wiring


class FakeKube:
    def __init__(self, pods: list[tuple[str, str]] | Exception) -> None:
        self.pods = pods
        self.calls = 0

    async def running_pods(self, namespace: str, labels: dict[str, str]) -> list[tuple[str, str]]:
        self.calls += 1
        assert namespace == "flotilla-system" and labels == {"app.kubernetes.io/name": "flotilla-gateway"}
        if isinstance(self.pods, Exception):
            raise self.pods
        return self.pods


def test_the_controller_reads_the_gateway_only_for_models_at_zero() -> None:
    async def main() -> None:
        kube = FakeKube(RuntimeError("pods is forbidden"))
        ctl = Controller(OperatorConfig(), kube=kube)  # type: ignore[arg-type]
        _, m = zero_plan(None)
        rev, key = revision_of(m), key_of(m)
        at_0 = observed(deployment_object(m, rev, key, replicas=0, ready=0))
        assert at_zero(m, at_0)
        demand = await ctl._gateway_demand(m, at_0)
        assert demand is not None and demand.requests == 0 and "forbidden" in (demand.error or "")
        running = observed(deployment_object(m, rev, key, replicas=1, ready=1))
        assert not at_zero(m, running)
        assert await ctl._gateway_demand(m, running) is None and ("ml", "chat") not in ctl._demand
        assert kube.calls == 1
        floor = model(autoscaling={**ZERO, "minReplicas": 1})
        assert not at_zero(floor, at_0)
        off = Controller(OperatorConfig(gateway_pods_labels={}), kube=kube)  # type: ignore[arg-type]
        unconfigured = await off._gateway_demand(m, at_0)
        assert unconfigured is not None and "no Flotilla gateway is configured" in (unconfigured.error or "")
        assert kube.calls == 1

    asyncio.run(main())
