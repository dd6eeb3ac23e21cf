"""GitHub Actions workflows (.github/workflows): actionlint (the real rhysd/actionlint, built
from Go modules by `python -m localcluster build actionlint`) finds nothing in them, and the
release workflow's versions agree with the chart: image tags follow its appVersion."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from flotilla.config import OperatorConfig
from localcluster.versions import REPO_ROOT, bin_dir, load_versions

pytestmark = pytest.mark.gotools

WORKFLOWS = REPO_ROOT / ".github" / "workflows"
CHART = REPO_ROOT / "charts" / "flotilla"


def actionlint_path() -> Path:
    path = bin_dir("actionlint", load_versions().actionlint) / "actionlint"
    if not path.is_file():
        pytest.fail(
            f"actionlint is not built ({path}): run `make cluster-binaries` "
            "(or `python -m localcluster build actionlint`)",
            pytrace=False,
        )
    return path


def actionlint(workflows: Path) -> subprocess.CompletedProcess[str]:
    """actionlint on every workflow file in `workflows`. Its shellcheck and pyflakes passes are
    off (`-shellcheck=`): they run only where those tools happen to be installed, and a check
    must say the same on every machine."""
    files = sorted(str(p) for p in workflows.glob("*.y*ml"))
    assert files, f"no workflow in {workflows}"
    args = [str(actionlint_path()), "-no-color", "-shellcheck=", "-pyflakes=", *files]
    return subprocess.run(args, cwd=workflows, capture_output=True, text=True, timeout=60, check=False)


def test_workflows_pass_actionlint() -> None:
    proc = actionlint(WORKFLOWS)
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr


def test_actionlint_fails_on_a_broken_workflow(tmp_path: Path) -> None:
    """The check can fail: the release workflow with a typo in an expression and a job that
    needs one that does not exist."""
    broken = (WORKFLOWS / "release.yml").read_text()
    broken = broken.replace("steps.version.outputs.app", "steps.versoin.outputs.app", 1)
    broken = broken.replace("    runs-on: ubuntu-24.04", "    needs: [build]\n    runs-on: ubuntu-24.04", 1)
    (tmp_path / "release.yml").write_text(broken)
    proc = actionlint(tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "versoin" in proc.stdout and '"build"' in proc.stdout, proc.stdout


def test_release_tags_images_with_the_charts_app_version() -> None:
    """The tag is v<appVersion>, every image is pushed as flotilla-<name>:<appVersion>, and the
    chart's and the operator's image defaults name that same version."""
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    version = chart["appVersion"]
    workflow = yaml.safe_load((WORKFLOWS / "release.yml").read_text())
    job = workflow["jobs"]["release"]
    assert workflow[True]["push"]["tags"] == ["v*.*.*"]  # YAML 1.1 reads the key `on` as True
    images = job["env"]["IMAGES"].split()
    assert {"operator", "optimizer", "triton", "gateway"} <= set(images)
    script = "\n".join(step.get("run", "") for step in job["steps"])
    assert 'ref="${REGISTRY}/flotilla-${name}:${VERSION}"' in script
    assert "--digestfile" in script and "digests.txt" in script
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    defaults = [values["config"]["optimizerImage"], values["config"]["tritonImage"]]
    defaults += [OperatorConfig().optimizer_image, OperatorConfig().triton_image]
    for image in defaults:
        name, _, tag = image.rpartition(":")
        assert tag == version, f"{image}: not tagged with the chart's appVersion {version}"
        assert re.fullmatch(r"ghcr\.io/flotilla-dev/flotilla-(optimizer|triton)", name), image
    # The operator's and the gateway's images default to appVersion in the templates.
    assert values["image"]["tag"] == "" and values["gateway"]["image"]["tag"] == ""
    for template in ("deployment.yaml", "gateway.yaml"):
        assert "tag | default .Chart.AppVersion" in (CHART / "templates" / template).read_text()


def test_release_builds_images_only_with_make_images() -> None:
    """The images come from `make images`; until that target exists the workflow stops before
    pushing anything (said in its comments and in README.md)."""
    makefile = (REPO_ROOT / "Makefile").read_text()
    workflow = (WORKFLOWS / "release.yml").read_text()
    assert "grep -q '^images:' Makefile" in workflow and "make images VERSION=" in workflow
    has_target = re.search(r"^images:", makefile, re.M) is not None
    assert has_target or "NOT READY YET" in workflow, "make images exists: drop the NOT READY note"
