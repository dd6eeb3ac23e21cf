"""GitOps health (docs/gitops.md): the planner's conditions as kstatus computes them (the real
sigs.k8s.io/cli-utils, built by `python -m localcluster build kstatus`) and as the Argo CD
health check in docs/argocd-health.lua reads them (real Lua 5.4 and 5.1 from lupa), on the
same planner-made samples (tests/unit/gitops_samples.py)."""

from __future__ import annotations

import importlib
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from localcluster.versions import REPO_ROOT, bin_dir, kstatus_version

from .gitops_samples import EXPECTED, samples

pytestmark = pytest.mark.gotools

LUA_CHECK = REPO_ROOT / "docs" / "argocd-health.lua"
GITOPS_DOC = REPO_ROOT / "docs" / "gitops.md"


def kstatus_path() -> Path:
    path = bin_dir("kstatus", kstatus_version()) / "kstatus"
    if not path.is_file():
        pytest.fail(
            f"kstatus is not built ({path}): run `make cluster-binaries` (or `python -m localcluster build kstatus`)",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="module")
def objects() -> dict[str, dict[str, Any]]:
    return samples()


@pytest.fixture(scope="module")
def kstatus(objects: dict[str, dict[str, Any]]) -> dict[str, dict[str, str]]:
    """name -> {"status", "message"} from status.Compute, all samples in one run."""
    proc = subprocess.run(
        [str(kstatus_path())],
        input=json.dumps(list(objects.values())),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    verdicts = [json.loads(line) for line in proc.stdout.splitlines()]
    return {v["name"]: v for v in verdicts}


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in obj["status"]["conditions"] if c["type"] == type_)


def test_samples_are_the_states_they_claim(objects: dict[str, dict[str, Any]]) -> None:
    assert list(objects) == list(EXPECTED)
    for name, obj in objects.items():
        want = EXPECTED[name].ready
        got = condition(obj, "Ready")["reason"] if "status" in obj else ""
        assert got == want, name


def test_kstatus_computes_what_the_docs_say(
    objects: dict[str, dict[str, Any]], kstatus: dict[str, dict[str, str]]
) -> None:
    table = {name: (kstatus[name]["status"], EXPECTED[name].kstatus) for name in objects}
    assert {n: got for n, (got, _) in table.items()} == {n: want for n, (_, want) in table.items()}
    for name, obj in objects.items():
        message = kstatus[name]["message"]
        if name == "generation-ahead":
            assert message == "SmallModel generation is 2, but latest observed generation is 1"
        elif EXPECTED[name].kstatus != "Current":  # Reconciling's or Stalled's message: Ready's
            assert message == condition(obj, "Ready")["message"] != "", name


def test_kstatus_reads_one_object_per_line_too(objects: dict[str, dict[str, Any]]) -> None:
    lines = "\n".join(json.dumps(o) for o in (objects["serving"], objects["rolled-back"]))
    proc = subprocess.run([str(kstatus_path())], input=lines, capture_output=True, text=True, timeout=60, check=True)
    assert [json.loads(x)["status"] for x in proc.stdout.splitlines()] == ["Current", "Failed"]


def lua_value(runtime: Any, value: Any, floats: bool) -> Any:
    """JSON -> Lua as Argo CD hands `obj` over: objects and arrays are tables (arrays from 1);
    with `floats`, every number is a float, as gopher-lua's are."""
    if isinstance(value, dict):
        return runtime.table_from({k: lua_value(runtime, v, floats) for k, v in value.items()})
    if isinstance(value, list):
        return runtime.table_from([lua_value(runtime, v, floats) for v in value])
    if isinstance(value, int) and not isinstance(value, bool) and floats:
        return float(value)
    return value


def argo_health(lua: str, obj: dict[str, Any]) -> tuple[str, str]:
    """Run docs/argocd-health.lua as Argo CD does: `obj` a global, the chunk returns `hs`."""
    runtime = importlib.import_module(f"lupa.{lua}").LuaRuntime(unpack_returned_tuples=True)
    assert runtime.lua_version == ((5, 4) if lua == "lua54" else (5, 1))
    runtime.globals().obj = lua_value(runtime, obj, floats=lua == "lua51")
    hs = runtime.execute(LUA_CHECK.read_text())
    assert set(hs.keys()) <= {"status", "message"}
    assert hs["status"] in {"Healthy", "Progressing", "Degraded", "Suspended", "Missing"}
    return str(hs["status"]), str(hs["message"])


@pytest.mark.parametrize("lua", ["lua54", "lua51"])
def test_argo_cd_health_check_says_what_the_docs_say(lua: str, objects: dict[str, dict[str, Any]]) -> None:
    health = {name: argo_health(lua, obj) for name, obj in objects.items()}
    assert {n: s for n, (s, _) in health.items()} == {n: e.argo for n, e in EXPECTED.items()}
    for name, obj in objects.items():
        status, message = health[name]
        assert message, name
        if ("status" in obj and status != "Progressing") or name in {"canary", "unschedulable"}:
            assert message == condition(obj, "Ready")["message"], name
    assert health["generation-ahead"][1] == "SmallModel generation is 2, but latest observed generation is 1"


def test_argo_cd_health_check_agrees_with_kstatus_but_before_the_first_reconcile(
    kstatus: dict[str, dict[str, str]],
) -> None:
    same = {"InProgress": "Progressing", "Current": "Healthy", "Failed": "Degraded"}
    differ = {name for name, e in EXPECTED.items() if same[e.kstatus] != e.argo}
    assert differ == {"created"}
    assert {n: v["status"] for n, v in kstatus.items()} == {n: e.kstatus for n, e in EXPECTED.items()}


def test_the_docs_table_is_the_tested_one() -> None:
    """docs/gitops.md's table rows: | `sample` | Ready reason | kstatus | Argo CD | ..."""
    rows = re.findall(r"^\| `([\w-]+)` \| [^|]* \| `?(\w+)`? \| `?(\w+)`? \|", GITOPS_DOC.read_text(), re.M)
    assert {name: (k, a) for name, k, a in rows} == {n: (e.kstatus, e.argo) for n, e in EXPECTED.items()}
