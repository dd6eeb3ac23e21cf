"""The artifact GC Job of a namespace: `python -m flotilla.gc sweep` over the artifact claim.

The operator cannot mount a namespace's claim; a Job can. One per namespace at a time (its
name is fixed, `<artifact_pvc>-gc`), never owned by a SmallModel (artifacts are shared by
every model of the namespace), and never labelled with a model, so it is no model's child:
the optimization cap does not count it and no model's loop wakes for it. The keep set is
computed by the operator (gc/keep.py) and passed as arguments.

With the S3 store (artifact_store: s3) one bucket prefix holds every namespace's artifacts:
one Job sweeps it (`--store s3`, the store's FLOTILLA_S3_* settings, credentials and CA as the
optimization Job gets them, resources/store.py), with the keep set of every watched namespace,
in a namespace that has SmallModels (so its credentials Secret and CA ConfigMap are there).
"""

from __future__ import annotations

from collections.abc import Iterable

from flotilla.api.v1alpha1 import COMPONENT_ARTIFACT_GC, LABEL_COMPONENT, LABEL_MANAGED_BY, MANAGED_BY
from flotilla.config import OperatorConfig

from . import store
from .meta import CONTAINER_SECURITY, POD_SECURITY, Obj, pull_secrets

ARTIFACT_MOUNT = "/artifacts"
CONTAINER = "artifact-gc"
DEADLINE_SECONDS = 600
TTL_SECONDS = 3600  # the operator deletes it once read; this is for an operator that went away


def gc_job_name(config: OperatorConfig) -> str:
    return f"{config.artifact_pvc}-gc"[:63]


def gc_labels() -> dict[str, str]:
    return {LABEL_MANAGED_BY: MANAGED_BY, LABEL_COMPONENT: COMPONENT_ARTIFACT_GC}


def gc_args(keep: Iterable[str], retention_seconds: float, s3: bool = False) -> list[str]:
    where = ["--store", "s3"] if s3 else ["--root", ARTIFACT_MOUNT]
    args = ["sweep", *where, "--retention-seconds", f"{retention_seconds:g}"]
    for key in sorted(set(keep)):
        args += ["--keep", key]
    return args


def build_gc_job(namespace: str, keep: Iterable[str], config: OperatorConfig) -> Obj:
    labels = gc_labels()
    s3 = store.uses_s3(config)
    if s3:
        volumes: list[Obj] = [{"name": "tmp", "emptyDir": {}}, *store.s3_volumes(config)]
        mounts: list[Obj] = [{"name": "tmp", "mountPath": "/tmp"}, *store.s3_mounts(config)]
    else:
        volumes = [{"name": "artifacts", "persistentVolumeClaim": {"claimName": config.artifact_pvc}}]
        mounts = [{"name": "artifacts", "mountPath": ARTIFACT_MOUNT}]
    container: Obj = {
        "name": CONTAINER,
        "image": config.optimizer_image,  # it has the flotilla package, and nothing else is needed
        "command": ["python", "-m", "flotilla.gc"],
        "args": gc_args(keep, config.artifact_retention_seconds, s3),
        "env": [{"name": "PYTHONUNBUFFERED", "value": "1"}, *store.s3_env(config)],
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
        "volumeMounts": mounts,
        # The summary goes here; the operator reads it from the pod status (gc/sweep.py).
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": dict(CONTAINER_SECURITY),
    }
    pod_spec: Obj = {
        "restartPolicy": "Never",
        "securityContext": dict(POD_SECURITY),
        "containers": [container],
        "volumes": volumes,
    }
    if config.job_node_selector:
        pod_spec["nodeSelector"] = dict(config.job_node_selector)
    if config.image_pull_secrets:
        pod_spec["imagePullSecrets"] = pull_secrets(config.image_pull_secrets)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": gc_job_name(config), "namespace": namespace, "labels": labels},
        "spec": {
            "backoffLimit": 0,  # a failed pass is retried at the next interval, with a fresh keep set
            "activeDeadlineSeconds": DEADLINE_SECONDS,
            "ttlSecondsAfterFinished": TTL_SECONDS,
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }
