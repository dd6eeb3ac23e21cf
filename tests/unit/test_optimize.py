"""The optimizer end to end on tiny random models, and every way it can fail."""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flotilla.api.v1alpha1 import AccuracyBudget, ArtifactSummary, OptimizeSpec, SourceSpec, artifact_key
from flotilla.optimize import cli, repository
from flotilla.triton import config as triton_config
from flotilla.triton import python_model

from .optimize_fixtures import tiny_bert, tiny_llama

FAST = ["--eval-limit", "12", "--speed-rounds", "1"]


def run_cli(args: list[str], tmp: Path) -> tuple[int, ArtifactSummary, str]:
    term = tmp / f"term-{len(list(tmp.glob('term-*')))}"
    code = cli.main([*args, "--termination-message-path", str(term)])
    text = term.read_text()
    assert len(text.encode()) <= 4096
    return code, ArtifactSummary.from_termination_message(text), text


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".partial-" in p.name or ".work-" in p.name)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("llama") / "ckpt")


@pytest.fixture(scope="module")
def llama_artifact(llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, ArtifactSummary]:
    tmp = tmp_path_factory.mktemp("llama-out")
    out = tmp / "store" / "key"
    code, summary, _ = run_cli(
        [
            "--source", str(llama_dir), "--task", "text-generation", "--name", "tiny", "--out", str(out),
            "--recipes", "int8-dynamic-per-channel,int4-grid-b32", "--revision", "v1", *FAST,
        ],
        tmp,
    )  # fmt: skip
    return out, code, summary


def test_text_generation_artifact_layout_manifest_and_summary(llama_artifact: Any, llama_dir: Path) -> None:
    out, code, summary = llama_artifact
    assert code == 0 and summary.ok
    key = artifact_key(
        SourceSpec(uri=f"file://{llama_dir}", revision="v1", task="text-generation"),
        OptimizeSpec(precision="auto", accuracy_budget=AccuracyBudget()),
    )
    assert summary.key == key
    version = out / "tiny" / "1"
    for name in ("model.onnx", "model.py", "flotilla.json", "tokenizer.json", "tokenizer_config.json"):
        assert (version / name).is_file(), name
    config_text = (out / "tiny" / "config.pbtxt").read_text()
    # Triton takes the model name from the directory the operator mounts the artifact at.
    assert not any(line.startswith("name:") for line in config_text.splitlines())
    triton_config.validate(config_text)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["key"] == key and manifest["complete"] is True
    assert manifest["recipe"] == summary.recipe in {"int8-dynamic-per-channel", "int4-grid-b32"}
    assert {c["recipe"] for c in manifest["candidates"]} == {"int8-dynamic-per-channel", "int4-grid-b32"}
    assert {"onnxruntime", "transformers", "torch"} <= set(manifest["versions"])
    assert summary.accuracy is not None and summary.accuracy.top1_agreement is not None
    assert summary.size_ratio is not None and summary.size_ratio < 1
    assert leftovers(out.parent) == []


def test_existing_artifact_is_reused_not_rebuilt(llama_artifact: Any, llama_dir: Path, tmp_path: Path) -> None:
    out, _, first = llama_artifact
    stamp = (out / "manifest.json").stat().st_mtime_ns
    code, again, _ = run_cli(
        [
            "--source", str(llama_dir), "--task", "text-generation", "--name", "tiny", "--out", str(out),
            "--recipes", "fp32", "--revision", "v1", *FAST,
        ],
        tmp_path,
    )  # fmt: skip
    assert code == 0 and again == first
    assert (out / "manifest.json").stat().st_mtime_ns == stamp


def test_served_generation_matches_transformers_greedy(llama_artifact: Any, llama_dir: Path) -> None:
    """The KV-cache loop of model.py, batched with left padding, equals transformers' greedy decode."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, _, _ = llama_artifact
    engine = python_model.load_engine(out / "tiny" / "1")
    assert isinstance(engine, python_model.Generator)
    engine.use_chat_template = False  # compare raw continuations
    model = AutoModelForCausalLM.from_pretrained(llama_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(llama_dir)
    prompts = ["hello world", "a much longer prompt than the first one", "x"]
    expected = []
    for text in prompts:
        ids = tokenizer(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            gen = model.generate(ids, max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=2)
        expected.append(gen[0, ids.shape[1] :].tolist())
    got = engine.generate_ids([engine.prompt_ids(t) for t in prompts], [6, 6, 6])
    # Quantized weights may flip a near-tie; the dominant behaviour must be identical.
    same = sum(a == b for e, g in zip(expected, got, strict=True) for a, b in zip(e, g, strict=False))
    assert same >= 0.8 * sum(len(e) for e in expected)
    assert engine.run(["hello"], [3])[0]["text_output"] is not None
    assert all(len(g) <= 6 for g in got)


def test_batched_generation_equals_one_by_one(llama_artifact: Any) -> None:
    out, _, _ = llama_artifact
    engine = python_model.load_engine(out / "tiny" / "1")
    assert isinstance(engine, python_model.Generator)
    prompts = [engine.prompt_ids(t) for t in ["one", "two three four five", "six seven"]]
    together = engine.generate_ids(prompts, [5, 3, 5])
    alone = [engine.generate_ids([p], [m])[0] for p, m in zip(prompts, [5, 3, 5], strict=True)]
    assert together == alone
    assert len(together[1]) <= 3


def test_budget_not_met_publishes_nothing(llama_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "store" / "key"
    code, summary, _ = run_cli(
        [
            "--source", str(llama_dir), "--task", "text-generation", "--name", "tiny", "--out", str(out),
            "--recipes", "int4-rtn-b32", "--max-top1-disagreement", "0", "--max-perplexity-increase", "0", *FAST,
        ],
        tmp_path,
    )  # fmt: skip
    assert code == cli.EXIT_CODES["AccuracyBudgetExceeded"]
    assert not summary.ok and summary.reason == "AccuracyBudgetExceeded"
    assert "int4-rtn-b32" in summary.message and "recipe size top1" in summary.message
    assert summary.key  # the operator can match the failure to its key
    assert not out.exists() and leftovers(out.parent) == []


def test_unknown_task(tmp_path: Path, llama_dir: Path) -> None:
    out = tmp_path / "out"
    code, summary, _ = run_cli(
        ["--source", str(llama_dir), "--task", "summarize", "--name", "m", "--out", str(out)], tmp_path
    )
    assert code == 2 and summary.reason == "InvalidArguments" and "summarize" in summary.message
    assert not out.exists()


def test_bad_arguments_still_write_a_termination_message(tmp_path: Path) -> None:
    code, summary, _ = run_cli(["--task", "text-generation"], tmp_path)
    assert code == 2 and summary.reason == "InvalidArguments" and "--source" in summary.message


def test_unsupported_architecture(tmp_path: Path) -> None:
    bert = tiny_bert(tmp_path / "bert")
    out = tmp_path / "out"
    code, summary, _ = run_cli(
        ["--source", str(bert), "--task", "text-generation", "--name", "m", "--out", str(out)], tmp_path
    )
    assert code == cli.EXIT_CODES["UnsupportedModel"]
    assert summary.reason == "UnsupportedModel" and "bert" in summary.message
    assert not out.exists() and leftovers(tmp_path) == []


def test_unknown_model_type_is_unsupported_or_unreadable(tmp_path: Path) -> None:
    ckpt = tmp_path / "weird"
    ckpt.mkdir()
    (ckpt / "config.json").write_text('{"model_type": "flotilla-no-such-arch"}')
    code, summary, _ = run_cli(
        ["--source", str(ckpt), "--task", "text-generation", "--name", "m", "--out", str(tmp_path / "o")], tmp_path
    )
    assert code != 0 and summary.reason in {"UnsupportedModel", "SourceUnavailable"}
    assert "flotilla-no-such-arch" in summary.message


def test_corrupt_weights(tmp_path: Path, llama_dir: Path) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(llama_dir, broken)
    (broken / "model.safetensors").write_bytes(b"\x00garbage" * 100)
    out = tmp_path / "out"
    code, summary, _ = run_cli(
        ["--source", str(broken), "--task", "text-generation", "--name", "m", "--out", str(out)], tmp_path
    )
    assert code == cli.EXIT_CODES["SourceUnavailable"]
    assert summary.reason == "SourceUnavailable" and "weights" in summary.message
    assert not out.exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("source", "needle"),
    [
        ("/nonexistent/flotilla/model", "does not exist"),
        ("file:///nonexistent/flotilla/model", "does not exist"),
        ("pvc://claim/nothing/here", "does not exist"),
        ("hf://flotilla-test/does-not-exist@main", "HF_HUB_OFFLINE"),
    ],
)
def test_unreadable_source(source: str, needle: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("FLOTILLA_PVC_ROOT", str(tmp_path / "pvc"))
    out = tmp_path / "out"
    code, summary, _ = run_cli(
        ["--source", source, "--task", "text-generation", "--name", "m", "--out", str(out)], tmp_path
    )
    assert code == cli.EXIT_CODES["SourceUnavailable"] and summary.reason == "SourceUnavailable"
    assert needle in summary.message
    assert not out.exists()


def test_disk_full_while_publishing_leaves_nothing(
    llama_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(*_: object, **__: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", "model.onnx")

    monkeypatch.setattr(repository, "write_model_dir", full)
    out = tmp_path / "store" / "key"
    code, summary, _ = run_cli(
        [
            "--source",
            str(llama_dir),
            "--task",
            "text-generation",
            "--name",
            "m",
            "--out",
            str(out),
            "--precision",
            "fp32",
        ],
        tmp_path,
    )
    assert code == cli.EXIT_CODES["OutOfDisk"] and summary.reason == "OutOfDisk"
    assert "no space left" in summary.message
    assert not out.exists() and leftovers(out.parent) == []


def test_termination_message_path_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TERMINATION_MESSAGE_PATH", str(tmp_path / "t"))
    assert cli.termination_path(None) == tmp_path / "t"
    assert cli.termination_path(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv("TERMINATION_MESSAGE_PATH")
    monkeypatch.setattr(cli, "DEFAULT_TERMINATION_LOG", tmp_path / "missing-dir" / "termination-log")
    assert cli.termination_path(None) is None


@pytest.fixture(scope="module")
def embedder_artifact(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, ArtifactSummary]:
    tmp = tmp_path_factory.mktemp("bert-fe")
    ckpt = tiny_bert(tmp / "ckpt", sentence_transformers=True)
    out = tmp / "store" / "key"
    code, summary, _ = run_cli(
        ["--source", str(ckpt), "--task", "feature-extraction", "--name", "emb", "--out", str(out),
         "--recipes", "int8-dynamic-per-channel", "--min-cosine-similarity", "0.9", *FAST],
        tmp,
    )  # fmt: skip
    return out, code, summary


def test_feature_extraction_artifact(embedder_artifact: Any) -> None:
    out, code, summary = embedder_artifact
    assert code == 0 and summary.ok and summary.task == "feature-extraction"
    assert summary.accuracy is not None and summary.accuracy.cosine_similarity is not None
    assert summary.accuracy.cosine_similarity >= 0.9
    meta = json.loads((out / "emb" / "1" / "flotilla.json").read_text())
    assert meta["pooling"] == {"mode": "mean", "normalize": True} and meta["max_length"] == 64
    engine = python_model.load_engine(out / "emb" / "1")
    result = engine.run(["the cat", "a dog and the cat"], [None, None])
    vectors = np.stack([r["embedding"] for r in result])
    assert vectors.shape == (2, 32)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


class _FakeTensor:
    """What model.py uses of triton_python_backend_utils.Tensor."""

    def __init__(self, name: str, array: np.ndarray) -> None:
        self.name, self.array = name, array

    def as_numpy(self) -> np.ndarray:
        return self.array


class _FakeResponse:
    def __init__(self, output_tensors: list[_FakeTensor] | None = None, error: Any = None) -> None:
        self.outputs = {t.name: t.array for t in output_tensors or []}
        self.error = error


def _fake_pb_utils() -> Any:
    """A stand-in for the module that exists only inside Triton's python-backend stub."""
    import types

    return types.SimpleNamespace(
        Tensor=_FakeTensor,
        InferenceResponse=_FakeResponse,
        TritonError=str,
        get_input_tensor_by_name=lambda request, name: request.get(name),
    )


def test_triton_execute_runs_a_dynamic_batch_as_one_onnxruntime_call(
    embedder_artifact: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The point of dynamic batching: the requests of one execute() share one session.run."""
    import importlib.util
    import sys

    out, _, _ = embedder_artifact
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _fake_pb_utils())
    spec = importlib.util.spec_from_file_location("shipped_model", out / "emb" / "1" / "model.py")
    assert spec is not None and spec.loader is not None
    shipped = importlib.util.module_from_spec(spec)
    # Triton imports model.py as a module ("1.model"), so it is in sys.modules (dataclasses need that).
    monkeypatch.setitem(sys.modules, "shipped_model", shipped)
    spec.loader.exec_module(shipped)
    model = shipped.TritonPythonModel()
    model.initialize({"model_config": json.dumps({"max_batch_size": 8, "parameters": {}})})
    runs: list[int] = []
    session = model.engine.session
    real_run = session.run

    class CountingSession:
        def __getattr__(self, name: str) -> Any:
            return getattr(session, name)

        def run(self, outputs: Any, feeds: dict[str, np.ndarray]) -> Any:
            runs.append(len(feeds["input_ids"]))
            return real_run(outputs, feeds)

    model.engine.session = CountingSession()

    def request(*texts: str) -> dict[str, _FakeTensor]:
        return {"text": _FakeTensor("text", np.array([[t.encode()] for t in texts], dtype=np.object_))}

    responses = model.execute([request("the cat"), request("a dog and the cat", "dogs"), {}, request("cat")])
    assert runs == [4]  # four texts from three good requests, one onnxruntime call
    assert [r.error is None for r in responses] == [True, True, False, True]
    # Usage for /v1/embeddings: each text's own token count ([CLS] and [SEP] included), not the padded width.
    counts = {t: len(model.engine.tokenizer(t)["input_ids"]) for t in ("the cat", "a dog and the cat", "dogs", "cat")}
    assert counts["the cat"] != counts["a dog and the cat"]
    assert [r.outputs["prompt_tokens"].tolist() for r in (responses[0], responses[1], responses[3])] == [
        [[counts["the cat"]]],
        [[counts["a dog and the cat"]], [counts["dogs"]]],
        [[counts["cat"]]],
    ]
    assert [r.outputs["embedding"].shape for r in (responses[0], responses[1], responses[3])] == [
        (1, 32),
        (2, 32),
        (1, 32),
    ]
    # The same vector as alone, up to int8-dynamic's per-tensor activation scale, which sees the
    # whole (padded) batch.
    alone = model.engine.embed(["dogs"])[0]
    assert float(responses[1].outputs["embedding"][1] @ alone) > 0.99


def test_text_classification_artifact(tmp_path: Path) -> None:
    ckpt = tiny_bert(tmp_path / "ckpt", labels=3)
    out = tmp_path / "store" / "key"
    code, summary, _ = run_cli(
        ["--source", str(ckpt), "--task", "text-classification", "--name", "cls", "--out", str(out),
         "--precision", "fp32", *FAST],
        tmp_path,
    )  # fmt: skip
    assert code == 0 and summary.ok and summary.recipe == "fp32"
    engine = python_model.load_engine(out / "cls" / "1")
    (result,) = engine.run(["the cat is on the mat"], [None])
    assert result["label"] in {"label-0", "label-1", "label-2"}
    assert result["scores"].shape == (3,) and abs(float(result["scores"].sum()) - 1) < 1e-5
    triton_config.validate((out / "cls" / "config.pbtxt").read_text())


def test_tensorrt_target_builds_engine_and_gpu_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """trtexec cannot run here: a stand-in records its arguments and writes the engine file."""
    trtexec = tmp_path / "trtexec"
    record = tmp_path / "trtexec.args"
    trtexec.write_text(
        "#!/bin/sh\n"
        f'echo "$@" > {record}\n'
        'for a in "$@"; do case "$a" in --saveEngine=*) echo engine > "${a#--saveEngine=}";; esac; done\n'
    )
    trtexec.chmod(0o755)
    monkeypatch.setenv("FLOTILLA_TRTEXEC", str(trtexec))
    ckpt = tiny_bert(tmp_path / "ckpt", sentence_transformers=True)
    out = tmp_path / "store" / "key"
    code, summary, _ = run_cli(
        ["--source", str(ckpt), "--task", "feature-extraction", "--name", "emb", "--out", str(out),
         "--target", "tensorrt", "--precision", "fp16", *FAST],
        tmp_path,
    )  # fmt: skip
    assert code == 0, summary.message
    args = record.read_text()
    assert "--fp16" in args and "--minShapes=input_ids:1x1" in args and "--maxShapes=input_ids:8x512" in args
    version = out / "emb" / "1"
    assert (version / "model.onnx.engine").is_file()
    meta = json.loads((version / "flotilla.json").read_text())
    assert meta["gpu_provider"] == "TensorrtExecutionProvider"
    config_text = (out / "emb" / "config.pbtxt").read_text()
    assert "KIND_GPU" in config_text
    triton_config.validate(config_text)


def test_tensorrt_target_without_trtexec_fails_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLOTILLA_TRTEXEC", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    out = tmp_path / "out"
    code, summary, _ = run_cli(
        [
            "--source",
            str(tmp_path),
            "--task",
            "feature-extraction",
            "--name",
            "m",
            "--out",
            str(out),
            "--target",
            "tensorrt",
        ],
        tmp_path,
    )
    assert code != 0 and summary.reason == "UnsupportedModel" and "trtexec" in summary.message
    assert not out.exists()


class ScreenRun:
    """A stand-in for pipeline._Run: records what was fully evaluated and timed."""

    def __init__(self, tmp: Path, slice_figures: dict[str, Any]) -> None:
        from flotilla.optimize.evaluate import AccuracyFigures, SpeedFigures

        self.paths = {}
        tmp.mkdir(parents=True, exist_ok=True)
        for name in ["fp32", *slice_figures]:
            (tmp / name).mkdir()
            (tmp / name / "model.onnx").write_bytes(b"x" * 100)
            self.paths[name] = tmp / name / "model.onnx"
        self.slice_figures = slice_figures
        self.screened: list[tuple[list[str], int]] = []
        self.evaluated: list[str] = []
        self.timed: list[str] = []
        self.full = AccuracyFigures(top1_agreement=0.99, kl_divergence=0.01, perplexity_ratio=1.01)
        self.speed_figures = SpeedFigures(prefill_b1_s=1.0, prefill_b8_s=8.0, decode_tokens_per_s=10.0)

    def screen(self, names: list[str], texts: list[str]) -> dict[str, Any]:
        self.screened.append((names, len(texts)))
        return {n: (self.slice_figures[n], 400) for n in names}

    def evaluate(self, names: list[str], texts: list[str]) -> dict[str, Any]:
        self.evaluated = names
        return {n: self.full for n in names}

    def speed(self, names: list[str]) -> dict[str, Any]:
        self.timed = names
        return {n: self.speed_figures for n in ["fp32", *names]}


def test_screened_out_candidates_skip_the_full_evaluation_and_the_timing(tmp_path: Path) -> None:
    from flotilla.optimize import pipeline
    from flotilla.optimize.evaluate import AccuracyFigures

    broken = AccuracyFigures(top1_agreement=0.4, kl_divergence=1.0, perplexity_ratio=2.0)
    good = AccuracyFigures(top1_agreement=1.0, kl_divergence=0.0, perplexity_ratio=1.0)
    run = ScreenRun(tmp_path, {"int8-dynamic-per-tensor": broken, "int4-grid-b32": good})
    req = pipeline.Request(source="file:///m", task="text-generation", name="m", out=tmp_path / "o")
    texts = [f"sentence {i}" for i in range(64)]
    measured = pipeline._measure(run, req, list(run.slice_figures), texts)  # type: ignore[arg-type]
    assert run.screened == [(["int8-dynamic-per-tensor", "int4-grid-b32"], 32)]
    assert run.evaluated == ["int4-grid-b32"] and run.timed == ["int4-grid-b32"]
    by_name = {c.recipe: c for c in measured}
    dropped = by_name["int8-dynamic-per-tensor"]
    assert dropped.violations[0].startswith("screened out on 32 held-out sentences: top-1 disagreement 0.600")
    assert dropped.accuracy == broken and dropped.speed is None and dropped.size_ratio == 1.0
    assert by_name["int4-grid-b32"].within_budget and by_name["int4-grid-b32"].speed is not None

    # A held-out set under twice the slice is evaluated in full at once; 0 turns screening off.
    for req_texts, screen in ((texts[:63], 32), (texts, 0)):
        again = ScreenRun(tmp_path / f"r{len(req_texts)}-{screen}", {"int8-dynamic-per-tensor": broken})
        request = pipeline.Request(
            source="file:///m", task="text-generation", name="m", out=tmp_path / "o", screen_sentences=screen
        )
        pipeline._measure(again, request, ["int8-dynamic-per-tensor"], req_texts)  # type: ignore[arg-type]
        assert again.screened == [] and again.evaluated == ["int8-dynamic-per-tensor"]


def test_calibration_text_replaces_the_calibration_slice_and_never_the_held_out_set(
    llama_dir: Path, tmp_path: Path
) -> None:
    """spec.optimize.calibration: the quantizer calibrates on the user's lines; the gate still
    scores the same held-out sentences; the key names the ConfigMap (test_resources checks it is
    the operator's)."""
    text = tmp_path / "calibration.txt"
    text.write_text("# support tickets\n" + "\n".join(f"my order {i} has not arrived yet" for i in range(10)) + "\n")
    spec = '{"configMapRef":{"key":"calibration.txt","name":"tickets-v1"}}'
    out = tmp_path / "store" / "key"
    args = ["--source", str(llama_dir), "--task", "text-generation", "--name", "tiny", "--out", str(out)]
    code, summary, _ = run_cli(
        [*args, "--recipes", "int8-static-qdq", "--max-top1-disagreement", "0.5", "--max-perplexity-increase", "0.5",
         "--calibration", spec, "--calibration-text", str(text), *FAST],
        tmp_path,
    )  # fmt: skip
    assert code == 0, summary.message
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["evaluation"]["calibrationSentences"] == 10  # the comment is not a sentence
    assert manifest["evaluation"]["heldOutSentences"] == 12  # --eval-limit of the shipped set, as without it
    without = cli._request(cli.build_parser().parse_args([*args, "--recipes", "int8-static-qdq"]))
    assert summary.key != without.key()  # type: ignore[attr-defined]  # the calibration is part of the key


@pytest.mark.parametrize(
    ("content", "extra", "needle"),
    [
        (None, [], "not found (spec.optimize.calibration: does the ConfigMap exist"),
        ("one line\ntwo lines\n", [], "has 2 non-empty lines; it needs at least 8"),
        ("x\n" * 9, ["--calibration", "{not json"], "invalid --calibration"),
    ],
)
def test_bad_calibration_text_is_refused_before_any_work(
    content: str | None, extra: list[str], needle: str, llama_dir: Path, tmp_path: Path
) -> None:
    text = tmp_path / "calibration.txt"
    if content is not None:
        text.write_text(content)
    out = tmp_path / "out"
    code, summary, _ = run_cli(
        ["--source", str(llama_dir), "--task", "text-generation", "--name", "m", "--out", str(out),
         "--calibration-text", str(text), *extra],
        tmp_path,
    )  # fmt: skip
    assert code == 2 and summary.reason == "InvalidArguments" and needle in summary.message, summary.message
    assert not out.exists()
