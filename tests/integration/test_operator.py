"""The operator against the real local control plane (etcd, kube-apiserver, controller-manager,
scheduler, KWOK nodes), running as its own process."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from flotilla.api.v1alpha1 import ArtifactSummary, artifact_key, serving_revision
from flotilla.api.v1alpha1.artifact import Accuracy, Speedup
from flotilla.api.v1alpha1.spec import SmallModelSpec
from localcluster.cluster import Cluster, wait_for

from .conftest import Kubelet, Operator, get

pytestmark = pytest.mark.cluster

SPEC: dict[str, Any] = {"source": {"uri": "hf://HuggingFaceTB/SmolLM2-135M-Instruct", "revision": "main"}}


def manifest(name: str, spec: dict[str, Any] | None = None) -> str:
    body = {
        "apiVersion": "flotilla.dev/v1alpha1",
        "kind": "SmallModel",
        "metadata": {"name": name},
        "spec": spec or SPEC,
    }
    return yaml.safe_dump(body)


def apply(cluster: Cluster, namespace: str, text: str) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=text)


def smallmodel(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    return cluster.kubectl_json("get", "smallmodel", name, "-n", namespace)  # type: ignore[no-any-return]


def condition(cluster: Cluster, namespace: str, name: str, type_: str) -> dict[str, Any] | None:
    conditions = smallmodel(cluster, namespace, name).get("status", {}).get("conditions", [])
    return next((c for c in conditions if c["type"] == type_), None)


def wait_condition(
    cluster: Cluster, namespace: str, name: str, type_: str, status: str, reason: str | None = None
) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        c = condition(cluster, namespace, name, type_)
        ok = c is not None and c["status"] == status and (reason is None or c["reason"] == reason)
        return c if ok else None

    return wait_for(check, timeout=90, what=f"{name} {type_}={status} {reason or ''}")


def key_for(spec: dict[str, Any]) -> str:
    parsed = SmallModelSpec.model_validate(spec)
    return artifact_key(parsed.source, parsed.optimize)


def wait_job_pod(cluster: Cluster, namespace: str, job: str) -> str:
    def pod() -> str | None:
        pods = get(cluster, "pods", namespace, selector=f"batch.kubernetes.io/job-name={job}")
        items = pods["items"] if pods else []
        return items[0]["metadata"]["name"] if items else None

    return wait_for(pod, timeout=60, what=f"a pod of Job {job}")


def good_summary(key: str) -> str:
    return ArtifactSummary(
        ok=True,
        key=key,
        model_name="chat",
        backend="python",
        task="text-generation",
        precision="int8",
        recipe="int8-dynamic-per-channel",
        size_bytes=150_000_000,
        size_ratio=0.28,
        accuracy=Accuracy(top1_agreement=0.98, perplexity_ratio=1.01),
        speedup=Speedup(prefill=1.6, decode=1.4),
    ).to_termination_message()


def owned_by(obj: dict[str, Any], uid: str) -> bool:
    return any(ref["uid"] == uid and ref.get("controller") for ref in obj["metadata"].get("ownerReferences", []))


def finish_optimization(cluster: Cluster, kubelet: Kubelet, namespace: str, name: str, spec: dict[str, Any]) -> str:
    key = key_for(spec)
    job = f"{name}-opt-{key[:8]}"
    wait_for(lambda: get(cluster, "job", namespace, job), timeout=60, what=f"Job {job}")
    kubelet.finish(wait_job_pod(cluster, namespace, job), 0, good_summary(key))
    return key


# --- the API server rejects bad objects, with the rule's message ------------------------

INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("min-over-max", {**SPEC, "autoscaling": {"minReplicas": 5, "maxReplicas": 2}}, "minReplicas must not exceed"),
    ("steps-not-100", {**SPEC, "rollout": {"canary": {"steps": [10, 50]}}}, "must end at 100"),
    ("steps-unsorted", {**SPEC, "rollout": {"canary": {"steps": [50, 10, 100]}}}, "strictly ascending"),
    ("mig-no-gpu", {**SPEC, "serving": {"gpu": {"migProfile": "1g.10gb"}}}, "migProfile needs serving.gpu.count > 0"),
    ("fp16-cpu", {**SPEC, "optimize": {"precision": "fp16"}}, "fp16 needs a GPU"),
    ("trt-cpu", {**SPEC, "optimize": {"target": "tensorrt"}}, "tensorrt needs GPU serving"),
    ("bad-uri", {"source": {"uri": "ftp://example.com/model"}}, "spec.source.uri"),
    ("bad-precision", {**SPEC, "optimize": {"precision": "int3"}}, 'Unsupported value: "int3"'),
    ("negative-batch", {**SPEC, "serving": {"maxBatchSize": -1}}, "spec.serving.maxBatchSize"),
    ("no-source", {"replicas": 1}, "spec.source: Required value"),
    ("auto-no-objective", {**SPEC, "autoscaling": {"enabled": True}}, "latencyObjective is required"),
    ("empty-steps", {**SPEC, "rollout": {"canary": {"steps": []}}}, "spec.rollout.canary.steps"),
    ("bad-inconclusive", {**SPEC, "rollout": {"canary": {"onInconclusive": "Wait"}}}, 'Unsupported value: "Wait"'),
    (
        "secret-file",
        {"source": {"uri": "file:///m", "credentialsSecretRef": {"name": "s"}}},
        "only used with hf:// and s3://",
    ),
    ("x" * 41, SPEC, "metadata.name must be at most 40 characters"),
]


@pytest.mark.parametrize(("name", "spec", "message"), INVALID, ids=[case[0][:20] for case in INVALID])
def test_invalid_manifests_are_rejected_by_the_api_server(
    crd: Cluster, namespace: str, name: str, spec: dict[str, Any], message: str
) -> None:
    proc = crd.kubectl("create", "-n", namespace, "-f", "-", input=manifest(name, spec), check=False)
    assert proc.returncode != 0, f"{name} was accepted"
    assert message in proc.stderr, proc.stderr


def test_unknown_field_is_rejected(crd: Cluster, namespace: str) -> None:
    proc = crd.kubectl(
        "create", "-n", namespace, "-f", "-", input=manifest("typo", {**SPEC, "replica": 2}), check=False
    )
    assert proc.returncode != 0 and 'unknown field "spec.replica"' in proc.stderr, proc.stderr


def test_scale_to_zero_is_accepted_and_explained_by_the_api_server(crd: Cluster, namespace: str) -> None:
    zero = {**SPEC, "autoscaling": {"enabled": True, "minReplicas": 0, "latencyObjective": {"thresholdMs": 250}}}
    apply(crd, namespace, manifest("zero", zero))
    assert smallmodel(crd, namespace, "zero")["spec"]["autoscaling"]["minReplicas"] == 0
    # What `kubectl explain` shows users comes from the CRD the server serves.
    explained = crd.kubectl("explain", "smallmodel.spec.autoscaling.minReplicas").stdout
    assert "Flotilla gateway" in " ".join(explained.split()) and "not supported" not in explained
    rules = crd.kubectl_json("get", "crd", "smallmodels.flotilla.dev")["spec"]["versions"][0]["schema"]
    assert "minReplicas >= 1" not in json.dumps(rules)


def test_defaults_are_applied_by_the_api_server(crd: Cluster, namespace: str) -> None:
    apply(crd, namespace, manifest("defaults"))
    spec = smallmodel(crd, namespace, "defaults")["spec"]
    assert spec["optimize"]["accuracyBudget"]["maxTop1Disagreement"] == 0.03
    assert spec["rollout"]["canary"]["steps"] == [10, 50, 100]
    assert spec["serving"]["gpu"]["count"] == 0


# --- the operator -------------------------------------------------------------------------


def test_create_to_job_to_serving(operator: Operator, kubelet: Kubelet, namespace: str, artifact_store: str) -> None:
    cluster = operator.cluster
    apply(cluster, namespace, manifest("chat"))
    key = key_for(SPEC)
    job = wait_for(lambda: get(cluster, "job", namespace, f"chat-opt-{key[:8]}"), timeout=60, what="the Job")
    model = smallmodel(cluster, namespace, "chat")
    uid = model["metadata"]["uid"]
    assert owned_by(job, uid)
    container = job["spec"]["template"]["spec"]["containers"][0]
    args = dict(zip(container["args"][::2], container["args"][1::2], strict=True))
    assert args["--source"] == SPEC["source"]["uri"] and args["--revision"] == "main"
    assert args["--out"] == f"/artifacts/{key}"
    # The Job's pod selects no existing node (the test plays its kubelet): the scheduler's
    # verdict reaches the condition.
    waiting = wait_condition(cluster, namespace, "chat", "Optimized", "False", "Unschedulable")
    assert "node(s) didn't match Pod's node affinity/selector" in waiting["message"]
    assert condition(cluster, namespace, "chat", "Reconciling")["status"] == "True"  # type: ignore[index]

    kubelet.finish(wait_job_pod(cluster, namespace, job["metadata"]["name"]), 0, good_summary(key))
    optimized = wait_condition(cluster, namespace, "chat", "Optimized", "True", "ArtifactReady")
    assert "int8" in optimized["message"]

    revision = serving_revision(key, SmallModelSpec.model_validate(SPEC).serving)
    deployment = wait_for(
        lambda: get(cluster, "deployment", namespace, f"chat-{revision[:8]}"), timeout=60, what="the Deployment"
    )
    assert owned_by(deployment, uid)
    for service in ("chat", "chat-stable"):
        assert owned_by(
            wait_for(lambda s=service: get(cluster, "service", namespace, s), timeout=30, what=service), uid
        )  # type: ignore[misc]
    config = get(cluster, "configmap", namespace, f"chat-{revision[:8]}-config")
    assert owned_by(config, uid) and "config.pbtxt" in config["data"]

    # The serving pod lands on a simulated CPU node and KWOK makes it Ready.
    ready = wait_condition(cluster, namespace, "chat", "Ready", "True", "Serving")
    assert revision in ready["message"]
    status = smallmodel(cluster, namespace, "chat")["status"]
    assert status["observedGeneration"] == 1
    assert (
        status["readyReplicas"] == 1 and status["selector"] == "flotilla.dev/model=chat,flotilla.dev/component=server"
    )
    assert status["artifact"]["precision"] == "int8" and status["revisions"]["stable"] == revision
    assert condition(cluster, namespace, "chat", "Reconciling")["status"] == "False"  # type: ignore[index]
    reasons = events(cluster, namespace, "chat")
    assert {"OptimizationStarted", "Optimized", "Ready"} <= set(reasons)
    assert "flotilla_reconcile_total" in operator.metrics()


def test_reapply_is_a_no_op_and_spec_is_never_written(operator: Operator, kubelet: Kubelet, namespace: str) -> None:
    cluster = operator.cluster
    apply(cluster, namespace, manifest("chat"))
    finish_optimization(cluster, kubelet, namespace, "chat", SPEC)
    wait_condition(cluster, namespace, "chat", "Optimized", "True")
    before = smallmodel(cluster, namespace, "chat")
    apply(cluster, namespace, manifest("chat"))
    after = cluster.kubectl_json("get", "smallmodel", "chat", "-n", namespace, "--show-managed-fields")
    assert after["metadata"]["generation"] == before["metadata"]["generation"] == 1
    managers = {entry["manager"] for entry in after["metadata"]["managedFields"]}
    assert "flotilla" in managers  # our status writes are there, so the check below is meaningful
    for entry in after["metadata"]["managedFields"]:
        if entry["manager"].startswith("flotilla"):
            assert "f:spec" not in json.dumps(entry.get("fieldsV1", {})), entry


def test_scale_subresource(operator: Operator, namespace: str) -> None:
    cluster = operator.cluster
    apply(cluster, namespace, manifest("chat"))
    wait_condition(cluster, namespace, "chat", "Optimized", "False")
    cluster.kubectl("scale", "smallmodel/chat", "-n", namespace, "--replicas=3")
    assert smallmodel(cluster, namespace, "chat")["spec"]["replicas"] == 3


def test_restart_midway_converges_without_a_duplicate_job(operator: Operator, kubelet: Kubelet, namespace: str) -> None:
    cluster = operator.cluster
    apply(cluster, namespace, manifest("chat"))
    key = key_for(SPEC)
    job = f"chat-opt-{key[:8]}"
    wait_for(lambda: get(cluster, "job", namespace, job), timeout=60, what="the Job")
    operator.stop()
    kubelet.finish(wait_job_pod(cluster, namespace, job), 0, good_summary(key))
    wait_for(
        lambda: any(
            c["type"] == "Complete" and c["status"] == "True"
            for c in get(cluster, "job", namespace, job)["status"].get("conditions", [])
        ),
        timeout=60,
        what="Job Complete",
    )
    operator.start()
    wait_condition(cluster, namespace, "chat", "Optimized", "True")
    revision = serving_revision(key, SmallModelSpec.model_validate(SPEC).serving)
    wait_for(lambda: get(cluster, "deployment", namespace, f"chat-{revision[:8]}"), timeout=60, what="the Deployment")
    jobs = get(cluster, "jobs", namespace, selector="flotilla.dev/model=chat")["items"]
    assert [j["metadata"]["name"] for j in jobs] == [job]


def test_delete_removes_everything_it_created(operator: Operator, kubelet: Kubelet, namespace: str) -> None:
    cluster = operator.cluster
    apply(cluster, namespace, manifest("chat"))
    finish_optimization(cluster, kubelet, namespace, "chat", SPEC)
    wait_for(
        lambda: get(cluster, "deployments", namespace, selector="flotilla.dev/model=chat")["items"],
        timeout=60,
        what="a Deployment",
    )
    cluster.kubectl("delete", "smallmodel", "chat", "-n", namespace, "--timeout=60s")

    def leftovers() -> list[str]:
        found = []
        for kind in ("jobs", "deployments", "services", "configmaps", "pods"):
            items = get(cluster, kind, namespace, selector="flotilla.dev/model=chat")["items"]
            found += [f"{kind}/{i['metadata']['name']}" for i in items]
        return found

    wait_for(lambda: not leftovers(), timeout=90, what="children garbage-collected")
    assert leftovers() == []


def test_failing_job_sets_a_clear_condition_and_event(operator: Operator, kubelet: Kubelet, namespace: str) -> None:
    cluster = operator.cluster
    apply(cluster, namespace, manifest("chat"))
    key = key_for(SPEC)
    job = f"chat-opt-{key[:8]}"
    wait_for(lambda: get(cluster, "job", namespace, job), timeout=60, what="the Job")
    table = "recipe top1 ppl | int8-dynamic 0.63 1.25 | int4 0.91 1.08 : none within budget"
    failure = ArtifactSummary(
        ok=False, key=key, reason="AccuracyBudgetExceeded", message=table
    ).to_termination_message()
    kubelet.finish(wait_job_pod(cluster, namespace, job), 3, failure)
    optimized = wait_condition(cluster, namespace, "chat", "Optimized", "False", "AccuracyBudgetExceeded")
    assert "none within budget" in optimized["message"]
    assert condition(cluster, namespace, "chat", "Stalled")["status"] == "True"  # type: ignore[index]
    wait_for(
        lambda: "AccuracyBudgetExceeded" in events(cluster, namespace, "chat"), timeout=30, what="the Warning event"
    )
    assert get(cluster, "deployments", namespace, selector="flotilla.dev/model=chat")["items"] == []
    # The permanent exit code fails the Job at once (podFailurePolicy), with no retry pod.
    pods = get(cluster, "pods", namespace, selector=f"batch.kubernetes.io/job-name={job}")["items"]
    assert len(pods) == 1


def events(cluster: Cluster, namespace: str, name: str) -> list[str]:
    items = cluster.kubectl_json("get", "events", "-n", namespace, "--field-selector", f"involvedObject.name={name}")[
        "items"
    ]
    return [e["reason"] for e in items]
