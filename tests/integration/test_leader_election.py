"""Two operator replicas with leader election on the real control plane: one reconciles, the
other waits; SIGKILL the leader mid-work and the standby takes over with no duplicate Job or
Deployment (kube/lease.py)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest

from flotilla.api.v1alpha1 import serving_revision
from flotilla.api.v1alpha1.spec import SmallModelSpec
from localcluster.cluster import Cluster, wait_for

from .conftest import Kubelet, Operator, Watch, get
from .test_operator import SPEC, apply, good_summary, key_for, manifest, wait_condition, wait_job_pod

pytestmark = pytest.mark.cluster

# duration/renew deadline/retry in seconds. 4/3/0.5 keeps the test short; the chart's defaults are
# 15/10/2: `FLOTILLA_TEST_LEASE=15/10/2 pytest -s -k killed_leader` measures those (README).
_DURATION, _DEADLINE, _RETRY = os.environ.get("FLOTILLA_TEST_LEASE", "4/3/0.5").split("/")
FAST_LEASE = {
    "FLOTILLA_LEADER_ELECTION": "true",
    "FLOTILLA_LEASE_DURATION_SECONDS": _DURATION,
    "FLOTILLA_LEASE_RENEW_DEADLINE_SECONDS": _DEADLINE,
    "FLOTILLA_LEASE_RETRY_SECONDS": _RETRY,
}


def holder(cluster: Cluster, namespace: str) -> str | None:
    lease = get(cluster, "lease", namespace, "flotilla-operator")
    return (lease or {}).get("spec", {}).get("holderIdentity") or None


def leader_of(ops: list[Operator]) -> tuple[Operator, Operator]:
    leading = [op for op in ops if "leads" in op.log()]
    assert len(leading) == 1, [op.log()[-500:] for op in ops]
    return leading[0], next(op for op in ops if op is not leading[0])


def deployments(cluster: Cluster, namespace: str) -> list[dict[str, Any]]:
    found = get(cluster, "deployments", namespace, selector="flotilla.dev/component=server")
    return list(found["items"]) if found else []


def test_the_standby_takes_over_from_a_killed_leader_without_duplicates(
    crd: Cluster,
    namespace: str,
    kubelet: Kubelet,
    artifact_store: str,
    watch: Watch,
    operator_with: Callable[..., Operator],
) -> None:
    settings = {**FAST_LEASE, "FLOTILLA_LEADER_ELECTION_NAMESPACE": namespace}
    ops = [operator_with(**settings) for _ in range(2)]
    wait_for(lambda: all("waiting for Lease" in op.log() for op in ops), timeout=60, what="both replicas up")
    wait_for(lambda: holder(crd, namespace), timeout=60, what="a Lease holder")
    wait_for(lambda: any("leads" in op.log() for op in ops), timeout=60, what="a leader's log")
    leader, standby = leader_of(ops)
    assert "waiting for Lease" in standby.log() and "leads" not in standby.log()
    first = holder(crd, namespace)

    key = key_for(SPEC)
    apply(crd, namespace, manifest("a"))
    wait_for(lambda: get(crd, "job", namespace, f"a-opt-{key[:8]}"), timeout=60, what="Job of a")
    apply(crd, namespace, manifest("b"))  # the leader is killed while b's reconcile may be mid-write
    os.kill(leader.pid or 0, signal.SIGKILL)
    killed = time.monotonic()
    wait_for(lambda: holder(crd, namespace) not in (None, first), timeout=60, what="the standby holds the Lease")
    failover = time.monotonic() - killed
    wait_for(lambda: "leads" in standby.log(), timeout=30, what="the standby leads")

    for name in ("a", "b"):
        job = f"{name}-opt-{key[:8]}"
        wait_for(lambda job=job: get(crd, "job", namespace, job), timeout=60, what=f"Job {job}")
        kubelet.finish(wait_job_pod(crd, namespace, job), 0, good_summary(key))
        wait_condition(crd, namespace, name, "Ready", "True")
    print(f"\n[leader-election] SIGKILLed leader -> standby holds the Lease in {failover:.1f} s (lease {_DURATION} s)")

    revision = serving_revision(key, SmallModelSpec.model_validate(SPEC).serving)
    names = sorted(d["metadata"]["name"] for d in deployments(crd, namespace))
    assert names == [f"a-{revision[:8]}", f"b-{revision[:8]}"]
    assert sorted(watch.uids.values()) == [f"a-opt-{key[:8]}", f"b-opt-{key[:8]}"]  # one Job UID each
    crd.kubectl("delete", "smallmodels", "--all", "-n", namespace, "--timeout=60s")  # while it leads
    standby.stop()  # a clean stop gives the Lease up: the next replica need not wait it out
    assert holder(crd, namespace) is None, standby.log()[-2000:]
