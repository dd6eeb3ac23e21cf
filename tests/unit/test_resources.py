"""Builders of the Job, the serving Deployment and Services."""

from __future__ import annotations

from flotilla.config import OperatorConfig
from flotilla.resources import optimizer, serving
from flotilla.resources.meta import content_hash, stamped

from .objects import key_of, model

CONFIG = OperatorConfig()


def container(obj: dict) -> dict:  # type: ignore[type-arg]
    return obj["spec"]["template"]["spec"]["containers"][0]  # type: ignore[no-any-return]


def test_job_runs_the_optimizer_with_the_spec_arguments() -> None:
    m = model(
        source={"uri": "hf://org/m", "revision": "abc123", "task": "feature-extraction"},
        optimize={"precision": "int8", "accuracyBudget": {"minCosineSimilarity": 0.995}},
    )
    key = key_of(m)
    job = optimizer.build_job(m, key, CONFIG)
    c = container(job)
    args = dict(zip(c["args"][::2], c["args"][1::2], strict=True))
    assert args["--export-cache"] == "/artifacts/.exports"
    assert c["command"] == ["python", "-m", "flotilla", "optimize"]
    assert args["--source"] == "hf://org/m" and args["--revision"] == "abc123"
    assert args["--task"] == "feature-extraction" and args["--precision"] == "int8"
    assert args["--out"] == f"/artifacts/{key}"
    assert args["--min-cosine-similarity"] == "0.995"
    assert c["terminationMessagePath"] == "/dev/termination-log"
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert rules[0]["action"] == "FailJob"


def test_a_kl_budget_reaches_the_optimizer_and_its_gate() -> None:
    from flotilla.optimize import cli

    unset = container(optimizer.build_job(model(), "k" * 20, CONFIG))["args"]
    assert "--max-kl-divergence" not in unset  # not gated unless asked: the Job is what it was
    m = model(optimize={"accuracyBudget": {"maxKLDivergence": 0.05}})
    args = container(optimizer.build_job(m, key_of(m), CONFIG))["args"]
    assert args[args.index("--max-kl-divergence") + 1] == "0.05"
    argv = [a for a in args if a != "--export-cache" and not a.startswith("/artifacts/.")]
    request = cli._request(cli.build_parser().parse_args(argv))
    assert request.budget.max_kl_divergence == 0.05  # type: ignore[attr-defined]


def test_credentials_secret_reaches_the_job() -> None:
    m = model(source={"uri": "hf://org/m", "credentialsSecretRef": {"name": "hf-token"}})
    assert container(optimizer.build_job(m, "k" * 20, CONFIG))["envFrom"] == [{"secretRef": {"name": "hf-token"}}]


def test_tensorrt_job_lands_on_the_gpu_product() -> None:
    m = model(optimize={"target": "tensorrt"}, serving={"gpu": {"count": 1, "product": "NVIDIA-L4"}})
    pod = optimizer.build_job(m, "k" * 20, CONFIG)["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    term = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]
    assert term["matchExpressions"][0]["values"] == ["NVIDIA-L4"]


def test_cpu_serving_requests_no_gpu_and_has_no_toleration() -> None:
    dep = serving.build_deployment(model(), "rev0000000", "k" * 20, "chat", CONFIG)
    pod = dep["spec"]["template"]["spec"]
    assert "tolerations" not in pod and "affinity" not in pod
    assert "limits" not in container(dep)["resources"]


def test_gpu_serving_requests_gpus_on_the_named_product() -> None:
    m = model(
        serving={"gpu": {"count": 2, "product": "NVIDIA-L4"}, "resources": {"requests": {"cpu": "2", "memory": "8Gi"}}}
    )
    dep = serving.build_deployment(m, "rev0000000", "k" * 20, "chat", CONFIG)
    c = container(dep)
    assert c["resources"] == {"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"nvidia.com/gpu": 2}}
    pod = dep["spec"]["template"]["spec"]
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def test_mig_profile_requests_mig_slices() -> None:
    m = model(serving={"gpu": {"count": 1, "migProfile": "1g.10gb"}})
    c = container(serving.build_deployment(m, "rev0000000", "k" * 20, "chat", CONFIG))
    assert c["resources"]["limits"] == {"nvidia.com/mig-1g.10gb": 1}


def test_triton_binds_to_the_pod_ip_and_mounts_the_artifact() -> None:
    c = container(serving.build_deployment(model(), "rev0000000", "k" * 20, "chatdir", CONFIG))
    assert "--http-address=$(POD_IP)" in c["args"]
    assert "--load-model=chat" in c["args"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/models/chat/1"]["subPath"] == f"{'k' * 20}/chatdir/1"
    assert mounts["/models/chat/1"]["readOnly"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True


def test_stamped_hash_ignores_itself_and_tracks_content() -> None:
    obj = serving.build_service(model())
    once = stamped(obj)
    assert stamped(once) == once
    changed = stamped({**obj, "spec": {**obj["spec"], "type": "NodePort"}})
    assert content_hash(once) != content_hash(changed)


def test_pvc_source_is_mounted_where_the_optimizer_reads_it() -> None:
    m = model(source={"uri": "pvc://models/smollm2/model.gguf"})
    job = optimizer.build_job(m, key_of(m), CONFIG)
    pod = job["spec"]["template"]["spec"]
    mounts = {v["name"]: v for v in container(job)["volumeMounts"]}
    assert mounts["source"] == {"name": "source", "mountPath": "/mnt/flotilla/pvc/models", "readOnly": True}
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v
    }
    assert claims == {"artifacts": "flotilla-artifacts", "source": "models"}
    env = {e["name"]: e["value"] for e in container(job)["env"]}
    assert env["FLOTILLA_PVC_ROOT"] == "/mnt/flotilla/pvc"


def test_job_arguments_give_the_optimizer_the_operators_artifact_key() -> None:
    """The contract between the operator and the Job: both compute the same content address."""
    from flotilla.optimize.cli import _request, build_parser

    for spec in (
        {"source": {"uri": "hf://org/m", "revision": "v1"}, "optimize": {"precision": "int4"}},
        {"source": {"uri": "pvc://models/m.gguf", "task": "feature-extraction"}, "serving": {"gpu": {"count": 1}}},
        {"source": {"uri": "file:///m"}, "optimize": {"accuracyBudget": {"maxTop1Disagreement": 0.1}}},
        {"source": {"uri": "hf://org/m"}, "optimize": {"calibration": {"configMapRef": {"name": "c", "key": "t"}}}},
        {"source": {"uri": "pvc://models/m.gguf"}, "optimize": {"calibration": {"sourcePath": "texts/c.txt"}}},
    ):
        m = model(**spec)
        key = key_of(m)
        args = optimizer.build_job(m, key, CONFIG)["spec"]["template"]["spec"]["containers"][0]["args"]
        request = _request(build_parser().parse_args(args))
        assert request.key() == key  # type: ignore[attr-defined]


def test_serving_pods_drain_before_triton_stops() -> None:
    c = container(serving.build_deployment(model(), "rev0000000", "k" * 20, "chat", CONFIG))
    assert c["lifecycle"]["preStop"]["sleep"]["seconds"] == serving.PRESTOP_SLEEP_SECONDS
    assert f"--exit-timeout-secs={CONFIG.termination_grace_seconds - serving.PRESTOP_SLEEP_SECONDS}" in c["args"]


def test_pull_secrets_reach_the_job_and_serving_pods_only_when_set() -> None:
    config = OperatorConfig(image_pull_secrets=["regcred", "mirror.example"])
    m = model()
    job_pod = optimizer.build_job(m, "k" * 20, config)["spec"]["template"]["spec"]
    serving_pod = serving.build_deployment(m, "rev0000000", "k" * 20, "chat", config)["spec"]["template"]["spec"]
    for pod in (job_pod, serving_pod):
        assert pod["imagePullSecrets"] == [{"name": "regcred"}, {"name": "mirror.example"}]
    # Unset: no key at all, so the objects (and their applied hashes) stay as before.
    assert "imagePullSecrets" not in optimizer.build_job(m, "k" * 20, CONFIG)["spec"]["template"]["spec"]
    plain = serving.build_deployment(m, "rev0000000", "k" * 20, "chat", CONFIG)
    assert "imagePullSecrets" not in plain["spec"]["template"]["spec"]


def test_calibration_text_reaches_the_optimizer_from_a_configmap_or_the_source_claim() -> None:
    m = model(optimize={"calibration": {"configMapRef": {"name": "calib-v2", "key": "support-tickets.txt"}}})
    pod = optimizer.build_job(m, key_of(m), CONFIG)["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    assert args[args.index("--calibration-text") + 1] == "/etc/flotilla/calibration/support-tickets.txt"
    volumes = {v["name"]: v for v in pod["volumes"]}
    # optional: a missing ConfigMap lets the optimizer start and fail at once, naming the file
    assert volumes["calibration"]["configMap"] == {"name": "calib-v2", "optional": True}
    mounts = {mnt["name"]: mnt for mnt in pod["containers"][0]["volumeMounts"]}
    assert mounts["calibration"]["mountPath"] == "/etc/flotilla/calibration"
    on_claim = model(
        source={"uri": "pvc://models/smollm2/m.gguf"}, optimize={"calibration": {"sourcePath": "texts/calib.txt"}}
    )
    args = container(optimizer.build_job(on_claim, key_of(on_claim), CONFIG))["args"]
    assert args[args.index("--calibration-text") + 1] == "/mnt/flotilla/pvc/models/texts/calib.txt"
    assert key_of(on_claim) != key_of(model(source={"uri": "pvc://models/smollm2/m.gguf"}))  # new text, new artifact
    assert "--calibration-text" not in container(optimizer.build_job(model(), key_of(model()), CONFIG))["args"]
