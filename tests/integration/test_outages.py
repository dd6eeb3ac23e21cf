"""The operator rides out a frozen API server and a frozen etcd on the real control plane:
same process afterwards (no restart), no duplicate Job, status catches up, new work is done."""

from __future__ import annotations

import time

import pytest

from localcluster import procs
from localcluster.cluster import Cluster, wait_for

from .conftest import Kubelet, Operator, Watch, get
from .test_cluster import component_pids, wait_running_again
from .test_operator import SPEC, apply, good_summary, key_for, manifest, wait_condition, wait_job_pod

pytestmark = pytest.mark.cluster


def api_answers(cluster: Cluster) -> bool:
    return cluster.kubectl("get", "--raw", "/readyz", check=False).returncode == 0


@pytest.mark.cluster_restart  # the controller-manager and scheduler exit (lost leases) and are restarted
@pytest.mark.parametrize(("component", "seconds"), [("kube-apiserver", 45), ("etcd", 30)])
def test_operator_rides_out_a_frozen_component(
    operator: Operator, kubelet: Kubelet, namespace: str, artifact_store: str, component: str, seconds: int
) -> None:
    cluster = operator.cluster
    key = key_for(SPEC)
    watch = Watch(cluster, namespace)
    watch.thread.start()
    try:
        apply(cluster, namespace, manifest("serving"))
        kubelet.finish(wait_job_pod(cluster, namespace, f"serving-opt-{key[:8]}"), 0, good_summary(key))
        wait_condition(cluster, namespace, "serving", "Ready", "True")
        apply(cluster, namespace, manifest("building"))  # its Job is running through the outage
        building = f"building-opt-{key[:8]}"
        wait_for(lambda: get(cluster, "job", namespace, building), timeout=60, what=f"Job {building}")
        pid = operator.pid
        old = component_pids(cluster)

        procs.freeze(old[component], seconds)
        thawed = time.monotonic()
        wait_for(lambda: api_answers(cluster), timeout=60, what="the API server answering")
        wait_running_again(cluster, ("kube-controller-manager",), old, timeout=90)

        # New work after the outage: a model created now gets its Job, and the running Job's
        # result is read, from the same operator process.
        apply(cluster, namespace, manifest("after"))
        wait_for(lambda: get(cluster, "job", namespace, f"after-opt-{key[:8]}"), timeout=90, what="Job of `after`")
        recovered = time.monotonic() - thawed
        kubelet.finish(wait_job_pod(cluster, namespace, building), 0, good_summary(key))
        wait_condition(cluster, namespace, "building", "Optimized", "True")
        print(f"\n[outages] {component} frozen {seconds} s: new work done {recovered:.1f} s after the thaw")
        assert operator.running() and operator.pid == pid  # rode it out, no restart
        names = list(watch.uids.values())  # one UID per Job name: none was created twice
        assert len(names) == len(set(names)) and {f"{m}-opt-{key[:8]}" for m in ("building", "after")} <= set(names)
        assert get(cluster, "smallmodel", namespace, "serving")["status"]["conditions"]  # still there
        wait_condition(cluster, namespace, "serving", "Ready", "True")
    finally:
        watch.stop.set()
        watch.thread.join()


def test_a_lost_optimizer_pod_is_replaced_by_the_job_and_the_artifact_made_once(
    operator: Operator, kubelet: Kubelet, namespace: str
) -> None:
    """The Job's pod deleted mid-run (its node gone): the Job controller starts another, whose
    result is the one read; the model has one Job throughout (the optimizer's own publish is
    atomic: tests/unit/test_optimize.py)."""
    cluster = operator.cluster
    key = key_for(SPEC)
    job = f"chat-opt-{key[:8]}"
    apply(cluster, namespace, manifest("chat"))
    wait_for(lambda: get(cluster, "job", namespace, job), timeout=60, what=f"Job {job}")
    uid = get(cluster, "job", namespace, job)["metadata"]["uid"]
    lost = wait_job_pod(cluster, namespace, job)
    cluster.kubectl("delete", "pod", lost, "-n", namespace, "--grace-period=0", "--force")

    def replacement() -> str | None:
        pods = get(cluster, "pods", namespace, selector=f"batch.kubernetes.io/job-name={job}") or {"items": []}
        names = [p["metadata"]["name"] for p in pods["items"] if p["metadata"]["name"] != lost]
        return names[0] if names else None

    kubelet.finish(wait_for(replacement, timeout=60, what="the Job's replacement pod"), 0, good_summary(key))
    optimized = wait_condition(cluster, namespace, "chat", "Optimized", "True")
    assert get(cluster, "job", namespace, job)["metadata"]["uid"] == uid  # the same Job, not a second
    assert "int8" in optimized["message"]
