"""Block-wise weight quantization: exact on a 4-bit/8-bit grid, runs on onnxruntime's kernels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from flotilla.optimize import recipes, weights


def grid_weights(k: int, n: int, block: int = 32, seed: int = 0) -> np.ndarray:
    """What de-quantized GGUF Q4_1 looks like: per block w = d*q + m, q in 0..15 (both ends used)."""
    rng = np.random.default_rng(seed)
    q = rng.integers(0, 16, (n, k // block, block))
    q[..., 0], q[..., 1] = 0, 15
    d = rng.uniform(0.001, 0.05, (n, k // block, 1))
    m = rng.uniform(-0.4, 0.1, (n, k // block, 1))  # includes all-positive blocks (m > 0)
    return np.ascontiguousarray((d * q + m).reshape(n, k).T).astype(np.float32)


def test_4bit_is_exact_on_a_min_max_grid() -> None:
    w = grid_weights(96, 40)
    packed, scale, residue = weights.quantize_4bit(w, 32)
    assert packed.shape == (40, 3, 16) and scale.shape == (40, 3) and residue.shape == (3, 40)
    assert np.allclose(weights.dequantize_4bit(packed, scale, residue, 96), w, atol=1e-6)


def test_4bit_error_is_bounded_on_arbitrary_weights() -> None:
    w = np.random.default_rng(1).normal(0, 0.02, (64, 24)).astype(np.float32)
    packed, scale, residue = weights.quantize_4bit(w, 32)
    err = np.abs(weights.dequantize_4bit(packed, scale, residue, 64) - w)
    step = np.repeat(scale.T, 32, axis=0)[:64]
    assert np.all(err <= step / 2 + 1e-6)


def test_8bit_symmetric_is_exact_on_a_q8_grid() -> None:
    rng = np.random.default_rng(2)
    q = rng.integers(-127, 128, (10, 2, 32))
    q[..., 0] = 127
    d = rng.uniform(0.001, 0.01, (10, 2, 1))
    w = np.ascontiguousarray((d * q).reshape(10, 64).T).astype(np.float32)
    packed, scale, zp = weights.quantize_8bit(w, 32)
    back = (packed.astype(np.float32) - 128) * scale[..., None]
    assert np.allclose(back.reshape(10, 64).T, w, atol=1e-7)
    assert (zp == 128).all()


def _toy_model(k: int, n: int, vocab: int, tied: np.ndarray, body: np.ndarray) -> object:
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("Gather", ["embed", "ids"], ["h"], name="embed_tokens"),
        helper.make_node("MatMul", ["h", "body"], ["h2"], name="layer"),
        helper.make_node("MatMul", ["h2", "head"], ["logits"], name="lm_head"),
    ]
    graph = helper.make_graph(
        nodes,
        "toy",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["b", "t"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", "t", vocab])],
        [
            numpy_helper.from_array(tied, "embed"),
            numpy_helper.from_array(body, "body"),
            numpy_helper.from_array(np.ascontiguousarray(tied.T), "head"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize("level", [0, 4])
def test_quantized_graph_runs_on_onnxruntime_and_shares_tied_embeddings(tmp_path: Path, level: int) -> None:
    import onnxruntime as ort

    k, vocab = 64, 4096
    rng = np.random.default_rng(3)
    q8 = rng.integers(-127, 128, (vocab, k // 32, 32))
    q8[..., 0] = 127
    tied = (q8 * rng.uniform(0.001, 0.01, (vocab, k // 32, 1))).reshape(vocab, k).astype(np.float32)
    body = grid_weights(k, k, seed=4)
    model = _toy_model(k, k, vocab, tied, body)
    assert recipes.sensitive_nodes(model) == ["lm_head"]
    ids = rng.integers(0, vocab, (2, 5)).astype(np.int64)
    expected = tied[ids] @ body @ tied.T

    weights.quantize_model(model, block_size=32, accuracy_level=level, eight_bit_nodes={"lm_head"})
    ops = [n.op_type for n in model.graph.node]  # type: ignore[attr-defined]
    assert ops.count("MatMulNBits") == 2 and "GatherBlockQuantized" in ops and "Gather" not in ops
    init_names = [i.name for i in model.graph.initializer]  # type: ignore[attr-defined]
    assert "embed" not in init_names and "head" not in init_names
    assert sum(name.endswith("_q8") for name in init_names) == 1  # one copy of the tied table
    path = tmp_path / "m" / "model.onnx"
    recipes.save_model(model, path)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["logits"], {"ids": ids})[0]
    tolerance = 1e-3 if level == 0 else 5e-2  # level 4 quantizes activations to int8 as well
    assert np.allclose(got, expected, rtol=tolerance, atol=tolerance * np.abs(expected).max())
    if level == 0:
        # The head's int8 compute is approximate, but its top candidates are recomputed exactly.
        assert (got.argmax(-1) == expected.argmax(-1)).all()
        assert np.allclose(got.max(-1), expected.max(-1), rtol=1e-5, atol=1e-5)
