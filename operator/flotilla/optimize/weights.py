"""Block-wise weight-only quantization with an exact per-block offset, on fast kernels.

onnxruntime's RTN quantizer rounds each block's zero point to an integer. That shifts every
weight of the block by up to half a quantization step in the same direction, and on small
models the shifts add up: on SmolLM2-135M it drops next-token agreement with fp32 to ~60%.
MatMulNBits accepts float zero points, but onnxruntime's CPU kernel then de-quantizes the
whole matrix on every call (decode gets ~10x slower).

So the 4-bit part is stored without zero points (MatMulNBits' implicit 8) and each block's
offset is added back exactly by two small matmuls:

    w = s * (q - 8) + c,   s = (max - min) / 15,   q = round((w - min) / s),   c = min + 8 s
    x @ W = MatMulNBits(x) + (x @ E) @ C

where E sums each block of 32 inputs (a [K, K/32] 0/1 matrix) and C holds the offsets
([K/32, N]). Both extra matmuls are 32x smaller than the layer. Weights that already lie on a
4-bit min/max grid (a de-quantized GGUF Q4_1 checkpoint) come back bit-exact; others get
min/max rounding without any zero-point error.

The matrices that produce the logits get 8-bit symmetric blocks instead (again exact for
weights on such a grid, as GGUF Q8_0 embeddings are), and the token-embedding Gather shares
those 8-bit bytes when the embeddings are tied to the head.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
U8 = npt.NDArray[np.uint8]
MS_DOMAIN = "com.microsoft"
SMALL_HEAD = 4096  # output width below which a head (a classifier) stays fp32
RERANK_TOP_K = 16


def _blocks(w: F32, block: int) -> tuple[F32, int]:
    """[K, N] -> [N, K/block, block] (zero-padded along K), the layout MatMulNBits packs."""
    k, n = w.shape
    kb = (k + block - 1) // block
    padded = np.pad(w, ((0, kb * block - k), (0, 0)))
    return np.ascontiguousarray(padded.T.reshape(n, kb, block)), kb


def quantize_4bit(w: F32, block: int) -> tuple[U8, F32, F32]:
    """(packed [N, KB, block/2], scales [N, KB], residue [KB, N]) with w = s * (q - 8) + residue.

    Min/max rounding: q = round((w - min) / s), s = (max - min) / 15. Stored the way
    MatMulNBits reads a block without zero points (implicit zero point 8); the block's
    offset, min + 8 s, is the residue added back by the correction matmul.
    """
    b, _ = _blocks(w.astype(np.float32), block)
    lo, hi = b.min(axis=-1), b.max(axis=-1)
    scale = ((hi - lo) / 15.0).astype(np.float32)
    scale[scale == 0] = 1.0  # a constant block: q = 0, the residue carries the value
    q = np.clip(np.rint((b - lo[..., None]) / scale[..., None]), 0, 15).astype(np.uint8)
    residue = (lo + 8.0 * scale).astype(np.float32)  # [N, KB]
    packed = (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)
    return packed, scale, np.ascontiguousarray(residue.T)


def quantize_8bit(w: F32, block: int) -> tuple[U8, F32, U8]:
    """Symmetric 8-bit blocks stored as uint8 with zero point 128: (packed [N, KB, block], scales, zps)."""
    b, _ = _blocks(w.astype(np.float32), block)
    scale = (np.abs(b).max(axis=-1) / 127.0).astype(np.float32)
    scale[scale == 0] = 1.0
    q = (np.clip(np.rint(b / scale[..., None]), -127, 127) + 128).astype(np.uint8)
    return q, scale, np.full(scale.shape, 128, dtype=np.uint8)


def dequantize_4bit(packed: U8, scale: F32, residue: F32, k: int) -> F32:
    """Inverse of quantize_4bit, [K, N] (for tests and checks)."""
    n, kb, _ = packed.shape
    q = np.empty((n, kb, packed.shape[2] * 2), dtype=np.float32)
    q[..., 0::2] = packed & 0x0F
    q[..., 1::2] = packed >> 4
    w = scale[..., None] * (q - 8.0) + residue.T[..., None]
    return np.ascontiguousarray(w.reshape(n, -1)[:, :k].T).astype(np.float32)


def _block_sum_matrix(k: int, block: int) -> F32:
    kb = (k + block - 1) // block
    e = np.zeros((k, kb), dtype=np.float32)
    e[np.arange(k), np.arange(k) // block] = 1.0
    return e


class _Graph:
    """Small helper over an onnx GraphProto: unique names, initializer lookups."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.graph = model.graph
        self.inits = {i.name: i for i in self.graph.initializer}
        self.new_inits: list[Any] = []
        self._names: set[str] = set(self.inits)

    def const(self, name: str, array: npt.NDArray[Any]) -> str:
        from onnx import numpy_helper

        base, i = name, 0
        while name in self._names:
            i += 1
            name = f"{base}_{i}"
        self._names.add(name)
        self.new_inits.append(numpy_helper.from_array(array, name))
        return name

    def weight(self, name: str) -> F32 | None:
        from onnx import numpy_helper

        init = self.inits.get(name)
        if init is None or len(init.dims) != 2 or init.data_type != 1:  # 1 = FLOAT
            return None
        return numpy_helper.to_array(init).astype(np.float32)


def quantize_model(
    model: Any,
    *,
    block_size: int = 32,
    accuracy_level: int = 4,
    eight_bit_nodes: set[str],
    head_accuracy_level: int | None = None,
    rerank: int = RERANK_TOP_K,
) -> Any:
    """Rewrite `model` in place: 4-bit MatMuls with residue correction, 8-bit heads and embeddings.

    accuracy_level is MatMulNBits' compute type for the 4-bit layers (1: fp32, 4: int8
    activations); head_accuracy_level the same for the 8-bit heads (default: accuracy_level).
    rerank > 0 recomputes the top `rerank` logits of a large 8-bit head exactly (see _rerank).
    """
    from onnx import helper

    g = _Graph(model)
    nodes: list[Any] = []
    block_sums: dict[int, str] = {}  # K -> name of E, shared by every layer with that K
    head_bytes: dict[str, tuple[str, str, str, F32]] = {}  # weight name -> (q, scale, zp, fp32 copy)
    used_weights: set[str] = set()
    summed: set[str] = set()
    for node in g.graph.node:
        w = g.weight(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        if w is None:
            nodes.append(node)
            continue
        k, n = w.shape
        attrs: dict[str, Any] = {"K": k, "N": n, "block_size": block_size, "accuracy_level": accuracy_level}
        used_weights.add(node.input[1])
        if node.name in eight_bit_nodes and n < SMALL_HEAD:
            used_weights.discard(node.input[1])
            nodes.append(node)  # a classifier head: tiny, and it decides the label; keep fp32
            continue
        if node.name in eight_bit_nodes:
            q8, s8, z8 = quantize_8bit(w, block_size)
            head_level = accuracy_level if head_accuracy_level is None else head_accuracy_level
            head_attrs = attrs | {"accuracy_level": head_level}
            names = (
                g.const(node.input[1] + "_q8", q8),
                g.const(node.input[1] + "_s8", s8),
                g.const(node.input[1] + "_z8", z8),
            )
            head_bytes[node.input[1]] = (*names, w)
            approx = node.output[0] + "_approx" if rerank else node.output[0]
            nodes.append(
                helper.make_node(
                    "MatMulNBits",
                    [node.input[0], *names],
                    [approx],
                    name=node.name + "_Q8",
                    domain=MS_DOMAIN,
                    bits=8,
                    **head_attrs,
                )
            )
            if rerank:
                nodes += _rerank(g, node, approx, names, (n, k), block_size, rerank)
            continue
        packed, scale, residue = quantize_4bit(w, block_size)
        q_out = node.output[0] + "_q4"
        inputs = [
            node.input[0],
            g.const(node.input[1] + "_q4", packed),
            g.const(node.input[1] + "_s4", scale),
        ]
        nodes.append(
            helper.make_node("MatMulNBits", inputs, [q_out], name=node.name + "_Q4", domain=MS_DOMAIN, bits=4, **attrs)
        )
        if k not in block_sums:
            block_sums[k] = g.const(f"flotilla_block_sum_{k}_{block_size}", _block_sum_matrix(k, block_size))
        # q/k/v (and gate/up) read the same input: one block sum serves them all.
        sums = f"{node.input[0]}_blocksum_{k}"
        if sums not in summed:
            summed.add(sums)
            nodes.append(
                helper.make_node("MatMul", [node.input[0], block_sums[k]], [sums], name=f"{node.name}_BlockSum")
            )
        corr = node.output[0] + "_residue"
        nodes.append(
            helper.make_node(
                "MatMul", [sums, g.const(node.input[1] + "_r4", residue)], [corr], name=f"{node.name}_Residue"
            )
        )
        nodes.append(helper.make_node("Add", [q_out, corr], list(node.output), name=f"{node.name}_Corrected"))
    nodes = [new for node in nodes for new in _quantize_embedding(g, node, head_bytes, block_size, used_weights)]
    del g.graph.node[:]
    g.graph.node.extend(nodes)
    _drop_initializers(g, used_weights)
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return model


def _rerank(
    g: _Graph, node: Any, approx: str, q8: tuple[str, str, str], shape: tuple[int, int], block: int, top_k: int
) -> list[Any]:
    """Exact logits for the `top_k` best tokens of the fast 8-bit head, scattered into its output.

    The head's int8-activation kernel (fast) perturbs logits by a few tenths, enough to flip
    near-ties such as the first token of an answer. Its 8-bit weights themselves are exact
    (GGUF Q8_0) or nearly so, so the candidates' logits are recomputed in fp32 from the same
    bytes (GatherBlockQuantized de-quantizes rows) and written back: greedy decoding, top-1
    agreement and the probability mass that matters see fp32-compute logits, at the cost of
    top_k x hidden multiply-adds per position.
    """
    from onnx import helper

    n, k = shape
    q_name, s_name, z_name = q8
    base = node.name.strip("/").replace("/", "_") + "_rerank"
    view = g.const(base + "_shape", np.array([n, k], dtype=np.int64))
    top = g.const(base + "_k", np.array([top_k], dtype=np.int64))
    axis = g.const(base + "_axis", np.array([-1], dtype=np.int64))
    axis2 = g.const(base + "_axis2", np.array([-2], dtype=np.int64))
    t = {x: f"{base}_{x}" for x in ("table", "values", "ids", "rows", "hidden", "prod", "exact")}
    return [
        helper.make_node("Reshape", [q_name, view], [t["table"]], name=base + "_Table"),
        helper.make_node("TopK", [approx, top], [t["values"], t["ids"]], name=base + "_TopK", axis=-1),
        helper.make_node(
            "GatherBlockQuantized",
            [t["table"], t["ids"], s_name, z_name],
            [t["rows"]],
            name=base + "_Rows",
            domain=MS_DOMAIN,
            bits=8,
            block_size=block,
            gather_axis=0,
            quantize_axis=1,
        ),
        helper.make_node("Unsqueeze", [node.input[0], axis2], [t["hidden"]], name=base + "_Hidden"),
        helper.make_node("Mul", [t["rows"], t["hidden"]], [t["prod"]], name=base + "_Mul"),
        helper.make_node("ReduceSum", [t["prod"], axis], [t["exact"]], name=base + "_Dot", keepdims=0),
        helper.make_node(
            "ScatterElements", [approx, t["ids"], t["exact"]], list(node.output), name=base + "_Scatter", axis=-1
        ),
    ]


def _quantize_embedding(
    g: _Graph, node: Any, heads: dict[str, tuple[str, str, str, F32]], block: int, used: set[str]
) -> list[Any]:
    """Gather on a float [vocab, hidden] table -> GatherBlockQuantized (8-bit), sharing a tied head."""
    from onnx import helper

    if node.op_type != "Gather" or not node.input or node.input[0] not in g.inits:
        return [node]
    table = g.weight(node.input[0])
    if table is None or table.shape[1] % block != 0 or table.shape[0] < 1000:
        return [node]  # small tables (position ids, token types) are not worth it
    shared = next((v for v in heads.values() if v[3].shape == table.T.shape and np.array_equal(v[3], table.T)), None)
    if shared is not None:
        q_name, s_name, z_name = shared[:3]
    else:
        q8, s8, z8 = quantize_8bit(np.ascontiguousarray(table.T), block)
        q_name = g.const(node.input[0] + "_q8", q8)
        s_name = g.const(node.input[0] + "_s8", s8)
        z_name = g.const(node.input[0] + "_z8", z8)
    used.add(node.input[0])
    # MatMulNBits keeps 8-bit B as [N, K/block, block]: for a tied head N is the vocabulary and
    # K the hidden size, i.e. exactly the [vocab, hidden] table GatherBlockQuantized expects,
    # once the data is seen as 2-D (a Reshape is free on an initializer's view).
    data = g.const(q_name + "_2d_shape", np.array([table.shape[0], table.shape[1]], dtype=np.int64))
    reshaped = node.input[0] + "_q8_2d"
    return [
        helper.make_node("Reshape", [q_name, data], [reshaped], name=node.name + "_Q8View"),
        helper.make_node(
            "GatherBlockQuantized",
            [reshaped, node.input[1], s_name, z_name],
            list(node.output),
            name=node.name + "_Q8",
            domain=MS_DOMAIN,
            bits=8,
            block_size=block,
            gather_axis=0,
            quantize_axis=1,
        ),
    ]


def _drop_initializers(g: _Graph, replaced: set[str]) -> None:
    still_used = {i for node in g.graph.node for i in node.input}
    keep = [i for i in g.graph.initializer if i.name not in replaced or i.name in still_used]
    del g.graph.initializer[:]
    g.graph.initializer.extend(keep + g.new_inits)
