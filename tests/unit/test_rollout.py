"""The canary state machine (rollout/machine.py) and the planner's rollout path: steps, replica
sizing, traffic, pass / fail / inconclusive, commands, spec changes, restarts from status."""

from __future__ import annotations

from datetime import UTC, datetime

from flotilla.api.v1alpha1 import CanarySpec, RevisionsStatus
from flotilla.metrics import Interval, Window
from flotilla.reconcile import Plan, plan
from flotilla.resources.meta import deployment_name
from flotilla.rollout import machine
from flotilla.rollout.machine import Decision, Observation, canary_replicas_for, stable_replicas_for

from .objects import (
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

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC).timestamp()
SPEC = CanarySpec(steps=[10, 50, 100], step_seconds=60, min_requests=100, max_step_extensions=2)


def at(seconds: float) -> tuple[float, str]:
    t = T0 + seconds
    return t, datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def interval(revision: str, requests: int, mean_ms: float, errors: int = 0, seconds: float = 10.0) -> Interval:
    ok = requests - errors
    return Interval(
        revision=revision,
        seconds=seconds,
        requests=requests,
        errors=errors,
        request_us=ok * mean_ms * 1000,
        queue_us=0.0,
        compute_us=ok * mean_ms * 900,
        executions=requests,
        inferences=requests,
        pods=1,
    )


def window(canary: Interval | None, stable: Interval | None) -> Window:
    intervals = {i.revision: i for i in (canary, stable) if i is not None}
    return Window(at=0.0, seconds=10.0, intervals=intervals)


def look(
    state: RevisionsStatus,
    seconds: float,
    *,
    spec: CanarySpec = SPEC,
    canary_ready: int = 1,
    total: int = 4,
    win: Window | None = None,
    command: machine.Command | None = None,
    target: str = "new",
) -> Decision:
    now, text = at(seconds)
    obs = Observation(
        target=target,
        target_key="k2",
        total=total,
        stable_ready=total,
        canary_ready=canary_ready,
        window=win,
        now=now,
        now_text=text,
        command=command,
    )
    return machine.decide(spec, state, obs)


STABLE = RevisionsStatus(stable="old", stable_artifact_key="k1")


def run(
    canary_ms: float,
    stable_ms: float = 100.0,
    *,
    rate: int = 40,
    errors: int = 0,
    spec: CanarySpec = SPEC,
    looks: int = 200,
) -> list[Decision]:
    """Looks every 10 s with the same traffic until the rollout ends; the decisions made."""
    state, out = STABLE, []
    for i in range(looks):
        step = state.step or 0
        weight = spec.steps[min(step, len(spec.steps) - 1)]
        canary_n = max(1, rate * weight // 100)
        jitter = 1 + 0.05 * ((i * 7919) % 11 - 5) / 5  # deterministic +-5% noise
        win = window(interval("new", canary_n, canary_ms * jitter, errors), interval("old", rate, stable_ms))
        decision = look(state, 10.0 * i, win=win, canary_ready=canary_replicas_for(weight, 4), spec=spec)
        out.append(decision)
        state = decision.revisions
        if decision.outcome != "progressing":
            break
    return out


# --- sizing ------------------------------------------------------------------------------


def test_canary_runs_the_fewest_replicas_for_its_weight() -> None:
    assert [canary_replicas_for(w, 4) for w in (10, 25, 50, 100)] == [1, 1, 2, 4]
    assert canary_replicas_for(10, 1) == 1


def test_stable_shrinks_only_as_canary_pods_become_ready() -> None:
    assert stable_replicas_for(10, 4, canary_ready=0) == 4
    assert stable_replicas_for(10, 4, canary_ready=1) == 4  # ceil(90% of 4)
    assert stable_replicas_for(50, 4, canary_ready=0) == 4
    assert stable_replicas_for(50, 4, canary_ready=2) == 2
    assert stable_replicas_for(100, 4, canary_ready=3) == 1


def test_peak_extra_pods_of_a_four_replica_rollout_is_one() -> None:
    """The figure the docs quote: a 4-replica model never runs more than 5 serving pods."""
    decisions = run(100.0)
    assert decisions[-1].outcome == "promoted"
    peak = max(d.stable_replicas + d.canary_replicas for d in decisions)
    assert peak <= 5


# --- judging -----------------------------------------------------------------------------


def test_a_good_canary_walks_every_step_to_promotion() -> None:
    decisions = run(100.0)
    steps = [d.revisions.step for d in decisions if d.outcome == "progressing"]
    assert sorted(set(steps)) == [0, 1, 2]
    assert steps == sorted(steps)
    last = decisions[-1]
    assert last.outcome == "promoted"
    assert last.revisions.stable == "new" and last.revisions.canary is None
    assert last.stable_replicas == 4 and last.canary_replicas == 0
    assert [n.reason for n in last.notes] == ["Promoted"]
    # Every step held for its stepSeconds: 60 s each below 100%.
    assert len(decisions) * 10 >= 2 * SPEC.step_seconds


def test_a_slow_canary_is_rolled_back_with_the_numbers() -> None:
    decisions = run(200.0)
    last = decisions[-1]
    assert last.outcome == "rolled_back"
    assert last.revisions.stable == "old" and last.revisions.canary is None
    assert last.stable_replicas == 4 and last.canary_replicas == 0
    assert last.revisions.last_rollback is not None and last.revisions.last_rollback.revision == "new"
    assert "latency" in last.revisions.last_rollback.reason
    assert last.notes[0].type == "Warning" and last.notes[0].reason == "RolledBack"
    assert last.condition_reason == "RolledBack" and last.condition_status == "False"


def test_the_outcome_stays_in_the_condition_until_the_next_rollout() -> None:
    """A reader polling the resource sees Promoted / RolledBack after the fact, and the
    latest of the two: a rollback followed by a promotion reads Promoted, not the old rollback."""
    promoted = run(100.0)[-1].revisions
    later = look(promoted, 5000.0, target="new", canary_ready=0)
    assert later.outcome == "idle" and later.condition_reason == "Promoted"
    assert promoted.last_promotion is not None and promoted.last_promotion.replaced == "old"
    assert "new" in later.condition_message

    rolled = run(200.0)[-1].revisions
    assert look(rolled, 5000.0, target="old", canary_ready=0).condition_reason == "RolledBack"
    # Then a good change ("new2") goes through: the condition moves on to Promoted.
    state = rolled
    for i in range(200):
        win = window(interval("new2", 40, 100.0), interval("old", 40, 100.0))
        decision = look(state, 6000.0 + 10 * i, win=win, target="new2", canary_ready=4)
        state = decision.revisions
        if decision.outcome != "progressing":
            break
    assert decision.outcome == "promoted", decision
    assert look(state, 9000.0, target="new2", canary_ready=0).condition_reason == "Promoted"


def test_an_erroring_canary_is_rolled_back() -> None:
    decisions = run(100.0, errors=4, rate=100)  # 40% errors at 10% weight
    assert decisions[-1].outcome == "rolled_back"
    assert decisions[-1].revisions.last_rollback is not None
    assert "error" in decisions[-1].revisions.last_rollback.reason


def test_low_traffic_extends_then_holds_with_the_reason() -> None:
    spec = SPEC.model_copy(update={"min_requests": 10_000})
    decisions = run(100.0, rate=5, spec=spec, looks=60)
    assert all(d.outcome == "progressing" for d in decisions)
    reasons = [n.reason for d in decisions for n in d.notes]
    assert reasons.count("StepExtended") == spec.max_step_extensions
    held = decisions[-1]
    assert held.revisions.step == 0 and held.revisions.step_extensions == spec.max_step_extensions
    assert held.condition_status == "True"
    assert held.condition_reason in {"InsufficientTraffic", "Inconclusive"}
    assert "needed" in held.condition_message


def test_on_inconclusive_rollback_and_promote() -> None:
    base = SPEC.model_copy(update={"min_requests": 10_000})
    back = run(100.0, rate=5, spec=base.model_copy(update={"on_inconclusive": "Rollback"}), looks=60)
    assert back[-1].outcome == "rolled_back"
    assert "inconclusive" in back[-1].revisions.last_rollback.reason  # type: ignore[union-attr]
    ahead = run(100.0, rate=5, spec=base.model_copy(update={"on_inconclusive": "Promote"}), looks=120)
    assert ahead[-1].outcome == "promoted"
    assert "PromotedInconclusive" in [n.reason for d in ahead for n in d.notes]


def test_the_step_clock_starts_when_the_canary_pods_are_ready() -> None:
    started = look(STABLE, 0, canary_ready=0)
    assert started.revisions.step_started_time is None
    assert "waiting for 1 canary replicas" in started.condition_message
    assert started.canary_replicas == 1 and started.stable_replicas == 4
    ready = look(started.revisions, 30, canary_ready=1)
    assert ready.revisions.step_started_time == at(30)[1]


def test_traffic_by_ready_replicas_is_said_in_status() -> None:
    d = look(STABLE, 0, canary_ready=1, total=4)
    assert d.revisions.canary_weight == 20  # 1 of 5 ready pods
    assert d.revisions.traffic is not None and "1 of 5 ready replicas (20%) for a 10% step" in d.revisions.traffic


def test_http_route_weights_are_exact() -> None:
    now, text = at(0)
    obs = Observation("new", "k2", 4, 4, 1, None, now, text, http_route=True)
    d = machine.decide(SPEC, STABLE, obs)
    assert d.canary_weight == 10 and d.revisions.canary_weight == 10
    assert d.revisions.traffic is not None and d.revisions.traffic.startswith("HTTPRoute: 10% exact")


# --- commands and spec changes -----------------------------------------------------------


def test_abort_rolls_back_at_once() -> None:
    going = look(STABLE, 0)
    d = look(going.revisions, 10, command="abort")
    assert d.outcome == "rolled_back" and d.revisions.canary is None
    assert d.revisions.last_rollback is not None and "abort" in d.revisions.last_rollback.reason


def test_promote_skips_to_full_size_then_promotes_when_ready() -> None:
    going = look(STABLE, 0)
    d = look(going.revisions, 10, command="promote", canary_ready=1)
    # Full size, one surge pod at a time: stable 4 -> 3 as the first canary pod is ready.
    assert d.outcome == "progressing" and (d.stable_replicas, d.canary_replicas) == (3, 2)
    assert "ManualPromote" in [n.reason for n in d.notes]
    done = look(d.revisions, 20, canary_ready=4)
    assert done.outcome == "promoted" and done.revisions.stable == "new"


def test_a_rolled_back_revision_is_not_retried_until_the_spec_changes() -> None:
    rolled = look(look(STABLE, 0).revisions, 10, command="abort").revisions
    again = look(rolled, 20)
    assert again.outcome == "idle" and again.revisions.canary is None
    assert again.condition_reason == "RolledBack"
    other = look(rolled, 30, target="newer")
    assert other.revisions.canary == "newer" and "CanaryStarted" in [n.reason for n in other.notes]


def test_spec_changed_mid_rollout_restarts_with_the_new_revision() -> None:
    going = look(look(STABLE, 0).revisions, 70)
    d = look(going.revisions, 80, target="newer")
    assert d.revisions.canary == "newer" and d.revisions.step == 0
    assert not any((d.revisions.evidence or {}).values())  # evidence starts afresh
    assert [n.reason for n in d.notes][:2] == ["CanaryReplaced", "CanaryStarted"]


def test_spec_back_at_stable_ends_the_rollout_at_once() -> None:
    going = look(STABLE, 0)
    d = look(going.revisions, 10, target="old")
    assert d.outcome == "cancelled" and d.revisions.canary is None and d.canary_replicas == 0
    assert d.stable_replicas == 4


def test_state_round_trips_through_status() -> None:
    """A restarted operator reads status from the API server: the same decision follows."""
    win = window(interval("new", 10, 100.0), interval("old", 40, 100.0))
    going = look(look(STABLE, 0).revisions, 10, win=win)
    wire = going.revisions.to_wire()
    reread = RevisionsStatus.model_validate(wire)
    assert look(reread, 20, win=win) == look(going.revisions, 20, win=win)


# --- the planner ---------------------------------------------------------------------------


def _settled(replicas: int = 4) -> tuple[Plan, object]:
    m1 = model(replicas=replicas)
    key, rev1 = key_of(m1), revision_of(m1)
    job = job_object(m1, complete=True, result=summary(key))
    settled = plan(m1, observed(job, deployment_object(m1, rev1, key, replicas=replicas, ready=replicas)), context())
    return settled, job


def test_planner_starts_a_one_replica_canary_outside_the_service() -> None:
    settled, job = _settled()
    m1 = model(replicas=4)
    key, rev1 = key_of(m1), revision_of(m1)
    m2 = model(generation=2, replicas=4, serving={"maxBatchSize": 16}).model_copy(update={"status": settled.status})
    rev2 = revision_of(m2)
    stable_pods = [serving_pod_object(m1, rev1, f"old-{i}", f"10.0.0.{i}") for i in range(4)]
    canary_pod = serving_pod_object(m2, rev2, "new-0", "10.0.1.0", ready=False)
    obs = observed(job, deployment_object(m1, rev1, key, replicas=4, ready=4), *stable_pods, canary_pod)
    p = plan(m2, obs, context())
    assert p.status.revisions is not None and p.status.revisions.canary == rev2
    scales = {s.deployment: s.replicas for s in p.scale}
    assert scales == {deployment_name("chat", rev2): 1}  # stable untouched at 4
    endpoints = next(o for o in p.apply if o["kind"] == "EndpointSlice")["endpoints"]
    assert sorted(e["targetRef"]["name"] for e in endpoints) == [f"old-{i}" for i in range(4)]
    assert next(o for o in p.apply if o["metadata"]["name"] == "chat")["spec"].get("selector") is None
    ready, _ = p.status.condition("Ready"), p.status.condition("CanaryProgressing")
    assert ready is not None and ready.reason == "CanaryProgressing" and ready.status == "False"
    # Its pod ready: it joins the Service (1 of 5 = 20% of requests).
    obs2 = observed(
        job,
        deployment_object(m1, rev1, key, replicas=4, ready=4),
        deployment_object(m2, rev2, key, replicas=1, ready=1),
        *stable_pods,
        serving_pod_object(m2, rev2, "new-0", "10.0.1.0"),
    )
    p2 = plan(m2.model_copy(update={"status": p.status}), obs2, context())
    endpoints = next(o for o in p2.apply if o["kind"] == "EndpointSlice")["endpoints"]
    assert "new-0" in [e["targetRef"]["name"] for e in endpoints]
    assert p2.status.revisions is not None and p2.status.revisions.canary_weight == 20
    canary = p2.status.condition("CanaryProgressing")
    assert canary is not None and canary.status == "True"


def test_planner_http_route_carries_the_weights() -> None:
    settled, job = _settled()
    m1 = model(replicas=4)
    key, rev1 = key_of(m1), revision_of(m1)
    m2 = model(generation=2, replicas=4, serving={"maxBatchSize": 16}).model_copy(update={"status": settled.status})
    rev2 = revision_of(m2)
    obs = observed(
        job,
        deployment_object(m1, rev1, key, replicas=4, ready=4),
        deployment_object(m2, rev2, key, replicas=1, ready=1),
        serving_pod_object(m2, rev2, "new-0", "10.0.1.0"),
        http_route=True,
    )
    p = plan(m2, obs, context())
    route = next(o for o in p.apply if o["kind"] == "HTTPRoute")
    weights = {b["name"]: b["weight"] for b in route["spec"]["rules"][0]["backendRefs"]}
    assert weights == {"chat-stable": 90, "chat-canary": 10}


def test_planner_leaves_replicas_another_owner_set() -> None:
    """kubectl scale deployment (or an HPA on it) after our last decision: not fought."""
    settled, job = _settled(replicas=2)
    m = model(replicas=2).model_copy(update={"status": settled.status})
    key, rev = key_of(m), revision_of(m)
    dep = deployment_object(m, rev, key, replicas=5, ready=5)
    dep["metadata"]["managedFields"] = [
        {"manager": "flotilla-scaler", "time": "2026-11-29T11:00:00Z", "fieldsV1": {"f:spec": {"f:replicas": {}}}},
        {"manager": "kubectl", "time": "2026-11-29T11:30:00Z", "fieldsV1": {"f:spec": {"f:replicas": {}}}},
    ]
    assert plan(m, observed(job, dep), context()).scale == ()
    # Our own decision changes (spec.replicas 2 -> 3): applied.
    m3 = model(replicas=3, generation=2).model_copy(update={"status": settled.status})
    assert [s.replicas for s in plan(m3, observed(job, dep), context()).scale] == [3]


def test_flotilla_status_says_where_the_rollout_is() -> None:
    from flotilla.control import describe

    going = look(STABLE, 0, canary_ready=1)
    m = model().model_copy(update={"status": model().status.model_copy(update={"revisions": going.revisions})})
    text = "\n".join(describe(m))
    assert "canary:  new (1 replicas) at 20% (step 1/3: 10%)" in text
    assert "traffic: ReadyReplicas: Service: 1 of 5 ready replicas (20%) for a 10% step" in text


def test_gateway_ref_in_spec_names_the_route_parent() -> None:
    m = model(rollout={"gatewayRef": {"name": "edge", "namespace": "gw", "sectionName": "https"}})
    key, rev = key_of(m), revision_of(m)
    job = job_object(m, complete=True, result=summary(key))
    p = plan(m, observed(job, deployment_object(m, rev, key), http_route=True), context())
    route = next(o for o in p.apply if o["kind"] == "HTTPRoute")
    assert route["spec"]["parentRefs"] == [{"name": "edge", "namespace": "gw", "sectionName": "https"}]
    assert [b["name"] for b in route["spec"]["rules"][0]["backendRefs"]] == ["chat-stable"]
