"""The fleet-wide cap on optimization Jobs, on the real control plane: five models applied at
once under a cap of two never run more than two Jobs, and each model gets exactly one Job."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from localcluster.cluster import Cluster, wait_for

from .conftest import Kubelet, Operator, Watch, active_jobs
from .test_operator import SPEC, apply, condition, good_summary, key_for, manifest, wait_condition, wait_job_pod

pytestmark = pytest.mark.cluster

CAP = 2
MODELS = [f"m{i}" for i in range(5)]


def test_a_cap_of_two_runs_two_jobs_at_a_time_and_each_model_once(
    crd: Cluster, namespace: str, kubelet: Kubelet, watch: Watch, operator_with: Callable[..., Operator]
) -> None:
    operator_with(FLOTILLA_MAX_CONCURRENT_OPTIMIZATIONS=str(CAP))
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
