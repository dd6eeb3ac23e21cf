"""SmolLM2-135M and all-MiniLM-L6-v2: optimized, gated, published and served by real Triton."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from flotilla.api.v1alpha1 import ArtifactSummary
from flotilla.local import triton as local

from .conftest import optimize

pytestmark = pytest.mark.slow


def test_smollm2_artifact_is_smaller_and_within_budget(smol_artifact: tuple[ArtifactSummary, Path]) -> None:
    summary, out = smol_artifact
    assert summary.ok and summary.task == "text-generation" and summary.precision == "int4"
    assert summary.size_ratio is not None and summary.size_ratio <= 0.30
    assert summary.accuracy is not None and summary.accuracy.top1_agreement is not None
    assert summary.accuracy.top1_agreement >= 0.97
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["summary"]["key"] == summary.key and manifest["complete"] is True
    meta = json.loads((out / "smollm2" / "1" / "flotilla.json").read_text())
    assert meta["generation"]["chat_template"] is True


def test_generate_answers_paris(triton: local.LocalTriton) -> None:
    answer = triton.generate("chat", "What is the capital of France?", max_tokens=24)
    assert "Paris" in answer


def test_generate_respects_max_tokens_and_batches_concurrent_requests(triton: local.LocalTriton) -> None:
    from concurrent.futures import ThreadPoolExecutor

    prompts = ["Name a colour.", "What is two plus two?", "Say hello.", "What is the capital of France?"]
    with ThreadPoolExecutor(len(prompts)) as pool:
        answers = list(pool.map(lambda p: triton.generate("chat", p, max_tokens=8), prompts))
    assert all(isinstance(a, str) and a for a in answers)
    assert "Paris" in answers[3]
    short = triton.generate("chat", "Tell me a long story about the sea.", max_tokens=3)
    assert 0 < len(short.split()) <= 4


def test_generate_latency_metrics_are_summaries(triton: local.LocalTriton) -> None:
    triton.generate("chat", "Hi", max_tokens=2)
    metrics = triton.metrics()
    assert 'nv_inference_request_summary_us{model="chat",version="1",quantile="0.95"}' in metrics


def _embed(triton: local.LocalTriton, texts: list[str]) -> np.ndarray:
    body = {"inputs": [{"name": "text", "shape": [len(texts), 1], "datatype": "BYTES", "data": texts}]}
    status, answer = triton.request("POST", "/v2/models/embed/infer", body)
    assert status == 200, answer
    outputs = {o["name"]: o for o in answer["outputs"]}
    assert set(outputs) == {"embedding", "prompt_tokens"}  # prompt_tokens: usage for /v1/embeddings
    output = outputs["embedding"]
    assert output["datatype"] == "FP32"
    return np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])


def test_embeddings_put_paraphrases_closer_than_unrelated_text(
    triton: local.LocalTriton, minilm_artifact: tuple[ArtifactSummary, Path]
) -> None:
    summary, _ = minilm_artifact
    assert summary.accuracy is not None and (summary.accuracy.cosine_similarity or 0) >= 0.99
    vectors = _embed(
        triton,
        [
            "The cat sat on the mat.",
            "A cat was sitting on the rug.",
            "Quarterly revenue grew by eight percent.",
        ],
    )
    assert vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    paraphrase, unrelated = float(vectors[0] @ vectors[1]), float(vectors[0] @ vectors[2])
    assert paraphrase > unrelated + 0.3


def test_served_embeddings_match_sentence_transformers_pooling(triton: local.LocalTriton, minilm_dir: Path) -> None:
    """Mean pooling + L2 of the fp32 torch model, computed here, agrees with the served artifact."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    texts = ["Photosynthesis turns light into sugar.", "The train was late again."]
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    model = AutoModel.from_pretrained(minilm_dir).eval()
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    reference = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()
    served = _embed(triton, texts)
    assert (served * reference).sum(axis=1).min() > 0.98


def test_budget_failure_on_the_real_model_publishes_nothing(
    smollm2_gguf: Path, slow_root: Path, export_cache: Path
) -> None:
    """Plain RTN int4 on SmolLM2 is far off fp32: the gate must refuse it with the table."""
    code, summary, out = optimize(
        ["--source", str(smollm2_gguf), "--task", "text-generation", "--name", "smollm2",
         "--recipes", "int4-rtn-b32", "--export-cache", str(export_cache), "--eval-limit", "12",
         "--speed-rounds", "0"],
        slow_root,
        "smollm2-rtn",
    )  # fmt: skip
    assert code != 0 and summary.reason == "AccuracyBudgetExceeded"
    assert "int4-rtn-b32" in summary.message
    assert not out.exists()
