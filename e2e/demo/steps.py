"""The demo's steps. Each takes the shared Demo context; a DemoError ends the demo with its
one-line cause (the cluster and processes stay up to look around)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import processnode
from flotilla.testing import OperatorProcess
from localcluster import cluster as localcluster

from .client import generate, ready_endpoints
from .context import EXAMPLE, MODEL, NAMESPACE, REPO, Demo

PROMPTS = [
    "What is the capital of France?",
    "Name three primary colors.",
    "Write one sentence about the sea.",
]
NODE_SELECTOR = json.dumps({processnode.NODE_LABEL: "true"})


class DemoError(RuntimeError):
    pass


def say(message: str) -> None:
    print(f"    {message}", flush=True)


def wait(
    what: str, check: Callable[[], Any], timeout: float, every: float = 1.0, tick: Callable[[], None] | None = None
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        if tick:
            tick()
        time.sleep(every)
    raise DemoError(f"timed out after {timeout:.0f}s waiting for {what}")


# --- infrastructure ---------------------------------------------------------------------


def cluster(demo: Demo) -> None:
    try:
        demo.cluster = localcluster.ensure_up(demo.settings)
    except localcluster.ClusterError as err:
        raise DemoError(str(err)) from err
    say(f"API server {demo.cluster.server_version} at {demo.settings.api_url}")


def _node_ready(demo: Demo) -> bool:
    node = demo.get("node", processnode.DEFAULT_NAME)
    conditions = (node or {}).get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def process_node(demo: Demo) -> None:
    info = demo.node_state / "agent.json"
    if info.is_file() and _node_ready(demo):
        say(f"reusing node {processnode.DEFAULT_NAME} (agent pid {json.loads(info.read_text()).get('pid')})")
        return
    processnode.stop_detached(demo.node_state)
    # Advertise more than this 2-core machine has: the optimizer Job and a rolling update of
    # Triton must fit side by side; nothing enforces limits on local processes anyway.
    node = processnode.start(demo.kube, cpu="16", memory="64Gi", detach=True)
    if not node.endpoints_work:
        say(f"warning: {node.pod_network}: Services get no endpoints here (see e2e/processnode/README.md)")
    say(f"node {node.name} Ready, pods on {node.pod_network}, logs in {node.state_dir / 'logs'}")


def operator(demo: Demo) -> None:
    demo.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    demo.kubectl("wait", "--for=condition=Established", "crd/smallmodels.flotilla.dev", "--timeout=60s")
    demo.kubectl("create", "namespace", NAMESPACE, check=False)
    op = OperatorProcess(
        demo.kube.kubeconfig,
        demo.operator_log,
        [NAMESPACE],
        {
            "FLOTILLA_JOB_NODE_SELECTOR": NODE_SELECTOR,
            "FLOTILLA_SERVING_NODE_SELECTOR": NODE_SELECTOR,
            "FLOTILLA_HF_OFFLINE": "1",
            "FLOTILLA_RESYNC_SECONDS": "10",
        },
    )
    OperatorProcess.stop_detached(op.pid_file)  # a fresh operator: picks up code changes
    op.start(detach=True)
    wait("the operator to start", lambda: _metrics_up(op), timeout=60)
    say(f"operator pid {op.pid} watching {NAMESPACE}; log {demo.operator_log}; metrics :{op.metrics_port}")


def _metrics_up(op: OperatorProcess) -> bool:
    if not op.running():
        raise DemoError(f"the operator exited: {op.log()[-1500:]}")
    try:
        return "flotilla_reconcile_total" in op.metrics()
    except OSError:
        return False


# --- the model --------------------------------------------------------------------------


def model_store(demo: Demo) -> None:
    demo.kubectl("apply", "-n", NAMESPACE, "-f", str(EXAMPLE / "model-store.yaml"))

    def loaded() -> bool:
        job = demo.get("job", "load-smollm2", "-n", NAMESPACE) or {}
        conditions = {c["type"]: c["status"] for c in job.get("status", {}).get("conditions", [])}
        if conditions.get("Failed") == "True":
            raise DemoError("the load-smollm2 Job failed: kubectl describe job load-smollm2 -n flotilla-demo")
        return conditions.get("Complete") == "True"

    wait("the weights to be copied into the claim", loaded, timeout=300)
    say("flotilla-models holds smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")


def apply_model(demo: Demo) -> None:
    demo.timings["applied"] = time.monotonic()
    say(demo.kubectl("apply", "-n", NAMESPACE, "-f", str(EXAMPLE / "smallmodel.yaml")).strip())


def _status(demo: Demo) -> dict[str, Any]:
    return dict((demo.get("smallmodel", MODEL, "-n", NAMESPACE) or {}).get("status", {}))


def _condition(demo: Demo, type_: str) -> dict[str, Any]:
    return next((c for c in _status(demo).get("conditions", []) if c["type"] == type_), {})


class LogTail:
    """Prints the interesting new lines of the newest log file matching a glob (a pod's
    container log), ignoring files older than the tail itself (an earlier run's pod)."""

    def __init__(self, directory: Path, pattern: str, keep: Callable[[str], bool]) -> None:
        self.directory, self.pattern, self.keep, self.offset = directory, pattern, keep, 0
        self.path: Path | None = None
        self.since = time.time()

    def __call__(self) -> None:
        fresh = [p for p in self.directory.glob(self.pattern) if p.stat().st_mtime >= self.since]
        files = sorted(fresh, key=lambda p: p.stat().st_mtime)
        if not files:
            return
        if files[-1] != self.path:
            self.path, self.offset = files[-1], 0
        with files[-1].open(errors="replace") as log:
            log.seek(self.offset)
            for line in log.read().splitlines():
                if line.strip() and self.keep(line):
                    print(f"    | {line[:160]}", flush=True)
            self.offset = log.tell()


def _optimizer_line(line: str) -> bool:
    """The optimizer's own progress lines, and anything that looks like a failure."""
    return line.startswith("[optimize") or "Error" in line or "Traceback" in line


def _triton_line(line: str) -> bool:
    return "successfully loaded" in line or "Started" in line or line.startswith("E")


def wait_optimized(demo: Demo) -> None:
    tail = LogTail(demo.node_state / "logs", f"{NAMESPACE}_{MODEL}-opt-*_optimizer.log", _optimizer_line)

    def optimized() -> bool:
        cond = _condition(demo, "Optimized")
        if cond.get("status") == "False" and cond.get("reason") not in {"Optimizing", "Unschedulable", None}:
            raise DemoError(f"optimization failed: {cond['reason']}: {cond.get('message', '')}")
        return cond.get("status") == "True"

    wait("the artifact", optimized, timeout=3600, every=2, tick=tail)
    tail()
    say(f"Optimized: {_condition(demo, 'Optimized').get('message')}")


def wait_ready(demo: Demo) -> None:
    tail = LogTail(demo.node_state / "logs", f"{NAMESPACE}_{MODEL}-*_triton.log", _triton_line)

    def ready() -> bool:
        cond = _condition(demo, "Ready")
        if cond.get("reason") in {"Unschedulable", "AccuracyBudgetExceeded", "OptimizerError"}:
            raise DemoError(f"not serving: {cond['reason']}: {cond.get('message', '')}")
        return cond.get("status") == "True"

    wait("Ready", ready, timeout=600, every=2, tick=tail)
    demo.timings["ready"] = time.monotonic()
    say(f"Ready: {_condition(demo, 'Ready').get('message')}")


# --- using it ---------------------------------------------------------------------------


def endpoints(demo: Demo, service: str = MODEL) -> list[str]:
    return ready_endpoints(
        demo.get("endpointslices", "-n", NAMESPACE, "-l", f"kubernetes.io/service-name={service}") or {}
    )


def ask(demo: Demo) -> None:
    urls = wait("an endpoint of Service smollm2", lambda: endpoints(demo), timeout=60)
    say(f"Service {MODEL} endpoints: {', '.join(urls)}")
    for number, prompt in enumerate(PROMPTS):
        started = time.monotonic()
        try:
            answer = generate(urls[0], MODEL, prompt)
        except (urllib.error.URLError, TimeoutError, KeyError) as err:
            raise DemoError(f"generate failed: {err}") from err
        if number == 0 and "applied" in demo.timings:
            demo.timings["first_answer"] = time.monotonic()
        print(f"\n    Q: {prompt}\n    A: {answer.strip()}   ({time.monotonic() - started:.1f}s)", flush=True)


# --- the gateway --------------------------------------------------------------------------


def stop_gateway(demo: Demo) -> int | None:
    return OperatorProcess.stop_detached(demo.state_dir / "gateway.pid")  # any process by its pid file


def gateway(demo: Demo) -> None:
    """`flotilla gateway` as a local process (in a cluster: its Deployment in the chart)."""
    stop_gateway(demo)  # a fresh one: picks up code changes
    port_file = demo.state_dir / "gateway.port"
    port_file.unlink(missing_ok=True)
    env = {
        **os.environ,
        "KUBECONFIG": str(demo.kube.kubeconfig),
        "FLOTILLA_GATEWAY_NAMESPACES": NAMESPACE,
        "FLOTILLA_GATEWAY_HOST": "127.0.0.1",
        "FLOTILLA_GATEWAY_DRAIN_SECONDS": "0",
    }
    argv = [sys.executable, "-m", "flotilla", "gateway", "--port", "0", "--port-file", str(port_file)]
    with (demo.state_dir / "gateway.log").open("ab") as log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    (demo.state_dir / "gateway.pid").write_text(str(proc.pid))

    def ready() -> bool:
        if proc.poll() is not None:
            raise DemoError(f"the gateway exited; see {demo.state_dir / 'gateway.log'}")
        if not port_file.exists() or not port_file.read_text():
            return False
        try:
            with urllib.request.urlopen(f"{demo.gateway_url}/readyz", timeout=2) as resp:
                return int(resp.status) == 200
        except OSError:
            return False

    wait("the gateway to list the models", ready, timeout=60)
    say(f"gateway pid {proc.pid} at {demo.gateway_url}/v1 (OpenAI API); log {demo.state_dir / 'gateway.log'}")


def ask_gateway(demo: Demo) -> None:
    """One question through the gateway with the official openai client, streamed."""
    from openai import OpenAI, OpenAIError

    client = OpenAI(base_url=f"{demo.gateway_url}/v1", api_key="not-needed")
    question = PROMPTS[0]
    print(f"\n    Q: {question}\n    A: ", end="", flush=True)
    started = time.monotonic()
    first: float | None = None
    try:
        stream = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": question}], max_tokens=32, stream=True
        )
        for chunk in stream:
            text = chunk.choices[0].delta.content if chunk.choices else None
            if text:
                first = first or time.monotonic()
                print(text, end="", flush=True)
    except OpenAIError as err:
        raise DemoError(f"the gateway answered with an error: {err}") from err
    total = time.monotonic() - started
    ttft = f"{first - started:.2f}s" if first else "no token"
    print(f"\n    (streamed: first token after {ttft}, whole answer {total:.1f}s)", flush=True)


def _fmt(value: Any, spec: str) -> str:
    return format(value, spec) if isinstance(value, int | float) else "?"


def report(demo: Demo) -> None:
    print(demo.kubectl("get", "smallmodels", "-n", NAMESPACE, "-o", "wide"), flush=True)
    artifact = _status(demo).get("artifact", {})
    accuracy, speedup = artifact.get("accuracy", {}), artifact.get("speedup", {})
    say(f"artifact {artifact.get('key', '?')[:8]}: {artifact.get('precision')} via {artifact.get('recipe')}")
    say(
        f"size {_fmt(artifact.get('sizeBytes', 0) / 1e6, '.0f')} MB ({_fmt(artifact.get('sizeRatio'), '.2f')}x of fp32)"
    )
    say(
        f"speedup vs fp32: prefill {_fmt(speedup.get('prefill'), '.2f')}x, decode {_fmt(speedup.get('decode'), '.2f')}x"
    )
    top1, ppl = _fmt(accuracy.get("top1Agreement"), ".3f"), _fmt(accuracy.get("perplexityRatio"), ".3f")
    say(f"accuracy vs fp32: top-1 agreement {top1}, perplexity ratio {ppl}")
    if "first_answer" in demo.timings:
        say(f"kubectl apply -> first answer: {demo.timings['first_answer'] - demo.timings['applied']:.0f}s")


def next_steps(demo: Demo) -> None:
    kubeconfig = demo.settings.kubeconfig
    print(
        f"""
Look around:
  export KUBECONFIG={kubeconfig}
  kubectl get smallmodels,jobs,deployments,pods,services -n {NAMESPACE}
  kubectl describe smallmodel {MODEL} -n {NAMESPACE}
  kubectl get events -n {NAMESPACE} --sort-by=.lastTimestamp
  ls {demo.node_state / "logs"}          # container logs (the process node writes files)
  cat {demo.operator_log}
Through the gateway (OpenAI API), from Python:
  from openai import OpenAI
  client = OpenAI(base_url="{demo.gateway_url}/v1", api_key="not-needed")
  client.chat.completions.create(model="{MODEL}", messages=[{{"role": "user", "content": "Hi"}}])
Stop everything:
  make demo-down
"""
    )


def down(demo: Demo) -> None:
    pid = stop_gateway(demo)
    print(f"[demo] gateway {f'stopped (pid {pid})' if pid else 'not running'}")
    pid = OperatorProcess.stop_detached(demo.state_dir / "operator.pid")
    print(f"[demo] operator {f'stopped (pid {pid})' if pid else 'not running'}")
    pid = processnode.stop_detached(demo.node_state)
    print(f"[demo] process node {f'stopped (pid {pid})' if pid else 'not running'}")
    localcluster.down(demo.settings)
