"""Crash anywhere: a model's whole life (create, optimize, serve, change serving, change
optimization, delete) while the operator is SIGKILLed at random moments (seeded), at least 20
times, including right after each change lands. Invariants are checked all along:

- never two optimization Jobs for one artifact key (counted by UID across the run);
- the serving Deployment is never deleted, nor scaled down, while no other revision is Ready;
- status converges to what a run without kills ends with;
- nothing the operator created is left after the delete.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from flotilla.api.v1alpha1 import serving_revision
from flotilla.api.v1alpha1.spec import SmallModelSpec
from localcluster.cluster import Cluster, wait_for

from .conftest import Kubelet, Operator, get
from .test_operator import SPEC, apply, good_summary, key_for, manifest, wait_job_pod

pytestmark = pytest.mark.cluster

SEED = 20261201
MIN_KILLS = 20
LIFE_TIMEOUT = 240.0


class Chaos:
    """Kills the operator with SIGKILL 0.2-8 s (seeded) after each start has come up (its
    metrics port answers: kopf starts right after, so the kills land in its first lists,
    reconciles and writes) and starts it again at once."""

    def __init__(self, operator: Operator, seed: int) -> None:
        self.operator = operator
        self.random = random.Random(seed)
        self.kills = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def kill(self) -> None:
        with self.lock:
            if self.operator.proc is not None and self.operator.running():
                self.operator.proc.send_signal(signal.SIGKILL)
                self.operator.proc.wait()
                self.kills += 1
            self.operator.start()

    def soon(self) -> None:
        """A kill within 0.3-2 s of the operator being up after a change: while it writes what
        the change asked for."""

        def later() -> None:
            self.wait_up()
            time.sleep(self.random.uniform(0.3, 2.0))
            self.kill()

        threading.Thread(target=later, daemon=True).start()

    def up(self) -> bool:
        try:
            self.operator.metrics()
        except OSError:
            return False
        return True

    def wait_up(self) -> None:
        deadline = time.monotonic() + 60
        while not self.up() and time.monotonic() < deadline and not self.stop.is_set():
            time.sleep(0.1)

    def run(self) -> None:
        while not self.stop.is_set():
            self.wait_up()
            if self.stop.wait(self.random.uniform(0.2, 8.0)):
                return
            self.kill()


class Invariants:
    """Polls the namespace every 0.2 s and records every violation it sees."""

    def __init__(self, cluster: Cluster, namespace: str) -> None:
        self.cluster, self.namespace = cluster, namespace
        self.job_uids: dict[str, set[str]] = {}
        self.violations: list[str] = []
        self.deleting = False
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.last: dict[str, dict[str, Any]] = {}

    def run(self) -> None:
        while not self.stop.wait(0.2):
            jobs = get(self.cluster, "jobs", self.namespace, selector="flotilla.dev/model=life") or {"items": []}
            for j in jobs["items"]:
                key = j["metadata"]["labels"].get("flotilla.dev/artifact-key", j["metadata"]["name"])
                self.job_uids.setdefault(key, set()).add(j["metadata"]["uid"])
            found = get(self.cluster, "deployments", self.namespace, selector="flotilla.dev/model=life")
            now = {d["metadata"]["name"]: d for d in (found or {"items": []})["items"]}
            if not self.deleting:
                self._check(now)
            self.last = now

    @staticmethod
    def _ready(d: dict[str, Any]) -> int:
        return int(d.get("status", {}).get("readyReplicas", 0))

    def _check(self, now: dict[str, dict[str, Any]]) -> None:
        for name, before in self.last.items():
            others_ready = any(self._ready(d) > 0 for n, d in now.items() if n != name)
            after = now.get(name)
            if after is None and self._ready(before) > 0 and not others_ready:
                self.violations.append(f"Deployment {name} deleted while it alone served")
            elif (
                after is not None
                and not others_ready
                and self._ready(before) > 0
                and int(after["spec"].get("replicas", 1)) < int(before["spec"].get("replicas", 1))
            ):
                self.violations.append(f"Deployment {name} scaled down while it alone served")


def life_spec(batch: int, precision: str) -> dict[str, Any]:
    return {**SPEC, "replicas": 2, "optimize": {"precision": precision},
            "serving": {"maxBatchSize": batch}, "rollout": {"canary": {"steps": [100]}}}  # fmt: skip


def until(check: Callable[[], Any], what: str) -> Any:
    return wait_for(check, timeout=LIFE_TIMEOUT, what=what, interval=0.5)


def serving_as(cluster: Cluster, namespace: str, spec: dict[str, Any]) -> Callable[[], bool]:
    parsed = SmallModelSpec.model_validate(spec)
    revision = serving_revision(key_for(spec), parsed.serving)

    def check() -> bool:
        model = get(cluster, "smallmodel", namespace, "life") or {}
        status = model.get("status", {})
        ready = next((c for c in status.get("conditions", []) if c["type"] == "Ready"), {})
        return bool(
            ready.get("status") == "True"
            and (status.get("revisions") or {}).get("stable") == revision
            and status.get("observedGeneration") == model["metadata"]["generation"]
            and status.get("readyReplicas") == 2
        )

    return check


def optimize_through_chaos(cluster: Cluster, kubelet: Kubelet, namespace: str, spec: dict[str, Any]) -> None:
    key = key_for(spec)
    job = f"life-opt-{key[:8]}"
    until(lambda: get(cluster, "job", namespace, job), f"Job {job}")
    kubelet.finish(wait_job_pod(cluster, namespace, job), 0, good_summary(key))


def test_a_models_life_survives_sigkills_at_random_moments(
    operator: Operator, kubelet: Kubelet, namespace: str, artifact_store: str
) -> None:
    cluster = operator.cluster
    chaos, invariants = Chaos(operator, SEED), Invariants(cluster, namespace)
    invariants.thread.start()
    chaos.thread.start()
    started = time.monotonic()
    try:
        first = life_spec(4, "int8")
        apply(cluster, namespace, manifest("life", first))
        chaos.soon()
        optimize_through_chaos(cluster, kubelet, namespace, first)
        until(serving_as(cluster, namespace, first), "first revision serving")

        serving_change = life_spec(8, "int8")  # a new serving revision, same artifact
        apply(cluster, namespace, manifest("life", serving_change))
        chaos.soon()
        until(serving_as(cluster, namespace, serving_change), "serving change rolled out")

        optimize_change = life_spec(8, "fp32")  # a new artifact: a second Job
        apply(cluster, namespace, manifest("life", optimize_change))
        chaos.soon()
        optimize_through_chaos(cluster, kubelet, namespace, optimize_change)
        until(serving_as(cluster, namespace, optimize_change), "optimization change rolled out")
        while chaos.kills < MIN_KILLS:  # keep the converged state under fire too
            time.sleep(0.5)
        until(serving_as(cluster, namespace, optimize_change), "still converged after the last kills")
    finally:
        chaos.stop.set()
        chaos.thread.join()
    with chaos.lock:
        if not operator.running():
            operator.start()
    invariants.deleting = True
    cluster.kubectl("delete", "smallmodel", "life", "-n", namespace, "--timeout=120s")
    invariants.stop.set()
    invariants.thread.join()
    left = [
        f"{kind}/{o['metadata']['name']}"
        for kind in ("deployments", "jobs", "services", "configmaps", "endpointslices", "pods")
        for o in (get(cluster, kind, namespace, selector="flotilla.dev/model=life") or {"items": []})["items"]
    ]
    print(
        f"\n[chaos] seed {SEED}: {chaos.kills} SIGKILLs in {time.monotonic() - started:.0f} s, "
        f"{len(invariants.violations)} invariant violations, Jobs per key "
        f"{sorted(len(u) for u in invariants.job_uids.values())}, left after delete: {left}"
    )
    assert chaos.kills >= MIN_KILLS
    assert invariants.violations == []
    assert all(len(uids) == 1 for uids in invariants.job_uids.values()), invariants.job_uids
    assert len(invariants.job_uids) == 2  # int8 and fp32
    assert left == []
