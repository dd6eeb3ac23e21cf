"""Triton serving objects of one revision (Deployment, ConfigMap, PDB) and the model's Services.

Layout inside the pod: the artifact's version directory is mounted read-only from the
artifact store (the claim, or with the S3 store the emptyDir its init container downloaded and
verified the artifact into) at /models/<model>/1, and the revision's config.pbtxt (serving settings:
batching, instances, CPU/GPU) from an immutable ConfigMap beside it. Triton takes the model
name from the directory, so one artifact serves any SmallModel name.
"""

from __future__ import annotations

from dataclasses import dataclass

from flotilla.api.v1alpha1 import (
    COMPONENT_SERVER,
    GPU_PRODUCT_LABEL,
    GPU_RESOURCE,
    LABEL_ARTIFACT_KEY,
    LABEL_COMPONENT,
    LABEL_MODEL,
    LABEL_REVISION,
    MIG_RESOURCE_PREFIX,
    SmallModel,
)
from flotilla.config import OperatorConfig

from . import store
from .meta import (
    CONTAINER_SECURITY,
    POD_SECURITY,
    Obj,
    config_map_name,
    deployment_name,
    labels,
    object_meta,
    pull_secrets,
)

HTTP_PORT, GRPC_PORT, METRICS_PORT = 8000, 8001, 8002
MODEL_REPOSITORY = "/models"
CONTAINER = "triton"
# Endpoint removal reaches clients and proxies a moment after a pod starts terminating; the
# pod keeps serving that long before Triton gets SIGTERM, so no request meets a closed port.
PRESTOP_SLEEP_SECONDS = 5


def server_selector(model: SmallModel) -> dict[str, str]:
    return {LABEL_MODEL: model.metadata.name, LABEL_COMPONENT: COMPONENT_SERVER}


def revision_selector(model: SmallModel, revision: str) -> dict[str, str]:
    return {**server_selector(model), LABEL_REVISION: revision}


def selector_string(model: SmallModel) -> str:
    return ",".join(f"{k}={v}" for k, v in server_selector(model).items())


def build_config_map(model: SmallModel, revision: str, config_pbtxt: str) -> Obj:
    meta = object_meta(
        model, config_map_name(model.metadata.name, revision), COMPONENT_SERVER, **{LABEL_REVISION: revision}
    )
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta,
        "immutable": True,
        "data": {"config.pbtxt": config_pbtxt},
    }


def triton_args(model: SmallModel, config: OperatorConfig) -> list[str]:
    return [
        f"--model-repository={MODEL_REPOSITORY}",
        "--model-control-mode=explicit",
        f"--load-model={model.metadata.name}",
        "--strict-readiness=true",
        # Per-request latency quantiles; Triton's only ones for non-decoupled models.
        "--metrics-config=summary_latencies=true",
        "--allow-metrics=true",
        f"--http-port={HTTP_PORT}",
        f"--grpc-port={GRPC_PORT}",
        f"--metrics-port={METRICS_PORT}",
        # Bind to the pod IP only (downward API), never 0.0.0.0.
        "--http-address=$(POD_IP)",
        "--grpc-address=$(POD_IP)",
        "--metrics-address=$(POD_IP)",
        # Finish in-flight requests within what the grace period leaves after the preStop sleep.
        f"--exit-timeout-secs={max(config.termination_grace_seconds - PRESTOP_SLEEP_SECONDS, 1)}",
    ]


def gpu_resources(model: SmallModel) -> dict[str, int]:
    gpu = model.spec.serving.gpu
    if gpu.count == 0:
        return {}
    if gpu.mig_profile:
        return {f"{MIG_RESOURCE_PREFIX}{gpu.mig_profile}": gpu.count}
    return {GPU_RESOURCE: gpu.count}


def _resources(model: SmallModel) -> Obj:
    res = model.spec.serving.resources
    requests = dict(res.requests or {})
    limits = {**(res.limits or {}), **gpu_resources(model)}
    out: Obj = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def _probe(path: str, period: int, failures: int) -> Obj:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": 3,
    }


def _fetch_resources(model: SmallModel) -> Obj:
    """The download needs CPU for checksums and no GPU: the model's requests, no device limits."""
    res = model.spec.serving.resources
    out: Obj = {}
    if res.requests:
        out["requests"] = dict(res.requests)
    if res.limits:
        out["limits"] = dict(res.limits)
    return out


def _container(model: SmallModel, key: str, model_dir: str, config: OperatorConfig) -> Obj:
    name = model.metadata.name
    return {
        "name": CONTAINER,
        "image": config.triton_image,
        "command": ["tritonserver"],
        "args": triton_args(model, config),
        "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
        "ports": [
            {"name": "http", "containerPort": HTTP_PORT},
            {"name": "grpc", "containerPort": GRPC_PORT},
            {"name": "metrics", "containerPort": METRICS_PORT},
        ],
        "resources": _resources(model),
        # Model loading can take minutes; liveness only starts once the startup probe passed.
        "startupProbe": _probe("/v2/health/ready", 5, 120),
        "readinessProbe": _probe("/v2/health/ready", 5, 3),
        "livenessProbe": _probe("/v2/health/live", 10, 3),
        "lifecycle": {"preStop": {"sleep": {"seconds": PRESTOP_SLEEP_SECONDS}}},
        "volumeMounts": [
            {
                "name": "artifact",
                "mountPath": f"{MODEL_REPOSITORY}/{name}/1",
                "subPath": f"{key}/{model_dir}/1",
                "readOnly": True,
            },
            {
                "name": "config",
                "mountPath": f"{MODEL_REPOSITORY}/{name}/config.pbtxt",
                "subPath": "config.pbtxt",
                "readOnly": True,
            },
            {"name": "tmp", "mountPath": "/tmp"},
        ],
        "securityContext": dict(CONTAINER_SECURITY),
    }


def _placement(model: SmallModel, revision: str, config: OperatorConfig) -> Obj:
    gpu = model.spec.serving.gpu
    placement: Obj = {
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": revision_selector(model, revision)},
            }
        ]
    }
    if gpu.count > 0:
        placement["tolerations"] = [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
    if gpu.count > 0 and gpu.product:
        term = {"matchExpressions": [{"key": GPU_PRODUCT_LABEL, "operator": "In", "values": [gpu.product]}]}
        placement["affinity"] = {
            "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}}
        }
    if config.serving_node_selector:
        placement["nodeSelector"] = dict(config.serving_node_selector)
    if model.spec.serving.priority_class_name:
        placement["priorityClassName"] = model.spec.serving.priority_class_name
    return placement


def build_deployment(model: SmallModel, revision: str, key: str, model_dir: str, config: OperatorConfig) -> Obj:
    name = model.metadata.name
    extra = {LABEL_REVISION: revision, LABEL_ARTIFACT_KEY: key}
    meta = object_meta(model, deployment_name(name, revision), COMPONENT_SERVER, **extra)
    pod_labels = labels(model, COMPONENT_SERVER, **extra)
    pod_spec: Obj = {
        "terminationGracePeriodSeconds": config.termination_grace_seconds,
        "securityContext": dict(POD_SECURITY),
        "containers": [_container(model, key, model_dir, config)],
        "volumes": [
            *store.serving_volumes(config),
            {"name": "config", "configMap": {"name": config_map_name(name, revision)}},
            {"name": "tmp", "emptyDir": {}},
        ],
        **_placement(model, revision, config),
    }
    if store.uses_s3(config):
        pod_spec["initContainers"] = [store.fetch_container(key, config, _fetch_resources(model))]
    if config.image_pull_secrets:
        pod_spec["imagePullSecrets"] = pull_secrets(config.image_pull_secrets)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "selector": {"matchLabels": revision_selector(model, revision)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {"metadata": {"labels": pod_labels}, "spec": pod_spec},
        },
    }


def build_pdb(model: SmallModel, revision: str) -> Obj:
    """Only while a revision has more than one replica: a PDB on one replica blocks drains."""
    name = deployment_name(model.metadata.name, revision)
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": object_meta(model, name, COMPONENT_SERVER, **{LABEL_REVISION: revision}),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": revision_selector(model, revision)}},
    }


def _ports() -> list[Obj]:
    return [
        {"name": "http", "port": HTTP_PORT, "targetPort": "http"},
        {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc"},
        {"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics"},
    ]


def build_service(model: SmallModel, suffix: str = "", revision: str | None = None) -> Obj:
    """`<name>-stable|canary` select one revision each. `<name>` (no revision) has no selector:
    its endpoints are the EndpointSlice the operator writes (`build_endpoint_slice`), so a
    revision's pods are behind it only while the rollout gives that revision traffic."""
    name = model.metadata.name + (f"-{suffix}" if suffix else "")
    spec: Obj = {"type": "ClusterIP", "ports": _ports() if revision else _plain_ports()}
    if revision:
        spec["selector"] = revision_selector(model, revision)
    return {"apiVersion": "v1", "kind": "Service", "metadata": object_meta(model, name, COMPONENT_SERVER), "spec": spec}


def _plain_ports() -> list[Obj]:
    """A selectorless Service's targetPort is not used: the EndpointSlice names the ports."""
    return [{"name": p["name"], "port": p["port"], "targetPort": p["port"]} for p in _ports()]


ENDPOINT_SLICE_MANAGER = "operator.flotilla.dev"  # endpointslice.kubernetes.io/managed-by


@dataclass(frozen=True)
class Endpoint:
    pod: str
    ip: str
    node: str | None


def endpoint_slice_name(model: str) -> str:
    return f"{model}-serving"


def build_endpoint_slice(model: SmallModel, endpoints: list[Endpoint]) -> Obj:
    """The endpoints of Service `<name>`: the ready pods of the revisions that take traffic."""
    meta = object_meta(model, endpoint_slice_name(model.metadata.name), COMPONENT_SERVER)
    meta["labels"] = {
        **meta["labels"],
        "kubernetes.io/service-name": model.metadata.name,
        "endpointslice.kubernetes.io/managed-by": ENDPOINT_SLICE_MANAGER,
    }
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": meta,
        "addressType": "IPv4",
        "ports": [{"name": p["name"], "port": p["port"], "protocol": "TCP"} for p in _ports()],
        "endpoints": [
            {
                "addresses": [e.ip],
                "conditions": {"ready": True, "serving": True, "terminating": False},
                "targetRef": {"kind": "Pod", "name": e.pod, "namespace": model.metadata.namespace},
                **({"nodeName": e.node} if e.node else {}),
            }
            for e in sorted(endpoints, key=lambda e: e.pod)
        ],
    }


def build_http_route(model: SmallModel, canary_weight: int | None, parent: Obj | None) -> Obj:
    """Gateway API route of the model: exact stable/canary weights (percent)."""
    name = model.metadata.name
    backends: list[Obj] = [{"name": f"{name}-stable", "port": HTTP_PORT, "weight": 100 - (canary_weight or 0)}]
    if canary_weight is not None:
        backends.append({"name": f"{name}-canary", "port": HTTP_PORT, "weight": canary_weight})
    spec: Obj = {"rules": [{"backendRefs": backends}]}
    if parent:
        spec["parentRefs"] = [parent]
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": object_meta(model, name, COMPONENT_SERVER),
        "spec": spec,
    }
