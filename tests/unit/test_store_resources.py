"""The S3 artifact store in the Job and the serving pods: settings, credentials, CA, the
download init container and the node cache. The PVC store's objects stay as they were."""

from __future__ import annotations

from typing import Any

import pytest

from flotilla.config import ConfigError, OperatorConfig, load_config
from flotilla.resources import optimizer, serving
from flotilla.resources.store import CACHE_MOUNT, DOWNLOAD_MOUNT, FETCH_CONTAINER

from .objects import key_of, model

S3 = OperatorConfig(
    artifact_store="s3",
    s3_endpoint="https://minio.storage:9000",
    s3_bucket="models",
    s3_prefix="flotilla/",
    s3_path_style=True,
    s3_credentials_secret="s3-creds",
    s3_ca_config_map="s3-ca",
)


def pod(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def test_s3_job_builds_in_scratch_uploads_and_mounts_no_claim() -> None:
    m = model()
    key = key_of(m)
    spec = pod(optimizer.build_job(m, key, S3))
    c = spec["containers"][0]
    args = c["args"]
    assert args[args.index("--out") + 1] == f"/tmp/artifacts/{key}"
    assert args[args.index("--upload-key") + 1] == key
    assert "--export-cache" not in args  # the export cache is a directory on the claim
    assert not any("persistentVolumeClaim" in v for v in spec["volumes"])
    env = env_of(c)
    assert env["FLOTILLA_S3_BUCKET"] == "models" and env["FLOTILLA_S3_PREFIX"] == "flotilla/"
    assert env["FLOTILLA_S3_ENDPOINT"] == "https://minio.storage:9000"
    assert env["FLOTILLA_S3_PATH_STYLE"] == "true"
    assert env["FLOTILLA_S3_ACCESS_KEY_ID"] == {"secretKeyRef": {"name": "s3-creds", "key": "AWS_ACCESS_KEY_ID"}}
    assert env["FLOTILLA_S3_CA_BUNDLE"] == "/etc/flotilla/s3-ca/ca.crt"
    assert {"name": "s3-ca", "mountPath": "/etc/flotilla/s3-ca", "readOnly": True} in c["volumeMounts"]


def test_s3_store_credentials_never_take_a_sources_aws_names() -> None:
    m = model(source={"uri": "s3://src-bucket/models/m", "credentialsSecretRef": {"name": "src-creds"}})
    c = pod(optimizer.build_job(m, key_of(m), S3))["containers"][0]
    assert c["envFrom"] == [{"secretRef": {"name": "src-creds"}}]  # the source's AWS_* keys
    assert not [name for name in env_of(c) if name.startswith("AWS_")]


def test_pod_identity_when_no_credentials_secret() -> None:
    config = OperatorConfig(artifact_store="s3", s3_bucket="models")
    c = pod(optimizer.build_job(model(), "k" * 20, config))["containers"][0]
    env = env_of(c)
    assert "FLOTILLA_S3_ACCESS_KEY_ID" not in env and "FLOTILLA_S3_ENDPOINT" not in env
    assert env["FLOTILLA_S3_REGION"] == "us-east-1"


def test_s3_serving_pod_downloads_into_an_emptydir_before_triton() -> None:
    key = "k" * 20
    spec = pod(serving.build_deployment(model(), "rev0000000", key, "chatdir", S3))
    (init,) = spec["initContainers"]
    assert init["name"] == FETCH_CONTAINER
    assert init["image"] == "ghcr.io/flotilla-dev/flotilla-operator:0.1.0"  # small, and has flotilla
    assert init["command"] == ["python", "-m", "flotilla.objectstore", "fetch"]
    assert init["args"] == ["--key", key, "--dest", DOWNLOAD_MOUNT]
    assert init["terminationMessagePath"] == "/dev/termination-log"
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["artifact"] == {"name": "artifact", "emptyDir": {"sizeLimit": "20Gi"}}
    triton = spec["containers"][0]
    mounts = {mnt["mountPath"]: mnt for mnt in triton["volumeMounts"]}
    # The init container writes DEST/<key>/<model_dir>/1: the same layout as on the claim.
    assert mounts["/models/chat/1"]["subPath"] == f"{key}/chatdir/1"
    assert "FLOTILLA_S3_BUCKET" not in env_of(triton)  # Triton itself never talks to the store
    assert init["securityContext"]["readOnlyRootFilesystem"] is True


def test_node_cache_is_mounted_only_when_configured() -> None:
    key = "k" * 20
    plain = pod(serving.build_deployment(model(), "rev0000000", key, "chatdir", S3))
    assert "--cache" not in plain["initContainers"][0]["args"]
    cached = S3.model_copy(update={"artifact_cache_host_path": "/var/lib/flotilla-cache"})
    spec = pod(serving.build_deployment(model(), "rev0000000", key, "chatdir", cached))
    init = spec["initContainers"][0]
    assert init["args"][-2:] == ["--cache", CACHE_MOUNT]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["artifact-cache"]["hostPath"] == {"path": "/var/lib/flotilla-cache", "type": "DirectoryOrCreate"}
    claim = S3.model_copy(update={"artifact_cache_pvc": "model-cache"})
    volumes = {v["name"]: v for v in pod(serving.build_deployment(model(), "r", key, "d", claim))["volumes"]}
    assert volumes["artifact-cache"]["persistentVolumeClaim"] == {"claimName": "model-cache"}


def test_the_pvc_store_has_no_init_container_and_mounts_the_claim() -> None:
    spec = pod(serving.build_deployment(model(), "rev0000000", "k" * 20, "chatdir", OperatorConfig()))
    assert "initContainers" not in spec
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["artifact"]["persistentVolumeClaim"]["claimName"] == "flotilla-artifacts"


@pytest.mark.parametrize(
    ("env", "said"),
    [
        ({"FLOTILLA_ARTIFACT_STORE": "s3"}, "needs s3_bucket"),
        ({"FLOTILLA_ARTIFACT_STORE": "gcs"}, "FLOTILLA_ARTIFACT_STORE"),
        ({"FLOTILLA_S3_ENDPOINT": "minio:9000"}, "FLOTILLA_S3_ENDPOINT"),
        ({"FLOTILLA_S3_BUCKET": "Bad_Bucket"}, "FLOTILLA_S3_BUCKET"),
        ({"FLOTILLA_S3_PREFIX": "no-slash"}, "FLOTILLA_S3_PREFIX"),
        ({"FLOTILLA_ARTIFACT_CACHE_HOST_PATH": "/c", "FLOTILLA_ARTIFACT_CACHE_PVC": "c"}, "not both"),
    ],
)
def test_bad_store_settings_stop_the_operator_naming_the_setting(env: dict[str, str], said: str) -> None:
    with pytest.raises(ConfigError, match=said):
        load_config(env)


def test_store_settings_from_env() -> None:
    config = load_config(
        {"FLOTILLA_ARTIFACT_STORE": "s3", "FLOTILLA_S3_BUCKET": "models", "FLOTILLA_S3_PATH_STYLE": "true"}
    )
    assert config.artifact_store == "s3" and config.s3_path_style is True
