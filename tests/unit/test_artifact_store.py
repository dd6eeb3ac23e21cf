"""The artifact store's own reasons: a claim that does not bind (ArtifactClaimPending) and a
single-node (ReadWriteOnce) claim that a pod cannot use where it is (ArtifactClaimSingleNode)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from flotilla.config import ConfigError, OperatorConfig, load_config
from flotilla.reconcile import Context, Plan, plan
from flotilla.reconcile.observed import ClaimView, EventView, Observed
from flotilla.reconcile.store import claim_pending, single_node, single_node_mode
from flotilla.resources.optimizer import build_artifact_pvc

from .objects import (
    context,
    deployment_object,
    job_object,
    key_of,
    model,
    observed,
    pending_pod_object,
    revision_of,
    serving_pod_object,
    summary,
)

NO_CLASS = 'storageclass.storage.k8s.io "fast-nfs" not found'
UNBOUND = "0/7 nodes are available: pod has unbound immediate PersistentVolumeClaims. preemption: 0/7 nodes"
MULTI_ATTACH = (
    'Multi-Attach error for volume "pvc-1234" Volume is already used by pod(s) chat-abc-1, '
    "which are on a different node"
)


def claim(phase: str = "Pending", storage_class: str | None = "fast-nfs", mode: str = "ReadWriteMany") -> ClaimView:
    obj = {
        "metadata": {"name": "flotilla-artifacts"},
        "spec": {"accessModes": [mode], "storageClassName": storage_class},
        "status": {"phase": phase},
    }
    if storage_class is None:
        del obj["spec"]["storageClassName"]
    return ClaimView.from_object(obj)


def event(kind: str, name: str, reason: str, message: str, at: str = "2026-01-01T00:00:00Z") -> EventView:
    return EventView.from_object(
        {
            "involvedObject": {"kind": kind, "name": name},
            "reason": reason,
            "message": message,
            "type": "Warning",
            "lastTimestamp": at,
        }
    )


def cond(p: Plan, type_: str) -> tuple[str, str, str]:
    c = p.status.condition(type_)
    assert c is not None, type_
    return c.status, c.reason, c.message


def with_store(obs: Observed, view: ClaimView, *events: EventView) -> Observed:
    return replace(obs, artifact_claim=view, warnings=tuple(events))


def rwo_context() -> Context:
    ctx = context()
    return replace(ctx, config=OperatorConfig(artifact_pvc_access_mode="ReadWriteOnce"))


# --- the setting ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["ReadWriteMany", "ReadWriteOnce", "ReadWriteOncePod"])
def test_the_claim_the_operator_creates_has_the_configured_access_mode(mode: str) -> None:
    config = OperatorConfig(artifact_pvc_access_mode=mode, artifact_storage_class="standard")  # type: ignore[arg-type]
    pvc = build_artifact_pvc("ns", config)
    assert pvc["spec"]["accessModes"] == [mode]
    assert pvc["spec"]["storageClassName"] == "standard"


def test_the_default_stays_read_write_many_and_a_bad_mode_stops_the_operator_at_start() -> None:
    assert build_artifact_pvc("ns", OperatorConfig())["spec"]["accessModes"] == ["ReadWriteMany"]
    assert load_config({"FLOTILLA_ARTIFACT_PVC_ACCESS_MODE": "ReadWriteOnce"}).artifact_pvc_access_mode == (
        "ReadWriteOnce"
    )
    with pytest.raises(ConfigError, match="FLOTILLA_ARTIFACT_PVC_ACCESS_MODE"):
        load_config({"FLOTILLA_ARTIFACT_PVC_ACCESS_MODE": "RWX"})


# --- a claim that does not bind -----------------------------------------------------------


def test_a_pending_claim_with_a_provisioning_failure_names_class_mode_and_the_provisioners_words() -> None:
    m = model()
    pod = pending_pod_object(m, job=True, message=UNBOUND)
    older = event(
        "PersistentVolumeClaim", "flotilla-artifacts", "ProvisioningFailed", "old words", "2026-01-01T00:00:00Z"
    )
    newer = event("PersistentVolumeClaim", "flotilla-artifacts", "ProvisioningFailed", NO_CLASS, "2026-01-01T00:01:00Z")
    obs = with_store(observed(job_object(m), pod), claim(), older, newer)
    p = plan(m, obs, context())
    status, reason, message = cond(p, "Optimized")
    assert (status, reason) == ("False", "ArtifactClaimPending")
    for words in ("flotilla-artifacts", "Pending", "fast-nfs", "ReadWriteMany", "ProvisioningFailed", NO_CLASS):
        assert words in message, (words, message)
    assert "old words" not in message
    assert [(e.type, e.reason) for e in p.events if e.reason == "ArtifactClaimPending"] == [
        ("Warning", "ArtifactClaimPending")
    ]


def test_without_an_event_the_schedulers_words_about_the_claim_are_enough() -> None:
    m = model()
    obs = with_store(
        observed(job_object(m), pending_pod_object(m, job=True, message=UNBOUND)), claim(storage_class=None)
    )
    _, reason, message = cond(plan(m, obs, context()), "Optimized")
    assert reason == "ArtifactClaimPending"
    assert "unset (the cluster's default)" in message and "unbound immediate PersistentVolumeClaims" in message


def test_a_claim_waiting_for_its_first_consumer_or_a_pod_short_of_memory_is_not_the_claims_fault() -> None:
    m = model()
    running = observed(job_object(m))  # the Job's pod not seen yet; the claim waits for it
    assert claim_pending(claim(), running.pods, ()) is None
    short = observed(job_object(m), pending_pod_object(m, job=True, message="0/7 nodes: 7 Insufficient memory"))
    assert claim_pending(claim(), short.pods, ()) is None
    _, reason, _ = cond(plan(m, with_store(short, claim()), context()), "Optimized")
    assert reason == "Unschedulable"
    bound = with_store(observed(job_object(m), pending_pod_object(m, job=True, message=UNBOUND)), claim("Bound"))
    assert claim_pending(bound.artifact_claim, bound.pods, ()) is None


# --- a single-node claim ------------------------------------------------------------------


def test_the_single_node_mode_comes_from_the_claim_itself_else_the_setting() -> None:
    assert single_node_mode(claim(mode="ReadWriteOnce"), "ReadWriteMany") == "ReadWriteOnce"
    assert single_node_mode(claim(mode="ReadWriteMany"), "ReadWriteOnce") is None
    assert single_node_mode(None, "ReadWriteOncePod") == "ReadWriteOncePod"
    assert single_node_mode(None, "ReadWriteMany") is None


def serving_state(m: Any, *pods: dict[str, Any], replicas: int = 2, ready: int = 1) -> Observed:
    key, rev = key_of(m), revision_of(m)
    return observed(
        job_object(m, complete=True, result=summary(key)),
        deployment_object(m, rev, key, replicas=replicas, ready=ready),
        *pods,
    )


def attaching_pod(m: Any, name: str) -> dict[str, Any]:
    pod = serving_pod_object(m, revision_of(m), name, None, ready=False)
    pod["status"]["phase"] = "Pending"
    return pod


def test_a_replica_that_cannot_attach_a_read_write_once_claim_says_why_and_what_to_do() -> None:
    m = model(replicas=2)
    rev = revision_of(m)
    ok, stuck = serving_pod_object(m, rev, "chat-abc-1", "10.0.0.1"), attaching_pod(m, "chat-abc-2")
    warning = event("Pod", "chat-abc-2", "FailedAttachVolume", MULTI_ATTACH)
    obs = with_store(serving_state(m, ok, stuck), claim("Bound", "standard", "ReadWriteOnce"), warning)
    p = plan(m, obs, context())
    status, reason, message = cond(p, "Ready")
    assert (status, reason) == ("True", "ArtifactClaimSingleNode")  # one replica serves; the other cannot
    assert "chat-abc-2" in message and "Multi-Attach" in message
    assert "ReadWriteOnce" in message and "ReadWriteMany" in message
    assert any(e.type == "Warning" and e.reason == "ArtifactClaimSingleNode" for e in p.events)


def test_the_same_event_on_a_read_write_many_claim_is_not_a_single_node_problem() -> None:
    m = model(replicas=2)
    pods = serving_state(m, attaching_pod(m, "chat-abc-2")).pods
    warning = event("Pod", "chat-abc-2", "FailedAttachVolume", MULTI_ATTACH)
    assert single_node(claim("Bound", "nfs", "ReadWriteMany"), "ReadWriteMany", pods, [warning]) is None
    assert single_node(claim("Bound", "nfs", "ReadWriteOnce"), "ReadWriteMany", pods, []) is None  # no symptom


@pytest.mark.parametrize(
    "message",
    [
        "0/7 nodes are available: 7 node(s) had volume node affinity conflict.",  # Kubernetes < 1.30
        "0/7 nodes are available: 1 node(s) didn't match PersistentVolume's node affinity, 6 node(s) had taints",
    ],
)
def test_a_job_pod_out_of_reach_of_its_volume_is_a_single_node_problem(message: str) -> None:
    m = model()
    obs = with_store(
        observed(job_object(m), pending_pod_object(m, job=True, message=message)),
        claim("Bound", "local", "ReadWriteOnce"),
    )
    _, reason, said = cond(plan(m, obs, context()), "Optimized")
    assert reason == "ArtifactClaimSingleNode"
    assert message in said and "must run on the node" in said


def test_replicas_on_a_read_write_once_claim_are_allowed_and_the_status_says_they_share_a_node() -> None:
    m = model(replicas=3)
    rev = revision_of(m)
    pods = [serving_pod_object(m, rev, f"chat-{i}", f"10.0.0.{i}") for i in range(3)]
    obs = with_store(serving_state(m, *pods, replicas=3, ready=3), claim("Bound", "standard", "ReadWriteOnce"))
    status, reason, message = cond(plan(m, obs, context()), "Ready")
    assert (status, reason) == ("True", "Serving")
    assert "3/3 ready" in message and "ReadWriteOnce" in message and "must run on the node" in message
    single = with_store(serving_state(m, pods[0], replicas=1, ready=1), claim("Bound", "standard", "ReadWriteOnce"))
    assert "ReadWriteOnce" not in cond(plan(model(), single, rwo_context()), "Ready")[2]  # one replica: nothing to say


# --- the controller's Event lookup --------------------------------------------------------


class EventsKube:
    def __init__(self, events: list[dict[str, Any]] | Exception) -> None:
        self.events = events
        self.calls = 0

    async def warning_events(self, namespace: str) -> list[dict[str, Any]]:
        self.calls += 1
        if isinstance(self.events, Exception):
            raise self.events
        return self.events


def raw_event(kind: str, name: str, message: str) -> dict[str, Any]:
    return {"involvedObject": {"kind": kind, "name": name}, "reason": "R", "message": message, "type": "Warning"}


def test_events_are_read_only_while_they_may_explain_a_wait_and_only_about_the_claim_and_the_models_pods() -> None:
    import asyncio

    from flotilla.controller import Controller

    m = model()
    stuck = pending_pod_object(m, job=True, message=UNBOUND)
    found = [
        raw_event("PersistentVolumeClaim", "flotilla-artifacts", NO_CLASS),
        raw_event("PersistentVolumeClaim", "someone-elses", "not ours"),
        raw_event("Pod", "p-1", "about our pod"),
        raw_event("Pod", "other-pod", "not ours"),
    ]

    async def main() -> None:
        kube = EventsKube(found)
        ctl = Controller(OperatorConfig(), kube=kube)  # type: ignore[arg-type]
        got = await ctl._store_warnings("ns", with_store(observed(job_object(m), stuck), claim()))
        assert sorted(e.message for e in got) == sorted([NO_CLASS, "about our pod"])
        # Bound ReadWriteMany claim, or no claim seen: no request at all.
        assert await ctl._store_warnings("ns", with_store(observed(job_object(m), stuck), claim("Bound"))) == ()
        assert await ctl._store_warnings("ns", observed(job_object(m), stuck)) == ()
        assert kube.calls == 1
        # Bound ReadWriteOnce with a Pending pod: read (a Multi-Attach error is only an Event).
        rwo = with_store(observed(job_object(m), stuck), claim("Bound", "standard", "ReadWriteOnce"))
        assert "about our pod" in [e.message for e in await ctl._store_warnings("ns", rwo)]
        # Events are an explanation: an error reading them plans without them.
        failing = Controller(OperatorConfig(), kube=EventsKube(RuntimeError("forbidden")))  # type: ignore[arg-type]
        assert await failing._store_warnings("ns", with_store(observed(job_object(m)), claim())) == ()

    asyncio.run(main())
