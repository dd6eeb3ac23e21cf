"""The whole path on this machine: kubectl apply -> the real optimizer Job on SmolLM2-135M ->
the real tritonserver serving it on the process node -> answers through the Service's
endpoints, and through the OpenAI-compatible gateway with the openai client. Then, under
open-loop load, a harmless serving change is promoted through the canary and a latency
regression is rolled back, with no failed request; the autoscaler adds a
replica when the load steps past one replica's capacity and removes it after the delay. With two
replicas under open-loop load (through the gateway and straight to the endpoints at once): one
pod's tritonserver SIGKILLed mid-answer loses no request through the gateway (a direct client
loses only what it sent the dead pod) and the node restarts it; kube-apiserver frozen for 30 s
fails no request on either path and the operator catches up. An unreachable budget leaves the
stable revision serving; deleting the model stops its processes.

The tests of this module run in order and share one model (`chat`), as a user would.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import psutil
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

import processnode
from demo.client import generate, ready_endpoints
from demo.context import EXAMPLE
from flotilla.api.v1alpha1 import COMPONENT_SERVER, LABEL_COMPONENT, LABEL_MODEL
from flotilla.gateway.testing import GatewayProcess
from flotilla.testing import OperatorProcess
from localcluster import procs
from localcluster.cluster import Cluster, wait_for
from localcluster.pytest_plugin import create_namespace

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
        return self.endpoint_urls() or []

    def endpoint_urls(self) -> list[str] | None:
        """The Service's ready endpoints; None when the API server did not answer."""
        slices = self.get("endpointslices", "-l", f"kubernetes.io/service-name={MODEL}")
        return None if slices is None else ready_endpoints(slices)

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
    cluster: Cluster, process_node: processnode.ProcessNode, tmp_path_factory: pytest.TempPathFactory, crds: None
) -> Iterator[Stack]:
    namespace = create_namespace(cluster, f"e2e-{uuid.uuid4().hex[:6]}")
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


def deployment_ready(stack: Stack, name: str, replicas: int, timeout: float) -> float:
    """Wait until the Deployment has `replicas` ready pods; the monotonic time it was seen."""
    wait_for(
        lambda: int((stack.get("deployment", name) or {}).get("status", {}).get("readyReplicas", 0)) >= replicas,
        timeout=timeout,
        what=f"{name}: {replicas} ready",
        interval=1,
    )
    return time.monotonic()


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


def test_the_gateway_answers_the_openai_client(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> None:
    """`flotilla gateway` watching the real API server, in front of the real tritonserver on the
    process node, called with the official openai client: chat, streaming, /v1/models."""
    import openai

    log = tmp_path_factory.mktemp("gateway") / "gateway.log"
    gateway = GatewayProcess(stack.cluster.kubeconfig, log, {"FLOTILLA_GATEWAY_NAMESPACES": stack.namespace})
    gateway.start().wait_ready(timeout=60)
    try:
        client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="not-needed", max_retries=0, timeout=120)
        assert [m.id for m in client.models.list().data] == [MODEL]
        chat = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": QUESTION}], max_tokens=24, temperature=0
        )
        assert "paris" in (chat.choices[0].message.content or "").lower(), chat
        assert chat.usage is not None and chat.usage.completion_tokens > 0
        arrivals: list[float] = []
        started = time.monotonic()
        stream = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Write one sentence about the sea."}],
            max_tokens=32,
            stream=True,
            stream_options={"include_usage": True},
        )
        pieces = []
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                arrivals.append(time.monotonic() - started)
                pieces.append(chunk.choices[0].delta.content)
        print(f"gateway stream: {len(pieces)} chunks, first after {arrivals[0]:.2f}s, last {arrivals[-1]:.2f}s")
        assert len(pieces) >= 3 and arrivals[0] < arrivals[-1]
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    finally:
        gateway.stop()


class OpenLoad(threading.Thread):
    """Open-loop load: Poisson arrivals at `rate` per second, each request sent to a random ready
    endpoint of the model's Service (as kube-proxy spreads them), or with `gateway` (its base
    URL) through the OpenAI-compatible gateway with the openai client (no client retries), on a
    pool of threads so a slow answer never delays the next arrival. Records every failure (and
    where it was sent), latency and the time-weighted number of requests in flight."""

    def __init__(
        self,
        stack: Stack,
        rate: float,
        max_tokens: int = 8,
        seed: int = 1,
        gateway: str | None = None,
        timeout: float = 60,
    ) -> None:
        super().__init__(daemon=True)
        self.stack, self.rate, self.max_tokens, self.timeout = stack, rate, max_tokens, timeout
        self.gateway = gateway
        self.stop_flag = threading.Event()
        self.random = random.Random(seed)
        self.failures: list[str] = []
        self.failed_targets: list[str] = []  # where each failed request was sent
        self.latencies: list[tuple[float, float]] = []  # (finished at, seconds)
        self.backends: set[str] = set()
        self.urls: list[str] = [gateway] if gateway else []
        self.sent = 0
        self.stale_lookups = 0  # endpoint lookups that failed (the last list was kept)
        self._mutex = threading.Lock()
        self._in_flight = 0
        self._busy_area = 0.0  # integral of in-flight over time
        self._last = time.monotonic()
        self._t0 = self._last
        self._client: Any = None
        if gateway:
            import openai

            self._client = openai.OpenAI(base_url=f"{gateway}/v1", api_key="not-needed", max_retries=0, timeout=timeout)

    def set_rate(self, rate: float) -> None:
        self.rate = rate

    def _count(self, delta: int) -> None:
        with self._mutex:
            now = time.monotonic()
            self._busy_area += self._in_flight * (now - self._last)
            self._last, self._in_flight = now, self._in_flight + delta

    def mean_in_flight(self) -> float:
        self._count(0)
        return self._busy_area / max(self._last - self._t0, 1e-9)

    def in_flight(self) -> int:
        """Requests sent and not yet answered, now."""
        with self._mutex:
            return self._in_flight

    def _refresh(self) -> None:
        while not self.stop_flag.is_set():
            try:
                urls = self.stack.endpoint_urls()
                if urls is None:  # the API server did not answer: keep the last list, as kube-proxy would
                    self.stale_lookups += 1
                else:
                    self.urls = urls
            except Exception as err:
                self.failures.append(f"{time.strftime('%H:%M:%S')} endpoints: {err}")
            self.stop_flag.wait(0.5)

    def _send(self, url: str) -> None:
        if self._client is None:
            generate(url, MODEL, "Say hello.", self.max_tokens, timeout=self.timeout)
            return
        answer = self._client.completions.create(
            model=MODEL, prompt="Say hello.", max_tokens=self.max_tokens, temperature=0
        )
        if not answer.choices:
            raise RuntimeError(f"an answer without choices: {answer}")

    def _one(self, url: str) -> None:
        started = time.monotonic()
        self._count(+1)
        try:
            self._send(url)
            with self._mutex:
                self.latencies.append((time.monotonic(), time.monotonic() - started))
                self.backends.add(url)
        except Exception as err:
            with self._mutex:
                self.failures.append(f"{time.strftime('%H:%M:%S')} {url} {type(err).__name__}: {err}")
                self.failed_targets.append(url)
        finally:
            self._count(-1)

    def run(self) -> None:
        if not self.gateway:
            self.urls = self.stack.endpoints()  # before the first arrival, as a client resolves first
            threading.Thread(target=self._refresh, daemon=True).start()
        with ThreadPoolExecutor(max_workers=64) as pool:
            while not self.stop_flag.is_set():
                self.stop_flag.wait(self.random.expovariate(self.rate))
                if self.urls:
                    self.sent += 1
                    pool.submit(self._one, self.random.choice(self.urls))
                elif not self.stop_flag.is_set():
                    self.failures.append(f"{time.strftime('%H:%M:%S')} no ready endpoint")
                    self.failed_targets.append("")

    def stop(self) -> None:
        self.stop_flag.set()
        self.join(timeout=150)
        if self._client is not None:
            self._client.close()

    def since(self, at: float, *, sent: bool = False) -> list[float]:
        """Latencies (s) of the requests that finished at or after `at` (monotonic), or with
        `sent`, that were sent at or after it."""
        return [d for done, d in self.latencies if (done - d if sent else done) >= at]

    def p95(self, since: float = 0.0, *, sent: bool = False) -> float:
        values = sorted(self.since(since, sent=sent))
        return values[int(0.95 * (len(values) - 1))] if values else float("nan")


def _capacity(stack: Stack, seconds: float = 12.0, clients: int = 4, max_tokens: int = 8) -> tuple[float, float]:
    """Closed loop with `clients` at once against the stable pods: (requests/s, mean seconds)."""
    urls = stack.endpoints()
    done: list[float] = []
    deadline = time.monotonic() + seconds

    def client(i: int) -> None:
        while time.monotonic() < deadline:
            started = time.monotonic()
            generate(urls[i % len(urls)], MODEL, "Say hello.", max_tokens, timeout=60)
            done.append(time.monotonic() - started)

    with ThreadPoolExecutor(max_workers=clients) as pool:
        list(pool.map(client, range(clients)))
    return len(done) / seconds, sum(done) / len(done)


# Fast enough for a test, still the same machine: 50% then 100%, judged over 20 s steps. Two
# tritonservers share 2 cores here, so per-block latency is noisy: the latency margin is 30%
# (the regression below adds far more), and a held step goes on as soon as the judge passes.
E2E_CANARY = {"canary": {"steps": [50, 100], "stepSeconds": 20, "minRequests": 60, "maxErrorRate": 0.05,
                         "maxLatencyRegression": 0.3, "maxStepExtensions": 6}}  # fmt: skip


def _rollout(stack: Stack, change: dict[str, Any], outcome: str, load: OpenLoad) -> tuple[float, dict[str, Any]]:
    """Apply `change` under `load`; seconds until CanaryProgressing says `outcome`."""
    applied = time.monotonic()
    stack.kubectl("apply", "-n", stack.namespace, "-f", "-", input=smallmodel({**change, "rollout": E2E_CANARY}))

    def done() -> dict[str, Any] | None:
        cond = stack.condition("CanaryProgressing")
        if cond.get("reason") in {"Promoted", "RolledBack"} and cond.get("lastTransitionTime", "") >= started_at:
            return cond
        return None

    started_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 1))
    cond = wait_for(done, timeout=1500, what=f"the canary {outcome}", interval=1)
    assert cond["reason"] == outcome, f"{cond}\n{stack.operator.log()[-3000:]}"
    return time.monotonic() - applied, cond


@pytest.mark.timeout(2400)  # measured 13 min on this machine under a concurrent Go build
def test_a_harmless_change_is_promoted_under_load(stack: Stack) -> None:
    before = stack.status()["revisions"]["stable"]
    rate, mean = _capacity(stack)
    print(f"closed loop, 4 clients on the stable pod: {rate:.2f}/s, mean {mean:.2f}s")
    # Open loop at 80% of what 4 clients at once drew from the stable pod: a busy pod, not a
    # saturated one (at saturation the queue, not the revision, decides every latency).
    load = OpenLoad(stack, rate=max(0.8 * rate, 1.0))
    load.start()
    try:
        time.sleep(5)
        seconds, _ = _rollout(stack, {"serving": {"maxBatchSize": 8}}, "Promoted", load)
        wait_for(lambda: not stack.get("deployment", f"{MODEL}-{before[:8]}"), timeout=120, what="old revision removed")
        time.sleep(8)  # keep sending past the old pods' preStop and shutdown
    finally:
        load.stop()
    in_flight = load.mean_in_flight()
    print(
        f"harmless change -> promoted: {seconds:.0f}s; {len(load.latencies)} requests at {load.rate:.1f}/s, "
        f"mean in flight {in_flight:.1f}, p95 {load.p95():.2f}s (closed loop x4: {rate:.1f}/s, {mean:.2f}s)"
    )
    assert load.failures == [], load.failures
    assert len(load.backends) >= 2, load.backends  # answered by both revisions
    assert in_flight >= 2.0, in_flight  # reported in the note; 4 only near saturation on 2 cores
    revisions = stack.status()["revisions"]
    assert revisions["stable"] != before and "canary" not in revisions
    assert stack.condition("Ready")["status"] == "True"


@pytest.mark.timeout(2400)  # measured: rolled back 258 s after the change (2026-12-01)
def test_a_latency_regression_is_rolled_back_under_load(stack: Stack) -> None:
    stable = stack.status()["revisions"]["stable"]
    stable_uid = stack.get("deployment", f"{MODEL}-{stable[:8]}")["metadata"]["uid"]
    rate, _ = _capacity(stack)
    load = OpenLoad(stack, rate=max(0.8 * rate, 1.0), seed=2)
    load.start()
    try:
        time.sleep(5)
        # A unit slip as users make it: maxQueueDelayMicroseconds 5000000 meant as 5 ms. At this
        # load a batch of 8 never fills, so every canary request waits for the delay. Measured on
        # this 2-core machine with other work running: batching off (maxBatchSize 1) cost +36%
        # and a 2 s delay +50..90%, both too close to the 30% margin to decide within minutes.
        change = {"serving": {"maxBatchSize": 8, "maxQueueDelayMicroseconds": 5_000_000}}
        seconds, cond = _rollout(stack, change, "RolledBack", load)
        time.sleep(8)
    finally:
        load.stop()
    print(f"latency regression -> rolled back: {seconds:.0f}s; {cond['message'][:300]}; "
          f"{len(load.latencies)} requests, mean in flight {load.mean_in_flight():.1f}")  # fmt: skip
    assert load.failures == [], load.failures
    revisions = stack.status()["revisions"]
    assert revisions["stable"] == stable and "canary" not in revisions
    assert "latency" in revisions["lastRollback"]["reason"]
    assert stack.get("deployment", f"{MODEL}-{stable[:8]}")["metadata"]["uid"] == stable_uid
    assert "paris" in stack.ask().lower()


# Watched passing on 2026-12-01: 2 replicas asked 11 s after the step, objective met on their own
# window 107 s after it (status p95 2244 ms <= 4962 ms), back to 1 replica 43 s after the drop.
@pytest.mark.timeout(1800)
def test_autoscaling_holds_the_objective_on_the_real_server(stack: Stack) -> None:
    """One core per replica (cpu request 1 -> one onnxruntime thread), so a second replica on
    this 2-core machine really adds capacity. Load steps past one replica's capacity, then drops."""
    # A known serving spec first, whatever ran before (the stable one after the tests above;
    # after a rollout straight to it when this test runs alone: steps [100], nothing to judge).
    serving = {"serving": {"maxBatchSize": 8}, "rollout": {"canary": {"steps": [100]}}}
    stack.kubectl("apply", "-n", stack.namespace, "-f", "-", input=smallmodel(serving))
    wait_for(lambda: not stack.status()["revisions"].get("canary"), timeout=600, what="no canary")
    wait_condition(stack, "Ready", "True", timeout=600)
    rate, mean = _capacity(stack, clients=1)  # one replica, no batching help: its service rate
    # Batching buys nothing here (one thread per replica: a batch of 8 takes 8 times one), so
    # two replicas serve at most twice one replica's serial rate, less what the control plane
    # and the load itself take from the two cores. Seen on 2026-12-01: a step to 2x kept two
    # replicas saturated (p95 19 s), and a step to 1.3x ran each of two replicas at ~95%: under
    # that load a request took ~850 ms of compute instead of the 585 ms measured alone (the
    # two servers, the control plane and the load share the cores). The step goes to 1.2x:
    # one replica overloaded, two at ~60% nominal.
    threshold_ms = int(max(6 * mean * 1000, 200))
    auto = {"enabled": True, "minReplicas": 1, "maxReplicas": 2, "scaleDownDelaySeconds": 30,
            "latencyObjective": {"percentile": 95, "thresholdMs": threshold_ms}}  # fmt: skip
    stack.kubectl("apply", "-n", stack.namespace, "-f", "-", input=smallmodel({**serving, "autoscaling": auto}))
    stable = stack.status()["revisions"]["stable"]
    deployment = f"{MODEL}-{stable[:8]}"

    def replicas() -> int:
        return int((stack.get("deployment", deployment) or {}).get("spec", {}).get("replicas", 0))

    timeline: list[tuple[float, int, Any]] = []
    load = OpenLoad(stack, rate=0.3 * rate, seed=3)
    load.start()
    started = time.monotonic()
    try:
        # The capacity measurement just above ran one replica flat out, and the first intervals
        # the autoscaler sees may cover it: scaling to 2 for it is right. The step starts from a
        # settled pool: one replica, objective met, at the light load.
        wait_for(
            lambda: replicas() == 1 and stack.condition("LatencyObjectiveMet").get("status") == "True",
            timeout=300,
            what="one replica meeting the objective at the light load",
            interval=2,
        )
        print(f"autoscaling: settled after {time.monotonic() - started:.0f}s: {stack.status().get('scaling')}")
        stepped = time.monotonic()
        load.set_rate(1.2 * rate)  # past one replica's serial capacity

        def look() -> None:
            status = stack.status()
            timeline.append((round(time.monotonic() - started), replicas(), status.get("latency", {}).get("p95Ms")))
            print(f"autoscaling: {timeline[-1]} {status.get('scaling', {}).get('reason')}")

        while replicas() < 2 and time.monotonic() - stepped < 240:
            look()
            time.sleep(2)
        reaction = time.monotonic() - stepped
        assert replicas() == 2, timeline
        two_ready = deployment_ready(stack, deployment, 2, timeout=240)
        # The objective is judged on what the two replicas did: Triton's summary covers its last
        # ~60 s, so hold the step load 70 s past the second pod's readiness, then require the
        # condition and the status p95 (Triton's, what the objective is defined on) under it.
        # The clients' p95 (requests sent after that) is reported: it adds the HTTP hops and the
        # load generator's own scheduling on these two busy cores (seen: +750 ms at 1.3x).
        while time.monotonic() - two_ready < 70:
            look()
            time.sleep(5)
        wait_condition(stack, "LatencyObjectiveMet", "True", timeout=60)
        recovered = time.monotonic() - stepped
        p95_status = float(stack.status()["latency"]["p95Ms"])
        seen, p95_clients = len(load.since(two_ready + 10, sent=True)), load.p95(two_ready + 10, sent=True) * 1000
        assert seen >= 30, f"only {seen} requests after both replicas were ready"
        calm = time.monotonic()
        load.set_rate(0.2 * rate)
        wait_for(lambda: replicas() == 1, timeout=240, what="scale down after the delay", interval=2)
        down_after = time.monotonic() - calm
    finally:
        load.stop()
    print(f"autoscaling: service {mean * 1000:.0f} ms, objective p95 <= {threshold_ms} ms; load {0.3 * rate:.1f} -> "
          f"{1.2 * rate:.1f} -> {0.2 * rate:.1f}/s; 2 replicas asked {reaction:.0f}s after the step, both ready "
          f"{two_ready - stepped:.0f}s after it; objective met on two replicas' own window {recovered:.0f}s after "
          f"(status p95 {p95_status:.0f} ms, clients' p95 {p95_clients:.0f} ms over {seen} requests); back "
          f"to 1 {down_after:.0f}s after the load dropped (delay 30s); timeline {timeline}")  # fmt: skip
    assert p95_status <= threshold_ms
    assert down_after >= 30
    assert load.failures == [], load.failures


def _serving_pids(stack: Stack, uids: set[str]) -> set[int]:
    """tritonserver processes of these pods (the node runs each pod under <state>/pods/<uid>/)."""
    pids = set()
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if "tritonserver" in cmdline and any(f"/pods/{uid}/" in cmdline for uid in uids):
            pids.add(proc.pid)
    return pids


# Two replicas on the stable revision's serving spec the tests above end on (or straight to it
# when these run alone: steps [100], nothing to judge), autoscaling off (replicas is refused
# beside it: docs/validation.md).
TWO_REPLICAS = {"serving": {"maxBatchSize": 8}, "rollout": {"canary": {"steps": [100]}}, "replicas": 2}
# Long enough answers that a request is in flight for seconds: the kill finds several mid-answer.
LONG_ANSWER_TOKENS = 24


def _server_pods(stack: Stack, deployment: str) -> list[dict[str, Any]]:
    """The Deployment's pods that are not being deleted."""
    pods = stack.get("pods", "-l", f"{LABEL_MODEL}={MODEL},{LABEL_COMPONENT}={COMPONENT_SERVER}") or {"items": []}
    return [
        p
        for p in pods["items"]
        if p["metadata"]["name"].startswith(f"{deployment}-") and not p["metadata"].get("deletionTimestamp")
    ]


def _pod_ready(pod: dict[str, Any]) -> bool:
    conditions = pod.get("status", {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def _restarts(pod: dict[str, Any]) -> int:
    return sum(int(c.get("restartCount", 0)) for c in pod.get("status", {}).get("containerStatuses") or [])


def _two_ready_replicas(stack: Stack) -> str:
    """Apply TWO_REPLICAS whatever ran before; the stable Deployment once both pods are ready."""
    stack.kubectl("apply", "-n", stack.namespace, "-f", "-", input=smallmodel(TWO_REPLICAS))
    wait_for(lambda: not stack.status().get("revisions", {}).get("canary"), timeout=600, what="no canary")
    wait_condition(stack, "Ready", "True", timeout=600)
    deployment = f"{MODEL}-{stack.status()['revisions']['stable'][:8]}"
    wait_for(
        lambda: len([p for p in _server_pods(stack, deployment) if _pod_ready(p)]) == 2 and len(stack.endpoints()) == 2,
        timeout=600,
        what="two ready pods behind the Service",
        interval=1,
    )
    return deployment


@contextlib.contextmanager
def _gateway(stack: Stack, tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[GatewayProcess]:
    log = tmp_path_factory.mktemp(name) / "gateway.log"
    gateway = GatewayProcess(stack.cluster.kubeconfig, log, {"FLOTILLA_GATEWAY_NAMESPACES": stack.namespace})
    gateway.start().wait_ready(timeout=60)
    try:
        yield gateway
    finally:
        gateway.stop()


def _gateway_total(gateway: GatewayProcess, sample: str) -> float:
    """The sum of one sample name over every label set of the gateway's /metrics."""
    code, text = gateway.get("/metrics")
    assert code == 200, text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == sample)


def _loads(stack: Stack, gateway: GatewayProcess, utilisation: float, seed: int) -> tuple[OpenLoad, OpenLoad, float]:
    """Two open loops splitting `utilisation` of what 4 closed-loop clients drew from the two
    pods: one through the gateway, one straight to the Service's endpoints. (via, direct, rate)."""
    rate, _ = _capacity(stack, max_tokens=LONG_ANSWER_TOKENS)
    each = max(utilisation * rate / 2, 0.3)
    timeout = 150.0  # past the survivor's queue while one pod is down: a slow answer is not a lost one
    via = OpenLoad(stack, each, LONG_ANSWER_TOKENS, seed=seed, gateway=gateway.url, timeout=timeout)
    direct = OpenLoad(stack, each, LONG_ANSWER_TOKENS, seed=seed + 1, timeout=timeout)
    via.start()
    direct.start()
    return via, direct, rate


@pytest.mark.timeout(1800)
def test_a_killed_serving_pod_loses_no_request_through_the_gateway(
    stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A crash, not a delete: one pod's tritonserver SIGKILLed with requests in flight. The
    gateway retries what the dead pod never answered on the other pod, so its clients see no
    failure; a kube-proxy client (straight to the endpoints) loses only what it sent the dead
    pod, until the endpoint is marked not ready. The node restarts the container and it serves again."""
    deployment = _two_ready_replicas(stack)
    with _gateway(stack, tmp_path_factory, "gateway-podkill") as gateway:
        via, direct = None, None
        try:
            via, direct, capacity = _loads(stack, gateway, 0.75, seed=11)
            time.sleep(10)  # past the first arrivals: a steady queue on both pods
            victim = _server_pods(stack, deployment)[0]
            uid, address = victim["metadata"]["uid"], victim["status"]["podIP"]
            restarts = _restarts(victim)
            pids = _serving_pids(stack, {uid})
            top = [pid for pid in pids if psutil.Process(pid).ppid() not in pids]
            assert top, f"no tritonserver process of pod {victim['metadata']['name']}"
            # The kill comes at a moment when at least 4 gateway requests are in flight (the
            # gateway spreads them by least outstanding: about half of them on the victim).
            deadline = time.monotonic() + 180
            while via.in_flight() < 4 and time.monotonic() < deadline:
                time.sleep(0.02)
            at_kill = (via.in_flight(), direct.in_flight())
            killed_at = time.monotonic()
            for pid in top:
                os.kill(pid, signal.SIGKILL)

            def back() -> bool:
                pods = {p["metadata"]["uid"]: p for p in _server_pods(stack, deployment)}
                same = pods.get(uid)
                restarted = same is None or _restarts(same) > restarts
                return restarted and len([p for p in pods.values() if _pod_ready(p)]) == 2

            wait_for(back, timeout=600, what="the killed pod serving again", interval=0.5)
            back_after = time.monotonic() - killed_at
            wait_for(lambda: len(stack.endpoints()) == 2, timeout=120, what="both endpoints ready", interval=0.5)
            time.sleep(15)  # and serving: the restarted pod takes its share again
        finally:
            for load in (via, direct):
                if load is not None:
                    load.stop()
        retries = _gateway_total(gateway, "flotilla_gateway_retries_total")
        gateway_errors = _gateway_total(gateway, "flotilla_gateway_errors_total")
    pod = next((p for p in _server_pods(stack, deployment) if p["metadata"]["uid"] == uid), None)
    how = f"restarted in place ({_restarts(pod)} restarts)" if pod else "replaced by a new pod"
    print(
        f"pod kill: closed loop x4 {capacity:.2f}/s at {LONG_ANSWER_TOKENS} tokens, open loop {via.rate:.2f}/s "
        f"via the gateway + {direct.rate:.2f}/s direct; sent {via.sent} via the gateway + {direct.sent} direct; "
        f"in flight at the kill {at_kill[0]} via + {at_kill[1]} direct (mean {via.mean_in_flight():.1f} + "
        f"{direct.mean_in_flight():.1f}); failed via the gateway {len(via.failures)}, direct {len(direct.failures)} "
        f"(all to the killed pod {address}: {all(f'//{address}:' in t for t in direct.failed_targets)}); "
        f"gateway retries {retries:.0f}, gateway errors {gateway_errors:.0f}; killed pod ready again "
        f"{back_after:.1f}s after the kill, {how}; p95 {via.p95():.1f}s via, {direct.p95():.1f}s direct"
    )
    assert at_kill[0] >= 4, at_kill
    assert via.failures == [], via.failures
    assert gateway_errors == 0
    assert retries >= 1  # the gateway did meet the dead pod, and moved what it had sent there
    survivors = [f for f, t in zip(direct.failures, direct.failed_targets, strict=True) if f"//{address}:" not in t]
    assert survivors == [], survivors  # a direct client lost only what it sent the dead pod
    assert via.sent > 0 and direct.sent > 0 and len(direct.backends) >= 2
    assert _restarts(pod) > restarts if pod else True


@pytest.mark.timeout(1800)
def test_serving_rides_out_an_api_server_outage(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> None:
    """kube-apiserver frozen (SIGSTOP) for 30 s under load: the pods, the gateway's route table
    and a client's last endpoint list do not need it, so nothing fails; afterwards the operator
    catches up: Ready never flipped, and a spec change made after the thaw is reconciled."""
    deployment = _two_ready_replicas(stack)
    ready_since = stack.condition("Ready")["lastTransitionTime"]
    apiserver = procs.read_pid_files(stack.cluster.settings.cluster_dir / "pids")["kube-apiserver"]
    frozen_s = 30
    with _gateway(stack, tmp_path_factory, "gateway-outage") as gateway:
        via, direct = None, None
        try:
            via, direct, capacity = _loads(stack, gateway, 0.5, seed=21)
            rates = (via.rate, direct.rate)
            time.sleep(10)
            sent_before = via.sent + direct.sent
            procs.freeze(apiserver, frozen_s)
            thawed = time.monotonic()
            during = via.sent + direct.sent - sent_before
            wait_for(
                lambda: stack.cluster.kubectl("get", "--raw", "/readyz", check=False).returncode == 0,
                timeout=120,
                what="the API server answering",
            )
            answering = time.monotonic() - thawed
            time.sleep(10)  # serving on after the thaw, while the watches relist
            # A change made after the outage, under the same load: a third replica. (Up, not
            # down: a pod removed under this load may still hold queued requests when Triton's
            # exit timeout ends, which is the grace period's story, not the outage's.)
            changed = time.monotonic()
            stack.kubectl("apply", "-n", stack.namespace, "-f", "-", input=smallmodel({**TWO_REPLICAS, "replicas": 3}))
            generation = int(stack.get("smallmodel", MODEL)["metadata"]["generation"])

            def reconciled() -> bool:
                status = stack.status()
                return (
                    int(status.get("observedGeneration") or 0) >= generation
                    and status.get("replicas") == 3
                    and status.get("readyReplicas") == 3
                )

            wait_for(reconciled, timeout=300, what="the change after the outage reconciled", interval=1)
            reconciled_after = time.monotonic() - changed
            time.sleep(5)  # the third pod takes its share
        finally:
            for load in (via, direct):
                if load is not None:
                    load.stop()
        retries = _gateway_total(gateway, "flotilla_gateway_retries_total")
    ready = stack.condition("Ready")
    print(
        f"API outage: kube-apiserver frozen {frozen_s}s under {rates[0]:.2f}/s via the gateway + "
        f"{rates[1]:.2f}/s direct (closed loop x4 {capacity:.2f}/s); sent {via.sent} via + {direct.sent} "
        f"direct, {during} of them while frozen; failed via the gateway {len(via.failures)}, direct "
        f"{len(direct.failures)}; endpoint lookups that failed (last list kept) {direct.stale_lookups}; gateway "
        f"retries {retries:.0f}; API answering {answering:.1f}s after the thaw; replicas 2 -> 3 reconciled (3 ready) "
        f"{reconciled_after:.1f}s after the change; Ready {ready.get('status')} since "
        f"{ready.get('lastTransitionTime')}; p95 {via.p95():.1f}s via, {direct.p95():.1f}s direct"
    )
    assert during > 0
    assert via.failures == [], via.failures
    assert direct.failures == [], direct.failures
    assert ready["status"] == "True" and ready["lastTransitionTime"] == ready_since, ready  # never flipped
    assert len([p for p in _server_pods(stack, deployment) if _pod_ready(p)]) == 3


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
