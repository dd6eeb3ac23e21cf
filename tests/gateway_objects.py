"""SmallModel and EndpointSlice objects as the API server returns them, for the gateway's
unit tests (the route table) and integration tests (applied to the real API server)."""

from __future__ import annotations

from typing import Any

NOW = "2026-12-01T12:00:00Z"


def ready_condition(status: str = "True", reason: str = "Serving") -> dict[str, Any]:
    return {"type": "Ready", "status": status, "reason": reason, "message": "", "lastTransitionTime": NOW}


def smallmodel_spec(
    task: str = "text-generation", min_replicas: int = 1, max_batch_size: int = 8, autoscaling: bool = False
) -> dict[str, Any]:
    """`autoscaling` with `min_replicas=0` is a model that scales from zero."""
    auto: dict[str, Any] = {"enabled": autoscaling, "minReplicas": min_replicas}
    if autoscaling:
        auto["latencyObjective"] = {"percentile": 95, "thresholdMs": 250}
    return {
        "source": {"uri": "hf://HuggingFaceTB/SmolLM2-135M-Instruct", "task": task},
        "serving": {"maxBatchSize": max_batch_size},
        "autoscaling": auto,
    }


def smallmodel_status(
    stable: str | None = "rev-stable",
    canary: str | None = None,
    weight: int | None = None,
    ready: str = "True",
    reason: str = "Serving",
) -> dict[str, Any]:
    revisions: dict[str, Any] = {}
    if stable:
        revisions["stable"] = stable
    if canary:
        revisions["canary"] = canary
        revisions["canaryWeight"] = weight or 0
    return {"conditions": [ready_condition(ready, reason)], "revisions": revisions}


def smallmodel(name: str, namespace: str = "ml", status: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "flotilla.dev/v1alpha1",
        "kind": "SmallModel",
        "metadata": {"name": name, "namespace": namespace, "creationTimestamp": NOW},
        "spec": smallmodel_spec(**spec),
    }
    if status is not None:
        body["status"] = status
    return body


def endpoint(ip: str, ready: bool = True, terminating: bool = False, pod: str | None = None) -> dict[str, Any]:
    return {
        "addresses": [ip],
        "conditions": {"ready": ready, "serving": ready or terminating, "terminating": terminating},
        "targetRef": {"kind": "Pod", "name": pod or f"pod-{ip.replace('.', '-')}"},
    }


def endpoint_slice(
    model: str, role: str, endpoints: list[dict[str, Any]], namespace: str = "ml", port: int = 8000, suffix: str = "x"
) -> dict[str, Any]:
    service = f"{model}-{role}"
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{service}-{suffix}",
            "namespace": namespace,
            # The EndpointSlice controller copies the Service's labels (ours) onto its slices.
            "labels": {
                "kubernetes.io/service-name": service,
                "app.kubernetes.io/managed-by": "flotilla",
                "flotilla.dev/model": model,
            },
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}, {"name": "grpc", "port": 8001, "protocol": "TCP"}],
        "endpoints": endpoints,
    }
