"""`--target tensorrt`: a TensorRT engine built with trtexec, served through onnxruntime's TensorRT EP.

Runs only in NVIDIA's TensorRT container on a GPU node (trtexec on PATH); tested here only as
far as the generated command and files go (docs/optimizer.md says so).

- Encoders (feature-extraction, text-classification): trtexec builds `model.onnx.engine` from
  the chosen ONNX graph (`--fp16`; `--int8` as well for a QDQ graph) with a dynamic-shape
  profile, and `model.onnx` becomes an EPContext wrapper pointing at it, which onnxruntime's
  TensorRT execution provider loads without rebuilding. model.py, tokenizer and text I/O
  stay the same as on every other target.
- text-generation: a KV-cache decoding loop does not fit one trtexec engine (that is
  TensorRT-LLM's job); the artifact keeps the ONNX graph and the TensorRT EP builds and
  caches its engine (FP16) when Triton loads the model.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from .errors import OptimizeError

TRTEXEC_ENV = "FLOTILLA_TRTEXEC"
MAX_BATCH = 8
OPT_TOKENS = 128
MAX_TOKENS = 512


def trtexec_path() -> str | None:
    return os.environ.get(TRTEXEC_ENV) or shutil.which("trtexec")


def check_available() -> None:
    if trtexec_path() is None:
        raise OptimizeError(
            "UnsupportedModel",
            "target tensorrt needs trtexec (NVIDIA's TensorRT container on a GPU node); not found on PATH",
        )


def _shape(names: list[str], batch: int, tokens: int) -> str:
    return ",".join(f"{n}:{batch}x{tokens}" for n in names)


def trtexec_command(onnx_path: Path, engine: Path, input_names: list[str], precision: str) -> list[str]:
    """The trtexec invocation for a [batch, tokens] encoder graph."""
    command = [
        trtexec_path() or "trtexec",
        f"--onnx={onnx_path}",
        f"--saveEngine={engine}",
        f"--minShapes={_shape(input_names, 1, 1)}",
        f"--optShapes={_shape(input_names, MAX_BATCH, OPT_TOKENS)}",
        f"--maxShapes={_shape(input_names, MAX_BATCH, MAX_TOKENS)}",
        "--skipInference",
    ]
    if precision in {"fp16", "fp32"}:
        command.append("--fp16" if precision == "fp16" else "--noTF32")
    elif precision == "int8":
        command += ["--int8", "--fp16"]  # explicit (QDQ) int8, fp16 where a layer stays unquantized
    else:
        raise OptimizeError("UnsupportedModel", f"target tensorrt supports fp16, int8 and fp32, not {precision}")
    return command


def wrapper_model(onnx_path: Path, engine_name: str) -> Any:
    """An ONNX model with one EPContext node that hands the whole graph to the prebuilt engine."""
    import onnx
    from onnx import helper

    source = onnx.load(str(onnx_path), load_external_data=False)
    node = helper.make_node(
        "EPContext",
        [i.name for i in source.graph.input],
        [o.name for o in source.graph.output],
        name="flotilla_trt_engine",
        domain="com.microsoft",
        embed_mode=0,
        ep_cache_context=engine_name,
        main_context=1,
        source="TensorrtExecutionProvider",
    )
    graph = helper.make_graph([node], "flotilla_trt", list(source.graph.input), list(source.graph.output))
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )


def build(onnx_path: Path, task: str, precision: str, out_dir: Path) -> Path:
    """Engine + wrapper for encoders (returns the wrapper's path); the graph as is for generation."""
    if task == "text-generation":
        return onnx_path
    import onnx

    out_dir.mkdir(parents=True, exist_ok=True)
    inputs = [i.name for i in onnx.load(str(onnx_path), load_external_data=False).graph.input]
    engine_name = "model.onnx.engine"
    command = trtexec_command(onnx_path, out_dir / engine_name, inputs, precision)
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = (result.stdout + result.stderr)[-800:]
        raise OptimizeError("OptimizerError", f"trtexec failed ({result.returncode}): {tail}")
    onnx.save_model(wrapper_model(onnx_path, engine_name), str(out_dir / "model.onnx"))
    return out_dir / "model.onnx"
