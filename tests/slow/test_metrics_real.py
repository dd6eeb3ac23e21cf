"""flotilla.metrics against the real tritonserver (Triton 2.51 from the nvidia-pytriton wheel).

Two servers:
- a tiny "probe" python-backend model whose execution always takes PROBE_SECONDS, whatever
  the batch, so how Triton accounts a dynamic batch can be checked to the millisecond; it
  starts in seconds and needs no optimized artifact;
- the session's `triton` fixture (conftest.py) serving the optimized SmolLM2 ("chat") and
  MiniLM ("embed"): the scrape source and the sampler must see exactly the requests sent.

The captured texts in tests/unit/data come from the probe server:
`.venv/bin/python tests/slow/test_metrics_real.py --capture tests/unit/data` (about 75 s,
most of it waiting for Triton's summary window to expire), and `triton-metrics-chat-embed.txt`
from the session server after test_real_models_counts_are_exact when FLOTILLA_CAPTURE_METRICS
names a directory.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from flotilla.local import triton as local
from flotilla.metrics import Interval, PodTarget, Sampler, Window, parse_model
from flotilla.metrics.sources import ScrapeSource

pytestmark = pytest.mark.slow

PROBE = "probe"
PROBE_SECONDS = 0.2  # one execution of the probe model, whatever its batch
# Plausibility bound on one execution: sleep(0.2) takes longer on a loaded 2-core machine.
SLACK_MS = 1000.0
PROBE_CONFIG = f"""name: "{PROBE}"
backend: "python"
max_batch_size: 8
input [ {{ name: "x" data_type: TYPE_FP32 dims: [ 1 ] }} ]
output [ {{ name: "y" data_type: TYPE_FP32 dims: [ 1 ] }} ]
# Long enough that concurrent requests surely meet in one batch on a busy 2-core machine.
dynamic_batching {{ max_queue_delay_microseconds: 300000 }}
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
"""
PROBE_MODEL = f'''
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """y = 2x after {PROBE_SECONDS} s per execution; x = -1: error response; x = -2: raises."""

    def execute(self, requests):
        time.sleep({PROBE_SECONDS})
        inputs = [pb_utils.get_input_tensor_by_name(r, "x").as_numpy() for r in requests]
        if any((x == -2).any() for x in inputs):
            raise RuntimeError("probe raised in execute")
        responses = []
        for x in inputs:
            if (x == -1).any():
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError("probe error response")))
            else:
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("y", (2 * x).astype(np.float32))]))
        return responses
'''


# The same probe as a decoupled model (what the text-generation model is): it answers through
# each request's response sender, two responses per request, and still raises on x = -2.
DECOUPLED = "probe-decoupled"
DECOUPLED_CONFIG = (
    PROBE_CONFIG.replace(f'name: "{PROBE}"', f'name: "{DECOUPLED}"') + "model_transaction_policy { decoupled: true }\n"
)
DECOUPLED_MODEL = f'''
import time

import numpy as np
import triton_python_backend_utils as pb_utils

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


class TritonPythonModel:
    """Two responses per request (y = x, then y = 2x with the final flag); x = -1: one error
    response; x = -2: raises, like model.py when a whole batch fails."""

    def execute(self, requests):
        time.sleep({PROBE_SECONDS})
        inputs = [pb_utils.get_input_tensor_by_name(r, "x").as_numpy() for r in requests]
        if any((x == -2).any() for x in inputs):
            raise RuntimeError("probe raised in execute")
        for request, x in zip(requests, inputs):
            sender = request.get_response_sender()
            if (x == -1).any():
                sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError("probe error response")), FINAL)
                continue
            sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("y", x.astype(np.float32))]))
            sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("y", (2 * x).astype(np.float32))]), FINAL)
        return None
'''


def probe_repository(root: Path) -> Path:
    for name, config, code in ((PROBE, PROBE_CONFIG, PROBE_MODEL), (DECOUPLED, DECOUPLED_CONFIG, DECOUPLED_MODEL)):
        model = root / "repository" / name
        (model / "1").mkdir(parents=True, exist_ok=True)
        (model / "config.pbtxt").write_text(config)
        (model / "1" / "model.py").write_text(code)
    return root / "repository"


def infer(server: local.LocalTriton, values: Sequence[float], name: str = "x") -> int:
    """HTTP status of one probe request carrying len(values) items."""
    body = {"inputs": [{"name": name, "shape": [len(values), 1], "datatype": "FP32", "data": list(values)}]}
    return server.request("POST", f"/v2/models/{PROBE}/infer", body)[0]


def concurrent(server: local.LocalTriton, count: int) -> list[int]:
    """`count` one-item requests released together, so they queue into one dynamic batch."""
    gate = threading.Barrier(count)

    def one(i: int) -> int:
        gate.wait()
        return infer(server, [float(i + 1)])

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


def target(server: local.LocalTriton, pod: str = "pod-a", revision: str = "r1") -> PodTarget:
    return PodTarget(pod=pod, revision=revision, ip="127.0.0.1", ready=True)


def look(sampler: Sampler, server: local.LocalTriton, model: str, targets: Sequence[PodTarget]) -> Window:
    source = ScrapeSource(port=server.metrics_port, timeout=5.0)
    readings = asyncio.run(source.read("default", model, targets))
    window = sampler.observe(readings, time.monotonic())
    assert window is not None
    assert not window.errors, window.errors
    return window


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[local.LocalTriton]:
    root = tmp_path_factory.mktemp("probe")
    with local.start(probe_repository(root), [PROBE, DECOUPLED], root / "triton", ready_timeout=120) as server:
        yield server


def batch_infer_us(server: local.LocalTriton) -> dict[int, float]:
    """Triton's statistics extension: batch size -> compute_infer time of its executions (us)."""
    stats = server.request("GET", f"/v2/models/{PROBE}/stats")[1]["model_stats"][0]
    return {int(b["batch_size"]): b["compute_infer"]["ns"] / 1000 for b in stats.get("batch_stats", [])}


def batches_since(before: dict[int, float], after: dict[int, float]) -> dict[int, float]:
    return {b: us - before.get(b, 0.0) for b, us in after.items() if us - before.get(b, 0.0) > 0}


def compute_infer_us(server: local.LocalTriton) -> float:
    counters = parse_model(server.metrics(), PROBE)
    assert counters is not None
    return counters.compute_infer_us


def test_probe_batch_accounting(probe: local.LocalTriton) -> None:
    """The compute counters grow per request by its batch's time: b times for a batch of b,
    once for a request of several items, not at all for a failed request."""
    sampler, targets = Sampler(), [target(probe)]
    look(sampler, probe, PROBE, targets)  # baseline
    stats, infer_us = batch_infer_us(probe), compute_infer_us(probe)
    assert concurrent(probe, 4) == [200] * 4
    batch = look(sampler, probe, PROBE, targets).intervals["r1"]
    ran, stats = batches_since(stats, batch_infer_us(probe)), batch_infer_us(probe)
    assert batch.executions < 4 and batch.inferences == 4
    # The counter (us) and the statistics extension (ns) time the same executions: every
    # batch's time is added once per request in it. Once per batch would be a quarter.
    added, infer_us = compute_infer_us(probe) - infer_us, compute_infer_us(probe)
    assert added == pytest.approx(sum(b * us for b, us in ran.items()), abs=4)
    assert infer(probe, [1.0, 2.0, 3.0]) == 200  # one request, three items
    items = look(sampler, probe, PROBE, targets).intervals["r1"]
    ran = batches_since(stats, batch_infer_us(probe))
    assert list(ran) == [3] and (items.requests, items.inferences, items.executions) == (1, 3, 1)
    assert compute_infer_us(probe) - infer_us == pytest.approx(ran[3], abs=1)  # once, not 3 times
    assert infer(probe, [-2.0]) == 500  # raises in execute: a BACKEND failure
    assert infer(probe, [1.0], name="nope") == 400  # rejected by the frontend: counted nowhere
    failed = look(sampler, probe, PROBE, targets).intervals["r1"]
    assert (failed.requests, failed.errors, failed.executions, failed.inferences) == (1, 1, 1, 0)
    assert failed.compute_us == 0 and failed.request_us == 0
    for interval in (batch, items):
        per_batch = interval.compute_ms_per_batch
        assert per_batch is not None and PROBE_SECONDS * 1000 <= per_batch < SLACK_MS
        _check_latencies(interval)


def _check_latencies(interval: Interval) -> None:
    mean, queue = interval.mean_latency_ms, interval.mean_queue_ms
    assert mean is not None and queue is not None
    assert PROBE_SECONDS * 1000 <= mean < SLACK_MS + 300  # compute + <= 300 ms queue delay
    assert 0 <= queue < mean
    # The summary saw the same requests: its median is within the range of the latencies.
    assert set(interval.quantiles_ms) >= {0.5, 0.9, 0.95, 0.99}
    assert PROBE_SECONDS * 1000 <= interval.quantiles_ms[0.5] <= interval.quantiles_ms[0.99] < SLACK_MS + 300


def test_probe_error_response_counts_as_success(probe: local.LocalTriton) -> None:
    """Pinned Triton 2.51 behavior: an error response from a python model is a 'success'."""
    sampler = Sampler()
    look(sampler, probe, PROBE, [target(probe)])
    assert infer(probe, [-1.0]) == 500
    interval = look(sampler, probe, PROBE, [target(probe)]).intervals["r1"]
    assert (interval.requests, interval.errors) == (1, 0)


def counted(server: local.LocalTriton, model: str) -> float:
    """Requests Triton has counted for model so far (successes + failures)."""
    counters = parse_model(server.metrics(), model)
    return 0.0 if counters is None else counters.success + counters.failure


def wait_counted(server: local.LocalTriton, model: str, total: float, timeout: float = 10.0) -> None:
    """Decoupled models: the client has its final response before execute() returns, and Triton
    records a request's statistics only after that, so a scrape right after the answer can miss
    it (measured: 0 of 4). Wait until the counters hold `total` requests."""
    deadline = time.monotonic() + timeout
    while counted(server, model) < total and time.monotonic() < deadline:
        time.sleep(0.05)


def stream(server: local.LocalTriton, x: float) -> tuple[int, list[dict[str, Any]]]:
    """POST /generate_stream on the decoupled probe: HTTP status and the SSE events."""
    status, text = server.request("POST", f"/v2/models/{DECOUPLED}/generate_stream", {"x": x})
    events = [json.loads(line[len("data:") :]) for line in str(text).splitlines() if line.startswith("data:")]
    return status, events


def test_decoupled_probe_counts_requests_not_responses(probe: local.LocalTriton) -> None:
    """In decoupled mode Triton 2.51 counts what it counts for the other models: one success
    per request (not per response), an error response as a success, an exception from
    execute as one failure per request of the batch."""
    sampler, targets = Sampler(), [target(probe)]
    look(sampler, probe, DECOUPLED, targets)
    before = counted(probe, DECOUPLED)
    gate = threading.Barrier(4)

    def one(i: int) -> tuple[int, list[dict[str, Any]]]:
        gate.wait()
        return stream(probe, float(i + 1))

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(one, range(4)))
    assert [status for status, _ in answers] == [200] * 4
    assert [[e["y"] for e in events] for _, events in answers] == [[i + 1.0, 2 * (i + 1.0)] for i in range(4)]
    wait_counted(probe, DECOUPLED, before + 4)
    batch = look(sampler, probe, DECOUPLED, targets).intervals["r1"]
    assert (batch.requests, batch.errors, batch.inferences) == (4, 0, 4)
    assert batch.executions < 4
    _check_latencies(batch)
    # /generate (not streaming) takes a decoupled model's single response.
    status, single = probe.request("POST", f"/v2/models/{DECOUPLED}/generate", {"x": -1.0})
    # The generate endpoints answer 400 for every error a model reports, the INTERNAL one of a
    # failed execute too: only the message tells a bad request from a failed batch.
    assert status == 400 and "probe error response" in str(single)
    status, events = stream(probe, -2.0)
    assert status == 400 and "probe raised in execute" in events[0]["error"]
    wait_counted(probe, DECOUPLED, before + 6)
    failed = look(sampler, probe, DECOUPLED, targets).intervals["r1"]
    assert (failed.requests, failed.errors) == (2, 1)  # the error response is a "success"


def test_probe_scrape_reports_a_missing_model(probe: local.LocalTriton) -> None:
    readings = asyncio.run(ScrapeSource(port=probe.metrics_port).read("default", "not-loaded", [target(probe)]))
    assert readings[0].counters is None
    assert "not in the metrics" in str(readings[0].error)


# The optimized real models, served by the session's server (slow: optimizes both first).


def embed_http(server: local.LocalTriton, texts: Sequence[str]) -> int:
    body = {"inputs": [{"name": "text", "shape": [len(texts), 1], "datatype": "BYTES", "data": list(texts)}]}
    return server.request("POST", "/v2/models/embed/infer", body)[0]


def test_real_models_counts_are_exact(triton: local.LocalTriton) -> None:
    sampler = Sampler()
    targets = [target(triton, "pod-a", "r1")]
    look(sampler, triton, "embed", targets)
    chat_sampler = Sampler()
    look(chat_sampler, triton, "chat", targets)
    chat_before = counted(triton, "chat")
    started = time.monotonic()
    with ThreadPoolExecutor(6) as pool:
        statuses = list(pool.map(lambda i: embed_http(triton, [f"sentence {i}"]), range(6)))
    assert embed_http(triton, ["one", "two", "three"]) == 200
    assert statuses == [200] * 6
    triton.generate("chat", "Hi", max_tokens=2)
    triton.generate("chat", "Hello", max_tokens=2)
    # A stream of several responses is one request to Triton's counters (the model is decoupled).
    body = {"text_input": "Hey", "max_tokens": 3, "stream": True}
    status, text = triton.request("POST", "/v2/models/chat/generate_stream", body)
    assert status == 200 and str(text).count("data:") >= 2, text
    elapsed_ms = (time.monotonic() - started) * 1000
    wait_counted(triton, "chat", chat_before + 3)  # chat is decoupled (see wait_counted)
    embed = look(sampler, triton, "embed", targets).intervals["r1"]
    chat = look(chat_sampler, triton, "chat", targets).intervals["r1"]
    assert (embed.requests, embed.errors, embed.inferences) == (7, 0, 9)
    assert 1 <= embed.executions <= 7
    assert (chat.requests, chat.errors) == (3, 0)
    if capture_dir := os.environ.get("FLOTILLA_CAPTURE_METRICS"):  # see tests/unit/test_metrics.py
        (Path(capture_dir) / "triton-metrics-chat-embed.txt").write_text(triton.metrics())
    for interval in (embed, chat):
        mean = interval.mean_latency_ms
        assert mean is not None and 0 < mean < elapsed_ms
        assert 0 < interval.compute_us / 1000 <= interval.request_us / 1000
        assert interval.quantile_ms(0.5) is not None


# Capturing the texts tests/unit/data holds (see the module docstring).


def metrics_text(server: local.LocalTriton) -> str:
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        text: str = response.read().decode()
        return text


def capture(out: Path, workdir: Path) -> dict[str, Any]:
    """Known traffic on the probe, the metrics text after it, and after the summary window."""
    out.mkdir(parents=True, exist_ok=True)
    with local.start(probe_repository(workdir), [PROBE], workdir / "triton", ready_timeout=120) as server:
        (out / "triton-metrics-probe-idle.txt").write_text(metrics_text(server))
        traffic = {
            "single": infer(server, [1.0]),
            "batch_of_4": concurrent(server, 4),
            "three_items": infer(server, [1.0, 2.0, 3.0]),
            "error_response": infer(server, [-1.0]),
            "raises": infer(server, [-2.0]),
            "malformed": infer(server, [1.0], name="nope"),
        }
        (out / "triton-metrics-probe.txt").write_text(metrics_text(server))
        done = time.monotonic()
        time.sleep(45)
        (out / "triton-metrics-probe-45s.txt").write_text(metrics_text(server))
        time.sleep(max(0.0, done + 62 - time.monotonic()))
        (out / "triton-metrics-probe-62s.txt").write_text(metrics_text(server))
        stats = server.request("GET", f"/v2/models/{PROBE}/stats")[1]
    return {"traffic": traffic, "stats": stats}


if __name__ == "__main__":
    import tempfile

    if sys.argv[1:2] != ["--capture"] or len(sys.argv) != 3:
        sys.exit("usage: test_metrics_real.py --capture OUT_DIR")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            print(json.dumps(capture(Path(sys.argv[2]), Path(tmp)), indent=1))
        except urllib.error.URLError as exc:
            sys.exit(f"capture failed: {exc}")
