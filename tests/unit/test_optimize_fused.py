"""The fused decoder graph (onnxruntime-genai's model builder) the CPU recipes quantize."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flotilla.optimize import cli, export, fused, pipeline
from flotilla.optimize.source import resolve
from flotilla.triton import python_model

from .optimize_fixtures import tiny_bert, tiny_llama

FAST = ["--eval-limit", "12", "--speed-rounds", "1"]


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("llama") / "ckpt", seed=3)


@pytest.fixture(scope="module")
def exported(llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> export.Exported:
    work = tmp_path_factory.mktemp("export")
    return export.export(resolve(str(llama_dir), None, work), "text-generation", work / "out")


@pytest.fixture(scope="module")
def fused_graph(llama_dir: Path, exported: export.Exported, tmp_path_factory: pytest.TempPathFactory) -> Path:
    inputs = {i.name for i in python_model.make_session(exported.onnx).get_inputs()}
    onnx_path, why = fused.build(llama_dir, None, tmp_path_factory.mktemp("fused") / "graph", inputs)
    assert onnx_path is not None, why
    return onnx_path


def _logits(onnx_path: Path, ids: Any, mask: Any) -> Any:
    sess = python_model.make_session(onnx_path)
    feeds: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
    names = {i.name for i in sess.get_inputs()}
    if "position_ids" in names:
        feeds["position_ids"] = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
    for spec in sess.get_inputs():
        if spec.name.startswith("past_key_values"):
            feeds[spec.name] = np.zeros((ids.shape[0], spec.shape[1], 0, spec.shape[3]), dtype=np.float32)
    return sess.run(["logits"], feeds)[0]


def test_the_fused_graph_is_small_and_computes_what_the_export_computes(
    fused_graph: Path, exported: export.Exported
) -> None:
    import onnx

    graph = onnx.load(str(fused_graph), load_external_data=False).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("GroupQueryAttention") == 2  # one per layer
    assert "position_ids" not in {i.name for i in graph.input}
    assert not [p for p in fused_graph.parent.iterdir() if not p.name.startswith("model.onnx")]
    # Right-padded batch: every real position's logits match optimum's export of the same weights.
    ids = np.array([[5, 9, 14, 20, 33, 41], [7, 8, 2, 2, 2, 2]], dtype=np.int64)
    mask = np.array([[1] * 6, [1, 1, 0, 0, 0, 0]], dtype=np.int64)
    got, want = _logits(fused_graph, ids, mask), _logits(exported.onnx, ids, mask)
    real = mask.astype(bool)
    np.testing.assert_allclose(got[real], want[real], atol=1e-4)


def test_an_architecture_the_builder_lacks_is_reported_not_raised(tmp_path: Path) -> None:
    bert = tiny_bert(tmp_path / "bert")
    onnx_path, why = fused.build(bert, None, tmp_path / "graph", {"input_ids", "attention_mask"})
    assert onnx_path is None
    assert "model builder failed" in why and "not currently supported" in why
    assert not (tmp_path / "graph").exists()


def test_only_the_fused_graph_is_served_right_padded() -> None:
    meta = {"task": "text-generation", "generation": {"eos_token_ids": [2]}}
    assert pipeline.served_metadata(meta, pipeline.FUSED_GRAPH)["generation"]["padding_side"] == "right"
    assert pipeline.served_metadata(meta, pipeline.OPTIMUM_GRAPH) == meta
    assert "padding_side" not in meta["generation"]  # the export's metadata is not changed in place
    encoder = {"task": "feature-extraction", "pooling": {"mode": "mean"}}
    assert pipeline.served_metadata(encoder, pipeline.FUSED_GRAPH) == encoder


def _optimize(llama_dir: Path, tmp: Path, recipes: str) -> tuple[Path, dict[str, Any]]:
    out = tmp / "store" / "key"
    term = tmp / "term"
    code = cli.main(
        ["--source", str(llama_dir), "--task", "text-generation", "--name", "tiny", "--out", str(out),
         "--recipes", recipes, "--max-top1-disagreement", "0.2", "--max-perplexity-increase", "0.2",
         "--termination-message-path", str(term), *FAST]
    )  # fmt: skip
    assert code == 0, term.read_text()
    return out, json.loads((out / "manifest.json").read_text())


def test_quantized_candidates_are_built_on_the_fused_graph_and_served_right_padded(
    llama_dir: Path, tmp_path: Path
) -> None:
    out, manifest = _optimize(llama_dir, tmp_path, "int4-grid-b32")
    assert manifest["graph"] == "fused" and manifest["fusedGraphError"] is None
    assert {c["graph"] for c in manifest["candidates"]} == {"fused"}
    assert "onnxruntime-genai" in manifest["versions"]
    meta = json.loads((out / "tiny" / "1" / "flotilla.json").read_text())
    assert meta["generation"]["padding_side"] == "right"
    engine = python_model.load_engine(out / "tiny" / "1")
    assert isinstance(engine, python_model.Generator) and engine.right_padded
    prompts = [engine.prompt_ids(t) for t in ["one", "two three four five", "six seven"]]
    together = engine.generate_ids(prompts, [5, 3, 5])
    alone = [engine.generate_ids([p], [m])[0] for p, m in zip(prompts, [5, 3, 5], strict=True)]
    assert together == alone


def test_without_the_fused_graph_the_export_is_quantized_and_served_left_padded(
    llama_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fused, "build", lambda *args: (None, "builder refused (test)"))
    out, manifest = _optimize(llama_dir, tmp_path, "int4-grid-b32")
    assert manifest["graph"] == "optimum" and manifest["fusedGraphError"] == "builder refused (test)"
    meta = json.loads((out / "tiny" / "1" / "flotilla.json").read_text())
    assert "padding_side" not in meta["generation"]
    engine = python_model.load_engine(out / "tiny" / "1")
    assert isinstance(engine, python_model.Generator) and not engine.right_padded
