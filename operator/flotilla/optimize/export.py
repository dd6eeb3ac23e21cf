"""Checkpoint -> fp32 ONNX with optimum, plus what the served model needs to know about it.

The model is loaded with transformers (GGUF files are de-quantized to fp32 by transformers),
checked against what optimum's ONNX exporter supports, and exported with
`onnx_export_from_model`. `text-generation` is exported with the KV cache
(`text-generation-with-past`), the others as plain encoders.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import OptimizeError
from .source import Source

EXPORT_TASKS = {
    "text-generation": "text-generation-with-past",
    "feature-extraction": "feature-extraction",
    "text-classification": "text-classification",
}
# Files the served model reads next to the ONNX graph.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "vocab.txt",
    "merges.txt",
    "vocab.json",
    "tokenizer.model",
    "added_tokens.json",
    "config.json",
    "generation_config.json",
)


@dataclass
class Exported:
    directory: Path  # holds model.onnx (+ external data) and the tokenizer files
    task: str
    model_type: str
    metadata: dict[str, Any] = field(default_factory=dict)  # becomes flotilla.json (minus "onnx")

    @property
    def onnx(self) -> Path:
        return self.directory / "model.onnx"


def _auto_class(task: str) -> Any:
    import transformers

    return {
        "text-generation": transformers.AutoModelForCausalLM,
        "feature-extraction": transformers.AutoModel,
        "text-classification": transformers.AutoModelForSequenceClassification,
    }[task]


def check_supported(model_type: str, task: str) -> None:
    """UnsupportedModel unless optimum can export `model_type` for `task`."""
    import optimum.exporters.onnx.model_configs  # noqa: F401  (registers the ONNX configs)
    from optimum.exporters.tasks import TasksManager

    try:
        tasks = TasksManager.get_supported_tasks_for_model_type(model_type, "onnx", library_name="transformers")
    except KeyError as exc:
        raise OptimizeError(
            "UnsupportedModel", f"architecture {model_type!r} cannot be exported to ONNX by optimum"
        ) from exc
    if EXPORT_TASKS[task] not in tasks:
        raise OptimizeError(
            "UnsupportedModel",
            f"architecture {model_type!r} does not support task {task} (supported: {', '.join(sorted(tasks))})",
        )


def load_config(source: Source) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(source.path), gguf_file=source.gguf_file)
    except Exception as exc:
        raise OptimizeError("SourceUnavailable", f"cannot read the model config of {source.uri}: {exc}") from exc


def load_model(source: Source, task: str) -> tuple[Any, Any]:
    """(model in fp32 eval mode, tokenizer). Corrupt or missing weights are SourceUnavailable."""
    import torch
    from transformers import AutoTokenizer

    try:
        auto: Any = AutoTokenizer  # untyped in transformers' stubs
        tokenizer = auto.from_pretrained(str(source.path), gguf_file=source.gguf_file)
    except Exception as exc:
        raise OptimizeError("SourceUnavailable", f"cannot load the tokenizer of {source.uri}: {exc}") from exc
    try:
        model = _auto_class(task).from_pretrained(
            str(source.path), gguf_file=source.gguf_file, torch_dtype=torch.float32
        )
    except Exception as exc:
        raise OptimizeError("SourceUnavailable", f"cannot load the weights of {source.uri}: {exc}") from exc
    return model.eval(), tokenizer


def _sentence_transformers_pooling(path: Path) -> dict[str, Any] | None:
    """Pooling and normalisation from a sentence-transformers layout, if the source has one."""
    modules_file = path / "modules.json"
    if not modules_file.is_file():
        return None
    modules = json.loads(modules_file.read_text())
    pooling: dict[str, Any] = {"mode": "mean", "normalize": False}
    for module in modules:
        kind = str(module.get("type", ""))
        if kind.endswith("Pooling"):
            cfg_file = path / str(module.get("path", "")) / "config.json"
            cfg = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
            pooling["mode"] = "cls" if cfg.get("pooling_mode_cls_token") else "mean"
        if kind.endswith("Normalize"):
            pooling["normalize"] = True
    return pooling


def _max_length(path: Path, config: Any) -> int:
    st_config = path / "sentence_bert_config.json"
    if st_config.is_file():
        return int(json.loads(st_config.read_text()).get("max_seq_length", 256))
    return int(min(getattr(config, "max_position_embeddings", 512) or 512, 512))


def metadata_for(task: str, source: Source, model: Any, tokenizer: Any) -> dict[str, Any]:
    config = model.config
    meta: dict[str, Any] = {"task": task, "model_type": config.model_type}
    if task == "text-generation":
        eos = getattr(model.generation_config, "eos_token_id", None) or config.eos_token_id
        eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
        meta["generation"] = {
            "chat_template": bool(getattr(tokenizer, "chat_template", None)),
            "eos_token_ids": [int(i) for i in eos_ids],
            "default_max_tokens": 64,
            "max_tokens_limit": 512,
            "max_positions": int(getattr(config, "max_position_embeddings", 2048) or 2048),
        }
    elif task == "feature-extraction":
        meta["pooling"] = _sentence_transformers_pooling(source.path) or {"mode": "mean", "normalize": True}
        meta["max_length"] = _max_length(source.path, config)
    else:
        labels = getattr(config, "id2label", {}) or {}
        meta["labels"] = [str(labels[i]) for i in sorted(labels)]
        meta["max_length"] = _max_length(source.path, config)
    return meta


def export(source: Source, task: str, out: Path) -> Exported:
    """Export `source` for `task` into `out` (created); fp32, opset chosen by optimum."""
    from optimum.exporters.onnx import onnx_export_from_model

    config = load_config(source)
    model_type = str(getattr(config, "model_type", "") or "")
    if not model_type:
        raise OptimizeError("UnsupportedModel", f"{source.uri}: config.json names no model_type")
    check_supported(model_type, task)
    model, tokenizer = load_model(source, task)
    out.mkdir(parents=True, exist_ok=True)
    try:
        onnx_export_from_model(
            model, out, task=EXPORT_TASKS[task], do_validation=False, preprocessors=[tokenizer], device="cpu"
        )
    except OSError:
        raise  # disk full and friends: the caller maps them
    except Exception as exc:
        raise OptimizeError("UnsupportedModel", f"ONNX export of {model_type} for {task} failed: {exc}") from exc
    tokenizer.save_pretrained(str(out))
    # sentence-transformers settings travel with the tokenizer so re-exports stay identical.
    for extra in ("modules.json", "sentence_bert_config.json"):
        if (source.path / extra).is_file():
            shutil.copy2(source.path / extra, out / extra)
    if not (out / "model.onnx").is_file():
        raise OptimizeError("OptimizerError", f"optimum wrote no model.onnx for {task} into {out}")
    return Exported(out, task, model_type, metadata_for(task, source, model, tokenizer))
