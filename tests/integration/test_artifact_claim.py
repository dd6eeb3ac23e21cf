"""The artifact store's claim on the real control plane (PV controller, scheduler, KWOK nodes):
a claim that cannot bind is the model's condition within a reconcile or two, and a
ReadWriteOnce claim that a replica cannot reach says so (KWOK attaches no volumes, so what is
tested is what the operator decides from the scheduler's and PV controller's own words)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from localcluster.cluster import Cluster, wait_for

from .conftest import Kubelet, Operator, get
from .test_operator import SPEC, apply, condition, finish_optimization, manifest, wait_condition
from .test_pod_failures import CPU_POOL, events, first_pod_created

pytestmark = pytest.mark.cluster

CLAIM = "flotilla-artifacts"


def static_volume(cluster: Cluster, namespace: str, *, storage_class: str, mode: str, node: str | None = None) -> str:
    """A PersistentVolume reserved for the namespace's artifact claim (there is no provisioner
    here); `node`: only reachable from that node, as a local or zonal disk is."""
    name = f"artifacts-{namespace}"
    spec: dict[str, Any] = {
        "capacity": {"storage": "50Gi"},
        "accessModes": [mode],
        "hostPath": {"path": f"/tmp/flotilla-pv/{namespace}"},
        "storageClassName": storage_class,
        "claimRef": {"namespace": namespace, "name": CLAIM},
        "persistentVolumeReclaimPolicy": "Retain",
    }
    if node:
        term = {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}
        spec["nodeAffinity"] = {"required": {"nodeSelectorTerms": [term]}}
    pv = {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name}, "spec": spec}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(pv))
    return name


def claim_phase(cluster: Cluster, namespace: str) -> str | None:
    claim = get(cluster, "pvc", namespace, CLAIM)
    return claim["status"].get("phase") if claim else None


def test_a_claim_that_cannot_bind_is_the_optimized_condition_until_it_binds(
    operator_with: Callable[..., Operator], namespace: str
) -> None:
    missing = f"no-such-class-{namespace}"
    op = operator_with(FLOTILLA_ARTIFACT_STORAGE_CLASS=missing, FLOTILLA_JOB_NODE_SELECTOR=json.dumps(CPU_POOL))
    started = time.time()
    apply(op.cluster, namespace, manifest("chat", SPEC))
    # The operator was just started (a process importing kopf): time from its first decision,
    # the Job's pod that mounts the claim, too.
    since = first_pod_created(op.cluster, namespace, "batch.kubernetes.io/job-name")
    pending = wait_condition(op.cluster, namespace, "chat", "Optimized", "False", "ArtifactClaimPending")
    now = time.time()
    print(
        f"\n[artifact-claim] Job pod created -> Optimized=ArtifactClaimPending in {now - since:.1f} s "
        f"({now - started:.1f} s from the model, with the operator's start)"
    )
    message = pending["message"]
    for words in (CLAIM, "Pending", missing, "ReadWriteMany", "artifact_storage_class"):
        assert words in message, (words, message)
    assert "not found" in message, message  # the PV controller's (or scheduler's) own words

    def provisioner_words() -> str | None:  # the Event path: read by the operator, not watched
        c = condition(op.cluster, namespace, "chat", "Optimized")
        return c["message"] if c and "ProvisioningFailed" in c["message"] else None

    said = wait_for(provisioner_words, timeout=30, what="the PV controller's Event in the message")
    assert f'storageclass.storage.k8s.io "{missing}" not found' in said, said
    warnings = [e for e in events(op.cluster, namespace, "chat") if e["reason"] == "ArtifactClaimPending"]
    assert warnings and warnings[0]["type"] == "Warning"

    pv = static_volume(op.cluster, namespace, storage_class=missing, mode="ReadWriteMany")
    try:
        wait_for(lambda: claim_phase(op.cluster, namespace) == "Bound", timeout=60, what="the claim bound")
        optimizing = wait_condition(op.cluster, namespace, "chat", "Optimized", "False", "Optimizing")
        assert "is optimizing" in optimizing["message"]
    finally:
        op.cluster.kubectl("delete", "smallmodels", "--all", "-n", namespace, "--timeout=60s", check=False)
        op.cluster.kubectl("delete", "pvc", CLAIM, "-n", namespace, "--wait=false", check=False)
        op.cluster.kubectl("delete", "pv", pv, "--wait=false", check=False)


def test_a_replica_that_cannot_reach_a_read_write_once_claim_says_so(
    crd: Cluster, operator_with: Callable[..., Operator], kubelet: Kubelet, namespace: str
) -> None:
    """The claim's volume is reachable only from cpu-0 and the serving pods may only go to
    cpu-1 (a node selector stands in for "the node the volume is attached to is another one"):
    the scheduler says volume node affinity conflict, the model says it in the store's terms."""
    pv = static_volume(crd, namespace, storage_class="", mode="ReadWriteOnce", node="cpu-0")
    try:
        op = operator_with(
            FLOTILLA_ARTIFACT_PVC_ACCESS_MODE="ReadWriteOnce",
            FLOTILLA_SERVING_NODE_SELECTOR=json.dumps({"kubernetes.io/hostname": "cpu-1"}),
        )
        apply(op.cluster, namespace, manifest("chat", {**SPEC, "replicas": 2}))
        wait_for(lambda: claim_phase(op.cluster, namespace) == "Bound", timeout=60, what="the claim bound")
        claim = get(op.cluster, "pvc", namespace, CLAIM)
        assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]  # the operator created it so
        finish_optimization(op.cluster, kubelet, namespace, "chat", SPEC)
        started = time.time()
        ready = wait_condition(op.cluster, namespace, "chat", "Ready", "False", "ArtifactClaimSingleNode")
        print(f"\n[artifact-claim] RWO replicas -> Ready=ArtifactClaimSingleNode in {time.time() - started:.1f} s")
        for words in ("PersistentVolume's node affinity", "ReadWriteOnce", "ReadWriteMany", "artifact_pvc_access_mode"):
            assert words in ready["message"], (words, ready["message"])
        warnings = [e for e in events(op.cluster, namespace, "chat") if e["reason"] == "ArtifactClaimSingleNode"]
        assert warnings and warnings[0]["type"] == "Warning"
    finally:
        crd.kubectl("delete", "smallmodels", "--all", "-n", namespace, "--timeout=60s", check=False)
        crd.kubectl("delete", "pvc", CLAIM, "-n", namespace, "--wait=false", check=False)
        crd.kubectl("delete", "pv", pv, "--wait=false", check=False)
