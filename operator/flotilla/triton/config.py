"""config.pbtxt for Flotilla artifacts: one pure renderer, one validator.

The artifact ships a config.pbtxt rendered with default serving settings, but the operator
renders its own for each serving revision (batching, instances, CPU vs GPU belong to the
revision, not to the artifact) with the same function. The text carries no `name`: Triton
takes the model name from the directory the artifact is mounted at.

Every artifact is served by the python backend (text in, text/vectors out, tokenizer and
generation loop in `model.py`); onnxruntime runs inside it with the execution provider named
in the `execution_provider` parameter ("auto": the artifact's preferred GPU provider on a
KIND_GPU instance, CPU otherwise).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

Task = Literal["text-generation", "feature-extraction", "text-classification"]
Backend = Literal["python"]
ExecutionProvider = Literal["auto", "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"]

TASKS: tuple[Task, ...] = ("text-generation", "feature-extraction", "text-classification")
EXECUTION_PROVIDERS: tuple[ExecutionProvider, ...] = (
    "auto",
    "CPUExecutionProvider",
    "CUDAExecutionProvider",
    "TensorrtExecutionProvider",
)


@dataclass(frozen=True)
class Tensor:
    name: str
    data_type: str  # Triton's TYPE_* name
    dims: tuple[int, ...]
    optional: bool = False


# The tensors each task exposes. text-generation follows Triton's generate extension
# (POST /v2/models/<name>/generate and /generate_stream; JSON keys are input names) with the
# sampling inputs of docs/serving-protocol.md. Triton's dynamic batcher only batches requests
# that carry the same set of inputs, so a client that wants batching sends the same set every
# time (the neutral values are documented there).
TASK_INPUTS: dict[Task, tuple[Tensor, ...]] = {
    "text-generation": (
        Tensor("text_input", "TYPE_STRING", (1,)),
        Tensor("messages", "TYPE_STRING", (1,), optional=True),
        Tensor("raw", "TYPE_BOOL", (1,), optional=True),
        Tensor("max_tokens", "TYPE_INT32", (1,), optional=True),
        Tensor("temperature", "TYPE_FP32", (1,), optional=True),
        Tensor("top_p", "TYPE_FP32", (1,), optional=True),
        Tensor("top_k", "TYPE_INT32", (1,), optional=True),
        Tensor("seed", "TYPE_INT64", (1,), optional=True),
        Tensor("stop", "TYPE_STRING", (1,), optional=True),
        Tensor("stream", "TYPE_BOOL", (1,), optional=True),
    ),
    "feature-extraction": (Tensor("text", "TYPE_STRING", (1,)),),
    "text-classification": (Tensor("text", "TYPE_STRING", (1,)),),
}
TASK_OUTPUTS: dict[Task, tuple[Tensor, ...]] = {
    "text-generation": (
        Tensor("text_output", "TYPE_STRING", (1,)),
        Tensor("finish_reason", "TYPE_STRING", (1,)),
        Tensor("prompt_tokens", "TYPE_INT32", (1,)),
        Tensor("completion_tokens", "TYPE_INT32", (1,)),
    ),
    # -1: the width depends on the model (hidden size, number of labels).
    "feature-extraction": (Tensor("embedding", "TYPE_FP32", (-1,)), Tensor("prompt_tokens", "TYPE_INT32", (1,))),
    "text-classification": (Tensor("label", "TYPE_STRING", (1,)), Tensor("scores", "TYPE_FP32", (-1,))),
}
# Decoupled: model.py answers through each request's response sender, so it can stream one
# response per generated token (/generate_stream) and answer a request as soon as its own rows
# finish. Triton then refuses KServe `infer` over HTTP and unary gRPC for these models (use
# /generate, or gRPC's streaming ModelStreamInfer).
DECOUPLED_TASKS: frozenset[Task] = frozenset({"text-generation"})


class ModelConfigError(ValueError):
    """A rendered config.pbtxt that Triton would reject, or arguments no config can express."""


def _tensor_block(kind: str, tensors: tuple[Tensor, ...]) -> list[str]:
    lines = [f"{kind} ["]
    for i, t in enumerate(tensors):
        dims = ", ".join(str(d) for d in t.dims)
        optional = " optional: true" if t.optional else ""
        sep = "," if i < len(tensors) - 1 else ""
        lines.append(f'  {{ name: "{t.name}" data_type: {t.data_type} dims: [ {dims} ]{optional} }}{sep}')
    lines.append("]")
    return lines


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_model_config(
    task: Task,
    backend: Backend = "python",
    *,
    max_batch_size: int = 8,
    max_queue_delay_us: int = 2000,
    instance_count: int = 1,
    gpu: bool = False,
    execution_provider: ExecutionProvider = "auto",
    intra_op_threads: int = 0,
    parameters: Mapping[str, str] | None = None,
) -> str:
    """config.pbtxt text for an artifact of `task`, served with these settings.

    max_batch_size 0 turns Triton's batching off (and the dynamic batcher with it).
    intra_op_threads 0 lets onnxruntime use every core the container is given.
    `parameters` adds string parameters for model.py (they override the defaults here).
    """
    if task not in TASKS:
        raise ModelConfigError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    if backend != "python":
        raise ModelConfigError(f"unsupported backend {backend!r}: Flotilla artifacts are served by the python backend")
    if execution_provider not in EXECUTION_PROVIDERS:
        raise ModelConfigError(f"unknown execution provider {execution_provider!r}")
    if max_batch_size < 0 or max_queue_delay_us < 0 or instance_count < 1 or intra_op_threads < 0:
        raise ModelConfigError(
            "max_batch_size, max_queue_delay_us and intra_op_threads must be >= 0, instance_count >= 1"
        )
    params = {"execution_provider": execution_provider, "intra_op_threads": str(intra_op_threads)}
    params.update(parameters or {})
    lines = [f'backend: "{backend}"', f"max_batch_size: {max_batch_size}"]
    lines += _tensor_block("input", TASK_INPUTS[task])
    lines += _tensor_block("output", TASK_OUTPUTS[task])
    kind = "KIND_GPU" if gpu else "KIND_CPU"
    lines.append(f"instance_group [ {{ count: {instance_count} kind: {kind} }} ]")
    if max_batch_size > 0:
        lines.append(f"dynamic_batching {{ max_queue_delay_microseconds: {max_queue_delay_us} }}")
    if task in DECOUPLED_TASKS:
        lines.append("model_transaction_policy { decoupled: true }")
    for key in sorted(params):
        lines.append(f"parameters {{ key: {_quote(key)} value: {{ string_value: {_quote(params[key])} }} }}")
    return "\n".join(lines) + "\n"


def validate(text: str) -> object:
    """Parse `text` into Triton's ModelConfig protobuf (from tritonclient); raise ModelConfigError.

    Beyond the protobuf grammar this checks what Triton itself would refuse at load time for
    our configs: a backend, at least one input and output, sane dims and batching.
    Returns the parsed message.
    """
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError as exc:  # pragma: no cover - tritonclient is a dependency of every extra that renders
        raise ModelConfigError(f"cannot validate config.pbtxt: {exc}") from exc
    config = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise ModelConfigError(f"config.pbtxt does not parse as Triton's ModelConfig: {exc}") from exc
    problems: list[str] = []
    if not config.backend and not config.platform:
        problems.append("no backend or platform")
    if not config.input or not config.output:
        problems.append("a model needs at least one input and one output")
    for tensor in [*config.input, *config.output]:
        if not tensor.dims or any(d == 0 or d < -1 for d in tensor.dims):
            problems.append(f"tensor {tensor.name!r} has invalid dims {list(tensor.dims)}")
        if tensor.data_type == model_config_pb2.TYPE_INVALID:
            problems.append(f"tensor {tensor.name!r} has no data_type")
    if config.max_batch_size < 0:
        problems.append("max_batch_size must be >= 0")
    if config.HasField("dynamic_batching") and config.max_batch_size == 0:
        problems.append("dynamic_batching needs max_batch_size > 0")
    if problems:
        raise ModelConfigError("invalid config.pbtxt: " + "; ".join(problems))
    return config
