"""The optimization Job: `python -m flotilla optimize` writing <store>/<key>/ (a directory on the
artifact claim, or with the S3 store a scratch directory uploaded to <bucket>/<prefix><key>/)."""

from __future__ import annotations

import json

from flotilla.api.v1alpha1 import (
    COMPONENT_OPTIMIZER,
    GPU_PRODUCT_LABEL,
    GPU_RESOURCE,
    LABEL_ARTIFACT_KEY,
    SmallModel,
)
from flotilla.config import OperatorConfig

from . import store
from .meta import CONTAINER_SECURITY, POD_SECURITY, Obj, job_name, object_meta, pull_secrets

ARTIFACT_MOUNT = "/artifacts"
# With the S3 store the artifact is built in the pod's scratch space, then uploaded.
S3_WORK_DIR = "/tmp/artifacts"
# pvc://claim/path sources are read where the optimizer looks for them (optimize/source.py).
SOURCE_PVC_ROOT = "/mnt/flotilla/pvc"
CONTAINER = "optimizer"
CALIBRATION_MOUNT = "/etc/flotilla/calibration"
# Exit codes of the optimizer that no retry can fix (bad input, budget not met): the Job
# fails at once instead of burning its backoff on the same answer.
# (2 invalid arguments, 3 accuracy budget exceeded, 5 unsupported model; see optimize/cli.py)
PERMANENT_EXIT_CODES = [2, 3, 5]


def optimizer_args(model: SmallModel, key: str, config: OperatorConfig) -> list[str]:
    spec = model.spec
    budget = spec.optimize.accuracy_budget
    args = [
        "--source", spec.source.uri,
        "--task", spec.source.task,
        "--precision", spec.optimize.precision,
        "--target", spec.optimize.target,
        "--name", model.metadata.name,
        "--out", f"{S3_WORK_DIR if store.uses_s3(config) else ARTIFACT_MOUNT}/{key}",
        "--max-top1-disagreement", str(budget.max_top1_disagreement),
        "--max-perplexity-increase", str(budget.max_perplexity_increase),
        "--min-cosine-similarity", str(budget.min_cosine_similarity),
    ]  # fmt: skip
    if budget.max_kl_divergence is not None:
        args += ["--max-kl-divergence", str(budget.max_kl_divergence)]
    if spec.source.revision:
        args += ["--revision", spec.source.revision]
    if spec.serving.gpu.count > 0:
        args.append("--gpu")  # the artifact's own config.pbtxt is the GPU variant
    if (text := calibration_file(model)) is not None and spec.optimize.calibration is not None:
        calibration = json.dumps(spec.optimize.calibration.to_wire(), separators=(",", ":"), sort_keys=True)
        args += ["--calibration", calibration, "--calibration-text", text]
    if store.uses_s3(config):
        # Upload manifest-last; a Job retried after a kill finds the complete artifact and stops.
        args += ["--upload-key", key]
    elif config.reuse_exports:  # the export cache is a directory on the claim
        args += ["--export-cache", f"{ARTIFACT_MOUNT}/.exports"]
    return [*args, *config.optimizer_extra_args]


def _gpu_placement(model: SmallModel) -> Obj:
    """TensorRT engines are built on the GPU product that will run them."""
    gpu = model.spec.serving.gpu
    if model.spec.optimize.target != "tensorrt":
        return {}
    placement: Obj = {"tolerations": [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]}
    if gpu.product:
        term = {"matchExpressions": [{"key": GPU_PRODUCT_LABEL, "operator": "In", "values": [gpu.product]}]}
        placement["affinity"] = {
            "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}}
        }
    return placement


def source_claim(model: SmallModel) -> str | None:
    uri = model.spec.source.uri
    return uri.removeprefix("pvc://").split("/", 1)[0] if uri.startswith("pvc://") else None


def calibration_file(model: SmallModel) -> str | None:
    """Where the optimizer reads spec.optimize.calibration: the ConfigMap's key, or the file on
    the source's claim (mounted at SOURCE_PVC_ROOT/<claim>)."""
    calibration = model.spec.optimize.calibration
    if calibration is None:
        return None
    if calibration.config_map_ref is not None:
        return f"{CALIBRATION_MOUNT}/{calibration.config_map_ref.key}"
    return f"{SOURCE_PVC_ROOT}/{source_claim(model)}/{calibration.source_path}"


def _calibration_volume(model: SmallModel) -> Obj | None:
    """The ConfigMap is optional for the kubelet, so a missing one does not hold the pod in
    ContainerCreating: the optimizer finds no file and fails at once, naming the ConfigMap."""
    calibration = model.spec.optimize.calibration
    if calibration is None or calibration.config_map_ref is None:
        return None
    ref = calibration.config_map_ref
    return {"name": "calibration", "configMap": {"name": ref.name, "optional": True}}


def _env(config: OperatorConfig) -> list[Obj]:
    env: list[Obj] = [
        {"name": "HF_HOME", "value": "/tmp/hf"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": "FLOTILLA_PVC_ROOT", "value": SOURCE_PVC_ROOT},
    ]
    if config.hf_offline:
        env.append({"name": "HF_HUB_OFFLINE", "value": "1"})
    return [*env, *store.s3_env(config)]


def _mounts(model: SmallModel, config: OperatorConfig) -> list[Obj]:
    mounts: list[Obj] = [{"name": "tmp", "mountPath": "/tmp"}, *store.s3_mounts(config)]
    if not store.uses_s3(config):
        mounts.insert(0, {"name": "artifacts", "mountPath": ARTIFACT_MOUNT})
    if claim := source_claim(model):
        mounts.append({"name": "source", "mountPath": f"{SOURCE_PVC_ROOT}/{claim}", "readOnly": True})
    if _calibration_volume(model) is not None:
        mounts.append({"name": "calibration", "mountPath": CALIBRATION_MOUNT, "readOnly": True})
    return mounts


def _volumes(model: SmallModel, config: OperatorConfig) -> list[Obj]:
    volumes: list[Obj] = [{"name": "tmp", "emptyDir": {}}, *store.s3_volumes(config)]
    if not store.uses_s3(config):
        volumes.insert(0, {"name": "artifacts", "persistentVolumeClaim": {"claimName": config.artifact_pvc}})
    if claim := source_claim(model):
        volumes.append({"name": "source", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
    if (calibration := _calibration_volume(model)) is not None:
        volumes.append(calibration)
    return volumes


def _container(model: SmallModel, key: str, config: OperatorConfig) -> Obj:
    gpu_limits = {GPU_RESOURCE: 1} if model.spec.optimize.target == "tensorrt" else {}
    container: Obj = {
        "name": CONTAINER,
        "image": config.optimizer_image,
        "command": ["python", "-m", "flotilla", "optimize"],
        "args": optimizer_args(model, key, config),
        "env": _env(config),
        "resources": {
            "requests": {"cpu": config.optimizer_cpu, "memory": config.optimizer_memory},
            "limits": {"memory": config.optimizer_memory, **gpu_limits},
        },
        "volumeMounts": _mounts(model, config),
        # The optimizer writes its summary here; the operator reads it from the pod status.
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": dict(CONTAINER_SECURITY),
    }
    if ref := model.spec.source.credentials_secret_ref:
        container["envFrom"] = [{"secretRef": {"name": ref.name}}]
    return container


def build_job(model: SmallModel, key: str, config: OperatorConfig) -> Obj:
    meta = object_meta(model, job_name(model.metadata.name, key), COMPONENT_OPTIMIZER, **{LABEL_ARTIFACT_KEY: key})
    pod_spec: Obj = {
        "restartPolicy": "Never",
        "securityContext": dict(POD_SECURITY),
        "containers": [_container(model, key, config)],
        "volumes": _volumes(model, config),
        **_gpu_placement(model),
    }
    if config.job_node_selector:
        pod_spec["nodeSelector"] = dict(config.job_node_selector)
    if config.image_pull_secrets:
        pod_spec["imagePullSecrets"] = pull_secrets(config.image_pull_secrets)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta,
        "spec": {
            "backoffLimit": 2,
            "activeDeadlineSeconds": config.optimizer_deadline_seconds,
            "podFailurePolicy": {
                "rules": [
                    {
                        "action": "FailJob",
                        "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": PERMANENT_EXIT_CODES},
                    },
                    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
                ]
            },
            "template": {"metadata": {"labels": meta["labels"]}, "spec": pod_spec},
        },
    }


def build_artifact_pvc(namespace: str, config: OperatorConfig) -> Obj:
    """The shared artifact store of a namespace. Not owned by any SmallModel: artifacts are
    content-addressed and reused across models and revisions."""
    spec: Obj = {
        "accessModes": [config.artifact_pvc_access_mode],
        "resources": {"requests": {"storage": config.artifact_pvc_size}},
    }
    if config.artifact_storage_class:
        spec["storageClassName"] = config.artifact_storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": config.artifact_pvc,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": "flotilla", "app.kubernetes.io/component": "artifact-store"},
        },
        "spec": spec,
    }
