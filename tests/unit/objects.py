"""Kubernetes-shaped objects for planner tests, as the API server would return them."""

from __future__ import annotations

from typing import Any

from flotilla.api.v1alpha1 import (
    LABEL_ARTIFACT_KEY,
    LABEL_COMPONENT,
    LABEL_MODEL,
    LABEL_REVISION,
    ArtifactSummary,
    SmallModel,
    artifact_key,
    serving_revision,
)
from flotilla.api.v1alpha1.artifact import Accuracy, Speedup
from flotilla.config import OperatorConfig
from flotilla.metrics import Window
from flotilla.reconcile import Context, DeploymentView, JobView, Observed, PodView
from flotilla.reconcile.observed import ANNOTATION_RESULT
from flotilla.resources.meta import deployment_name, job_name

NOW = "2026-11-29T12:00:00Z"


def model(name: str = "chat", generation: int = 1, status: dict[str, Any] | None = None, **spec: Any) -> SmallModel:
    body: dict[str, Any] = {
        "apiVersion": "flotilla.dev/v1alpha1",
        "kind": "SmallModel",
        "metadata": {"name": name, "namespace": "ml", "uid": "uid-1", "generation": generation},
        "spec": {"source": {"uri": "hf://HuggingFaceTB/SmolLM2-135M-Instruct"}, **spec},
    }
    if status is not None:
        body["status"] = status
    return SmallModel.from_body(body)


def key_of(m: SmallModel) -> str:
    return artifact_key(m.spec.source, m.spec.optimize)


def revision_of(m: SmallModel) -> str:
    return serving_revision(key_of(m), m.spec.serving)


def context() -> Context:
    return Context(
        OperatorConfig(), NOW, lambda m, s: f'backend: "{s.backend}"\nmax_batch_size: {m.spec.serving.max_batch_size}\n'
    )


def summary(key: str, ok: bool = True, **extra: Any) -> ArtifactSummary:
    if not ok:
        return ArtifactSummary(
            ok=False,
            key=key,
            reason=extra.pop("reason", "AccuracyBudgetExceeded"),
            message=extra.pop("message", "int8: top-1 0.63 < 0.97"),
        )
    return ArtifactSummary(
        ok=True,
        key=key,
        model_name="chat",
        backend="python",
        task="text-generation",
        precision="int4",
        recipe="int4-block32",
        size_bytes=90_000_000,
        size_ratio=0.17,
        accuracy=Accuracy(top1_agreement=0.975, perplexity_ratio=1.02),
        speedup=Speedup(prefill=1.8, decode=1.5),
        **extra,
    )


def job_object(
    m: SmallModel, *, complete: bool = False, failed: bool = False, result: ArtifactSummary | None = None
) -> dict[str, Any]:
    conditions = []
    if complete:
        conditions.append({"type": "Complete", "status": "True"})
    if failed:
        conditions.append(
            {
                "type": "Failed",
                "status": "True",
                "reason": "PodFailurePolicy",
                "message": "Container optimizer exited with 3",
            }
        )
    annotations = {ANNOTATION_RESULT: result.to_termination_message()} if result else {}
    return {
        "kind": "Job",
        "metadata": {
            "name": job_name(m.metadata.name, key_of(m)),
            "labels": {LABEL_MODEL: m.metadata.name, LABEL_ARTIFACT_KEY: key_of(m)},
            "annotations": annotations,
        },
        "status": {"conditions": conditions},
    }


def job_pod_object(
    m: SmallModel, *, message: str | None, exit_code: int = 0, reason: str = "Completed"
) -> dict[str, Any]:
    return {
        "kind": "Pod",
        "metadata": {
            "name": job_name(m.metadata.name, key_of(m)) + "-abcde",
            "labels": {
                LABEL_MODEL: m.metadata.name,
                "batch.kubernetes.io/job-name": job_name(m.metadata.name, key_of(m)),
            },
        },
        "status": {
            "phase": "Succeeded" if exit_code == 0 else "Failed",
            "containerStatuses": [
                {
                    "name": "optimizer",
                    "state": {"terminated": {"exitCode": exit_code, "reason": reason, "message": message}},
                }
            ],
        },
    }


def pending_pod_object(
    m: SmallModel, *, revision: str | None = None, job: bool = False, message: str = "0/5 nodes are available"
) -> dict[str, Any]:
    labels = {LABEL_MODEL: m.metadata.name}
    if revision:
        labels[LABEL_REVISION] = revision
    if job:
        labels["batch.kubernetes.io/job-name"] = job_name(m.metadata.name, key_of(m))
    return {
        "kind": "Pod",
        "metadata": {"name": "p-1", "labels": labels},
        "status": {
            "phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}],
        },
    }


def serving_pod_object(
    m: SmallModel, revision: str, name: str, ip: str | None, *, ready: bool = True, terminating: bool = False
) -> dict[str, Any]:
    """A serving pod of `revision`, scheduled, with an IP, Ready or not."""
    meta: dict[str, Any] = {
        "name": name,
        "labels": {LABEL_MODEL: m.metadata.name, LABEL_COMPONENT: "server", LABEL_REVISION: revision},
    }
    if terminating:
        meta["deletionTimestamp"] = NOW
    return {
        "kind": "Pod",
        "metadata": meta,
        "spec": {"nodeName": "local-0"},
        "status": {
            "phase": "Running",
            "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def deployment_object(m: SmallModel, revision: str, key: str, *, replicas: int = 1, ready: int = 1) -> dict[str, Any]:
    return {
        "kind": "Deployment",
        "metadata": {
            "name": deployment_name(m.metadata.name, revision),
            "labels": {
                LABEL_MODEL: m.metadata.name,
                LABEL_COMPONENT: "server",
                LABEL_REVISION: revision,
                LABEL_ARTIFACT_KEY: key,
            },
        },
        "spec": {"replicas": replicas},
        "status": {"readyReplicas": ready, "updatedReplicas": ready},
    }


def observed(
    *objects: dict[str, Any], pvc: bool = True, metrics: Window | None = None, http_route: bool = False
) -> Observed:
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for obj in objects:
        by_kind.setdefault(obj["kind"], []).append(obj)
    return Observed(
        jobs=tuple(JobView.from_object(o) for o in by_kind.get("Job", [])),
        pods=tuple(PodView.from_object(o) for o in by_kind.get("Pod", [])),
        deployments=tuple(DeploymentView.from_object(o) for o in by_kind.get("Deployment", [])),
        artifact_pvc_exists=pvc,
        metrics=metrics,
        http_route_api=http_route,
    )
