"""The S3 artifact store end to end on the process node, against a real S3 server (versitygw):
a SmallModel whose source is s3:// and whose artifacts live in a bucket is optimized by the real
optimizer Job (which uploads the artifact, manifest last), served by the real tritonserver after
the fetch-artifact init container downloaded and verified it, and answers; no claim is created.
A second replica on the same node then starts from the node cache with the S3 server stopped,
so it cannot have downloaded anything.

The figures (first download, cache start) are printed for the closing note; nothing here asserts
a duration.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.request
import uuid
import zipfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

import processnode
from flotilla.api.v1alpha1 import COMPONENT_SERVER, LABEL_COMPONENT, LABEL_MODEL
from flotilla.testing import OperatorProcess
from localcluster import s3server
from localcluster.cluster import Cluster, wait_for
from localcluster.pytest_plugin import create_namespace

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.e2e]
MODEL = "embed"
ARTIFACT_BUCKET, SOURCE_BUCKET, PREFIX = "flotilla-artifacts", "models", "fleet/"
OPTIMIZE_S = 900


def _minilm_package() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("all_minilm_l6_v2")
    assert spec is not None and spec.submodule_search_locations, "requirements/models.txt is not installed"
    return Path(next(iter(spec.submodule_search_locations))) / "model.zip"


def _client(server: s3server.S3Server) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=server.endpoint,
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
        region_name="us-east-1",
    )


def _upload_source(server: s3server.S3Server, workdir: Path) -> str:
    """MiniLM's files under s3://models/all-MiniLM-L6-v2/, the way a platform team keeps them."""
    extracted = workdir / "all-MiniLM-L6-v2"
    with zipfile.ZipFile(_minilm_package()) as archive:
        archive.extractall(extracted)
    s3 = _client(server)
    s3.create_bucket(Bucket=SOURCE_BUCKET)
    s3.create_bucket(Bucket=ARTIFACT_BUCKET)
    for path in sorted(p for p in extracted.rglob("*") if p.is_file()):
        s3.upload_file(str(path), SOURCE_BUCKET, f"all-MiniLM-L6-v2/{path.relative_to(extracted)}")
    return f"s3://{SOURCE_BUCKET}/all-MiniLM-L6-v2/"


def _secret(name: str, values: dict[str, str]) -> str:
    data = {k: base64.b64encode(v.encode()).decode() for k, v in values.items()}
    return json.dumps({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "data": data})


class Stack:
    def __init__(self, cluster: Cluster, namespace: str, server: s3server.S3Server, cache: Path) -> None:
        self.cluster, self.namespace, self.server, self.cache = cluster, namespace, server, cache

    def get(self, *args: str) -> Any:
        proc = self.cluster.kubectl("get", *args, "-n", self.namespace, "-o", "json", check=False)
        return json.loads(proc.stdout) if proc.returncode == 0 else None

    def condition(self, type_: str) -> dict[str, Any]:
        status = (self.get("smallmodel", MODEL) or {}).get("status", {})
        return next((c for c in status.get("conditions", []) if c["type"] == type_), {})

    def serving_pods(self) -> list[dict[str, Any]]:
        selector = f"{LABEL_MODEL}={MODEL},{LABEL_COMPONENT}={COMPONENT_SERVER}"
        return list((self.get("pods", "-l", selector) or {"items": []})["items"])


@pytest.fixture(scope="module")
def stack(
    cluster: Cluster, process_node: processnode.ProcessNode, tmp_path_factory: pytest.TempPathFactory, crds: None
) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("s3-e2e")
    server = s3server.start(workdir / "s3")
    try:
        source = _upload_source(server, workdir)
        namespace = create_namespace(cluster, f"e2e-s3-{uuid.uuid4().hex[:6]}")
        keys = {"AWS_ACCESS_KEY_ID": server.access_key, "AWS_SECRET_ACCESS_KEY": server.secret_key}
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=_secret("store-credentials", keys))
        source_keys = {**keys, "AWS_ENDPOINT_URL": server.endpoint, "AWS_DEFAULT_REGION": "us-east-1"}
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=_secret("source-credentials", source_keys))
        cache = workdir / "node-cache"
        selector = json.dumps(process_node.node_selector)
        operator = OperatorProcess(
            cluster.kubeconfig,
            workdir / "operator.log",
            [namespace],
            {
                "FLOTILLA_JOB_NODE_SELECTOR": selector,
                "FLOTILLA_SERVING_NODE_SELECTOR": selector,
                "FLOTILLA_HF_OFFLINE": "1",
                "FLOTILLA_RESYNC_SECONDS": "5",
                "FLOTILLA_ARTIFACT_STORE": "s3",
                "FLOTILLA_S3_ENDPOINT": server.endpoint,
                "FLOTILLA_S3_BUCKET": ARTIFACT_BUCKET,
                "FLOTILLA_S3_PREFIX": PREFIX,
                "FLOTILLA_S3_PATH_STYLE": "true",
                "FLOTILLA_S3_CREDENTIALS_SECRET": "store-credentials",
                "FLOTILLA_ARTIFACT_CACHE_HOST_PATH": str(cache),
                # One recipe and a small evaluation: the store is under test here, not the search.
                "FLOTILLA_OPTIMIZER_EXTRA_ARGS": "--eval-limit,24,--speed-rounds,1,--recipes,int8-dynamic-per-channel",
            },
        )
        operator.start()
        body = {
            "apiVersion": "flotilla.dev/v1alpha1",
            "kind": "SmallModel",
            "metadata": {"name": MODEL},
            "spec": {
                "source": {
                    "uri": source,
                    "task": "feature-extraction",
                    "credentialsSecretRef": {"name": "source-credentials"},
                },
                "optimize": {"precision": "auto", "accuracyBudget": {"minCosineSimilarity": 0.95}},
                "serving": {"resources": {"requests": {"cpu": "1", "memory": "2Gi"}}, "maxBatchSize": 4},
                "replicas": 1,
            },
        }
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(body))
        try:
            yield Stack(cluster, namespace, server, cache)
        finally:
            cluster.kubectl("delete", "smallmodels", "--all", "-n", namespace, "--timeout=120s", check=False)
            operator.stop()
            cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
    finally:
        server.stop()


def _fetch_seconds(pod: dict[str, Any]) -> float:
    """How long the pod's fetch-artifact init container ran (the kubelet's own timestamps)."""
    (status,) = [s for s in pod["status"].get("initContainerStatuses", []) if s["name"] == "fetch-artifact"]
    done = status["state"]["terminated"]
    assert done["exitCode"] == 0, done
    started, finished = (datetime.fromisoformat(done[k].replace("Z", "+00:00")) for k in ("startedAt", "finishedAt"))
    return (finished - started).total_seconds()


def _start_seconds(pod: dict[str, Any]) -> float:
    """Pod created -> Ready: the fetch, then tritonserver loading the model (second resolution)."""
    (ready,) = [c for c in pod["status"]["conditions"] if c["type"] == "Ready"]
    stamps = (pod["metadata"]["creationTimestamp"], ready["lastTransitionTime"])
    created, became = (datetime.fromisoformat(t.replace("Z", "+00:00")) for t in stamps)
    return (became - created).total_seconds()


def _ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", []))


def _embed(pod: dict[str, Any], texts: list[str]) -> list[list[float]]:
    body = {"inputs": [{"name": "text", "shape": [len(texts), 1], "datatype": "BYTES", "data": texts}]}
    request = urllib.request.Request(
        f"http://{pod['status']['podIP']}:8000/v2/models/{MODEL}/infer",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        answer = json.load(response)
    (output,) = [o for o in answer["outputs"] if o["name"] == "embedding"]
    rows, width = output["shape"]
    return [output["data"][i * width : (i + 1) * width] for i in range(rows)]


def test_s3_source_and_store_optimize_serve_and_answer(stack: Stack) -> None:
    started = time.monotonic()

    def ready() -> dict[str, Any] | None:
        cond = stack.condition("Ready")
        assert cond.get("reason") not in {"OptimizationFailed", "AccuracyBudgetExceeded"}, cond
        return cond if cond.get("status") == "True" else None

    wait_for(ready, timeout=OPTIMIZE_S, what="the S3-sourced model Ready")
    print(f"\n[s3-e2e] apply -> Ready in {time.monotonic() - started:.0f} s")
    # No claim: the S3 store replaces the artifact PVC.
    assert (stack.get("pvc") or {"items": []})["items"] == []
    status = (stack.get("smallmodel", MODEL) or {})["status"]
    key = status["revisions"]["stableArtifactKey"]
    s3 = _client(stack.server)
    names = [o["Key"] for o in s3.list_objects_v2(Bucket=ARTIFACT_BUCKET, Prefix=f"{PREFIX}{key}/").get("Contents", [])]
    assert f"{PREFIX}{key}/manifest.json" in names, names
    (pod,) = [p for p in stack.serving_pods() if _ready(p)]
    print(f"[s3-e2e] first replica: fetch-artifact (download + verify) {_fetch_seconds(pod):.0f} s")
    print(f"[s3-e2e] first replica: created -> Ready {_start_seconds(pod):.0f} s")
    paraphrase, same, unrelated = _embed(pod, ["A cat sits on the mat.", "A cat is sitting on a mat.", "Taxes rose."])

    def cosine(a: list[float], b: list[float]) -> float:
        dot = sum(x * y for x, y in zip(a, b, strict=True))
        return dot / ((sum(x * x for x in a) ** 0.5) * (sum(y * y for y in b) ** 0.5))

    assert cosine(paraphrase, same) > cosine(paraphrase, unrelated) + 0.2


def test_a_second_replica_starts_from_the_node_cache_with_the_store_down(stack: Stack) -> None:
    (first,) = [p for p in stack.serving_pods() if _ready(p)]
    first_fetch = _fetch_seconds(first)
    stack.server.stop()  # nothing can be downloaded from here on
    stack.cluster.kubectl(
        "patch", "smallmodel", MODEL, "-n", stack.namespace, "--type=merge", "-p", '{"spec": {"replicas": 2}}'
    )

    def second() -> dict[str, Any] | None:
        pods = [p for p in stack.serving_pods() if p["metadata"]["name"] != first["metadata"]["name"]]
        return next((p for p in pods if _ready(p)), None)

    pod = wait_for(second, timeout=300, what="a second replica Ready with the S3 server stopped")
    cached_fetch = _fetch_seconds(pod)
    print(f"[s3-e2e] second replica: fetch-artifact from the node cache {cached_fetch:.0f} s, 1st {first_fetch:.0f} s")
    print(f"[s3-e2e] second replica: created -> Ready {_start_seconds(pod):.0f} s, 1st {_start_seconds(first):.0f} s")
    assert _embed(pod, ["still answering"])
    assert any(stack.cache.iterdir()), "the node cache is empty"
