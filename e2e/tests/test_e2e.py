"""The whole path on this machine: kubectl apply -> the real optimizer Job on SmolLM2-135M ->
the real tritonserver serving it on the process node -> answers through the Service's
endpoints. Then a serving change rolls with no failed request, an unreachable budget leaves
the stable revision serving, and deleting the model stops its processes.

The tests of this module run in order and share one model (`chat`), as a user would.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psutil
import pytest
import yaml

import processnode
from demo.client import generate, ready_endpoints
from demo.context import EXAMPLE, REPO
from flotilla.api.v1alpha1 import LABEL_MODEL
from flotilla.testing import OperatorProcess
from localcluster.cluster import Cluster, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.e2e]
MODEL = "chat"
QUESTION = "What is the capital of France?"


@dataclass
class Stack:
    cluster: Cluster
    namespace: str
    node: processnode.ProcessNode
    operator: OperatorProcess

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        return self.cluster.kubectl(*args, input=input, check=check).stdout

    def get(self, *args: str) -> Any:
        proc = self.cluster.kubectl("get", *args, "-n", self.namespace, "-o", "json", check=False)
        return json.loads(proc.stdout) if proc.returncode == 0 else None

    def status(self, name: str = MODEL) -> dict[str, Any]:
        return dict((self.get("smallmodel", name) or {}).get("status", {}))

    def condition(self, type_: str, name: str = MODEL) -> dict[str, Any]:
        return next((c for c in self.status(name).get("conditions", []) if c["type"] == type_), {})

    def endpoints(self) -> list[str]:
        return ready_endpoints(self.get("endpointslices", "-l", f"kubernetes.io/service-name={MODEL}") or {})

    def ask(self, prompt: str = QUESTION, max_tokens: int = 24) -> str:
        url = wait_for(self.endpoints, timeout=60, what="a ready endpoint of the model's Service")[0]
        return generate(url, MODEL, prompt, max_tokens)


def smallmodel(spec_overrides: dict[str, Any] | None = None, name: str = MODEL) -> str:
    body = yaml.safe_load((EXAMPLE / "smallmodel.yaml").read_text())
    body["metadata"]["name"] = name
    for key, value in (spec_overrides or {}).items():
        body["spec"][key] = {**body["spec"].get(key, {}), **value} if isinstance(value, dict) else value
    return yaml.safe_dump(body)


@pytest.fixture(scope="module")
def stack(
    cluster: Cluster, process_node: processnode.ProcessNode, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", "crd/smallmodels.flotilla.dev", "--timeout=60s")
    namespace = f"e2e-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", namespace)
    wait_for(
        lambda: cluster.kubectl("get", "sa", "default", "-n", namespace, check=False).returncode == 0,
        timeout=60,
        what="the namespace's default ServiceAccount",
    )
    selector = json.dumps(process_node.node_selector)
    operator = OperatorProcess(
        cluster.kubeconfig,
        tmp_path_factory.mktemp("e2e") / "operator.log",
        [namespace],
        {
            "FLOTILLA_JOB_NODE_SELECTOR": selector,
            "FLOTILLA_SERVING_NODE_SELECTOR": selector,
            "FLOTILLA_HF_OFFLINE": "1",
            "FLOTILLA_RESYNC_SECONDS": "5",
            # A quarter of the held-out sentences and two timing rounds: the same recipes and
            # gate, a CI-sized bill (the demo evaluates on all of them).
            "FLOTILLA_OPTIMIZER_EXTRA_ARGS": "--eval-limit,64,--speed-rounds,2",
        },
    )
    operator.start()
    stack = Stack(cluster, namespace, process_node, operator)
    stack.kubectl("apply", "-n", namespace, "-f", str(EXAMPLE / "model-store.yaml"))
    wait_for(lambda: _job_complete(stack, "load-smollm2"), timeout=300, what="the model weights copied into the claim")
    yield stack
    cluster.kubectl("delete", "smallmodels", "--all", "-n", namespace, "--timeout=120s", check=False)
    operator.stop()
    cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def _job_complete(stack: Stack, name: str) -> bool:
    job = stack.get("job", name) or {}
    conditions = {c["type"]: c["status"] for c in job.get("status", {}).get("conditions", [])}
    assert conditions.get("Failed") != "True", f"Job {name} failed"
    return conditions.get("Complete") == "True"


def wait_condition(
    stack: Stack, type_: str, status: str, timeout: float, name: str = MODEL, fail_on: set[str] | None = None
) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        cond = stack.condition(type_, name)
        if fail_on and cond.get("reason") in fail_on:
            pytest.fail(f"{name} {type_}: {cond.get('reason')}: {cond.get('message')}\n{stack.operator.log()[-2000:]}")
        return cond if cond.get("status") == status else None

    return wait_for(check, timeout=timeout, what=f"{name} {type_}={status}", interval=2)


FAILURES = {"AccuracyBudgetExceeded", "OptimizerError", "SourceUnavailable", "UnsupportedModel", "InvalidArguments"}


@pytest.mark.timeout(3000)  # a cold optimization of SmolLM2 on 2 cores
def test_apply_to_answer(stack: Stack) -> None:
    started = time.monotonic()
    stack.kubectl("apply", "-n", stack.namespace, "-f", "-", input=smallmodel())
    wait_condition(stack, "Optimized", "True", timeout=2400, fail_on=FAILURES)
    wait_condition(stack, "Ready", "True", timeout=600, fail_on={"Unschedulable"})
    answer = stack.ask()
    print(f"kubectl apply -> first answer: {time.monotonic() - started:.0f}s (cold: optimization included)")
    assert "paris" in answer.lower(), answer


def test_artifact_accuracy_is_within_the_budget(stack: Stack) -> None:
    spec = yaml.safe_load(smallmodel())["spec"]
    budget = spec["optimize"]["accuracyBudget"]
    artifact = stack.status()["artifact"]
    accuracy = artifact["accuracy"]
    assert accuracy["top1Agreement"] >= 1 - budget["maxTop1Disagreement"]
    assert accuracy["perplexityRatio"] <= 1 + budget["maxPerplexityIncrease"]
    assert artifact["precision"] in {"int8", "int4", "fp32"} and artifact["sizeBytes"] > 0
    # The optimizer really ran as a pod of this node: its log is where the node put it.
    logs = list((stack.node.state_dir / "logs").glob(f"{stack.namespace}_{MODEL}-opt-*_optimizer.log"))
    assert logs and "evaluate" in logs[0].read_text()


class Sampler(threading.Thread):
    """One generate request a second through the Service's current endpoints, like a client
    re-resolving the Service; records every failure."""

    def __init__(self, stack: Stack) -> None:
        super().__init__(daemon=True)
        self.stack, self.stop_flag = stack, threading.Event()
        self.ok, self.failures = 0, []  # type: tuple[int, list[str]]
        self.backends: set[str] = set()

    def run(self) -> None:
        while not self.stop_flag.is_set():
            try:
                urls = self.stack.endpoints()
                if not urls:
                    raise RuntimeError("no ready endpoint")
                url = urls[self.ok % len(urls)]
                generate(url, MODEL, "Say hello.", 4)
                self.ok += 1
                self.backends.add(url)
            except Exception as err:
                self.failures.append(f"{time.strftime('%H:%M:%S')} {type(err).__name__}: {err}")
            self.stop_flag.wait(1.0)


def _serving_pids(stack: Stack, uids: set[str]) -> set[int]:
    """tritonserver processes of these pods (the node runs each pod under <state>/pods/<uid>/)."""
    pids = set()
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if "tritonserver" in cmdline and any(f"/pods/{uid}/" in cmdline for uid in uids):
            pids.add(proc.pid)
    return pids


def test_serving_change_rolls_with_no_failed_request(stack: Stack) -> None:
    before = stack.status()["revisions"]["stable"]
    sampler = Sampler(stack)
    sampler.start()
    try:
        time.sleep(3)
        stack.kubectl("apply", "-n", stack.namespace, "-f", "-", input=smallmodel({"serving": {"maxBatchSize": 8}}))

        def promoted() -> bool:
            revisions = stack.status().get("revisions", {})
            return revisions.get("stable") not in {None, before} and not revisions.get("canary")

        wait_for(promoted, timeout=600, what="the new revision promoted", interval=2)
        wait_for(
            lambda: not stack.get("deployment", f"{MODEL}-{before[:8]}"), timeout=120, what="the old revision removed"
        )
        time.sleep(8)  # keep sampling past the old pods' preStop and shutdown
    finally:
        sampler.stop_flag.set()
        sampler.join(timeout=150)
    assert sampler.failures == [], sampler.failures
    assert sampler.ok >= 10, sampler.ok
    assert len(sampler.backends) >= 2, sampler.backends  # answered by both revisions
    assert stack.condition("Ready")["status"] == "True"


@pytest.mark.timeout(2400)
def test_unreachable_budget_keeps_the_stable_revision_serving(stack: Stack) -> None:
    stable = stack.status()["revisions"]["stable"]
    impossible = {
        "optimize": {"precision": "int8", "accuracyBudget": {"maxTop1Disagreement": 0.0, "maxPerplexityIncrease": 0.0}}
    }
    stack.kubectl("apply", "-n", stack.namespace, "-f", "-", input=smallmodel(impossible))
    optimized = wait_condition(stack, "Optimized", "False", timeout=1800, fail_on={"OptimizerError"})
    wait_for(
        lambda: stack.condition("Optimized").get("reason") == "AccuracyBudgetExceeded",
        timeout=1800,
        what="AccuracyBudgetExceeded",
        interval=2,
    )
    optimized = stack.condition("Optimized")
    assert "int8" in optimized["message"]
    ready = stack.condition("Ready")
    assert ready["status"] == "False" and f"revision {stable} keeps serving" in ready["message"]
    assert stack.condition("Degraded")["status"] == "True"
    assert stack.status()["revisions"]["stable"] == stable
    assert "paris" in stack.ask().lower()  # the stable revision still answers


def test_delete_stops_the_model_processes(stack: Stack) -> None:
    pods = stack.get("pods", "-l", f"{LABEL_MODEL}={MODEL},flotilla.dev/component=server")
    uids = {p["metadata"]["uid"] for p in pods["items"]}
    assert _serving_pids(stack, uids), "no tritonserver process of the model is running"
    stack.kubectl("delete", "smallmodel", MODEL, "-n", stack.namespace, "--timeout=120s")
    # The finalizer holds the model until its pods are gone, so this holds at once.
    assert not _serving_pids(stack, uids)
    pods = stack.get("pods", "-l", f"{LABEL_MODEL}={MODEL}")
    assert pods is not None and pods["items"] == []
