"""Fixtures for operator integration tests: the CRD installed on the real local control
plane, and the operator running as a subprocess (`python -m flotilla run`) per test."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from flotilla.testing import OperatorProcess
from localcluster.cluster import Cluster, wait_for

from .metrics_driver import MetricsDriver

CRD = Path(__file__).resolve().parents[2] / "crds" / "smallmodels.flotilla.dev.yaml"
# Optimizer Job pods select a node that does not exist, so they stay Pending and the test
# plays the kubelet: it finishes them with the exit code and termination message it wants.
NO_NODE = {"flotilla.dev/test-node": "none"}


class Operator(OperatorProcess):
    """The operator as a real process against the real API server, watching one namespace."""

    def __init__(self, cluster: Cluster, namespace: str, log_dir: Path, **settings: str) -> None:
        defaults = {"FLOTILLA_JOB_NODE_SELECTOR": json.dumps(NO_NODE), "FLOTILLA_RESYNC_SECONDS": "5"}
        super().__init__(
            cluster.kubeconfig, log_dir / f"operator-{namespace}.log", [namespace], {**defaults, **settings}
        )
        self.cluster = cluster


def install_crd(cluster: Cluster) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))

    # Not `kubectl wait`: just after creation the CRD has no status.conditions yet, and
    # kubectl wait fails on that ("<nil> is of the type <nil>") instead of waiting.
    def established() -> bool:
        conditions = cluster.kubectl_json("get", "crd", "smallmodels.flotilla.dev").get("status", {}).get("conditions")
        return any(c["type"] == "Established" and c["status"] == "True" for c in conditions or [])

    wait_for(established, timeout=60, what="the SmallModel CRD established")


@pytest.fixture(scope="session")
def crd(cluster: Cluster) -> Cluster:
    install_crd(cluster)
    return cluster


@pytest.fixture(autouse=True)
def crd_after_restarts(request: pytest.FixtureRequest) -> None:
    """Tests marked cluster_restart run last, after others that re-create the cluster (losing
    the CRD the session fixture installed): such a test that uses the CRD gets it again."""
    if request.node.get_closest_marker("cluster_restart") and "crd" in request.fixturenames:
        cluster: Cluster = request.getfixturevalue("crd")
        if cluster.kubectl("get", "crd", "smallmodels.flotilla.dev", check=False).returncode != 0:
            install_crd(cluster)


@pytest.fixture
def operator(crd: Cluster, namespace: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    op = Operator(crd, namespace, tmp_path_factory.mktemp("operator"))
    op.start()
    yield op
    # While the operator still runs: it holds a finalizer on each SmallModel.
    crd.kubectl("delete", "smallmodels", "--all", "-n", namespace, "--timeout=60s", check=False)
    op.stop()
    if "Traceback" in op.log():
        sys.stderr.write(f"--- operator log ({op.log_path}) ---\n{op.log()[-6000:]}\n")


class Kubelet:
    """Plays the kubelet for pods no node runs: sets their final container state."""

    def __init__(self, cluster: Cluster, namespace: str) -> None:
        self.cluster = cluster
        self.namespace = namespace

    def finish(self, pod: str, exit_code: int, message: str, container: str = "optimizer") -> None:
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        terminated = {
            "exitCode": exit_code,
            "reason": "Completed" if exit_code == 0 else "Error",
            "message": message,
            "startedAt": now,
            "finishedAt": now,
        }
        status = {
            "phase": "Succeeded" if exit_code == 0 else "Failed",
            "containerStatuses": [
                {
                    "name": container,
                    "image": "optimizer",
                    "imageID": "",
                    "ready": False,
                    "restartCount": 0,
                    "state": {"terminated": terminated},
                }
            ],
        }
        patch = json.dumps({"status": status})
        self.cluster.kubectl(
            "patch", "pod", pod, "-n", self.namespace, "--subresource=status", "--type=merge", "-p", patch
        )


@pytest.fixture
def kubelet(crd: Cluster, namespace: str) -> Kubelet:
    return Kubelet(crd, namespace)


@pytest.fixture
def artifact_store(crd: Cluster, namespace: str) -> str:
    """A PVC bound to a hostPath PV, so serving pods can be scheduled on simulated nodes
    (the local cluster has no dynamic provisioner)."""
    pv = f"artifacts-{namespace}"
    manifests = [
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": pv},
            "spec": {
                "capacity": {"storage": "50Gi"},
                "accessModes": ["ReadWriteMany"],
                "hostPath": {"path": f"/tmp/flotilla-pv/{namespace}"},
                "storageClassName": "",
                "claimRef": {"namespace": namespace, "name": "flotilla-artifacts"},
                "persistentVolumeReclaimPolicy": "Delete",
            },
        },
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "flotilla-artifacts", "namespace": namespace},
            "spec": {
                "accessModes": ["ReadWriteMany"],
                "resources": {"requests": {"storage": "50Gi"}},
                "storageClassName": "",
                "volumeName": pv,
            },
        },
    ]
    crd.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": manifests}))
    wait_for(
        lambda: crd.kubectl_json("get", "pvc", "flotilla-artifacts", "-n", namespace)["status"].get("phase") == "Bound",
        timeout=60,
        what="artifact PVC bound",
    )
    return pv


def get(cluster: Cluster, kind: str, namespace: str, name: str | None = None, selector: str | None = None) -> Any:
    args = ["get", kind, "-n", namespace]
    if name:
        args.append(name)
    if selector:
        args += ["-l", selector]
    proc = cluster.kubectl(*args, "-o", "json", check=False)
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def on_ci() -> bool:
    return bool(os.environ.get("CI"))


@pytest.fixture
def driver() -> Iterator[MetricsDriver]:
    """Triton metrics text for the model `chat`'s simulated pods, as the test sets them."""
    d = MetricsDriver("chat").start()
    yield d
    d.stop()


@pytest.fixture
def operator_with(
    crd: Cluster, namespace: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., Operator]]:
    """Start operators (any number) watching the test's namespace, with extra FLOTILLA_*
    settings; at the end the models are deleted while they still run, then they stop."""
    started: list[Operator] = []

    def start(**settings: str) -> Operator:
        op = Operator(crd, namespace, tmp_path_factory.mktemp("operator"), **settings)
        op.start()
        started.append(op)
        return op

    yield start
    crd.kubectl("delete", "smallmodels", "--all", "-n", namespace, "--timeout=60s", check=False)
    for op in started:
        op.stop()
        if "Traceback" in op.log():
            sys.stderr.write(f"--- operator log ({op.log_path}) ---\n{op.log()[-6000:]}\n")


@pytest.fixture
def metrics_operator(operator_with: Callable[..., Operator], driver: MetricsDriver) -> Callable[..., Operator]:
    """Start the operator scraping `driver` once a second, with extra FLOTILLA_* settings."""

    def start(**settings: str) -> Operator:
        return operator_with(
            FLOTILLA_METRICS_URL_TEMPLATE=driver.url_template, FLOTILLA_METRICS_INTERVAL_SECONDS="1", **settings
        )

    return start


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


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real S3 server (versitygw, posix backend) on a free port; no cluster needed."""
    from localcluster import s3server

    server = s3server.start(tmp_path_factory.mktemp("s3"))
    yield server
    server.stop()


@pytest.fixture
def s3(s3_server: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A fresh bucket on that server and S3Settings for it (also as FLOTILLA_S3_* in the env)."""
    import uuid

    from flotilla.objectstore import S3Settings

    bucket = f"t-{uuid.uuid4().hex[:12]}"
    s3_server.restart()  # a test may have stopped it
    s3_server.create_bucket(bucket)
    env = {
        "FLOTILLA_S3_ENDPOINT": s3_server.endpoint,
        "FLOTILLA_S3_BUCKET": bucket,
        "FLOTILLA_S3_PREFIX": "fleet/",
        "FLOTILLA_S3_PATH_STYLE": "true",
        "FLOTILLA_S3_ACCESS_KEY_ID": s3_server.access_key,
        "FLOTILLA_S3_SECRET_ACCESS_KEY": s3_server.secret_key,
        "FLOTILLA_S3_MAX_ATTEMPTS": "2",
        "FLOTILLA_S3_CONNECT_TIMEOUT_SECONDS": "2",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return S3Settings()
