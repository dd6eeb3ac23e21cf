"""One optimization run: source -> export -> recipes -> evaluation -> gate -> published artifact."""

from __future__ import annotations

import functools
import hashlib
import json
import platform
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from importlib import metadata as importlib_metadata
from importlib import resources
from pathlib import Path
from typing import Any

from flotilla.api.v1alpha1 import (
    OPTIMIZER_VERSION,
    AccuracyBudget,
    ArtifactSummary,
    CalibrationSpec,
    OptimizeSpec,
    SourceSpec,
    artifact_key,
)
from flotilla.api.v1alpha1.artifact import Accuracy, Speedup

from . import evaluate, fused, recipes, repository, tensorrt
from .errors import OptimizeError
from .evaluate import AccuracyFigures, SpeedFigures
from .export import Exported, export
from .progress import log, step
from .select import Candidate, attach_speedups, gate, hopeless, pick, table
from .source import Source, canonical_uri, resolve, split_revision

CALIBRATION_SENTENCES = 32
LIBRARIES = (
    "torch",
    "transformers",
    "optimum",
    "optimum-onnx",
    "onnx",
    "onnxruntime",
    "onnxruntime-genai",
    "numpy",
    "tritonclient",
)
# Which graph a candidate was built from (manifest "graph", flotilla.json padding_side).
OPTIMUM_GRAPH, FUSED_GRAPH = "optimum", "fused"


@dataclass
class Request:
    source: str
    task: str
    name: str
    out: Path
    precision: str = "auto"
    target: str = "onnx"
    revision: str | None = None
    budget: AccuracyBudget = field(default_factory=AccuracyBudget)
    eval_text: Path | None = None
    calibration: CalibrationSpec | None = None  # spec.optimize.calibration: part of the key
    calibration_text: Path | None = None  # its text; replaces the shipped calibration slice
    gpu: bool = False  # ship the GPU config variant
    recipes: list[str] | None = None  # restrict the candidates (tests, benchmarks)
    eval_limit: int | None = None
    speed_rounds: int = 3
    # Held-out sentences of the screening pass (0: none): candidates that clearly fail on them are
    # dropped before the full evaluation and timing (select.hopeless).
    screen_sentences: int = 32
    work_dir: Path | None = None
    export_cache: Path | None = None  # reuse fp32 exports across runs (tests, benchmarks)

    def specs(self) -> tuple[SourceSpec, OptimizeSpec]:
        uri, revision = split_revision(canonical_uri(self.source), self.revision)
        try:
            source = SourceSpec.model_validate({"uri": uri, "revision": revision, "task": self.task})
            wire: dict[str, Any] = {
                "target": self.target,
                "precision": self.precision,
                "accuracyBudget": self.budget.to_wire(),
            }
            if self.calibration is not None:
                wire["calibration"] = self.calibration.to_wire()
            optimize = OptimizeSpec.model_validate(wire)
        except ValueError as exc:
            raise OptimizeError("InvalidArguments", f"invalid arguments: {exc}") from exc
        return source, optimize

    def key(self) -> str:
        return artifact_key(*self.specs())


def load_texts(path: Path | None) -> list[str]:
    """Sentences of the evaluation file (one per line, '#' comments), the shipped set by default."""
    if path is None:
        text = resources.files("flotilla.optimize").joinpath("data/eval.txt").read_text(encoding="utf-8")
    else:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise OptimizeError("InvalidArguments", f"cannot read --eval-text {path}: {exc}") from exc
    lines = [line.strip() for line in text.splitlines()]
    sentences = [line for line in lines if line and not line.startswith("#")]
    if len(sentences) < 4:
        raise OptimizeError("InvalidArguments", "the evaluation text needs at least 4 non-empty lines")
    return sentences


MIN_CALIBRATION_LINES = 8


def load_calibration(path: Path) -> list[str]:
    """spec.optimize.calibration's text: one sentence per line, '#' comments, >= 8 lines."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise OptimizeError(
            "InvalidArguments",
            f"calibration text {path} not found (spec.optimize.calibration: does the ConfigMap exist, with that "
            "key? is the file on the source's claim?)",
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise OptimizeError("InvalidArguments", f"cannot read the calibration text {path}: {exc}") from exc
    lines = [line.strip() for line in text.splitlines()]
    sentences = [line for line in lines if line and not line.startswith("#")]
    if len(sentences) < MIN_CALIBRATION_LINES:
        raise OptimizeError(
            "InvalidArguments",
            f"the calibration text {path} has {len(sentences)} non-empty lines; it needs at least "
            f"{MIN_CALIBRATION_LINES}",
        )
    return sentences


def split_texts(sentences: list[str], limit: int | None) -> tuple[list[str], list[str]]:
    """(calibration, held-out evaluation): calibration never scores a candidate."""
    n_cal = min(CALIBRATION_SENTENCES, len(sentences) // 4)
    held_out = sentences[n_cal:]
    return sentences[:n_cal], held_out[:limit] if limit else held_out


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "flotilla-optimizer": OPTIMIZER_VERSION}
    for lib in LIBRARIES:
        try:
            versions[lib] = importlib_metadata.version(lib)
        except importlib_metadata.PackageNotFoundError:
            continue
    return versions


def summary_from_manifest(manifest: dict[str, Any]) -> ArtifactSummary:
    return ArtifactSummary.model_validate(manifest["summary"])


class _Run:
    """State of one run; methods are the stages, in order."""

    def __init__(self, request: Request, key: str, work: Path) -> None:
        self.req = request
        self.key = key
        self.work = work
        self.exported: Exported | None = None
        self.source: Source | None = None
        self.paths: dict[str, Path] = {}
        self.graphs: dict[str, str] = {}  # recipe -> OPTIMUM_GRAPH | FUSED_GRAPH
        self.fused_error = ""  # why the fused graph was not used, when it was wanted
        self.failed: dict[str, str] = {}

    def export(self) -> Exported:
        with step("resolve source"):
            source = resolve(self.req.source, self.req.revision, self.work)
        self.source = source
        log(f"source {source.uri} -> {source.path}" + (f" (gguf {source.gguf_file})" if source.gguf_file else ""))
        cache = self.req.export_cache
        if cache is not None:
            self.exported = _cached_export(source, self.req.task, cache)
            return self.exported
        with step(f"export {self.req.task} to ONNX"), repository.disk_errors("export"):
            self.exported = export(source, self.req.task, self.work / "export")
        return self.exported

    def calibration(self, texts: list[str]) -> list[dict[str, Any]]:
        assert self.exported is not None
        tokenizer = _tokenizer(self.exported.directory)
        sess = evaluate.session(self.exported.onnx)
        batches = []
        for text in texts:
            enc = tokenizer([text], return_tensors="np")
            ids = enc["input_ids"].astype("int64")
            if self.req.task == "text-generation":
                batches.append(evaluate.decoder_feeds(sess, ids, enc["attention_mask"].astype("int64")))
            else:
                feeds = {k: v.astype("int64") for k, v in enc.items() if k in {i.name for i in sess.get_inputs()}}
                batches.append(feeds)
        return batches

    def fused_graph(self) -> Path | None:
        """The builder's fused decoder graph (fused.py), or None (and why, in fused_error).

        Only for text-generation on the onnx target: TensorRT takes no GroupQueryAttention.
        Cached beside a cached export, like the export itself."""
        assert self.exported is not None and self.source is not None
        if self.req.task != "text-generation" or self.req.target != "onnx":
            return None
        where = (self.exported.directory if self.req.export_cache else self.work) / "fused"
        if (where / "model.onnx").is_file():
            log(f"fused graph: reusing {where}")
            return where / "model.onnx"
        expected = _input_names(self.exported.onnx)
        partial = where.parent / f".fused-{self.key[:12]}-{self.work.name}"
        with step(f"build the fused decoder graph ({fused.BUILDER})"), repository.disk_errors("fused graph"):
            onnx_path, self.fused_error = fused.build(self.source.path, self.source.gguf_file, partial, expected)
            if onnx_path is None:
                log(f"fused graph not used, the recipes quantize optimum's graph: {self.fused_error}")
                return None
            try:
                partial.rename(where)
            except OSError:
                shutil.rmtree(partial, ignore_errors=True)  # another run cached it first
        return where / "model.onnx"

    def build(self, chosen: list[recipes.Recipe], calibration_texts: list[str]) -> None:
        assert self.exported is not None
        quantized = [r for r in chosen if r.name != "fp32" and recipes.reads_prepared(r)]
        base = self.fused_graph() if quantized else None
        graph = FUSED_GRAPH if base is not None else OPTIMUM_GRAPH
        with step(f"prepare the {graph} fp32 graph for quantization"), repository.disk_errors("prepare"):
            prepared = recipes.prepare_for_quantization(base or self.exported.onnx, self.work / "prepared")
        calibration = self.calibration(calibration_texts) if any(r.needs_calibration for r in chosen) else []
        calibration = _feeds_for(prepared, calibration)
        for recipe in [recipes.RECIPES_BY_NAME["fp32"], *[r for r in chosen if r.name != "fp32"]]:
            dst = self.work / "recipes" / recipe.name / "model.onnx"
            self.graphs[recipe.name] = graph if recipes.reads_prepared(recipe) else OPTIMUM_GRAPH
            try:
                with step(f"recipe {recipe.name}"), repository.disk_errors(f"recipe {recipe.name}"):
                    self.paths[recipe.name] = recipes.apply(recipe, self.exported.onnx, prepared, dst, calibration)
            except OptimizeError as exc:
                if exc.reason == "OutOfDisk" or recipe.name == "fp32":
                    raise
                self.failed[recipe.name] = exc.message
            except Exception as exc:  # one broken recipe must not sink the others
                log(f"recipe {recipe.name} failed: {exc}")
                self.failed[recipe.name] = f"{type(exc).__name__}: {exc}"[:300]
        shutil.rmtree(prepared.parent, ignore_errors=True)

    def evaluate(self, names: list[str], texts: list[str]) -> dict[str, evaluate.AccuracyFigures]:
        label = f"evaluate {len(names)} candidate(s) on {len(texts)} held-out sentences"
        return {name: figures for name, (figures, _) in self._compare(names, texts, label).items()}

    def screen(self, names: list[str], texts: list[str]) -> dict[str, tuple[AccuracyFigures, int]]:
        return self._compare(names, texts, f"screen {len(names)} candidate(s) on {len(texts)} held-out sentences")

    def _compare(self, names: list[str], texts: list[str], label: str) -> dict[str, tuple[AccuracyFigures, int]]:
        """Each candidate against the reference on `texts`, one candidate session at a time (the
        reference's outputs are recomputed for each, so memory stays at two sessions whatever
        the number of candidates). Returns figures and the number of positions (texts for
        encoders) they were measured on."""
        assert self.exported is not None
        out: dict[str, tuple[AccuracyFigures, int]] = {}
        if not names:
            return out
        with step(label):
            if self.req.task == "text-generation":
                tokenizer = _tokenizer(self.exported.directory)
                sequences = [s for s in (list(tokenizer(t)["input_ids"]) for t in texts) if len(s) > 1]
                pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
                positions = sum(len(s) - 1 for s in sequences)  # what compare_decoders counts
                ref = evaluate.session(self.paths["fp32"])
                for name in names:
                    cand = {name: evaluate.session(self.paths[name])}
                    out[name] = (evaluate.compare_decoders(ref, cand, sequences, pad)[name], positions)
                    del cand
                return out
            compare = (
                evaluate.compare_embedders if self.req.task == "feature-extraction" else evaluate.compare_classifiers
            )
            ref_engine = _engine(self.exported, self.paths["fp32"])
            for name in names:
                engines = {name: _engine(self.exported, self.paths[name])}
                out[name] = (compare(ref_engine, engines, texts)[name], len(texts))
                del engines
        return out

    def speed(self, names: list[str]) -> dict[str, SpeedFigures]:
        assert self.exported is not None
        vocab = int(self.exported.metadata.get("vocab_size", 0)) or 1000
        openers = {n: functools.partial(evaluate.session, self.paths[n]) for n in ["fp32", *names]}
        with step(f"measure speed ({self.req.speed_rounds} rounds, {len(openers)} models, one loaded at a time)"):
            return evaluate.measure_speed(
                openers, self.req.task, vocab, self.req.speed_rounds, lambda r: log(f"speed round {r} done")
            )


def _feeds_for(onnx_path: Path, batches: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Calibration feeds cut to the inputs of the graph being quantized (the fused graph has no
    position_ids)."""
    if not batches:
        return batches
    names = _input_names(onnx_path)
    return [{k: v for k, v in batch.items() if k in names} for batch in batches]


def _input_names(onnx_path: Path) -> set[str]:
    import onnx

    return {i.name for i in onnx.load(str(onnx_path), load_external_data=False).graph.input}


def served_metadata(metadata: dict[str, Any], graph: str) -> dict[str, Any]:
    """flotilla.json for a graph: the fused one is driven with right-padded batches."""
    if graph != FUSED_GRAPH or "generation" not in metadata:
        return metadata
    return metadata | {"generation": metadata["generation"] | {"padding_side": "right"}}


def _cached_export(source: Source, task: str, cache: Path) -> Exported:
    """The fp32 export from `cache` (keyed by source, task and optimizer version), made once.

    For tests and benchmarks that optimize one model many times; a Job exports afresh.
    """
    origin = source.path / source.gguf_file if source.gguf_file else source.path / "config.json"
    stat = origin.stat()
    ident = json.dumps([source.uri, source.revision, task, OPTIMIZER_VERSION, stat.st_size, stat.st_mtime_ns])
    directory = cache / hashlib.sha256(ident.encode()).hexdigest()[:16]
    meta_file = directory / "export-metadata.json"
    if meta_file.is_file():
        log(f"export {task}: reusing the cached export in {directory}")
        meta = json.loads(meta_file.read_text())
        return Exported(directory, task, str(meta["model_type"]), meta)
    cache.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=".export-", dir=cache))
    try:
        with step(f"export {task} to ONNX (cached in {directory})"), repository.disk_errors("export"):
            exported = export(source, task, partial)
            (partial / "export-metadata.json").write_text(json.dumps(exported.metadata))
            try:
                partial.rename(directory)
            except OSError:
                # Another Job of the same source finished its export first: use that one.
                if not meta_file.is_file():
                    raise
                log(f"export {task}: another run cached it first; using {directory}")
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return Exported(directory, task, exported.model_type, exported.metadata)


def _tokenizer(directory: Path) -> Any:
    from flotilla.triton import python_model

    return python_model.load_tokenizer(directory)


def _engine(exported: Exported, onnx_path: Path) -> Any:
    from flotilla.triton import python_model

    session = evaluate.session(onnx_path)
    return python_model.ENGINES[exported.task](session, _tokenizer(exported.directory), exported.metadata)


def _candidate(name: str, size: int, accuracy: evaluate.AccuracyFigures, speed: SpeedFigures | None) -> Candidate:
    recipe = recipes.RECIPES_BY_NAME[name]
    return Candidate(recipe=name, precision=recipe.precision, size_bytes=size, accuracy=accuracy, speed=speed)


def _candidate_record(c: Candidate, graphs: dict[str, str]) -> dict[str, Any]:
    return {
        "recipe": c.recipe,
        "graph": graphs.get(c.recipe, OPTIMUM_GRAPH),
        "precision": c.precision,
        "sizeBytes": c.size_bytes,
        "sizeRatio": round(c.size_ratio, 4),
        "accuracy": {k: v for k, v in asdict(c.accuracy).items() if v is not None},
        "speed": asdict(c.speed) if c.speed else None,
        "prefillSpeedupB1": c.prefill_speedup_b1,
        "prefillSpeedupB8": c.prefill_speedup_b8,
        "decodeSpeedup": c.decode_speedup,
        "requestSpeedup": c.request_speedup,
        "withinBudget": c.within_budget,
        "violations": c.violations,
    }


def _summary(req: Request, key: str, chosen: Candidate, backend: str) -> ArtifactSummary:
    a = chosen.accuracy
    return ArtifactSummary(
        ok=True,
        key=key,
        model_name=req.name,
        backend=backend,
        task=req.task,
        precision=chosen.precision,
        recipe=chosen.recipe,
        size_bytes=chosen.size_bytes,
        size_ratio=round(chosen.size_ratio, 4),
        accuracy=Accuracy(
            top1_agreement=a.top1_agreement,
            kl_divergence=a.kl_divergence,
            perplexity_ratio=a.perplexity_ratio,
            cosine_similarity=a.cosine_similarity,
        ),
        speedup=Speedup(prefill=chosen.prefill_speedup, decode=chosen.decode_speedup),
    )


def _screen(run: _Run, req: Request, names: list[str], texts: list[str]) -> list[Candidate]:
    """Candidates that clearly fail on the first `screen_sentences` held-out sentences, with
    the slice's figures and why; they skip the full evaluation and the timing. Only when the
    held-out set is at least twice the slice (else the full pass is as cheap)."""
    size = req.screen_sentences
    if size <= 0 or len(texts) < 2 * size or not names:
        return []
    ref_size = recipes.model_size(run.paths["fp32"])
    dropped = []
    for name, (figures, positions) in run.screen(names, texts[:size]).items():
        reasons = hopeless(req.task, figures, positions, req.budget)
        if reasons:
            c = _candidate(name, recipes.model_size(run.paths[name]), figures, None)
            attach_speedups(c, None, ref_size)
            c.violations = [f"screened out on {size} held-out sentences: " + "; ".join(reasons)]
            dropped.append(c)
            log(f"candidate {name}: {c.violations[0]}")
    kept = len(names) - len(dropped)
    log(f"screening kept {kept} of {len(names)} candidate(s) for the full evaluation and timing")
    return dropped


def _measure(run: _Run, req: Request, names: list[str], texts: list[str]) -> list[Candidate]:
    screened = _screen(run, req, names, texts)
    names = [n for n in names if n not in {c.recipe for c in screened}]
    accuracy = run.evaluate(names, texts)
    speeds = run.speed(names) if names and req.speed_rounds > 0 else {}
    ref_size = recipes.model_size(run.paths["fp32"])
    reference = speeds.get("fp32")
    out = []
    for name in names:
        c = _candidate(name, recipes.model_size(run.paths[name]), accuracy[name], speeds.get(name))
        attach_speedups(c, reference, ref_size)
        c.violations = gate(req.task, c.accuracy, req.budget)
        out.append(c)
        log(f"candidate {name}: {table([c]).splitlines()[1]}")
    return out + screened


def _reference_candidate(run: _Run) -> Candidate:
    ones = evaluate.AccuracyFigures(top1_agreement=1.0, kl_divergence=0.0, perplexity_ratio=1.0)
    if run.req.task == "feature-extraction":
        ones = evaluate.AccuracyFigures(cosine_similarity=1.0)
    c = _candidate("fp32", recipes.model_size(run.paths["fp32"]), ones, None)
    c.prefill_speedup_b1 = c.prefill_speedup_b8 = 1.0
    c.decode_speedup = c.request_speedup = 1.0 if run.req.task == "text-generation" else None
    return c


def optimize(req: Request) -> tuple[ArtifactSummary, dict[str, Any]]:
    """Run everything; return (summary, manifest). Raises OptimizeError on every failure."""
    key = req.key()
    existing = repository.complete_manifest(req.out, key)
    if existing is not None:
        log(f"artifact {key} already complete at {req.out}: reusing it")
        return summary_from_manifest(existing), existing
    if req.target == "tensorrt":
        tensorrt.check_available()
    sentences = load_texts(req.eval_text)
    calibration_texts, texts = split_texts(sentences, req.eval_limit)
    if req.calibration_text is not None:
        # The held-out sentences stay the same, so a user's text changes what the quantizer
        # learns from and never what the gate scores.
        calibration_texts = load_calibration(req.calibration_text)
    gpu_recipes = req.target == "tensorrt" or req.precision == "fp16"
    chosen_recipes = recipes.candidates(req.precision, gpu_recipes, req.recipes, req.target)
    if not chosen_recipes:
        raise OptimizeError("InvalidArguments", f"no recipe for precision {req.precision} on target {req.target}")
    base = req.work_dir or req.out.parent
    with repository.disk_errors("work directory"):
        base.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{req.out.name}.work-", dir=base))
    try:
        return _optimize(req, key, work, chosen_recipes, calibration_texts, texts)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _optimize(
    req: Request, key: str, work: Path, chosen_recipes: list[recipes.Recipe], calibration: list[str], texts: list[str]
) -> tuple[ArtifactSummary, dict[str, Any]]:
    run = _Run(req, key, work)
    exported = run.export()
    exported.metadata["vocab_size"] = _vocab_size(exported.directory)
    run.build(chosen_recipes, calibration)
    names = [r.name for r in chosen_recipes if r.name in run.paths and r.name != "fp32"]
    measured = _measure(run, req, names, texts)
    if any(r.name == "fp32" for r in chosen_recipes):
        measured.insert(0, _reference_candidate(run))
    for name, error in run.failed.items():
        failed = _candidate(name, 0, evaluate.AccuracyFigures(), None)
        failed.violations = [f"failed: {error}"]
        measured.append(failed)
    best = pick(measured)
    log("candidates:\n" + table(measured))
    if best is None:
        raise OptimizeError(
            "AccuracyBudgetExceeded",
            f"no {req.precision} candidate within the accuracy budget:\n" + table(measured),
            [_candidate_record(c, run.graphs) for c in measured],
        )
    log(f"picked {best.recipe} (score {best.score:.2f})")
    backend = "python"
    onnx_path = run.paths[best.recipe]
    gpu_provider = "CUDAExecutionProvider"
    if req.target == "tensorrt":
        with step("build TensorRT engine"), repository.disk_errors("trtexec"):
            onnx_path = tensorrt.build(onnx_path, req.task, best.precision, work / "tensorrt")
        gpu_provider = "TensorrtExecutionProvider"
    summary = _summary(req, key, best, backend)
    exported.metadata["gpu_provider"] = gpu_provider
    manifest = {
        "key": key,
        "optimizerVersion": OPTIMIZER_VERSION,
        "source": req.specs()[0].to_wire(),
        "optimize": req.specs()[1].to_wire(),
        "modelName": req.name,
        "task": req.task,
        "backend": backend,
        "target": req.target,
        "precision": best.precision,
        "recipe": best.recipe,
        "referenceSizeBytes": recipes.model_size(run.paths["fp32"]),
        "evaluation": {"heldOutSentences": len(texts), "calibrationSentences": len(calibration)},
        "graph": run.graphs.get(best.recipe, OPTIMUM_GRAPH),
        "fusedGraphError": run.fused_error or None,
        "candidates": [_candidate_record(c, run.graphs) for c in measured],
        "versions": library_versions(),
        "summary": json.loads(summary.model_dump_json(by_alias=True, exclude_none=True)),
    }
    # fp16 and TensorRT artifacts only make sense on a GPU: ship the GPU variant for them.
    gpu_config = req.gpu or req.target == "tensorrt" or best.precision == "fp16"
    config_text = repository.render_default_config(req.task, gpu_config)

    def fill(version_dir: Path) -> None:
        meta = served_metadata(exported.metadata, run.graphs.get(best.recipe, OPTIMUM_GRAPH))
        repository.write_model_dir(version_dir, onnx_path, exported.directory, meta, move=True)

    with step(f"publish artifact {key} to {req.out}"):
        written = repository.publish(req.out, req.name, config_text, fill, manifest)
    return summary, written


def _vocab_size(directory: Path) -> int:
    try:
        config = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError):
        return 0
    return int(config.get("vocab_size", 0) or 0)
