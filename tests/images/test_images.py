"""The CPU images of `make images` (dist/images/<name>.tar), unpacked from their archives and
run with runc the way the chart and the operator run them:
- the operator image reconciles a SmallModel on the local control plane (its Job is created);
- the optimizer image optimizes the tiny test Llama into a bind-mounted directory;
- the Triton image serves that artifact (`tritonserver` + the serving pod's arguments) and
  answers a generate request.
The archives themselves: OCI layout, ref name, labels, non-root user, no torch where none belongs.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from flotilla.api.v1alpha1 import ArtifactSummary
from flotilla.local.triton import free_port
from flotilla.resources.serving import MODEL_REPOSITORY
from flotilla.triton import config as triton_config
from localcluster import images
from localcluster.cluster import Cluster, wait_for
from tests.unit.optimize_fixtures import tiny_llama

from .conftest import Container, bundle_of

CRD = Path(__file__).resolve().parents[2] / "crds" / "smallmodels.flotilla.dev.yaml"
NO_NODE = {"flotilla.dev/test-node": "none"}
pytestmark = pytest.mark.images


def archive_documents(archive: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    with tarfile.open(archive) as outer:

        def blob(digest: str) -> Any:
            member = outer.extractfile("blobs/sha256/" + digest.removeprefix("sha256:"))
            assert member is not None
            return json.load(member)

        member = outer.extractfile("index.json")
        assert member is not None
        index = json.load(member)
        manifest = blob(index["manifests"][0]["digest"])
        return index, manifest, blob(manifest["config"]["digest"])


@pytest.mark.parametrize("name", images.IMAGES)
def test_archive_is_an_oci_layout_with_ref_labels_and_a_non_root_user(
    built: dict[str, images.Built], name: str
) -> None:
    image = built[name]
    index, manifest, config = archive_documents(image.archive)
    version = images.chart_version()
    ref = f"ghcr.io/flotilla-dev/flotilla-{name}:{version}"
    assert index["manifests"][0]["annotations"][images.REF_NAME] == ref == image.ref
    assert index["manifests"][0]["digest"] == image.digest
    labels = config["config"]["Labels"]
    assert labels["org.opencontainers.image.version"] == version
    assert {"source", "revision", "created"} <= {k.rsplit(".", 1)[1] for k in labels}
    assert config["config"]["User"] == "1000:1000"
    assert len(config["rootfs"]["diff_ids"]) == len(manifest["layers"])
    digests = (image.archive.parent / "digests.txt").read_text()
    assert f"{name} {ref} {image.digest} " in digests


@pytest.mark.parametrize("name", ["operator", "gateway", "triton"])  # the optimizer's 4.4 GB: by hand
def test_skopeo_reads_and_copies_the_archive(name: str, built: dict[str, images.Built], tmp_path: Path) -> None:
    """The release pushes with `skopeo copy oci-archive:...`: skopeo (Debian's) must accept the
    archive, see the tag's labels and user, and copy it with every digest checked."""
    skopeo = shutil.which("skopeo")
    assert skopeo, "skopeo not found: run `make image-tools` (apt-get install, as root)"
    archive = f"oci-archive:{built[name].archive}"
    inspected = subprocess.run([skopeo, "inspect", "--config", archive], capture_output=True, text=True, check=False)
    assert inspected.returncode == 0, inspected.stderr
    config = json.loads(inspected.stdout)["config"]
    assert config["User"] == "1000:1000" and config["Labels"]["org.opencontainers.image.version"]
    copied = subprocess.run(
        [skopeo, "copy", "--quiet", archive, f"dir:{tmp_path / 'copy'}"], capture_output=True, text=True, check=False
    )
    assert copied.returncode == 0, copied.stderr
    assert (tmp_path / "copy" / "manifest.json").is_file()


def test_only_the_optimizer_carries_torch_and_cuda(built: dict[str, images.Built]) -> None:
    """Layer by layer: the big one (torch + nvidia-*) is the optimizer's own."""
    sizes = {name: b.uncompressed for name, b in built.items()}
    assert sizes["optimizer"] > 4e9, sizes
    for name in ("operator", "gateway", "triton"):
        assert sizes[name] < 1.2e9, sizes
    assert len({b.layers[0].digest for b in built.values()}) == 1  # one Debian base for all


def test_the_same_inputs_give_the_same_manifest_digest(built: dict[str, images.Built], tmp_path: Path) -> None:
    """A second build from the cached layers into another directory: byte-identical archive."""
    again = images.build_images(
        ["operator"], images.chart_version(), images.git("rev-parse", "HEAD") or "dev", tmp_path
    )
    assert again[0].digest == built["operator"].digest
    assert (tmp_path / "operator.tar").read_bytes() == built["operator"].archive.read_bytes()


def install_crd(cluster: Cluster) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))

    def established() -> bool:
        crd = cluster.kubectl_json("get", "crd", "smallmodels.flotilla.dev")
        return any(c["type"] == "Established" and c["status"] == "True" for c in crd["status"].get("conditions", []))

    wait_for(established, timeout=60, what="the SmallModel CRD established")


def test_operator_image_reconciles_a_smallmodel(
    built: dict[str, images.Built], bundle_root: Path, cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    install_crd(cluster)
    bundle, config = bundle_of(built, bundle_root, "operator")
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_bytes(cluster.kubeconfig.read_bytes())
    kubeconfig.chmod(0o644)
    # The chart's Deployment sets only args; the image's entrypoint is `flotilla`.
    args = [*config["config"]["Entrypoint"], "run", "--liveness", "", "--namespace", namespace]
    env = {
        "KUBECONFIG": "/var/run/flotilla/kubeconfig",
        "FLOTILLA_METRICS_PORT": str(free_port()),
        "FLOTILLA_JOB_NODE_SELECTOR": json.dumps(NO_NODE),
        "FLOTILLA_RESYNC_SECONDS": "5",
    }
    container = Container(bundle, config, args, env, [(kubeconfig, "/var/run/flotilla/kubeconfig", False)]).start()
    try:
        body = {
            "apiVersion": "flotilla.dev/v1alpha1",
            "kind": "SmallModel",
            "metadata": {"name": "chat"},
            "spec": {"source": {"uri": "hf://HuggingFaceTB/SmolLM2-135M-Instruct", "revision": "main"}},
        }
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(body))

        def job() -> dict[str, Any] | None:
            if not container.running():
                pytest.fail(f"the operator container exited:\n{container.log()[-4000:]}", pytrace=False)
            items = cluster.kubectl_json("get", "jobs", "-n", namespace)["items"]
            return items[0] if items else None

        created = wait_for(job, timeout=120, what="the operator container to create the model's Job")
        pod = created["spec"]["template"]["spec"]["containers"][0]
        assert pod["command"] == ["python", "-m", "flotilla", "optimize"]
        assert pod["image"] == f"ghcr.io/flotilla-dev/flotilla-optimizer:{images.chart_version()}"
        cluster.kubectl("delete", "smallmodels", "--all", "-n", namespace, "--timeout=60s", check=False)
    finally:
        container.stop()
    assert "Traceback" not in container.log(), container.log()[-4000:]


@pytest.fixture(scope="module")
def optimized(built: dict[str, images.Built], bundle_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The optimizer image's artifact of the tiny Llama, run as the Job runs it."""
    work = tmp_path_factory.mktemp("optimizer")
    source = tiny_llama(work / "source" / "tiny")
    for path in [source.parent, *source.parent.rglob("*")]:  # readable by the image's user 1000
        path.chmod(0o755 if path.is_dir() else 0o644)
    out = work / "out"
    out.mkdir()
    out.chmod(0o777)
    bundle, config = bundle_of(built, bundle_root, "optimizer")
    args = ["python", "-m", "flotilla", "optimize",  # the Job's command
            "--source", "/src/tiny", "--task", "text-generation", "--name", "tiny", "--out", "/artifacts/key",
            "--precision", "fp32", "--eval-limit", "4", "--speed-rounds", "0",
            "--termination-message-path", "/artifacts/termination"]  # fmt: skip
    container = Container(bundle, config, args, {"HF_HUB_OFFLINE": "1"},
                          [(source.parent, "/src", False), (out, "/artifacts", True)]).start()  # fmt: skip
    code = container.wait(timeout=600)
    container.stop()
    log = container.log()
    shutil.rmtree(bundle, ignore_errors=True)  # 7 GB unpacked: not kept for the session
    assert code == 0, log[-6000:]
    summary = ArtifactSummary.from_termination_message((out / "termination").read_text())
    assert summary.ok, summary.message
    return out / "key"


def test_optimizer_image_writes_an_artifact(optimized: Path) -> None:
    version = optimized / "tiny" / "1"
    for name in ("model.onnx", "model.py", "flotilla.json", "tokenizer.json"):
        assert (version / name).is_file(), name
    assert json.loads((optimized / "manifest.json").read_text())["complete"] is True


def http(method: str, url: str, body: Any = None, timeout: float = 30) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read().decode()
            return int(resp.status), json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def test_triton_image_serves_the_artifact(
    built: dict[str, images.Built], bundle_root: Path, optimized: Path, tmp_path: Path
) -> None:
    # The operator's layout: <repo>/<name>/config.pbtxt (its ConfigMap) and 1/ (the artifact).
    repository = tmp_path / "models"
    model = repository / "tiny"
    (model / "1").mkdir(parents=True)
    for path in (optimized / "tiny" / "1").iterdir():
        (model / "1" / path.name).write_bytes(path.read_bytes())
    (model / "config.pbtxt").write_text(
        triton_config.render_model_config("text-generation", max_batch_size=4, intra_op_threads=1)
    )
    for path in [repository, model, model / "1", *model.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    bundle, config = bundle_of(built, bundle_root, "triton")
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    # The serving pod's command and arguments (flotilla.resources.serving), on loopback.
    args = ["tritonserver", f"--model-repository={MODEL_REPOSITORY}", "--model-control-mode=explicit",
            "--load-model=tiny", "--strict-readiness=true", "--metrics-config=summary_latencies=true",
            "--allow-metrics=true", f"--http-port={http_port}", f"--grpc-port={grpc_port}",
            f"--metrics-port={metrics_port}", "--http-address=127.0.0.1", "--grpc-address=127.0.0.1",
            "--metrics-address=127.0.0.1", "--exit-timeout-secs=5"]  # fmt: skip
    container = Container(bundle, config, args, binds=[(repository, MODEL_REPOSITORY, False)]).start()
    url = f"http://127.0.0.1:{http_port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if not container.running():
                pytest.fail(f"tritonserver exited:\n{container.log()[-6000:]}", pytrace=False)
            try:
                if http("GET", f"{url}/v2/models/tiny/ready", timeout=5)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"tritonserver not ready:\n{container.log()[-6000:]}", pytrace=False)
            time.sleep(1)
        status, answer = http("POST", f"{url}/v2/models/tiny/generate", {"text_input": "hello", "max_tokens": 4})
        assert status == 200, answer
        assert isinstance(answer["text_output"], str)
    finally:
        container.stop()


def test_gateway_image_starts(built: dict[str, images.Built], bundle_root: Path) -> None:
    """Its entrypoint and arguments as the chart gives them (`gateway`), here with --help: the
    gateway's imports resolve in an image without kopf or ML libraries."""
    bundle, config = bundle_of(built, bundle_root, "gateway")
    container = Container(bundle, config, ["flotilla", "gateway", "--help"]).start()
    code = container.wait(timeout=120)
    container.stop()
    assert code == 0, container.log()[-4000:]
    assert (bundle / "rootfs" / images.SITE / "aiohttp").is_dir()
    assert not (bundle / "rootfs" / images.SITE / "kopf").exists()


def test_operator_image_runs_the_fetch_init_container(built: dict[str, images.Built], bundle_root: Path) -> None:
    """The S3 store's fetch-artifact init container runs the operator image (artifact_fetch_image):
    its client and boto3 import there, and an unreachable store is its reason and exit code
    (12), not an ImportError."""
    bundle, config = bundle_of(built, bundle_root, "operator")
    args = ["python", "-m", "flotilla.objectstore", "fetch", "--key", "k" * 20, "--dest", "/tmp/artifact"]
    env = {
        "FLOTILLA_S3_ENDPOINT": f"http://127.0.0.1:{free_port()}",  # nothing listens there
        "FLOTILLA_S3_BUCKET": "artifacts",
        "FLOTILLA_S3_MAX_ATTEMPTS": "1",
        "FLOTILLA_S3_ACCESS_KEY_ID": "x",
        "FLOTILLA_S3_SECRET_ACCESS_KEY": "y",
    }
    container = Container(bundle, config, args, env).start()
    code = container.wait(timeout=120)
    container.stop()
    log = container.log()
    assert code == 12, log[-4000:]
    assert "StoreUnreachable" in log and "Traceback" not in log, log[-4000:]
    assert (bundle / "rootfs" / images.SITE / "boto3").is_dir()
