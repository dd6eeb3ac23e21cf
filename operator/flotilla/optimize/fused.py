"""The fused decoder graph the CPU recipes quantize: onnxruntime-genai's model builder.

optimum's export is a faithful trace of the torch model: every layer's rotary embedding,
repeat_kv and mask arithmetic become ~100 small ONNX nodes (3,100 per SmolLM2 step). At decode
time, batch 1, running those costs as much as the quantized matmuls themselves, so the smaller
weights bought only ~1.5x. The model builder of onnxruntime-genai writes the same network with
onnxruntime's fused kernels instead (GroupQueryAttention with rotary and the KV cache inside,
SkipSimplifiedLayerNormalization, one qkv matmul): ~11 nodes a layer, the same input and output
names as optimum's export minus `position_ids` (GroupQueryAttention reads each row's length
from the attention mask, so batches are right-padded: flotilla.json `padding_side`).

optimum's export stays the fp32 reference every candidate is scored against: the builder's
graph is a second, independent implementation, and the gate checks it like any other.

The builder runs in a subprocess (`python -m flotilla.optimize.fused`): it holds the torch
model and the graph in memory at once, and all of that is returned when it exits. It has no
network access to use (remote code off, no token): a GGUF source is first de-quantized by
transformers into a Hugging Face checkpoint directory it can read.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from .progress import log

BUILDER = "onnxruntime-genai model builder"
LOG_TAIL = 600  # characters of the builder's output kept in a failure message


def build(source_path: Path, gguf_file: str | None, out: Path, expected_inputs: set[str]) -> tuple[Path | None, str]:
    """(fused model.onnx in `out`, "") or (None, why not): never fatal, optimum's graph remains."""
    out.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "flotilla.optimize.fused", "--source", str(source_path), "--out", str(out)]
    if gguf_file:
        command += ["--gguf-file", gguf_file]
    logfile = out.parent / f"{out.name}.log"
    with logfile.open("wb") as sink:
        result = subprocess.run(command, stdout=sink, stderr=subprocess.STDOUT, check=False)
    text = logfile.read_text(errors="replace")
    logfile.unlink(missing_ok=True)
    if result.returncode != 0:
        shutil.rmtree(out, ignore_errors=True)
        return None, f"{BUILDER} failed (exit {result.returncode}): {_last_lines(text)}"
    problem = _interface_problem(out / "model.onnx", expected_inputs)
    if problem:
        shutil.rmtree(out, ignore_errors=True)
        return None, problem
    return out / "model.onnx", ""


def _last_lines(text: str) -> str:
    lines = [line.strip() for line in text.replace("\r", "\n").splitlines() if line.strip()]
    return " | ".join(lines[-4:])[-LOG_TAIL:]


def _interface_problem(onnx_path: Path, expected_inputs: set[str]) -> str:
    """What keeps the served decoding loop from driving this graph, or ""."""
    import onnx

    if not onnx_path.is_file():
        return f"{BUILDER} wrote no model.onnx"
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    inputs = {i.name for i in graph.input}
    outputs = {o.name for o in graph.output}
    extra = sorted(inputs - expected_inputs)
    if extra:
        return f"the fused graph wants inputs the export does not have: {', '.join(extra)}"
    if "logits" not in outputs or not any(o.startswith("present.") for o in outputs):
        return "the fused graph lacks logits or present.* outputs"
    if not any(n.op_type == "GroupQueryAttention" for n in graph.node):
        return "the fused graph has no GroupQueryAttention (right padding would be wrong)"
    return ""


def _checkpoint(source: Path, gguf_file: str | None, scratch: Path) -> Path:
    """A directory the builder reads: the source itself, or a GGUF de-quantized by transformers."""
    if not gguf_file:
        return source
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(source), gguf_file=gguf_file, torch_dtype=torch.float32)
    auto: Any = AutoTokenizer  # untyped in transformers' stubs
    tokenizer = auto.from_pretrained(str(source), gguf_file=gguf_file)
    model.save_pretrained(str(scratch))
    tokenizer.save_pretrained(str(scratch))
    del model
    return scratch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="build the fused fp32 decoder graph (run by fused.build)")
    parser.add_argument("--source", type=Path, required=True)
    parser.add_argument("--gguf-file", default=None)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    scratch = args.out.parent / f"{args.out.name}.checkpoint"
    cache = args.out.parent / f"{args.out.name}.cache"
    try:
        checkpoint = _checkpoint(args.source, args.gguf_file, scratch)
        from onnxruntime_genai.models.builder import create_model

        log(f"fused graph: {BUILDER} on {checkpoint}")
        create_model("", str(checkpoint), str(args.out), "fp32", "cpu", str(cache), hf_token="false", hf_remote=False)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)
    # Only the graph is ours to take: tokenizer files come from the export.
    for extra in args.out.iterdir():
        if not extra.name.startswith("model.onnx"):
            extra.unlink() if extra.is_file() else shutil.rmtree(extra)
    return 0


if __name__ == "__main__":
    sys.exit(main())
