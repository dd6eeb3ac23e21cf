"""The fleet-wide cap on optimization Jobs, on the real control plane: five models applied at
once under a cap of two never run more than two Jobs, and each model gets exactly one Job."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from localcluster.cluster import Cluster, wait_for

from .conftest import Kubelet, Operator, get
from .test_operator import SPEC, apply, condition, good_summary, key_for, manifest, wait_condition, wait_job_pod

pytestmark = pytest.mark.cluster

CAP = 2
MODELS = [f"m{i}" for i in range(5)]


def active_jobs(cluster: Cluster, namespace: str) -> list[dict[str, Any]]:
    jobs = get(cluster, "jobs", namespace, selector="flotilla.dev/component=optimizer")
    items = jobs["items"] if jobs else []
    finished = ("Complete", "Failed")
    return [
        j
        for j in items
        if not any(c["type"] in finished and c["status"] == "True" for c in j.get("status", {}).get("conditions", []))
    ]


class Watch:
    """Counts active Jobs every 0.2 s for the whole test: the most seen at once, and every UID."""

    def __init__(self, cluster: Cluster, namespace: str) -> None:
        self.cluster, self.namespace = cluster, namespace
        self.most = 0
        self.uids: dict[str, str] = {}  # uid -> Job name
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            active = active_jobs(self.cluster, self.namespace)
            self.most = max(self.most, len(active))
            for j in active:
                self.uids[j["metadata"]["uid"]] = j["metadata"]["name"]
            time.sleep(0.2)


@pytest.fixture
def watch(crd: Cluster, namespace: str) -> Iterator[Watch]:
    w = Watch(crd, namespace)
    w.thread.start()
    yield w
    w.stop.set()
    w.thread.join()


def test_a_cap_of_two_runs_two_jobs_at_a_time_and_each_model_once(
    crd: Cluster, namespace: str, kubelet: Kubelet, watch: Watch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    op = Operator(crd, namespace, tmp_path_factory.mktemp("operator"), FLOTILLA_MAX_CONCURRENT_OPTIMIZATIONS=str(CAP))
    op.start()
    try:
        key = key_for(SPEC)
        for name in MODELS:
            apply(crd, namespace, manifest(name))

        # Which models get the two slots is the operator's order, not the apply order.
        def some_queued() -> dict[str, Any] | None:
            found = [condition(crd, namespace, m, "Optimized") for m in MODELS]
            return next((c for c in found if c and c["reason"] == "Queued"), None)

        queued = wait_for(some_queued, timeout=90, what="a model Queued")
        assert f"at most {CAP} at once" in queued["message"]
        done: set[str] = set()
        while len(done) < len(MODELS):
            running = wait_for(lambda: active_jobs(crd, namespace), timeout=60, what="a running Job")
            job = running[0]["metadata"]["name"]
            model = job.split("-opt-")[0]
            kubelet.finish(wait_job_pod(crd, namespace, job), 0, good_summary(key))
            wait_condition(crd, namespace, model, "Optimized", "True")
            done.add(model)
        print(f"\n[job-fleet] {len(MODELS)} models, cap {CAP}: most Jobs running at once {watch.most}")
        assert watch.most == CAP  # the cap was reached and never passed
        names = sorted(watch.uids.values())
        assert names == sorted(f"{m}-opt-{key[:8]}" for m in MODELS)  # one Job (one UID) per model
    finally:
        crd.kubectl("delete", "smallmodels", "--all", "-n", namespace, "--timeout=60s", check=False)
        op.stop()
