"""Operator configuration: environment variables (FLOTILLA_*) over an optional YAML file.

Validated once at start; a bad value stops the operator with a message naming the setting,
rather than surfacing later as a broken Job or Deployment.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ENV_PREFIX = "FLOTILLA_"
CONFIG_FILE_ENV = "FLOTILLA_CONFIG"
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
IMAGE = r"^[\w.\-/:@]+$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"  # a Secret's name


class ConfigError(ValueError):
    """The configuration cannot be used; the message names each bad setting."""


class OperatorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    optimizer_image: str = Field(
        default="ghcr.io/flotilla-dev/flotilla-optimizer:0.1.0",
        pattern=IMAGE,
        description="Image of the optimization Job (images/optimizer).",
    )
    triton_image: str = Field(
        # NVIDIA's tritonserver:25.10-py3 plus what the python-backend model.py imports
        # (onnxruntime, tokenizer, numpy < 2): images/triton/Dockerfile.
        default="ghcr.io/flotilla-dev/flotilla-triton:0.1.0",
        pattern=IMAGE,
        description="Triton Inference Server image of the serving pods (images/triton).",
    )
    artifact_pvc: str = Field(
        default="flotilla-artifacts",
        pattern=DNS_LABEL,
        description="PersistentVolumeClaim (in each SmallModel's namespace) that stores artifacts.",
    )
    artifact_pvc_size: str = Field(default="50Gi", description="Size requested when Flotilla creates that claim.")
    artifact_storage_class: str | None = Field(default=None, description="StorageClass of the claim it creates.")
    artifact_pvc_access_mode: Literal["ReadWriteMany", "ReadWriteOnce", "ReadWriteOncePod"] = Field(
        # ReadWriteMany lets the optimization Job and every serving replica mount the claim from
        # any node; the default StorageClasses of EKS, GKE and most on-prem clusters only offer
        # ReadWriteOnce, which serves from one node (docs/conditions.md, ArtifactClaimSingleNode).
        default="ReadWriteMany",
        description="Access mode of the claim it creates: ReadWriteMany (pods on any node), ReadWriteOnce "
        "(every pod that mounts it must run on one node) or ReadWriteOncePod (one pod at a time).",
    )
    create_artifact_pvc: bool = Field(default=True, description="Create the claim in a namespace when it is missing.")
    # The S3 store (docs/storage.md): optimization Jobs upload each artifact (manifest last),
    # serving pods download and verify it in an init container. The settings reach every pod
    # as FLOTILLA_S3_* (flotilla.objectstore.S3Settings reads them there).
    artifact_store: Literal["pvc", "s3"] = Field(
        default="pvc",
        description="Where artifacts live: pvc (the claim artifact_pvc in each namespace) or s3 (an "
        "S3-compatible bucket, settings s3_*; no claim is created).",
    )
    s3_endpoint: str | None = Field(
        default=None,
        pattern=r"^https?://[^\s/]+(:\d+)?/?$",
        description="S3 endpoint URL (MinIO, Ceph RGW, SeaweedFS, ...); unset: AWS S3 of s3_region.",
    )
    s3_bucket: str | None = Field(
        default=None, pattern=r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$", description="Bucket of the S3 store."
    )
    s3_prefix: str = Field(
        default="", pattern=r"^([\w.\-]+/)*$", description="Key prefix inside the bucket, e.g. flotilla/ (ends in /)."
    )
    s3_region: str = Field(default="us-east-1", pattern=r"^[a-z0-9\-]+$", description="Region of the S3 store.")
    s3_path_style: bool = Field(
        default=False, description="Path-style addressing (endpoint/bucket/key), which most on-prem stores need."
    )
    s3_credentials_secret: str | None = Field(
        default=None,
        pattern=DNS_SUBDOMAIN,
        description="Secret (in each SmallModel's namespace) with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY for "
        "the S3 store; unset: the pods' own identity (IRSA / web identity, instance profile).",
    )
    s3_ca_config_map: str | None = Field(
        default=None,
        pattern=DNS_SUBDOMAIN,
        description="ConfigMap (in each SmallModel's namespace) whose key ca.crt is the PEM bundle that signs "
        "the S3 endpoint's TLS certificate; unset: the system's trust store.",
    )
    artifact_cache_host_path: str | None = Field(
        default=None,
        pattern=r"^/[^\s]*$",
        description="S3 store: a node directory (hostPath) that keeps verified downloads, so another replica on "
        "the same node starts without downloading; needs a namespace whose Pod Security level allows hostPath.",
    )
    artifact_cache_pvc: str | None = Field(
        default=None,
        pattern=DNS_LABEL,
        description="S3 store: a claim (in each SmallModel's namespace) used as that cache instead of a hostPath.",
    )
    store_retry_seconds: float = Field(
        default=300.0,
        ge=10,
        le=86400,
        description="An optimization Job that failed because of the object store (unreachable, credentials "
        "refused, no bucket) runs again this long after it failed, until it succeeds or the spec changes.",
    )
    artifact_fetch_image: str = Field(
        # The operator's own image: small, and it has the flotilla package (the Triton image
        # has no flotilla layer, the optimizer's is 7 GB).
        default="ghcr.io/flotilla-dev/flotilla-operator:0.1.0",
        pattern=IMAGE,
        description="S3 store: image of the serving pods' fetch-artifact init container (the chart sets the "
        "operator's image).",
    )
    artifact_download_size_limit: str = Field(
        default="20Gi",
        pattern=r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$",
        description="S3 store: sizeLimit of the emptyDir each serving pod downloads its artifact into.",
    )
    namespaces: list[str] = Field(default_factory=list, description="Namespaces to watch; empty means all.")
    workers: int = Field(
        default=128,
        ge=1,
        le=1024,
        description="SmallModels reconciled at once (the rest wait their turn).",
    )
    resync_seconds: float = Field(default=60.0, gt=0, description="Periodic reconcile of every SmallModel.")
    metrics_port: int = Field(default=9090, ge=0, le=65535, description="Prometheus metrics port; 0 turns it off.")
    optimizer_cpu: str = Field(default="2", description="CPU request of the optimization Job.")
    # Measured peak of `--precision auto` on SmolLM2-135M: 7.6 GiB (every candidate's session is
    # loaded at once for interleaved timing); 8Gi left no headroom under a cgroup limit.
    optimizer_memory: str = Field(default="12Gi", description="Memory request (and limit) of the optimization Job.")
    optimizer_deadline_seconds: int = Field(default=7200, ge=60, description="activeDeadlineSeconds of the Job.")
    max_concurrent_optimizations: int = Field(
        # An optimizer image bump changes every model's artifact key at once; without a cap
        # every model would start a Job (each asks for optimizer_memory) in the same minute.
        default=4,
        ge=0,
        le=1000,
        description="Optimization Jobs running at once across the namespaces this operator watches; a model "
        "past the cap waits with Optimized=False/Queued until one finishes. 0: no cap.",
    )
    hf_offline: bool = Field(default=False, description="Set HF_HUB_OFFLINE=1 in optimization Jobs.")
    reuse_exports: bool = Field(
        default=True,
        description="Keep fp32 ONNX exports in the artifact store (.exports/), so a new precision or "
        "budget for the same source re-quantizes without exporting again.",
    )
    optimizer_extra_args: list[str] = Field(
        default_factory=list,
        description="Extra arguments for every optimizer run, e.g. --eval-limit,64 to evaluate on fewer "
        "sentences on a small test cluster (not part of the artifact key).",
    )
    image_pull_secrets: list[str] = Field(
        default_factory=list,
        description="Secrets (names, in each SmallModel's namespace) that the optimization Job's and the "
        "serving Deployments' pods pull their images with (imagePullSecrets); empty: none.",
    )
    job_node_selector: dict[str, str] = Field(default_factory=dict, description="nodeSelector of optimization Jobs.")
    serving_node_selector: dict[str, str] = Field(default_factory=dict, description="nodeSelector of serving pods.")
    termination_grace_seconds: int = Field(default=30, ge=6, le=3600, description="Grace period of serving pods.")
    metrics_interval_seconds: float = Field(
        # 5 s, not 10: the autoscaler's reaction to a rise is about one interval plus a cold
        # start; bench/autoscale.py's 5x spike meets its target at 5 s and misses it at 10 s.
        # The canary judge pools intervals into blocks by request count, so it does not care.
        default=5.0,
        ge=0.5,
        le=600,
        description="How often serving metrics are read for a model with a canary or autoscaling: one look "
        "of the canary judge and one decision of the autoscaler per interval.",
    )
    prometheus_url: str | None = Field(
        default=None,
        pattern=r"^https?://[^\s]+$",
        description="Read serving metrics with PromQL from this Prometheus instead of scraping each serving "
        "pod's Triton metrics endpoint (Prometheus must scrape the pods with namespace and pod labels).",
    )
    metrics_url_template: str = Field(
        default="http://{ip}:{port}/metrics",
        pattern=r"^https?://.*\{ip\}.*$|^https?://.*\{pod\}.*$",
        description="Where the operator scrapes a serving pod's Triton metrics; {ip}, {port}, {namespace} and "
        "{pod} are filled in (e.g. through a metrics proxy).",
    )
    gateway_parent: str | None = Field(
        default=None,
        pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?/)?[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="Gateway ([namespace/]name) every model's HTTPRoute attaches to, unless the SmallModel "
        "names one in spec.rollout.gatewayRef.",
    )
    # Scale from zero: the Flotilla gateway's pods hold requests for models at zero and count
    # them; the autoscaler reads those counts (the chart sets these to its gateway's labels).
    gateway_pods_namespace: str = Field(
        default="flotilla-system",
        pattern=DNS_LABEL,
        description="Namespace of the Flotilla gateway's pods, read for requests held for models scaled to zero.",
    )
    gateway_pods_labels: dict[str, str] = Field(
        default_factory=lambda: {"app.kubernetes.io/name": "flotilla-gateway"},
        description="Labels of the Flotilla gateway's pods; empty: no gateway, so nothing wakes a model with "
        "autoscaling minReplicas 0 once it is at zero (its status says so).",
    )
    gateway_pods_port: int = Field(default=8080, ge=1, le=65535, description="The gateway pods' /metrics port.")
    traffic_split: Literal["auto", "replicas"] = Field(
        default="auto",
        description="auto: exact canary weights on an HTTPRoute per model where the cluster serves the Gateway "
        "API, else in proportion to ready replicas; replicas: always the latter (no HTTPRoute).",
    )

    leader_election: bool = Field(
        default=False,
        description="Run as one of several replicas: only the holder of a coordination.k8s.io Lease "
        "reconciles; a standby takes over when the holder stops renewing (kube/lease.py).",
    )
    leader_election_namespace: str | None = Field(
        default=None,
        pattern=DNS_LABEL,
        description="Namespace of the Lease; default: $POD_NAMESPACE, else the first watched namespace, else default.",
    )
    leader_election_lease: str = Field(default="flotilla-operator", pattern=DNS_LABEL, description="Lease name.")
    lease_duration_seconds: float = Field(
        default=15.0, ge=2, le=300, description="How long a standby waits for an unrenewed Lease."
    )
    lease_renew_deadline_seconds: float = Field(
        default=10.0, ge=1, le=300, description="The holder stops (exits) when it could not renew for this long."
    )
    lease_retry_seconds: float = Field(default=2.0, ge=0.2, le=60, description="Renewal and acquisition period.")

    # Artifact garbage collection (docs/operations.md, "Artifact garbage collection").
    artifact_gc_interval_seconds: float = Field(
        default=3600.0,
        ge=0,
        description="How often each namespace's artifact claim is swept for artifacts no SmallModel references "
        "(a Job per namespace); 0 turns garbage collection off.",
    )
    artifact_retention_seconds: float = Field(
        default=604800.0,
        ge=0,
        description="How long an unreferenced artifact (or an incomplete upload) stays before a sweep deletes "
        "it, counted from its last write; 0: at the next sweep. Referenced artifacts are never deleted.",
    )

    @model_validator(mode="after")
    def _lease_timing(self) -> OperatorConfig:
        if not self.lease_retry_seconds < self.lease_renew_deadline_seconds < self.lease_duration_seconds:
            raise ValueError(
                "lease timing must satisfy lease_retry_seconds < lease_renew_deadline_seconds < "
                "lease_duration_seconds (a holder must give up before a standby may take over)"
            )
        return self

    @model_validator(mode="after")
    def _store(self) -> OperatorConfig:
        if self.artifact_store == "s3" and not self.s3_bucket:
            raise ValueError("artifact_store s3 needs s3_bucket")
        if self.artifact_cache_host_path and self.artifact_cache_pvc:
            raise ValueError("set artifact_cache_host_path or artifact_cache_pvc, not both")
        return self

    @field_validator("namespaces")
    @classmethod
    def _dns_labels(cls, value: list[str]) -> list[str]:
        import re

        bad = [ns for ns in value if not re.fullmatch(DNS_LABEL, ns)]
        if bad:
            raise ValueError(f"not valid namespace names: {', '.join(bad)}")
        return value

    @field_validator("image_pull_secrets")
    @classmethod
    def _secret_names(cls, value: list[str]) -> list[str]:
        bad = [name for name in value if len(name) > 253 or not re.fullmatch(DNS_SUBDOMAIN, name)]
        if bad:
            raise ValueError(f"not valid Secret names: {', '.join(bad)}")
        return list(dict.fromkeys(value))  # each once, in the order given


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    """FLOTILLA_TRITON_IMAGE=... -> {"triton_image": ...}; lists/maps as YAML or comma lists."""
    values: dict[str, Any] = {}
    for name, field in OperatorConfig.model_fields.items():
        raw = env.get(ENV_PREFIX + name.upper())
        if raw is None:
            continue
        if field.annotation == list[str]:
            values[name] = [item.strip() for item in raw.split(",") if item.strip()]
        elif field.annotation == dict[str, str]:
            values[name] = yaml.safe_load(raw) or {}
        else:
            values[name] = raw
    return values


def load_config(env: Mapping[str, str] | None = None) -> OperatorConfig:
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    if path := env.get(CONFIG_FILE_ENV):
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"{CONFIG_FILE_ENV}={path}: cannot read: {err}") from err
        if not isinstance(loaded, dict):
            raise ConfigError(f"{CONFIG_FILE_ENV}={path}: expected a mapping of settings")
        values.update({str(k).replace("-", "_"): v for k, v in loaded.items()})
    values.update(_from_env(env))
    try:
        return OperatorConfig.model_validate(values)
    except ValidationError as err:
        problems = "; ".join(
            f"{ENV_PREFIX}{'.'.join(str(p) for p in e['loc']).upper()}: {e['msg']}" for e in err.errors()
        )
        raise ConfigError(f"invalid operator configuration: {problems}") from None
