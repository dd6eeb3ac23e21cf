"""Canary rollouts on the real control plane: the operator (a real process) scrapes serving
metrics the test drives (metrics_driver.py), judges them, moves traffic, promotes or rolls back,
and survives SIGKILL mid-step. Serving pods are KWOK pods (Ready, never run)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from flotilla.api.v1alpha1 import serving_revision
from flotilla.api.v1alpha1.spec import SmallModelSpec
from localcluster.cluster import Cluster, wait_for

from .conftest import Kubelet, Operator, get
from .metrics_driver import MetricsDriver, Profile
from .test_operator import SPEC, apply, finish_optimization, manifest, smallmodel, wait_condition

pytestmark = pytest.mark.cluster

NAME = "chat"
FAST_CANARY = {"steps": [10, 50, 100], "stepSeconds": 4, "minRequests": 30, "maxStepExtensions": 1}


def spec_with(batch: int, canary: dict[str, Any] | None = None, replicas: int = 2) -> dict[str, Any]:
    return {
        **SPEC,
        "replicas": replicas,
        "serving": {"maxBatchSize": batch},
        "rollout": {"canary": canary or FAST_CANARY},
    }


def revision(spec: dict[str, Any], key: str) -> str:
    return serving_revision(key, SmallModelSpec.model_validate(spec).serving)


@pytest.fixture
def rollout_operator(metrics_operator: Callable[..., Operator]) -> Operator:
    return metrics_operator(FLOTILLA_TRAFFIC_SPLIT="replicas")


def revisions(cluster: Cluster, namespace: str) -> dict[str, Any]:
    return smallmodel(cluster, namespace, NAME).get("status", {}).get("revisions", {})  # type: ignore[no-any-return]


def deployment(cluster: Cluster, namespace: str, rev: str) -> dict[str, Any] | None:
    return get(cluster, "deployment", namespace, f"{NAME}-{rev[:8]}")  # type: ignore[no-any-return]


def serve_stable(
    op: Operator, kubelet: Kubelet, namespace: str, driver: MetricsDriver, spec: dict[str, Any]
) -> tuple[str, str]:
    apply(op.cluster, namespace, manifest(NAME, spec))
    key = finish_optimization(op.cluster, kubelet, namespace, NAME, spec)
    rev = revision(spec, key)
    driver.set(rev, Profile(rate=20, latency_ms=100))
    wait_condition(op.cluster, namespace, NAME, "Ready", "True", "Serving")
    wait_for(lambda: (d := deployment(op.cluster, namespace, rev)) and d["status"].get("readyReplicas") == 2,
             timeout=60, what="2 stable replicas ready")  # fmt: skip
    return key, rev


def endpoints(cluster: Cluster, namespace: str) -> list[str]:
    slice_ = get(cluster, "endpointslice", namespace, f"{NAME}-serving")
    return sorted(e["targetRef"]["name"] for e in (slice_ or {}).get("endpoints") or [])


def sample_until(cluster: Cluster, namespace: str, reason: str, timeout: float = 300) -> list[dict[str, Any]]:
    """Status revisions every half second until CanaryProgressing has `reason`."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = smallmodel(cluster, namespace, NAME)
        seen.append(body.get("status", {}).get("revisions", {}))
        conds = {c["type"]: c for c in body.get("status", {}).get("conditions", [])}
        if conds.get("CanaryProgressing", {}).get("reason") == reason:
            return seen
        time.sleep(0.5)
    raise TimeoutError(f"CanaryProgressing never reached {reason}; last revisions {seen[-1:]}")


def test_a_good_canary_walks_every_step_and_is_promoted(
    rollout_operator: Operator, kubelet: Kubelet, namespace: str, artifact_store: str, driver: MetricsDriver
) -> None:
    cluster = rollout_operator.cluster
    first = spec_with(4)
    key, rev1 = serve_stable(rollout_operator, kubelet, namespace, driver, first)
    stable_uid = deployment(cluster, namespace, rev1)["metadata"]["uid"]  # type: ignore[index]
    second = spec_with(8)
    rev2 = revision(second, key)
    driver.set(rev2, Profile(rate=20, latency_ms=100))
    apply(cluster, namespace, manifest(NAME, second))
    seen = sample_until(cluster, namespace, "Promoted")
    steps = [s.get("step") for s in seen if s.get("canary") == rev2]
    # Step 2 (100%) may last a single look, shorter than this sampling: 0 and 1 must be seen.
    assert {0, 1} <= set(steps), steps
    assert steps == sorted(steps)  # never backwards
    # Frugal: the canary started with one replica while stable kept two.
    assert any(s.get("canaryReplicas") == 1 and s.get("stableReplicas") == 2 for s in seen)
    assert max((s.get("stableReplicas") or 0) + (s.get("canaryReplicas") or 0) for s in seen) <= 3
    weights = [s.get("canaryWeight") for s in seen if s.get("canary") == rev2]
    assert any(w and 0 < w < 100 for w in weights), weights
    final = revisions(cluster, namespace)
    assert final["stable"] == rev2 and "canary" not in final
    wait_for(lambda: deployment(cluster, namespace, rev1) is None, timeout=60, what="old revision removed")
    wait_for(
        lambda: (
            len(endpoints(cluster, namespace)) == 2
            and all(p.startswith(f"{NAME}-{rev2[:8]}") for p in endpoints(cluster, namespace))
        ),
        timeout=60,
        what="the Service's endpoints are the new revision's pods",
    )
    assert stable_uid != deployment(cluster, namespace, rev2)["metadata"]["uid"]  # type: ignore[index]
    wait_condition(cluster, namespace, NAME, "Ready", "True", "Serving")
    reasons = [e["reason"] for e in cluster.kubectl_json("get", "events", "-n", namespace)["items"]]
    assert {"CanaryStarted", "StepPassed", "Promoted"} <= set(reasons)


def test_a_slow_canary_is_rolled_back_and_stable_is_untouched(
    rollout_operator: Operator, kubelet: Kubelet, namespace: str, artifact_store: str, driver: MetricsDriver
) -> None:
    cluster = rollout_operator.cluster
    key, rev1 = serve_stable(rollout_operator, kubelet, namespace, driver, spec_with(4))
    before = deployment(cluster, namespace, rev1)
    assert before is not None
    bad = spec_with(8)
    rev2 = revision(bad, key)
    driver.set(rev2, Profile(rate=20, latency_ms=300))
    apply(cluster, namespace, manifest(NAME, bad))
    sample_until(cluster, namespace, "RolledBack")
    after = deployment(cluster, namespace, rev1)
    assert after is not None
    assert after["metadata"]["uid"] == before["metadata"]["uid"]  # never recreated
    assert after["spec"]["replicas"] == 2
    final = revisions(cluster, namespace)
    assert final["stable"] == rev1 and "canary" not in final
    assert final["lastRollback"]["revision"] == rev2
    assert "latency" in final["lastRollback"]["reason"]
    wait_for(lambda: deployment(cluster, namespace, rev2) is None, timeout=60, what="canary removed")
    ready = wait_condition(cluster, namespace, NAME, "Ready", "False", "RolledBack")
    assert rev2 in ready["message"]
    events = cluster.kubectl_json("get", "events", "-n", namespace)["items"]
    assert any(e["reason"] == "RolledBack" and e["type"] == "Warning" for e in events)
    # Not retried while the spec stays: a minute of looks later, still no canary.
    time.sleep(3)
    assert deployment(cluster, namespace, rev2) is None


def test_sigkill_mid_step_resumes_at_the_same_step(
    rollout_operator: Operator, kubelet: Kubelet, namespace: str, artifact_store: str, driver: MetricsDriver
) -> None:
    cluster = rollout_operator.cluster
    slow = {**FAST_CANARY, "stepSeconds": 8}
    key, rev1 = serve_stable(rollout_operator, kubelet, namespace, driver, spec_with(4, slow))
    second = spec_with(8, slow)
    rev2 = revision(second, key)
    driver.set(rev2, Profile(rate=20, latency_ms=100))
    apply(cluster, namespace, manifest(NAME, second))

    def mid_step() -> dict[str, Any] | None:
        r = revisions(cluster, namespace)
        return r if r.get("step") == 1 and r.get("stepStartedTime") and (r.get("stepRequests") or 0) > 0 else None

    at_kill = wait_for(mid_step, timeout=90, what="canary in the middle of step 1")
    uids = {rev: deployment(cluster, namespace, rev)["metadata"]["uid"] for rev in (rev1, rev2)}  # type: ignore[index]
    assert rollout_operator.pid is not None
    os.kill(rollout_operator.pid, signal.SIGKILL)
    rollout_operator.proc.wait()  # type: ignore[union-attr]
    rollout_operator.start()
    time.sleep(3)
    resumed = revisions(cluster, namespace)
    assert resumed["canary"] == rev2 and resumed["step"] >= 1
    assert resumed["stepStartedTime"] == at_kill["stepStartedTime"] or resumed["step"] > 1
    assert {rev: deployment(cluster, namespace, rev)["metadata"]["uid"] for rev in (rev1, rev2)} == uids  # type: ignore[index]
    sample_until(cluster, namespace, "Promoted")
    assert revisions(cluster, namespace)["stable"] == rev2


def test_an_inconclusive_step_extends_then_holds_with_the_reason(
    rollout_operator: Operator, kubelet: Kubelet, namespace: str, artifact_store: str, driver: MetricsDriver
) -> None:
    cluster = rollout_operator.cluster
    starving = {**FAST_CANARY, "stepSeconds": 2, "minRequests": 100_000, "maxStepExtensions": 1}
    key, _ = serve_stable(rollout_operator, kubelet, namespace, driver, spec_with(4, starving))
    second = spec_with(8, starving)
    driver.set(revision(second, key), Profile(rate=0.5, latency_ms=100))
    apply(cluster, namespace, manifest(NAME, second))

    def held() -> dict[str, Any] | None:
        conds = {c["type"]: c for c in smallmodel(cluster, namespace, NAME)["status"]["conditions"]}
        c = conds.get("CanaryProgressing", {})
        return c if c.get("reason") in {"InsufficientTraffic", "Inconclusive"} and "held" in c["message"] else None

    cond = wait_for(held, timeout=90, what="canary held with a reason")
    assert cond["status"] == "True" and "needed" in cond["message"]
    reasons = [e["reason"] for e in cluster.kubectl_json("get", "events", "-n", namespace)["items"]]
    assert "StepExtended" in reasons
    assert revisions(cluster, namespace)["step"] == 0


def test_abort_annotation_rolls_back_and_is_cleared(
    rollout_operator: Operator, kubelet: Kubelet, namespace: str, artifact_store: str, driver: MetricsDriver
) -> None:
    cluster = rollout_operator.cluster
    slow = {**FAST_CANARY, "stepSeconds": 600}
    key, rev1 = serve_stable(rollout_operator, kubelet, namespace, driver, spec_with(4, slow))
    second = spec_with(8, slow)
    rev2 = revision(second, key)
    driver.set(rev2, Profile(rate=20, latency_ms=100))
    apply(cluster, namespace, manifest(NAME, second))
    wait_for(lambda: revisions(cluster, namespace).get("canary") == rev2, timeout=60, what="canary started")
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "flotilla", "abort", NAME, "-n", namespace],
        env=env, capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    assert "abort of canary" in out.stdout
    sample_until(cluster, namespace, "RolledBack")
    final = revisions(cluster, namespace)
    assert final["stable"] == rev1 and "abort" in final["lastRollback"]["reason"]
    wait_for(
        lambda: "flotilla.dev/abort" not in smallmodel(cluster, namespace, NAME)["metadata"].get("annotations", {}),
        timeout=30,
        what="the abort annotation cleared",
    )


def test_http_route_weights_move_step_by_step(
    crd: Cluster,
    namespace: str,
    kubelet: Kubelet,
    artifact_store: str,
    driver: MetricsDriver,
    metrics_operator: Callable[..., Operator],
) -> None:
    """Where the Gateway API is served, the model's HTTPRoute carries exact weights."""
    from localcluster import gatewayapi

    gatewayapi.install(crd)
    op = metrics_operator(FLOTILLA_GATEWAY_PARENT="gateways/shared")
    key, _ = serve_stable(op, kubelet, namespace, driver, spec_with(4))
    route = wait_for(lambda: get(crd, "httproute", namespace, NAME), timeout=60, what="the model's HTTPRoute")
    assert route["spec"]["parentRefs"] == [{"group": "gateway.networking.k8s.io", "kind": "Gateway",
                                           "name": "shared", "namespace": "gateways"}]  # fmt: skip
    second = spec_with(8)
    driver.set(revision(second, key), Profile(rate=20, latency_ms=100))
    apply(crd, namespace, manifest(NAME, second))
    weights: list[tuple[int, ...]] = []
    traffic: list[str | None] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        backends = get(crd, "httproute", namespace, NAME)["spec"]["rules"][0]["backendRefs"]
        w = tuple(b.get("weight", 1) for b in backends)
        if not weights or weights[-1] != w:
            weights.append(w)
        status = revisions(crd, namespace)
        traffic.append(status.get("traffic"))
        if status.get("stable") == revision(second, key) and len(backends) == 1:
            break
        time.sleep(0.3)
    assert (90, 10) in weights and (50, 50) in weights, weights
    assert weights.index((90, 10)) < weights.index((50, 50))
    assert weights[-1] == (100,)
    assert any((t or "").startswith("HTTPRoute: 10% exact") for t in traffic), traffic
