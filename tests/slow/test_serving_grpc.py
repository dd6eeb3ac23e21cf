"""The same real tritonserver as test_optimize_real.py, called over gRPC with tritonclient.grpc.

Reuses the session's artifacts and server (conftest.py): nothing is optimized again, and the
batching-off variants are loaded into that server by name (explicit model control), so this
file adds seconds, not minutes, to the slow tier.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import tritonclient.grpc as grpcclient
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from flotilla.api.v1alpha1 import ArtifactSummary
from flotilla.local import triton as local
from flotilla.triton import config as triton_config

pytestmark = pytest.mark.slow

QUANTILES = ("0.5", "0.9", "0.95", "0.99")


@pytest.fixture(scope="module")
def client(triton: local.LocalTriton) -> Iterator[grpcclient.InferenceServerClient]:
    with grpcclient.InferenceServerClient(triton.grpc_url) as c:
        yield c


def _texts(texts: list[str], batched: bool) -> npt.NDArray[np.object_]:
    """BYTES tensor of `texts`: [n, 1] for a batching model, [1] (one text) when batching is off."""
    array = np.array([t.encode() for t in texts], dtype=np.object_)
    return array.reshape(-1, 1) if batched else array.reshape(1)


def _input(name: str, data: npt.NDArray[Any], datatype: str) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(data.shape), datatype)
    tensor.set_data_from_numpy(data)
    return tensor


def generate(
    client: grpcclient.InferenceServerClient, model: str, prompt: str, max_tokens: int, batched: bool = True
) -> str:
    """Triton's generate tensors over gRPC: text_input + max_tokens -> text_output.

    The text-generation model is decoupled, which unary ModelInfer refuses; the bidirectional
    ModelStreamInfer carries the request and its one response (stream is false)."""
    limit = np.array([[max_tokens]] if batched else [max_tokens], dtype=np.int32)
    results: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        client.async_stream_infer(
            model,
            [_input("text_input", _texts([prompt], batched), "BYTES"), _input("max_tokens", limit, "INT32")],
            outputs=[grpcclient.InferRequestedOutput("text_output")],
        )
        result, error = results.get(timeout=120)
    finally:
        client.stop_stream()
    assert error is None, error
    output = result.as_numpy("text_output")
    assert output is not None
    return bytes(output.reshape(-1)[0]).decode()


def embed(
    client: grpcclient.InferenceServerClient, model: str, texts: list[str], batched: bool = True
) -> npt.NDArray[np.float32]:
    result = client.infer(model, [_input("text", _texts(texts, batched), "BYTES")])
    vectors = result.as_numpy("embedding")
    assert vectors is not None and vectors.dtype == np.float32
    rows: npt.NDArray[np.float32] = vectors.reshape(len(texts), -1)
    return rows


def test_grpc_generate_answers_paris(client: grpcclient.InferenceServerClient) -> None:
    answer = generate(client, "chat", "What is the capital of France?", max_tokens=24)
    assert "Paris" in answer


def test_grpc_unary_infer_is_refused_for_the_decoupled_generation_model(
    client: grpcclient.InferenceServerClient,
) -> None:
    """Pinned Triton 2.51 behaviour that makes every generation caller use streaming gRPC."""
    inputs = [_input("text_input", _texts(["Hi"], True), "BYTES")]
    with pytest.raises(InferenceServerException, match="decoupled"):
        client.infer("chat", inputs)


def test_grpc_embeddings_put_paraphrases_closer_than_unrelated_text(client: grpcclient.InferenceServerClient) -> None:
    vectors = embed(
        client,
        "embed",
        ["The cat sat on the mat.", "A cat was sitting on the rug.", "Quarterly revenue grew by eight percent."],
    )
    assert vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    paraphrase, unrelated = float(vectors[0] @ vectors[1]), float(vectors[0] @ vectors[2])
    assert paraphrase > unrelated + 0.3


def _counts(client: grpcclient.InferenceServerClient, model: str) -> tuple[int, int]:
    """(requests inferred, model executions) so far, from Triton's statistics extension."""
    stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
    return int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))


def test_grpc_concurrent_requests_are_batched(client: grpcclient.InferenceServerClient) -> None:
    """Requests that queue while the model is busy run together: fewer executions than requests."""
    before = _counts(client, "embed")
    requests = 16
    done = threading.Semaphore(0)
    errors: list[str] = []

    def callback(result: Any, error: Any) -> None:
        if error is not None:
            errors.append(str(error))
        done.release()

    for i in range(requests):
        client.async_infer("embed", [_input("text", _texts([f"sentence number {i}"], True), "BYTES")], callback)
    for _ in range(requests):
        assert done.acquire(timeout=120), "a request did not complete"
    assert not errors
    # The python backend records a batch's statistics after it has sent the batch's responses,
    # so the last callbacks can run before the counts are in (seen: 13 of 16): wait for them.
    deadline = time.monotonic() + 10
    while _counts(client, "embed")[0] - before[0] < requests and time.monotonic() < deadline:
        time.sleep(0.05)
    inferred, executions = (a - b for a, b in zip(_counts(client, "embed"), before, strict=True))
    assert inferred == requests
    assert executions < requests


def _summary(metrics_text: str, model: str) -> dict[str, float]:
    """nv_inference_request_summary_us of one model: quantile -> value, plus 'count'."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        if family.name != "nv_inference_request_summary_us":
            continue
        for sample in family.samples:
            if sample.labels.get("model") != model:
                continue
            if sample.name.endswith("_count"):
                found["count"] = sample.value
            elif "quantile" in sample.labels:
                found[sample.labels["quantile"]] = sample.value
    return found


def test_grpc_traffic_shows_in_summary_latency_quantiles(
    client: grpcclient.InferenceServerClient, triton: local.LocalTriton
) -> None:
    for i in range(4):
        embed(client, "embed", [f"metrics sentence {i}"])
    generate(client, "chat", "Hi", max_tokens=2)
    metrics = triton.metrics()
    for model in ("embed", "chat"):
        summary = _summary(metrics, model)
        assert summary.get("count", 0) > 0, (model, summary)
        for q in QUANTILES:
            value = summary.get(q, math.nan)
            assert math.isfinite(value) and value > 0, (model, q, summary)


@pytest.fixture(scope="module")
def unbatched(
    client: grpcclient.InferenceServerClient,
    smol_artifact: tuple[ArtifactSummary, Path],
    minilm_artifact: tuple[ArtifactSummary, Path],
    slow_root: Path,
) -> Iterator[dict[str, str]]:
    """Both artifacts again under new names with max_batch_size 0, loaded into the running server."""
    repository = slow_root / "repository"  # the one conftest's server serves
    names = {}
    for (summary, out), served in ((smol_artifact, "chat-nobatch"), (minilm_artifact, "embed-nobatch")):
        text = triton_config.render_model_config(summary.task, max_batch_size=0, intra_op_threads=1)  # type: ignore[arg-type]
        assert "dynamic_batching" not in text
        local.serving_repository(out / str(summary.model_name), served, repository, text)
        names[str(summary.task)] = served
    # In parallel: each load starts a python-backend stub (imports transformers), seconds each.
    with ThreadPoolExecutor(len(names)) as pool:
        try:
            list(pool.map(client.load_model, names.values()))
            yield names
        finally:
            list(pool.map(client.unload_model, names.values()))


def test_grpc_serves_with_batching_off(client: grpcclient.InferenceServerClient, unbatched: dict[str, str]) -> None:
    chat, emb = unbatched["text-generation"], unbatched["feature-extraction"]
    for served in (chat, emb):
        assert client.is_model_ready(served)
        config = client.get_model_config(served).config
        assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert "Paris" in generate(client, chat, "What is the capital of France?", max_tokens=24, batched=False)
    texts = ("The cat sat on the mat.", "A cat was sitting on the rug.", "Quarterly revenue grew by eight percent.")
    vectors = [embed(client, emb, [t], batched=False)[0] for t in texts]
    assert vectors[0].shape == (384,)
    assert float(vectors[0] @ vectors[1]) > float(vectors[0] @ vectors[2]) + 0.3
