"""What a pod needs to reach the S3 artifact store: FLOTILLA_S3_* settings, credentials, CA.

The optimization Job uploads with these and the serving pods' init container
(`python -m flotilla.objectstore fetch`) downloads with them; both read the settings through
`flotilla.objectstore.S3Settings`. The store's credentials use FLOTILLA_S3_* names, not
AWS_*, so they never collide with a model source's own AWS_* credentials in the same pod.
"""

from __future__ import annotations

from flotilla.config import OperatorConfig

from .meta import CONTAINER_SECURITY, Obj

CA_MOUNT = "/etc/flotilla/s3-ca"
CA_KEY = "ca.crt"
CACHE_MOUNT = "/var/cache/flotilla/artifacts"
DOWNLOAD_MOUNT = "/artifact"
FETCH_CONTAINER = "fetch-artifact"
# Keys of the Secret named by s3_credentials_secret: the usual AWS names.
SECRET_KEYS = {
    "FLOTILLA_S3_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
    "FLOTILLA_S3_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY",
}


def uses_s3(config: OperatorConfig) -> bool:
    return config.artifact_store == "s3"


def s3_env(config: OperatorConfig) -> list[Obj]:
    """FLOTILLA_S3_* for a pod that talks to the store; [] on the PVC store."""
    if not uses_s3(config):
        return []
    values = {
        "FLOTILLA_S3_BUCKET": config.s3_bucket or "",
        "FLOTILLA_S3_PREFIX": config.s3_prefix,
        "FLOTILLA_S3_REGION": config.s3_region,
        "FLOTILLA_S3_PATH_STYLE": "true" if config.s3_path_style else "false",
    }
    if config.s3_endpoint:
        values["FLOTILLA_S3_ENDPOINT"] = config.s3_endpoint
    if config.s3_ca_config_map:
        values["FLOTILLA_S3_CA_BUNDLE"] = f"{CA_MOUNT}/{CA_KEY}"
    env: list[Obj] = [{"name": name, "value": value} for name, value in values.items()]
    if secret := config.s3_credentials_secret:
        env += [
            {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}
            for name, key in SECRET_KEYS.items()
        ]
    return env


def s3_volumes(config: OperatorConfig) -> list[Obj]:
    if not uses_s3(config) or not config.s3_ca_config_map:
        return []
    return [
        {"name": "s3-ca", "configMap": {"name": config.s3_ca_config_map, "items": [{"key": CA_KEY, "path": CA_KEY}]}}
    ]


def s3_mounts(config: OperatorConfig) -> list[Obj]:
    if not uses_s3(config) or not config.s3_ca_config_map:
        return []
    return [{"name": "s3-ca", "mountPath": CA_MOUNT, "readOnly": True}]


def cache_volume(config: OperatorConfig) -> Obj | None:
    """The node-local cache of verified downloads, when one is configured."""
    if config.artifact_cache_host_path:
        return {
            "name": "artifact-cache",
            "hostPath": {"path": config.artifact_cache_host_path, "type": "DirectoryOrCreate"},
        }
    if config.artifact_cache_pvc:
        return {"name": "artifact-cache", "persistentVolumeClaim": {"claimName": config.artifact_cache_pvc}}
    return None


def serving_volumes(config: OperatorConfig) -> list[Obj]:
    """The serving pod's `artifact` volume: the claim, or (S3) an emptyDir the init container fills."""
    if not uses_s3(config):
        return [{"name": "artifact", "persistentVolumeClaim": {"claimName": config.artifact_pvc, "readOnly": True}}]
    volumes: list[Obj] = [{"name": "artifact", "emptyDir": {"sizeLimit": config.artifact_download_size_limit}}]
    if cache := cache_volume(config):
        volumes.append(cache)
    return [*volumes, *s3_volumes(config)]


def fetch_container(key: str, config: OperatorConfig, resources: Obj) -> Obj:
    """The init container that downloads the artifact and checks every file's sha256 against its
    manifest before Triton starts; a mismatch or a store error ends it with the reason in its
    termination message (the Ready condition shows it), and the kubelet retries with backoff."""
    args = ["--key", key, "--dest", DOWNLOAD_MOUNT]
    mounts: list[Obj] = [{"name": "artifact", "mountPath": DOWNLOAD_MOUNT}, {"name": "tmp", "mountPath": "/tmp"}]
    if cache_volume(config) is not None:
        args += ["--cache", CACHE_MOUNT]
        mounts.append({"name": "artifact-cache", "mountPath": CACHE_MOUNT})
    return {
        "name": FETCH_CONTAINER,
        "image": config.artifact_fetch_image,
        "command": ["python", "-m", "flotilla.objectstore", "fetch"],
        "args": args,
        "env": [{"name": "PYTHONUNBUFFERED", "value": "1"}, *s3_env(config)],
        "resources": resources,
        "volumeMounts": [*mounts, *s3_mounts(config)],
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": dict(CONTAINER_SECURITY),
    }
