"""Quantization recipes: fp32 ONNX in, a smaller ONNX out. onnxruntime does the heavy lifting.

| recipe                     | how                                                              | runs on |
|----------------------------|------------------------------------------------------------------|---------|
| fp32                       | the optimum export as is (reference)                             | any     |
| int8-dynamic-per-channel   | quantize_dynamic, MatMul weights int8 per output channel         | CPU     |
| int8-dynamic-per-tensor    | quantize_dynamic, one scale per weight tensor                    | CPU     |
| int8-dynamic-reduce-range  | per-channel with 7-bit weights (no VPMADDUBSW saturation on AVX2)| CPU     |
| int8-static-qdq            | quantize_static, QDQ, activations calibrated on text             | CPU/TRT |
| int8-weight-only-b32       | MatMulNBits 8-bit blocks of 32, int8 compute (accuracy_level 4)  | CPU/GPU |
| int4-rtn-b32               | MatMulNBits 4-bit blocks of 32 (onnxruntime's RTN), head 8-bit    | CPU/GPU |
| int4-grid-b32              | MatMulNBits 4-bit min/max + exact block offsets (see weights),   | CPU/GPU |
|                            | fp32 compute; 8-bit head and embeddings with int8 compute        |         |
| int4-grid-b32-int8         | the same with int8 activations everywhere (accuracy_level 4)     | CPU/GPU |
| fp16                       | float16 weights and compute, fp32 I/O                            | GPU     |

Every int8/int4 recipe leaves the sensitive nodes alone or gives them 8 bits: the matrix that
produces the logits (lm_head, the classifier) and the token embeddings. Quantization works
on a copy of the export with onnxruntime's basic (hardware-independent) graph optimizations
applied, so constant transposes such as a tied lm_head become plain initializers.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy.typing as npt

from . import weights
from .errors import OptimizeError

EXTERNAL_DATA = "model.onnx.data"


@dataclass(frozen=True)
class Recipe:
    name: str
    precision: str  # int8 | int4 | fp16 | fp32
    description: str
    gpu_only: bool = False
    needs_calibration: bool = False
    params: dict[str, Any] = field(default_factory=dict)


RECIPES: tuple[Recipe, ...] = (
    Recipe("fp32", "fp32", "optimum export, fp32 (reference)"),
    Recipe(
        "int8-dynamic-per-channel",
        "int8",
        "dynamic int8, per-channel weights",
        params={"per_channel": True, "reduce_range": False},
    ),
    Recipe(
        "int8-dynamic-per-tensor",
        "int8",
        "dynamic int8, per-tensor weights",
        params={"per_channel": False, "reduce_range": False},
    ),
    Recipe(
        "int8-dynamic-reduce-range",
        "int8",
        "dynamic int8, per-channel 7-bit weights",
        params={"per_channel": True, "reduce_range": True},
    ),
    Recipe("int8-static-qdq", "int8", "static int8 QDQ, calibrated activations", needs_calibration=True),
    Recipe(
        "int8-weight-only-b32",
        "int8",
        "MatMulNBits 8-bit, block 32, int8 compute",
        params={"bits": 8, "block_size": 32, "accuracy_level": 4},
    ),
    Recipe(
        "int4-rtn-b32",
        "int4",
        "MatMulNBits 4-bit RTN, block 32, int8 compute, 8-bit head",
        params={"block_size": 32, "accuracy_level": 4},
    ),
    Recipe(
        "int4-grid-b32",
        "int4",
        "MatMulNBits 4-bit min/max blocks of 32 + exact offsets, 8-bit head/embeddings, fp32 compute",
        params={"block_size": 32, "accuracy_level": 1, "head_accuracy_level": 4},
    ),
    Recipe(
        "int4-grid-b32-int8",
        "int4",
        "int4-grid-b32 with int8 activations in every layer (faster, less exact)",
        params={"block_size": 32, "accuracy_level": 4, "head_accuracy_level": 4},
    ),
    Recipe("fp16", "fp16", "float16 weights and compute (GPU)", gpu_only=True),
)
RECIPES_BY_NAME = {r.name: r for r in RECIPES}
# What trtexec builds (tensorrt.trtexec_command): fp16, fp32, and explicit (QDQ) int8. Dynamic int8
# (MatMulInteger) and MatMulNBits graphs are not TensorRT networks; int4 has no TensorRT recipe at
# all (the CRD refuses precision int4 with target tensorrt).
TENSORRT_RECIPES = frozenset({"fp32", "int8-static-qdq", "fp16"})


def buildable(recipe: Recipe, target: str) -> bool:
    return target != "tensorrt" or recipe.name in TENSORRT_RECIPES


def candidates(precision: str, gpu: bool, only: Sequence[str] | None = None, target: str = "onnx") -> list[Recipe]:
    """The recipes `precision` asks for that `target` can build. auto: every optimized one."""
    if only:
        unknown = [n for n in only if n not in RECIPES_BY_NAME]
        if unknown:
            raise OptimizeError("InvalidArguments", f"unknown recipe(s) {', '.join(unknown)}")
        chosen = [RECIPES_BY_NAME[n] for n in only]
    elif precision == "auto":
        chosen = [r for r in RECIPES if r.precision != "fp32"]
    else:
        chosen = [r for r in RECIPES if r.precision == precision]
    return [r for r in chosen if (gpu or not r.gpu_only) and buildable(r, target)]


def reads_prepared(recipe: Recipe) -> bool:
    """Whether `recipe` quantizes the prepared graph (fp32 and fp16 read the raw export)."""
    return recipe.name not in {"fp32", "fp16"}


def save_model(model: Any, path: Path) -> None:
    """Save with the weights in one external file (graphs over 2 GiB, and mmap-friendly)."""
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    # onnx appends to an existing external-data file: start from nothing.
    (path.parent / EXTERNAL_DATA).unlink(missing_ok=True)
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=EXTERNAL_DATA,
        size_threshold=1024,
    )


def prepare_for_quantization(fp32: Path, out: Path) -> Path:
    """fp32 graph with onnxruntime's basic optimizations (constant folding, no fused kernels)."""
    import onnxruntime as ort

    out.mkdir(parents=True, exist_ok=True)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(out / "model.onnx")
    options.add_session_config_entry("session.optimized_model_external_initializers_file_name", EXTERNAL_DATA)
    options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    ort.InferenceSession(str(fp32), options, providers=["CPUExecutionProvider"])
    return out / "model.onnx"


def sensitive_nodes(model: Any) -> list[str]:
    """Names of the MatMul/Gemm nodes that produce a graph output without another matmul between.

    Those compute the logits (lm_head of a decoder, the classification head): quantization
    error there lands directly on the predictions.
    """
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    found: list[str] = []
    seen: set[str] = set()
    stack = [o.name for o in graph.output if o.name in {"logits"}]
    while stack:
        tensor = stack.pop()
        node = producer.get(tensor)
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type in {"MatMul", "Gemm"}:
            found.append(node.name)
            continue
        stack.extend(node.input)
    return found


def _copy_fp32(src: Path, dst: Path) -> None:
    import onnx

    save_model(onnx.load(str(src)), dst)


def _dynamic(src: Path, dst: Path, recipe: Recipe, exclude: list[str]) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    dst.parent.mkdir(parents=True, exist_ok=True)
    quantize_dynamic(
        str(src),
        str(dst),
        per_channel=bool(recipe.params["per_channel"]),
        reduce_range=bool(recipe.params["reduce_range"]),
        weight_type=QuantType.QInt8,
        op_types_to_quantize=["MatMul"],
        nodes_to_exclude=exclude,
        use_external_data_format=True,
        extra_options={"MatMulConstBOnly": True},
    )


class _CalibrationReader:
    """Feeds calibration batches to onnxruntime's calibrator (the CalibrationDataReader protocol)."""

    def __init__(self, batches: Sequence[dict[str, npt.NDArray[Any]]]) -> None:
        self._iter: Iterator[dict[str, npt.NDArray[Any]]] = iter(batches)

    def get_next(self) -> dict[str, npt.NDArray[Any]] | None:
        return next(self._iter, None)


def _static(src: Path, dst: Path, exclude: list[str], calibration: Sequence[dict[str, npt.NDArray[Any]]]) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if not calibration:
        raise OptimizeError("InvalidArguments", "int8-static-qdq needs calibration text")
    dst.parent.mkdir(parents=True, exist_ok=True)
    quantize_static(
        str(src),
        str(dst),
        _CalibrationReader(calibration),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        op_types_to_quantize=["MatMul"],
        nodes_to_exclude=exclude,
        calibrate_method=CalibrationMethod.MinMax,
        use_external_data_format=True,
        extra_options={"MatMulConstBOnly": True, "CalibMovingAverage": True},
    )


def _rtn(src: Path, dst: Path, recipe: Recipe, exclude: list[str]) -> None:
    """onnxruntime's MatMulNBits quantizer (RTN); the excluded head gets 8 bits instead of none."""
    import onnx
    from onnxruntime.quantization import matmul_nbits_quantizer as mq

    bits = int(recipe.params.get("bits", 4))
    block = int(recipe.params["block_size"])
    level = int(recipe.params["accuracy_level"])
    model = onnx.load(str(src))
    body = mq.DefaultWeightOnlyQuantConfig(
        block_size=block, is_symmetric=False, accuracy_level=level, bits=bits, op_types_to_quantize=("MatMul",)
    )
    quantizer = mq.MatMulNBitsQuantizer(model, nodes_to_exclude=list(exclude), algo_config=body)
    quantizer.process()
    model = quantizer.model.model
    if exclude:
        head = mq.DefaultWeightOnlyQuantConfig(
            block_size=block, is_symmetric=True, accuracy_level=level, bits=8, op_types_to_quantize=("MatMul",)
        )
        nodes = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name not in exclude]
        quantizer = mq.MatMulNBitsQuantizer(model, nodes_to_exclude=nodes, algo_config=head)
        quantizer.process()
        model = quantizer.model.model
    save_model(model, dst)


def _grid(src: Path, dst: Path, recipe: Recipe, exclude: list[str]) -> None:
    import onnx

    model = onnx.load(str(src))
    weights.quantize_model(
        model,
        block_size=int(recipe.params["block_size"]),
        accuracy_level=int(recipe.params["accuracy_level"]),
        head_accuracy_level=int(recipe.params["head_accuracy_level"]),
        eight_bit_nodes=set(exclude),
    )
    save_model(model, dst)


def _fp16(src: Path, dst: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True, disable_shape_infer=True)
    save_model(model, dst)


Applier = Callable[[Path, Path], None]


def apply(
    recipe: Recipe,
    fp32: Path,
    prepared: Path,
    dst: Path,
    calibration: Sequence[dict[str, npt.NDArray[Any]]] = (),
) -> Path:
    """Write `recipe` applied to the export into dst (a .onnx path); return dst.

    `fp32` is the raw export, `prepared` its basic-optimized copy (what quantizers read).
    """
    import onnx

    exclude = sensitive_nodes(onnx.load(str(prepared), load_external_data=False))
    if recipe.name == "fp32":
        _copy_fp32(fp32, dst)
    elif recipe.name.startswith("int8-dynamic"):
        _dynamic(prepared, dst, recipe, exclude)
    elif recipe.name == "int8-static-qdq":
        _static(prepared, dst, exclude, calibration)
    elif recipe.name in {"int8-weight-only-b32", "int4-rtn-b32"}:
        _rtn(prepared, dst, recipe, [] if recipe.name.startswith("int8") else exclude)
    elif recipe.name.startswith("int4-grid-b32"):
        _grid(prepared, dst, recipe, exclude)
    elif recipe.name == "fp16":
        _fp16(fp32, dst)
    else:  # pragma: no cover - RECIPES and this table move together
        raise OptimizeError("OptimizerError", f"recipe {recipe.name} has no implementation")
    return dst


def model_size(onnx_path: Path) -> int:
    """Bytes of the graph and its external data."""
    return sum(p.stat().st_size for p in onnx_path.parent.iterdir() if p.name.startswith(onnx_path.name))


def remove(onnx_path: Path) -> None:
    shutil.rmtree(onnx_path.parent, ignore_errors=True)
