"""The gateway as a real process (`python -m flotilla gateway`) watching real SmallModel and
EndpointSlice objects on the local control plane, driven with the official `openai` client.

The upstream pods are played by small aiohttp servers speaking Triton's generate protocol
(flotilla.gateway.testing.FakeTriton), each on an address of its own from the process node's
pod range (198.18.0.0/16, local through an AnyIP route; claimed with the process node's IPAM
locks so no other cluster's pod has it; the API server refuses loopback addresses in
EndpointSlices), all on one port, as the EndpointSlices name them. That is acceptable here because this tier tests the
gateway's routing, retries and cancellation, which a stand-in makes observable; the real
tritonserver behind the gateway is the slow tier's job (tests/slow/test_gateway_real.py).

No operator runs: the test writes SmallModel status (through the status subresource) and
EndpointSlices itself, as the operator and the EndpointSlice controller would.
"""

from __future__ import annotations

import base64
import json
import math
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from flotilla.gateway.testing import FakeTriton, GatewayProcess
from flotilla.testing import free_port
from localcluster.cluster import Cluster, wait_for
from processnode import network
from processnode.ipam import Ipam
from tests.gateway_objects import endpoint, endpoint_slice, smallmodel, smallmodel_status

pytestmark = pytest.mark.cluster

PORT = free_port()  # one port for every stand-in pod; they differ by address, as pods do
MANAGED_BY = {"endpointslice.kubernetes.io/managed-by": "tests.flotilla.dev"}  # not the controller's


def apply(cluster: Cluster, obj: dict[str, Any]) -> None:
    status = obj.pop("status", None)
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=json.dumps(obj))
    if status is not None:
        set_status(cluster, obj["metadata"]["namespace"], obj["metadata"]["name"], status)


def set_status(cluster: Cluster, namespace: str, name: str, status: dict[str, Any]) -> None:
    patch = json.dumps({"status": status})
    cluster.kubectl("patch", "smallmodel", name, "-n", namespace, "--subresource=status", "--type=merge", "-p", patch)


def put_slice(cluster: Cluster, namespace: str, model: str, role: str, endpoints: list[dict[str, Any]]) -> None:
    obj = endpoint_slice(model, role, endpoints, namespace=namespace, port=PORT)
    obj["metadata"]["labels"].update(MANAGED_BY)
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=json.dumps(obj))


class Pods:
    """Stand-in Triton pods on addresses of the pod range, each in a thread of its own."""

    def __init__(self) -> None:
        self.ipam = Ipam(network.DEFAULT_CIDR)
        self.pods: list[FakeTriton] = []

    def address(self) -> str:
        """An address of our own where nothing listens (connections to it are refused)."""
        return self.ipam.allocate("gateway-integration-test")

    def start(self, **args: Any) -> FakeTriton:
        ip = self.address()
        pod = FakeTriton(name=ip, **args).start_in_thread(ip, PORT)
        self.pods.append(pod)
        return pod

    def stop(self) -> None:
        for pod in self.pods:
            pod.stop_thread()
        self.ipam.release_all()


@pytest.fixture
def pods(pod_network: network.PodNetwork) -> Iterator[Pods]:
    p = Pods()
    yield p
    p.stop()


@pytest.fixture
def gateway_factory(crd: Cluster, namespace: str, tmp_path: Path) -> Iterator[Any]:
    started: list[GatewayProcess] = []

    def start(**settings: str) -> GatewayProcess:
        env = {"FLOTILLA_GATEWAY_NAMESPACES": namespace, "FLOTILLA_GATEWAY_OWN_NAMESPACE": namespace, **settings}
        gw = GatewayProcess(crd.kubeconfig, tmp_path / f"gateway-{len(started)}.log", env).start()
        started.append(gw)
        return gw.wait_ready()

    yield start
    for gw in started:
        gw.stop()
        if "Traceback" in gw.log():
            print(f"--- gateway log ({gw.log_path}) ---\n{gw.log()[-4000:]}")


def client(gw: GatewayProcess, key: str = "none") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0, timeout=30)


def serve_chat(cluster: Cluster, namespace: str, pods: Pods, n: int = 2, **pod_args: Any) -> list[FakeTriton]:
    started = [pods.start(**pod_args) for _ in range(n)]
    apply(cluster, smallmodel("chat", namespace=namespace, status=smallmodel_status("r1")))
    put_slice(cluster, namespace, "chat", "stable", [endpoint(p.host) for p in started])
    return started


def until(what: str, check: Any, timeout: float = 20) -> Any:
    return wait_for(check, timeout=timeout, what=what)


def binomial_interval(n: int, p: float, confidence: float = 0.999) -> tuple[int, int]:
    pmf = [math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(n + 1)]
    tail, lo, hi, acc = (1 - confidence) / 2, 0, n, 0.0
    while acc + pmf[lo] <= tail:
        acc, lo = acc + pmf[lo], lo + 1
    acc = 0.0
    while acc + pmf[hi] <= tail:
        acc, hi = acc + pmf[hi], hi - 1
    return lo, hi


CHAT = [{"role": "user", "content": "What is the capital of France?"}]


def test_models_chat_streaming_and_unknown_model(
    crd: Cluster, namespace: str, pods: Pods, gateway_factory: Any
) -> None:
    serve_chat(crd, namespace, pods)
    apply(
        crd,
        smallmodel("pending", namespace=namespace, status=smallmodel_status(None, ready="False", reason="Optimizing")),
    )
    apply(crd, smallmodel("fresh", namespace=namespace))
    api = client(gateway_factory())
    assert [m.id for m in api.models.list()] == ["chat"]
    answer = api.chat.completions.create(model="chat", messages=CHAT, max_tokens=16, temperature=0)  # type: ignore[arg-type]
    assert answer.choices[0].message.content == "Paris is the capital."
    assert answer.system_fingerprint == "r1" and answer.usage is not None and answer.usage.total_tokens == 7
    stream = api.chat.completions.create(
        model="chat",
        messages=CHAT,
        stream=True,
        stream_options={"include_usage": True},  # type: ignore[arg-type]
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Paris is the capital."
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
    text = api.completions.create(model="chat", prompt="Once upon", max_tokens=4)
    assert text.choices[0].text == "Paris is the capital."
    with pytest.raises(openai.NotFoundError) as exc:
        api.chat.completions.create(model="pending", messages=CHAT)  # type: ignore[arg-type]
    assert exc.value.code == "model_not_found"
    # The gateway follows the watch: a new served model appears without a restart.
    set_status(crd, namespace, "pending", smallmodel_status("p1"))
    until("pending listed", lambda: "pending" in [m.id for m in api.models.list()])


def test_canary_weight_10_of_1000_requests_is_binomial(
    crd: Cluster, namespace: str, pods: Pods, gateway_factory: Any
) -> None:
    stable = serve_chat(crd, namespace, pods)
    canary = pods.start()
    api = client(gateway_factory())
    put_slice(crd, namespace, "chat", "canary", [endpoint(canary.host)])
    set_status(crd, namespace, "chat", smallmodel_status("r1", "r2", 10, ready="False", reason="CanaryProgressing"))

    def fingerprint() -> str:
        answer = api.completions.create(model="chat", prompt="x", max_tokens=1)
        return answer.system_fingerprint or ""

    until("the canary takes traffic", lambda: fingerprint() == "r2")
    before = canary.requests
    seen = Counter(fingerprint() for _ in range(1000))
    lo, hi = binomial_interval(1000, 0.10)
    assert lo <= seen["r2"] <= hi, seen
    assert seen["r1"] + seen["r2"] == 1000
    assert canary.requests - before == seen["r2"]  # the fingerprint names the pod's revision
    assert all(p.requests > 0 for p in stable)


def test_a_terminating_endpoint_gets_no_new_request(
    crd: Cluster, namespace: str, pods: Pods, gateway_factory: Any
) -> None:
    a, b = serve_chat(crd, namespace, pods)
    api = client(gateway_factory())
    for _ in range(40):
        api.completions.create(model="chat", prompt="x", max_tokens=1)
    assert a.requests > 0 and b.requests > 0
    put_slice(crd, namespace, "chat", "stable", [endpoint(a.host), endpoint(b.host, ready=False, terminating=True)])
    time.sleep(1.0)  # the watch event reaches the gateway in milliseconds
    b_before = b.requests
    for _ in range(100):
        api.completions.create(model="chat", prompt="x", max_tokens=1)
    assert b.requests == b_before


def test_api_keys_401_403_and_a_watched_secret(crd: Cluster, namespace: str, pods: Pods, gateway_factory: Any) -> None:
    [pod] = serve_chat(crd, namespace, pods, n=1)
    apply(crd, smallmodel("other", namespace=namespace, status=smallmodel_status("o1")))
    put_slice(crd, namespace, "other", "stable", [endpoint(pod.host)])

    def secret(entries: dict[str, dict[str, Any]]) -> None:
        data = {k: base64.b64encode(json.dumps(v).encode()).decode() for k, v in entries.items()}
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "gw-keys", "namespace": namespace},
            "data": data,
        }
        crd.kubectl("apply", "-f", "-", input=json.dumps(body))

    secret({"team-a": {"key": "sk-a", "models": ["chat"]}})
    gw = gateway_factory(FLOTILLA_GATEWAY_API_KEYS_SECRET="gw-keys")
    with pytest.raises(openai.AuthenticationError):
        client(gw, "sk-wrong").models.list()
    allowed = client(gw, "sk-a")
    assert [m.id for m in allowed.models.list()] == ["chat"]
    assert allowed.completions.create(model="chat", prompt="x", max_tokens=1).choices[0].text
    with pytest.raises(openai.PermissionDeniedError):
        allowed.completions.create(model="other", prompt="x", max_tokens=1)
    secret({"team-a": {"key": "sk-a", "models": ["chat"]}, "team-b": {"key": "sk-b"}})

    def b_works() -> bool:
        try:
            return bool(client(gw, "sk-b").completions.create(model="other", prompt="x", max_tokens=1).choices)
        except openai.AuthenticationError:
            return False

    until("a key added to the Secret works", b_works)


def test_no_endpoint_is_503_with_retry_after(crd: Cluster, namespace: str, gateway_factory: Any) -> None:
    apply(crd, smallmodel("chat", namespace=namespace, status=smallmodel_status("r1")))
    api = client(gateway_factory())
    with pytest.raises(openai.InternalServerError) as exc:
        api.chat.completions.create(model="chat", messages=CHAT)  # type: ignore[arg-type]
    assert exc.value.status_code == 503
    assert exc.value.response.headers["retry-after"] == "5"


def test_client_disconnect_mid_stream_cancels_upstream(
    crd: Cluster, namespace: str, pods: Pods, gateway_factory: Any
) -> None:
    [pod] = serve_chat(
        crd, namespace, pods, n=1, reply=" ".join(["tok"] * 200), tokens_per_reply=200, token_delay_s=0.05
    )
    api = client(gateway_factory())
    stream = api.chat.completions.create(model="chat", messages=CHAT, stream=True)  # type: ignore[arg-type]
    got = []
    for chunk in stream:
        got.append(chunk)
        if len(got) == 3:
            break
    stream.close()
    assert pod.cancelled_event.wait(10), "the stand-in pod never saw its stream cancelled"
    assert pod.cancelled == 1


def test_retry_on_a_refused_endpoint_succeeds(crd: Cluster, namespace: str, pods: Pods, gateway_factory: Any) -> None:
    live = pods.start()
    apply(crd, smallmodel("chat", namespace=namespace, status=smallmodel_status("r1")))
    # Nothing listens on the first address, so every connection to it is refused.
    put_slice(crd, namespace, "chat", "stable", [endpoint(pods.address()), endpoint(live.host)])
    gw = gateway_factory()
    api = client(gw)
    for _ in range(20):
        assert api.completions.create(model="chat", prompt="x", max_tokens=1).choices[0].text
    assert live.requests == 20
    status, metrics = gw.get("/metrics")
    assert status == 200 and "flotilla_gateway_retries_total" in metrics


def test_another_namespace_is_never_routed_to(crd: Cluster, namespace: str, pods: Pods, gateway_factory: Any) -> None:
    [pod] = serve_chat(crd, namespace, pods, n=1)
    other = f"{namespace}-x"
    crd.kubectl("create", "namespace", other)
    try:
        apply(crd, smallmodel("secret", namespace=other, status=smallmodel_status("s1")))
        put_slice(crd, other, "secret", "stable", [endpoint(pod.host)])
        api = client(gateway_factory())
        assert [m.id for m in api.models.list()] == ["chat"]
        with pytest.raises(openai.NotFoundError):
            api.completions.create(model=f"{other}/secret", prompt="x", max_tokens=1)
        assert pod.requests == 0
    finally:
        crd.kubectl("delete", "namespace", other, "--wait=false", check=False)
