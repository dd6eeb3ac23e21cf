"""The kind path (`make kind-demo`, e2e/kind/) without Docker: the kind binary builds from Go
modules; the cluster config passes kind's own loader and validation (e2e/tools/kindconfig, the
code `kind create cluster --config` runs) and broken ones are refused with kind's message; the
steps are the exact commands; the checks before them fail in one line. The kind path itself
needs a Docker engine and runs only in .github/workflows/kind.yml."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from kind import plan
from kind.__main__ import KindDemoError, archive_names, check_docker
from localcluster.versions import REPO_ROOT, bin_dir, kindconfig_version, load_versions

pytestmark = pytest.mark.gotools  # kind and kindconfig: make test runs these after the Go builds

KIND_DIR = REPO_ROOT / "e2e" / "kind"
CLUSTER = KIND_DIR / "cluster.yaml"
VERSIONS = load_versions()


def built(group: str, version: str) -> Path:
    path = bin_dir(group, version) / group
    if not path.is_file():
        pytest.fail(f"{group} is not built ({path}): run `python -m localcluster build {group}`", pytrace=False)
    return path


def kindconfig(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    tool = built("kindconfig", kindconfig_version())
    return subprocess.run([str(tool), *args, str(config)], capture_output=True, text=True, timeout=60, check=False)


# --- kind itself -------------------------------------------------------------------------------


def test_kind_builds_from_go_modules_at_the_pinned_version() -> None:
    proc = subprocess.run(
        [str(built("kind", VERSIONS.kind)), "version"], capture_output=True, text=True, timeout=30, check=True
    )
    assert proc.stdout.split()[:2] == ["kind", VERSIONS.kind], proc.stdout


def test_kindconfig_pins_the_same_kind() -> None:
    """The validating tool compiles the kind release that `make kind-demo` runs."""
    assert kindconfig_version().startswith(f"{VERSIONS.kind}-")


def test_node_image_is_the_one_this_kind_release_names() -> None:
    """KIND_NODE_IMAGE is the default node image in the pinned kind's own source
    (pkg/apis/config/defaults.Image, printed by kindconfig), and Kubernetes v1.34 like ours."""
    summary = json.loads(kindconfig(CLUSTER).stdout)
    assert summary["defaultImage"] == VERSIONS.kind_node_image
    tag = VERSIONS.kind_node_image.split("@")[0].rpartition(":")[2]
    assert tag.split(".")[:2] == VERSIONS.kubernetes.split(".")[:2]
    assert "@sha256:" in VERSIONS.kind_node_image


# --- the cluster config, checked by kind's own code -------------------------------------------


def test_shipped_config_passes_kinds_validation() -> None:
    proc = kindconfig(CLUSTER, "--name", "flotilla")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["name"] == "flotilla"
    assert [n["role"] for n in summary["nodes"]] == ["control-plane", "worker"]
    assert {n["image"] for n in summary["nodes"]} == {VERSIONS.kind_node_image}
    worker = summary["nodes"][1]
    assert worker["labels"] == {"flotilla.dev/kind-demo": "true"}
    assert worker["extraPortMappings"] == [
        {"containerPort": plan.GATEWAY_NODE_PORT, "hostPort": plan.GATEWAY_NODE_PORT, "listenAddress": "127.0.0.1",
         "protocol": "TCP"}
    ]  # fmt: skip
    # What the executor reads is what kind reads.
    assert plan.config_node_images(CLUSTER.read_text()) == [n["image"] for n in summary["nodes"]]


def broken(edit: str) -> str:
    text = CLUSTER.read_text()
    if edit == "apiVersion":
        return text.replace("kind.x-k8s.io/v1alpha4", "kind.x-k8s.io/v1alpha3")
    if edit == "role":
        return text.replace("  - role: worker", "  - role: master")
    if edit == "no control plane":
        return text.replace("  - role: control-plane", "  - role: worker")
    if edit == "duplicate port":
        return text.replace(
            "        protocol: TCP\n",
            "        protocol: TCP\n"
            "      - {containerPort: 30081, hostPort: 30080, listenAddress: 127.0.0.1, protocol: TCP}\n",
        )
    if edit == "invalid port":
        return text.replace("hostPort: 30080", "hostPort: 70000")
    if edit == "unknown field":
        return text.replace("extraPortMappings:", "extraPortMapping:")
    if edit == "name":
        return text.replace("name: flotilla", "name: Flotilla_Demo")
    raise AssertionError(edit)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ("apiVersion", "unknown apiVersion: kind.x-k8s.io/v1alpha3"),
        ("role", '"master" is not a valid node role'),
        ("no control plane", "must have at least one control-plane node"),
        ("duplicate port", "port mapping with same listen address, port and protocol already configured"),
        ("invalid port", "invalid hostPort: invalid port number: 70000"),
        ("unknown field", "field extraPortMapping not found"),
        ("name", "'Flotilla_Demo' is not a valid cluster name"),
    ],
)
def test_broken_configs_are_refused_with_kinds_message(tmp_path: Path, edit: str, message: str) -> None:
    config = tmp_path / "cluster.yaml"
    text = broken(edit)
    assert text != CLUSTER.read_text()
    config.write_text(text)
    proc = kindconfig(config)
    assert proc.returncode == 1 and not proc.stdout, proc.stdout
    assert message in proc.stderr, proc.stderr


# --- the steps ---------------------------------------------------------------------------------


@pytest.fixture
def settings(tmp_path: Path) -> plan.Settings:
    return plan.Settings(
        repo=tmp_path,
        kind=Path("/bin/kind"),
        kubectl=Path("/bin/kubectl"),
        helm=Path("/bin/helm"),
        weights=Path("/w/SmolLM2-135M-Instruct.Q4_1.gguf"),
        app_version="0.1.0",
        node_image=VERSIONS.kind_node_image,
    )


def runs(steps: list[plan.Step]) -> list[tuple[str, ...]]:
    return [s.argv for s in steps if isinstance(s, plan.Run)]


def test_demo_steps_are_the_commands(settings: plan.Settings) -> None:
    kc = ("--kubeconfig", str(settings.repo / ".flotilla" / "kind" / "kubeconfig"))
    steps = plan.demo_steps(settings, cluster_exists=False)
    commands = runs(steps)
    images = settings.repo / "dist" / "images"
    assert commands[0] == (
        "/bin/kind", "create", "cluster", "--name", "flotilla", "--config", str(CLUSTER), *kc, "--wait", "180s",
    )  # fmt: skip
    assert commands[1:5] == [
        ("/bin/kind", "load", "image-archive", str(images / f"{n}.tar"), "--name", "flotilla")
        for n in ("operator", "optimizer", "triton", "gateway")
    ]
    assert commands[5] == ("/bin/kubectl", *kc, "apply", "-f", str(KIND_DIR / "model-store.yaml"))
    assert commands[6] == (
        "/bin/kubectl", *kc, "wait", "--for=condition=Ready", "pod/load-smollm2", "-n", "flotilla-demo",
        "--timeout=300s",
    )  # fmt: skip
    copy = next(s for s in steps if isinstance(s, plan.Run) and s.stdin is not None)
    assert copy.stdin == settings.weights
    assert copy.argv[:9] == ("/bin/kubectl", *kc, "exec", "-i", "-n", "flotilla-demo", "load-smollm2", "--")
    assert copy.argv[-1] == "/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    assert commands[8] == (
        "/bin/helm", "upgrade", "--install", "flotilla", str(settings.repo / "charts" / "flotilla"), *kc,
        "-n", "flotilla-system", "--create-namespace", "-f", str(KIND_DIR / "values.yaml"),
    )  # fmt: skip
    patch = commands[9]
    assert patch[:8] == ("/bin/kubectl", *kc, "patch", "service", "flotilla-flotilla-gateway", "-n", "flotilla-system")
    assert json.loads(patch[-1]) == [{"op": "replace", "path": "/spec/ports/0/nodePort", "value": 30080}]
    assert commands[10] == (
        "/bin/kubectl", *kc, "rollout", "status", "deployment/flotilla-flotilla", "-n", "flotilla-system",
        "--timeout=300s",
    )  # fmt: skip
    assert commands[11] == (
        "/bin/kubectl", *kc, "apply", "-n", "flotilla-demo", "-f",
        str(settings.repo / "examples" / "01-smollm2" / "smallmodel.yaml"),
    )  # fmt: skip
    waits = [s for s in steps if isinstance(s, plan.WaitFor)]
    assert [(w.condition, w.timeout) for w in waits] == [("Optimized", 3600), ("Ready", 900)]
    ask = commands[12]
    assert ask[-3:] == ("http://smollm2.flotilla-demo.svc:8000", "smollm2", plan.PROMPT)
    gateway = [s for s in steps if isinstance(s, plan.AskGateway)]
    assert gateway == [plan.AskGateway(gateway[0].title, "http://127.0.0.1:30080/v1", "smollm2", plan.PROMPT)]
    assert commands[-1] == ("/bin/kubectl", *kc, "get", "smallmodels", "-n", "flotilla-demo", "-o", "wide")


def test_a_second_run_reuses_the_cluster(settings: plan.Settings) -> None:
    kubeconfig = str(settings.kubeconfig)
    reuse = runs(plan.demo_steps(settings, cluster_exists=True))
    fresh = runs(plan.demo_steps(settings, cluster_exists=False))
    assert reuse[0] == ("/bin/kind", "export", "kubeconfig", "--name", "flotilla", "--kubeconfig", kubeconfig)
    assert reuse[1:] == fresh[1:]
    assert runs(plan.down_steps(settings)) == [
        ("/bin/kind", "delete", "cluster", "--name", "flotilla", "--kubeconfig", kubeconfig)
    ]


def test_copy_and_ask_scripts_compile() -> None:
    """They run in the optimizer image's python (kubectl exec): at least they must parse."""
    compile(plan.COPY_SCRIPT, "copy", "exec")
    compile(plan.ASK_SCRIPT, "ask", "exec")


def test_copy_script_streams_stdin_into_the_claim(tmp_path: Path) -> None:
    target = tmp_path / "models" / "smollm2" / plan.WEIGHTS_NAME
    data = os.urandom(3 << 20)
    proc = subprocess.run(
        [sys.executable, "-c", plan.COPY_SCRIPT, str(target)], input=data, capture_output=True, timeout=60, check=True
    )
    assert target.read_bytes() == data and not target.with_suffix(".part").exists()
    assert f"{len(data)} bytes" in proc.stdout.decode()


# --- what the steps rely on agrees across the files ---------------------------------------------


def docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_values_and_store_agree_with_the_plan() -> None:
    values = yaml.safe_load((KIND_DIR / "values.yaml").read_text())
    chart = yaml.safe_load((REPO_ROOT / "charts" / "flotilla" / "Chart.yaml").read_text())
    s = plan.Settings(REPO_ROOT, Path(), Path(), Path(), Path(), chart["appVersion"], VERSIONS.kind_node_image)
    assert f"{values['image']['repository']}:{values['image']['tag']}" == s.image("operator")
    assert f"{values['gateway']['image']['repository']}:{values['gateway']['image']['tag']}" == s.image("gateway")
    assert values["config"]["optimizerImage"] == s.image("optimizer")
    assert values["config"]["tritonImage"] == s.image("triton")
    assert values["image"]["pullPolicy"] == values["gateway"]["image"]["pullPolicy"] == "IfNotPresent"
    assert values["config"]["namespaces"] == [plan.NAMESPACE]
    assert values["gateway"]["service"]["type"] == "NodePort"
    label = {"flotilla.dev/kind-demo": "true"}
    assert values["config"]["jobNodeSelector"] == values["config"]["servingNodeSelector"] == label

    store = {d["kind"] + "/" + d["metadata"]["name"]: d for d in docs(KIND_DIR / "model-store.yaml")}
    assert "Namespace/flotilla-demo" in store
    models = store["PersistentVolumeClaim/flotilla-models"]
    assert models["metadata"]["namespace"] == plan.NAMESPACE
    assert models["spec"]["accessModes"] == ["ReadWriteOnce"] and models["spec"]["storageClassName"] == "standard"
    # The operator creates the artifact claim the same way (local-path offers ReadWriteOnce only).
    assert f"PersistentVolumeClaim/{values['config']['artifactPvc']}" not in store
    assert values["config"]["createArtifactPvc"] is True
    assert values["config"]["artifactPvcAccessMode"] == "ReadWriteOnce"
    assert values["config"]["artifactStorageClass"] == "standard"
    loader = store[f"Pod/{plan.LOADER_POD}"]["spec"]
    assert loader["nodeSelector"] == label
    assert loader["containers"][0]["image"] == s.image("optimizer")
    assert loader["containers"][0]["imagePullPolicy"] == "IfNotPresent"
    assert loader["volumes"][0]["persistentVolumeClaim"]["claimName"] == "flotilla-models"

    # The SmallModel (the process-node demo's) reads the file the copy step writes.
    model = docs(REPO_ROOT / "examples" / "01-smollm2" / "smallmodel.yaml")[0]
    assert model["metadata"]["name"] == plan.MODEL
    assert model["spec"]["source"]["uri"] == f"pvc://flotilla-models/smollm2/{plan.WEIGHTS_NAME}"
    assert "gpu" not in model["spec"]["serving"]  # served on the kind worker's CPU


# --- the checks before anything runs -----------------------------------------------------------


def test_docker_errors_are_one_line() -> None:
    assert plan.docker_error(0, "") is None
    missing = plan.docker_error(None, "")
    assert missing and missing.startswith("kind needs a running Docker engine: no `docker` on PATH")
    down = plan.docker_error(1, "Client: ...\nCannot connect to the Docker daemon at unix:///var/run/docker.sock.\n")
    assert down and "\n" not in down
    assert "`docker info` failed: Cannot connect to the Docker daemon" in down and "make demo" in down


def fake_docker(directory: Path, script: str) -> Path:
    directory.mkdir(exist_ok=True)
    docker = directory / "docker"
    docker.write_text(f"#!/bin/sh\n{script}\n")
    docker.chmod(0o755)
    return directory


def test_check_docker_runs_docker_info(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(KindDemoError, match="no `docker` on PATH"):
        check_docker()
    bin_ = fake_docker(tmp_path / "bin", 'echo "Cannot connect to the Docker daemon" >&2; exit 1')
    monkeypatch.setenv("PATH", str(bin_))
    with pytest.raises(KindDemoError, match="`docker info` failed: Cannot connect to the Docker daemon"):
        check_docker()
    monkeypatch.setenv("PATH", str(fake_docker(tmp_path / "ok", 'test "$1" = info')))
    check_docker()


def test_make_kind_demo_without_docker_ends_in_one_line(tmp_path: Path) -> None:
    """The real entry point (`python -m kind`, what `make kind-demo` runs) with a docker whose
    engine is down: the last line is the cause, nothing was created."""
    bin_ = fake_docker(
        tmp_path / "bin", 'echo "Cannot connect to the Docker daemon at unix:///var/run/docker.sock" >&2; exit 1'
    )
    env = {
        **os.environ,
        "PATH": f"{bin_}:{os.environ['PATH']}",
        "PYTHONPATH": f"{REPO_ROOT / 'e2e'}:{REPO_ROOT / 'operator'}",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "kind"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: kind needs a running Docker engine: `docker info` failed: Cannot connect"), last
    assert "==> [1/" not in proc.stdout  # no step ran
    assert "[cluster-binaries]" not in proc.stdout  # checked before building kind or helm


def test_missing_archives_name_make_images(settings: plan.Settings) -> None:
    images = settings.repo / "dist" / "images"
    images.mkdir(parents=True)
    (images / "operator.tar").write_bytes(b"")
    (images / "gateway.tar").write_bytes(b"")
    assert plan.missing_archives(settings) == (
        "dist/images/optimizer.tar, dist/images/triton.tar missing: build the images first with `make images`"
    )
    for name in plan.IMAGES:
        (images / f"{name}.tar").write_bytes(b"")
    assert plan.missing_archives(settings) is None


def archive(path: Path, member: str, doc: Any) -> Path:
    with tarfile.open(path, "w") as tar:
        data = json.dumps(doc).encode()
        info = tarfile.TarInfo("oci-layout" if member == "index.json" else "repositories")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
        info = tarfile.TarInfo(member)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return path


def test_archive_names_oci_and_docker(settings: plan.Settings, tmp_path: Path) -> None:
    wanted = settings.image("operator")
    oci = archive(
        tmp_path / "oci.tar",
        "index.json",
        {"schemaVersion": 2, "manifests": [{"annotations": {"org.opencontainers.image.ref.name": wanted}}]},
    )
    assert archive_names(oci) == [wanted]
    assert plan.archive_mismatch(settings, "operator", archive_names(oci)) is None
    docker = archive(tmp_path / "docker.tar", "manifest.json", [{"RepoTags": [wanted]}])
    assert archive_names(docker) == [wanted]
    tag_only = archive(
        tmp_path / "tag.tar",
        "index.json",
        {"manifests": [{"annotations": {"org.opencontainers.image.ref.name": "0.1.0"}}]},
    )
    error = plan.archive_mismatch(settings, "operator", archive_names(tag_only))
    assert error == (
        f"dist/images/operator.tar names 0.1.0, not {wanted}: "
        "the nodes would try to pull it; rebuild with `make images`"
    )
    (tmp_path / "junk.tar").write_bytes(b"not a tar")
    with pytest.raises(KindDemoError, match="not a readable image archive"):
        archive_names(tmp_path / "junk.tar")


def test_node_image_mismatch(settings: plan.Settings) -> None:
    assert plan.node_image_mismatch(settings, [settings.node_image] * 2) is None
    error = plan.node_image_mismatch(settings, [settings.node_image, "kindest/node:v1.35.0"])
    assert error and "kindest/node:v1.35.0" in error and "KIND_NODE_IMAGE" in error


# --- CI ----------------------------------------------------------------------------------------


def test_kind_workflow_runs_make_images_then_make_kind_demo() -> None:
    workflow = yaml.safe_load((REPO_ROOT / ".github" / "workflows" / "kind.yml").read_text())
    on = workflow[True]  # YAML 1.1 reads the key `on` as True
    assert set(on) == {"pull_request", "push", "workflow_dispatch"} and on["push"]["branches"] == ["main"]
    steps = workflow["jobs"]["kind-demo"]["steps"]
    uses = [s["uses"].split("@")[0] for s in steps if "uses" in s]
    assert uses[:3] == ["actions/checkout", "actions/setup-python", "actions/setup-go"]
    assert "actions/upload-artifact" in uses
    script = [s.get("run", "") for s in steps]
    images = next(i for i, r in enumerate(script) if "make images" in r)
    demo = next(i for i, r in enumerate(script) if r.startswith("make kind-demo"))
    assert images < demo
    upload = next(s for s in steps if s.get("uses", "").startswith("actions/upload-artifact"))
    assert upload["if"] == "failure()"
