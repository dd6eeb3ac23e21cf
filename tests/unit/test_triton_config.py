"""config.pbtxt rendering (pure; the operator imports it) and validation against Triton's protobuf."""

from __future__ import annotations

import pytest
from tritonclient.grpc import model_config_pb2

from flotilla.triton.config import TASKS, ModelConfigError, render_model_config, validate


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("gpu", [False, True])
def test_every_task_renders_a_valid_config(task: str, gpu: bool) -> None:
    text = render_model_config(task, max_batch_size=4, max_queue_delay_us=500, instance_count=2, gpu=gpu)  # type: ignore[arg-type]
    config = validate(text)
    assert config.backend == "python"  # type: ignore[attr-defined]
    assert config.max_batch_size == 4  # type: ignore[attr-defined]
    assert config.dynamic_batching.max_queue_delay_microseconds == 500  # type: ignore[attr-defined]
    group = config.instance_group[0]  # type: ignore[attr-defined]
    assert group.count == 2 and group.kind == (1 if gpu else 2)  # KIND_GPU = 1, KIND_CPU = 2
    assert not any(line.startswith("name:") for line in text.splitlines())


def test_generate_extension_tensors() -> None:
    config = validate(render_model_config("text-generation"))
    inputs = {t.name: t for t in config.input}  # type: ignore[attr-defined]
    assert set(inputs) == {
        "text_input", "messages", "raw", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "stream",
    }  # fmt: skip
    assert not inputs["text_input"].optional
    assert all(t.optional for name, t in inputs.items() if name != "text_input")
    dtypes = {name: model_config_pb2.DataType.Name(t.data_type) for name, t in inputs.items()}
    assert dtypes == {
        "text_input": "TYPE_STRING", "messages": "TYPE_STRING", "raw": "TYPE_BOOL", "max_tokens": "TYPE_INT32",
        "temperature": "TYPE_FP32", "top_p": "TYPE_FP32", "top_k": "TYPE_INT32", "seed": "TYPE_INT64",
        "stop": "TYPE_STRING", "stream": "TYPE_BOOL",
    }  # fmt: skip
    outputs = {t.name: model_config_pb2.DataType.Name(t.data_type) for t in config.output}  # type: ignore[attr-defined]
    assert outputs == {
        "text_output": "TYPE_STRING", "finish_reason": "TYPE_STRING",
        "prompt_tokens": "TYPE_INT32", "completion_tokens": "TYPE_INT32",
    }  # fmt: skip


def test_embeddings_report_prompt_tokens() -> None:
    config = validate(render_model_config("feature-extraction"))
    assert [t.name for t in config.output] == ["embedding", "prompt_tokens"]  # type: ignore[attr-defined]


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("max_batch_size", [0, 8])
def test_only_text_generation_is_decoupled(task: str, max_batch_size: int) -> None:
    """Decoupled (streaming through response senders) for generation only: Triton refuses
    KServe infer over HTTP and unary gRPC for decoupled models, which embeddings need."""
    text = render_model_config(task, max_batch_size=max_batch_size)  # type: ignore[arg-type]
    config = validate(text)
    decoupled = config.model_transaction_policy.decoupled  # type: ignore[attr-defined]
    assert decoupled is (task == "text-generation")
    assert ("model_transaction_policy" in text) is (task == "text-generation")


def test_no_batching_means_no_dynamic_batcher() -> None:
    text = render_model_config("feature-extraction", max_batch_size=0)
    assert "dynamic_batching" not in text
    assert validate(text).max_batch_size == 0  # type: ignore[attr-defined]


def test_runtime_parameters() -> None:
    text = render_model_config(
        "text-classification",
        gpu=True,
        execution_provider="TensorrtExecutionProvider",
        intra_op_threads=2,
        parameters={"extra": 'quote " and \\ backslash'},
    )
    params = {k: v.string_value for k, v in validate(text).parameters.items()}  # type: ignore[attr-defined]
    assert params == {
        "execution_provider": "TensorrtExecutionProvider",
        "intra_op_threads": "2",
        "extra": 'quote " and \\ backslash',
    }


@pytest.mark.parametrize(
    "kwargs",
    [
        {"task": "summarization"},
        {"task": "text-generation", "backend": "onnxruntime"},
        {"task": "text-generation", "instance_count": 0},
        {"task": "text-generation", "max_batch_size": -1},
        {"task": "text-generation", "execution_provider": "ROCMExecutionProvider"},
    ],
)
def test_bad_arguments(kwargs: dict[str, object]) -> None:
    with pytest.raises(ModelConfigError):
        render_model_config(**kwargs)  # type: ignore[arg-type]


IO = 'input [{ name: "a" data_type: TYPE_FP32 dims: [ 1 ] }]\noutput [{ name: "b" data_type: TYPE_FP32 dims: [ 1 ] }]'


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("backend: python", "does not parse"),
        ('backend: "python"\nmax_batch_size: 1', "at least one input"),
        (
            'backend: "python"\ninput [{ name: "a" data_type: TYPE_FP32 dims: [ 0 ] }]\n'
            'output [{ name: "b" data_type: TYPE_FP32 dims: [ 1 ] }]',
            "invalid dims",
        ),
        (
            'backend: "python"\nmax_batch_size: 0\ndynamic_batching {}\n' + IO,
            "dynamic_batching needs",
        ),
        (IO, "no backend"),
    ],
)
def test_validate_rejects(text: str, needle: str) -> None:
    with pytest.raises(ModelConfigError, match=needle):
        validate(text)


def test_model_py_chooses_its_execution_provider() -> None:
    from flotilla.triton.python_model import choose_provider

    trt = {"gpu_provider": "TensorrtExecutionProvider"}
    assert choose_provider("auto", trt, on_gpu=True) == "TensorrtExecutionProvider"
    assert choose_provider("auto", {}, on_gpu=True) == "CUDAExecutionProvider"
    assert choose_provider("auto", trt, on_gpu=False) == "CPUExecutionProvider"
    assert choose_provider("CUDAExecutionProvider", trt, on_gpu=True) == "CUDAExecutionProvider"
