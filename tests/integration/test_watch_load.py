"""The operator's memory follows its own models, not the cluster: with hundreds of unrelated
PVCs, Pods and ConfigMaps beside its models, it indexes only its children and the artifact
claim (the API server filters its watches), and still sees every child it needs. A restart
that finds more children of one kind than its worker limit still reconciles (kopf holds a
worker per object until every index is full: with a limit, it never gets there).

The full-size figures (1,000 models, 5,000 unrelated objects in other namespaces, operator RSS
and reconcile rate against a run without them) come from `bench/reconcile.py --noise 5000
--cluster-wide`."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from flotilla.testing import unrelated_objects
from localcluster.cluster import Cluster, wait_for

from .conftest import Operator
from .test_operator import apply, manifest

pytestmark = pytest.mark.cluster

MODELS = 10
WORKERS = 4  # fewer than the Jobs and pods a restart finds
UNRELATED = 600  # 200 each of PVCs, Pods, ConfigMaps
CHILD = "app.kubernetes.io/managed-by=flotilla,flotilla.dev/model"


def _count(cluster: Cluster, kind: str, namespace: str, selector: str) -> int:
    return len(cluster.kubectl_json("get", kind, "-n", namespace, "-l", selector)["items"])


def test_unrelated_objects_are_neither_indexed_nor_in_the_way(
    crd: Cluster, namespace: str, operator_with: Callable[..., Operator]
) -> None:
    crd.kubectl("create", "-f", "-", input=json.dumps(unrelated_objects(namespace, UNRELATED)))
    settings = {"FLOTILLA_MAX_CONCURRENT_OPTIMIZATIONS": str(MODELS + 1), "FLOTILLA_WORKERS": str(WORKERS)}
    op = operator_with(**settings)
    for i in range(MODELS):
        apply(crd, namespace, manifest(f"m{i}"))
    wait_for(lambda: _count(crd, "jobs", namespace, CHILD) == MODELS, timeout=120, what=f"{MODELS} optimization Jobs")
    pods = wait_for(
        lambda: (n := _count(crd, "pods", namespace, CHILD)) >= MODELS and n, timeout=60, what="the Jobs' pods"
    )

    def indexed() -> dict[str, float]:
        return {i: op.metric("flotilla_indexed_objects", index=i) for i in ("jobs", "pods", "claims")}

    # The index follows the watch; give the last pod events a moment to land.
    seen = wait_for(
        lambda: (v := indexed())["pods"] == pods and v["jobs"] == MODELS and v, timeout=30, what="indexes caught up"
    )
    unrelated_claims = _count(crd, "pvc", namespace, "app=noise")
    print(f"\n[watch-load] {UNRELATED} unrelated objects ({unrelated_claims} claims), {MODELS} models: indexed {seen}")
    assert unrelated_claims == UNRELATED // 3
    assert seen["claims"] == 1  # the artifact claim the operator created, not the 200 others

    # Killed, and started again: it lists 10 Jobs and 10 pods (more than WORKERS of each) before
    # anything else, then must go on reconciling: a model applied now gets its Job.
    assert op.proc is not None
    op.proc.kill()
    op.proc.wait()
    operator_with(**settings)
    apply(crd, namespace, manifest("after-restart"))
    wait_for(
        lambda: _count(crd, "jobs", namespace, f"{CHILD}=after-restart") == 1,
        timeout=90,
        what="a Job for the model applied after the restart",
    )
