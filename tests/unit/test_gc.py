"""Artifact garbage collection: the keep set, the retention decision, the directory store, the
sweep's summary, the GC Job, and the operator's pass against a recording Kube."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import types
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from flotilla.api.v1alpha1 import COMPONENT_ARTIFACT_GC, LABEL_COMPONENT, LABEL_MODEL
from flotilla.config import OperatorConfig
from flotilla.gc import Stored, decide, keep_set, model_keys
from flotilla.gc.__main__ import main as gc_main
from flotilla.gc.keep import UnknownModelError
from flotilla.gc.store import DirectoryStore, ObjectStore
from flotilla.gc.sweep import SUMMARY_LIMIT, Summary, sweep
from flotilla.resources.gc import build_gc_job, gc_job_name

from .objects import key_of, model

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
WEEK = timedelta(days=7)
KEYS = {
    name: (f"{i:x}" * 20)[:20] for i, name in enumerate(["desired", "stable", "canary", "rolled", "replaced", "old"], 1)
}


def stored(key: str, age: timedelta, complete: bool = True, size: int = 100, name: str | None = None) -> Stored:
    return Stored(key=key, name=name or key, modified=NOW - age, complete=complete, size=size)


# --- the keep set -------------------------------------------------------------------------


def referencing_status() -> dict[str, Any]:
    return {
        "artifact": {"key": KEYS["desired"]},
        "revisions": {
            "stable": "r1",
            "stableArtifactKey": KEYS["stable"],
            "canary": "r2",
            "canaryArtifactKey": KEYS["canary"],
            "lastRollback": {"revision": "r0", "reason": "p95", "time": "t", "artifactKey": KEYS["rolled"]},
            "lastPromotion": {
                "revision": "r1",
                "replaced": "rp",
                "reason": "steps",
                "time": "t",
                "replacedArtifactKey": KEYS["replaced"],
            },
        },
    }


def test_a_model_references_its_spec_status_stable_canary_rolled_back_and_replaced_artifacts() -> None:
    m = model(status=referencing_status())
    assert model_keys(m) == {key_of(m), *(KEYS[k] for k in ("desired", "stable", "canary", "rolled", "replaced"))}
    # A model just applied: only its spec's key (an optimization may start or reuse it).
    assert model_keys(model()) == {key_of(model())}


def test_the_keep_set_is_every_models_and_a_model_that_cannot_be_read_stops_the_pass() -> None:
    a = model("a").model_dump(by_alias=True, mode="json")
    b = model("b", optimize={"precision": "int8"}).model_dump(by_alias=True, mode="json")
    assert keep_set([a, b]) == {key_of(model("a")), key_of(model("b", optimize={"precision": "int8"}))}
    assert keep_set([]) == frozenset()
    broken = {"apiVersion": "flotilla.dev/v1alpha1", "kind": "SmallModel", "metadata": {"name": "x"}, "spec": {}}
    with pytest.raises(UnknownModelError, match="SmallModel x"):
        keep_set([a, broken])


def test_a_rollback_and_a_promotion_record_the_artifacts_they_leave() -> None:
    from flotilla.api.v1alpha1 import RevisionsStatus
    from flotilla.rollout import machine

    prev = RevisionsStatus(
        stable="r1", stable_artifact_key=KEYS["stable"], canary="r2", canary_artifact_key=KEYS["canary"]
    )
    obs = types.SimpleNamespace(target="r2", target_key=KEYS["canary"], now_text="t", total=1)
    rolled = machine._rollback(prev, obs, "too slow").revisions  # type: ignore[arg-type]
    assert rolled.last_rollback is not None and rolled.last_rollback.artifact_key == KEYS["canary"]
    promoted = machine._promote(prev, obs, "after every step").revisions  # type: ignore[arg-type]
    assert promoted.stable_artifact_key == KEYS["canary"]
    assert promoted.last_promotion is not None and promoted.last_promotion.replaced_artifact_key == KEYS["stable"]


# --- the decision -------------------------------------------------------------------------


def test_only_unreferenced_artifacts_older_than_the_retention_are_deleted() -> None:
    keep = frozenset(KEYS[k] for k in ("desired", "stable", "canary", "rolled"))
    items = [
        stored(KEYS["desired"], timedelta(days=30)),  # in use by the spec (an optimization may run)
        stored(KEYS["stable"], timedelta(days=30)),
        stored(KEYS["canary"], timedelta(days=30)),
        stored(KEYS["rolled"], timedelta(days=30)),
        stored(KEYS["stable"], timedelta(days=30), complete=False, name=f".{KEYS['stable']}.partial-x"),
        stored(KEYS["old"], timedelta(days=8)),  # unreferenced, old: goes
        stored(KEYS["replaced"], timedelta(days=6)),  # unreferenced, young: stays
        stored("e" * 20, timedelta(hours=1), complete=False, name=f".{'e' * 20}.partial-y"),  # an upload in progress
        stored("f" * 20, timedelta(days=8), complete=False, name=f".{'f' * 20}.work-z"),  # a crashed one
    ]
    d = decide(items, keep, NOW, WEEK)
    assert [s.name for s in d.delete] == [f".{'f' * 20}.work-z", KEYS["old"]]
    assert {s.key for s in d.in_use} == keep and len(d.in_use) == 5
    assert sorted(s.key for s in d.young) == sorted([KEYS["replaced"], "e" * 20])


def test_retention_zero_deletes_every_unreferenced_artifact_but_never_a_referenced_one() -> None:
    keep = frozenset({KEYS["stable"]})
    items = [
        stored(KEYS["stable"], timedelta(0)),
        stored(KEYS["old"], timedelta(0)),
        stored("e" * 20, -timedelta(hours=1)),
    ]
    d = decide(items, keep, NOW, timedelta(0))
    assert [s.key for s in d.delete] == [KEYS["old"]]
    assert [s.key for s in d.young] == ["e" * 20]  # written "in the future" (a skewed clock): young
    with pytest.raises(ValueError):
        decide(items, keep, NOW, -WEEK)


# --- the directory store ------------------------------------------------------------------


def artifact(root: Path, key: str, age: timedelta, *, complete: bool = True, name: str | None = None) -> Path:
    path = root / (name or key)
    (path / "m" / "1").mkdir(parents=True)
    (path / "m" / "1" / "model.onnx").write_bytes(b"x" * 1000)
    (path / "m" / "config.pbtxt").write_text("backend: python\n")
    if complete:
        (path / "manifest.json").write_text(json.dumps({"key": key, "complete": True, "modelName": "m"}))
    when = (NOW - age).timestamp()
    for p in [path, *path.rglob("*")]:
        os.utime(p, (when, when))
    return path


def test_the_directory_store_lists_artifacts_uploads_and_exports_and_nothing_else(tmp_path: Path) -> None:
    artifact(tmp_path, KEYS["stable"], timedelta(days=9))
    artifact(tmp_path, KEYS["old"], timedelta(days=9), complete=False)  # no manifest: an interrupted copy
    artifact(tmp_path, KEYS["canary"], timedelta(days=9), complete=False, name=f".{KEYS['canary']}.partial-ab12")
    (tmp_path / ".exports" / ("9" * 16)).mkdir(parents=True)
    (tmp_path / ".exports" / ("9" * 16) / "export-metadata.json").write_text("{}")
    for other in ("lost+found", "notes", ".hidden", "0123"):
        (tmp_path / other).mkdir()
    (tmp_path / ("a" * 20 + ".txt")).write_text("a file, not an artifact")
    listed = {s.name: s for s in DirectoryStore(tmp_path).list()}
    assert set(listed) == {KEYS["stable"], KEYS["old"], f".{KEYS['canary']}.partial-ab12", ".exports/" + "9" * 16}
    assert listed[KEYS["stable"]].complete and not listed[KEYS["old"]].complete
    assert listed[f".{KEYS['canary']}.partial-ab12"].key == KEYS["canary"]
    assert listed[KEYS["stable"]].size == 1000 + len("backend: python\n") + len(
        (tmp_path / KEYS["stable"] / "manifest.json").read_text()
    )
    assert abs((NOW - listed[KEYS["stable"]].modified) - timedelta(days=9)) < timedelta(seconds=1)


def test_an_upload_in_progress_is_as_young_as_its_newest_file(tmp_path: Path) -> None:
    path = artifact(tmp_path, KEYS["old"], timedelta(days=9), complete=False, name=f".{KEYS['old']}.partial-1")
    (path / "m" / "1" / "model.onnx.data").write_bytes(b"being written")  # now
    (only,) = DirectoryStore(tmp_path).list()
    assert datetime.now(UTC) - only.modified < timedelta(minutes=1)


def test_a_delete_renames_first_and_refuses_anything_that_is_not_an_entry(tmp_path: Path) -> None:
    artifact(tmp_path, KEYS["old"], timedelta(days=9))
    store = DirectoryStore(tmp_path)
    store.delete(KEYS["old"])
    assert list(tmp_path.iterdir()) == []
    for bad in ("lost+found", "../x", f"{KEYS['old']}/m", ".exports/../../etc"):
        with pytest.raises(ValueError):
            store.delete(bad)


def test_a_sweep_of_a_directory_removes_exactly_the_unreferenced_old_entries(tmp_path: Path) -> None:
    artifact(tmp_path, KEYS["stable"], timedelta(days=30))  # referenced, old
    artifact(tmp_path, KEYS["old"], timedelta(days=30))  # unreferenced, old
    artifact(tmp_path, KEYS["replaced"], timedelta(days=1))  # unreferenced, young
    artifact(tmp_path, "e" * 20, timedelta(hours=1), complete=False, name=f".{'e' * 20}.partial-q")  # young upload
    artifact(tmp_path, "f" * 20, timedelta(days=30), complete=False, name=f".{'f' * 20}.partial-q")  # crashed upload
    summary = sweep(DirectoryStore(tmp_path), frozenset({KEYS["stable"]}), datetime.now(UTC), WEEK)
    assert sorted(summary.removed) == sorted([KEYS["old"], f".{'f' * 20}.partial-q"])
    assert summary.bytes_freed > 2000 and summary.in_use == 1 and summary.young == 2 and not summary.errors
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [KEYS["stable"], KEYS["replaced"], f".{'e' * 20}.partial-q"]
    )


def test_the_cli_sweeps_and_writes_its_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "artifacts"
    root.mkdir()
    artifact(root, KEYS["stable"], timedelta(days=30))
    artifact(root, KEYS["old"], timedelta(days=30))
    out = tmp_path / "termination-log"
    argv = ["sweep", "--root", str(root), "--keep", KEYS["stable"], "--retention-seconds", "0", "--summary-file"]
    assert gc_main([*argv, str(out), "--dry-run"]) == 0
    assert (root / KEYS["old"]).exists()  # a dry run deletes nothing
    assert gc_main([*argv, str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["removed"] == [KEYS["old"]] and data["inUse"] == 1 and data["bytesFreed"] > 1000
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == data
    assert [p.name for p in root.iterdir()] == [KEYS["stable"]]


def test_the_summary_fits_a_termination_message_and_says_how_much_it_left_out() -> None:
    summary = Summary(removed=[f"{i:020x}" for i in range(1000)], bytes_freed=5, in_use=2)
    text = summary.to_termination_message()
    assert len(text.encode()) <= SUMMARY_LIMIT
    back, omitted = Summary.from_wire(json.loads(text))
    assert len(back.removed) + omitted == 1000 and back.bytes_freed == 5 and back.in_use == 2


def test_the_s3_store_maps_the_objectstore_clients_functions(monkeypatch: pytest.MonkeyPatch) -> None:
    """Against the documented signatures of flotilla.objectstore, with a stand-in module (the
    real client against a real S3 server: tests/integration/test_objectstore.py)."""
    deleted: list[tuple[object, str]] = []
    naive = datetime(2026, 1, 1, 0, 0)
    fake = types.ModuleType("flotilla.objectstore")
    fake.S3Settings = lambda: "settings"  # type: ignore[attr-defined]
    fake.list_artifacts = lambda settings: [  # type: ignore[attr-defined]
        types.SimpleNamespace(key=KEYS["old"], modified=naive, complete=True, size=7),
        types.SimpleNamespace(key=KEYS["stable"], modified=NOW, complete=False, size=3),
    ]
    fake.delete_artifact = lambda settings, key: deleted.append((settings, key))  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "flotilla.objectstore", fake)
    store = ObjectStore()
    listed = store.list()
    assert listed[0] == Stored(KEYS["old"], KEYS["old"], naive.replace(tzinfo=UTC), True, 7)
    summary = sweep(store, frozenset({KEYS["stable"]}), NOW, WEEK)
    assert summary.removed == [KEYS["old"]] and deleted == [("settings", KEYS["old"])]


# --- the Job ------------------------------------------------------------------------------


def test_the_gc_job_mounts_the_claim_runs_the_sweep_with_the_keep_set_and_is_no_models_child() -> None:
    config = OperatorConfig(
        artifact_retention_seconds=3600, job_node_selector={"pool": "cpu"}, image_pull_secrets=["regcred"]
    )
    job = build_gc_job("ml", [KEYS["stable"], KEYS["canary"], KEYS["stable"]], config)
    assert job["metadata"]["name"] == gc_job_name(config) == "flotilla-artifacts-gc"
    labels = job["metadata"]["labels"]
    assert labels[LABEL_COMPONENT] == COMPONENT_ARTIFACT_GC and LABEL_MODEL not in labels
    assert "ownerReferences" not in job["metadata"]
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == config.optimizer_image
    assert container["command"] == ["python", "-m", "flotilla.gc"]
    args = container["args"]
    assert args[:5] == ["sweep", "--root", "/artifacts", "--retention-seconds", "3600"]
    assert args[5:] == ["--keep", KEYS["stable"], "--keep", KEYS["canary"]]  # each once, sorted
    assert pod["volumes"] == [{"name": "artifacts", "persistentVolumeClaim": {"claimName": "flotilla-artifacts"}}]
    assert pod["securityContext"]["runAsNonRoot"] and container["securityContext"]["readOnlyRootFilesystem"]
    assert pod["nodeSelector"] == {"pool": "cpu"} and pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert job["spec"]["backoffLimit"] == 0 and pod["restartPolicy"] == "Never"


# --- the operator's pass ------------------------------------------------------------------


class GcKube:
    """The API server as a GC pass sees it: a claim, Jobs, SmallModels; the GC Job finishes on
    its second look with the termination message given."""

    def __init__(self, models: list[dict[str, Any]], optimizer_running: bool = False, message: str = "") -> None:
        self.models = models
        self.optimizer_running = optimizer_running
        self.message = message
        self.created: list[dict[str, Any]] = []
        self.events: list[tuple[str, str, str, str]] = []
        self.deleted: list[str] = []
        self.looks = 0

    async def claim(self, namespace: str, name: str) -> dict[str, Any] | None:
        return {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "namespace": namespace},
            "status": {"phase": "Bound"},
        }

    async def jobs(self, namespace: str, labels: dict[str, str]) -> list[dict[str, Any]]:
        if not self.optimizer_running:
            return []
        return [{"metadata": {"name": "chat-opt-1234"}, "status": {"active": 1}}]

    async def job(self, namespace: str, name: str) -> dict[str, Any] | None:
        if not self.created or name in self.deleted:
            return None
        self.looks += 1
        done = [{"type": "Complete", "status": "True"}] if self.looks > 2 else []
        return {**self.created[-1], "status": {"conditions": done}}

    async def small_models(self, namespace: str) -> list[dict[str, Any]]:
        return self.models

    async def apply(self, obj: dict[str, Any]) -> int:
        self.created.append(obj)
        return 1

    async def job_pods(self, namespace: str, job: str) -> list[dict[str, Any]]:
        terminated = {"exitCode": 0, "message": self.message}
        return [{"status": {"containerStatuses": [{"state": {"terminated": terminated}}]}}]

    async def event(self, involved: dict[str, Any], type_: str, reason: str, message: str) -> None:
        self.events.append((involved["kind"], type_, reason, message))

    async def delete(self, api_version: str, kind: str, name: str, namespace: str, foreground: bool = False) -> None:
        self.deleted.append(name)


def controller(kube: GcKube, **settings: Any) -> Any:
    from flotilla.controller import Controller

    ctl = Controller(OperatorConfig(artifact_retention_seconds=60, **settings), kube=kube)  # type: ignore[arg-type]
    ctl.gc_poll_seconds = 0
    return ctl


def test_a_pass_runs_the_job_with_every_models_keys_and_reports_on_the_claim() -> None:
    m = model(status=referencing_status())
    message = Summary(removed=[KEYS["old"]], bytes_freed=2_500_000, in_use=3, young=1).to_termination_message()
    kube = GcKube([m.model_dump(by_alias=True, mode="json")], message=message)
    outcome = asyncio.run(controller(kube).collect_garbage("ml"))
    (job,) = kube.created
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert {args[i + 1] for i, a in enumerate(args) if a == "--keep"} == model_keys(m)
    assert args[args.index("--retention-seconds") + 1] == "60"
    assert outcome is not None and outcome.summary is not None and outcome.summary.removed == [KEYS["old"]]
    ((kind, type_, reason, text),) = kube.events
    assert (kind, type_, reason) == ("PersistentVolumeClaim", "Normal", "ArtifactsCollected")
    assert f"removed 1 artifact(s), 2.5 MB freed: {KEYS['old']}" in text and "kept 3 in use, 1 within" in text
    assert kube.deleted == ["flotilla-artifacts-gc"]  # read, then gone: the next pass starts afresh


def test_a_pass_that_removed_nothing_is_only_logged(caplog: pytest.LogCaptureFixture) -> None:
    kube = GcKube([], message=Summary(in_use=2).to_termination_message())
    with caplog.at_level("INFO", logger="flotilla.controller"):
        asyncio.run(controller(kube).collect_garbage("ml"))
    assert kube.events == [] and kube.deleted == ["flotilla-artifacts-gc"]
    assert "artifact GC in ml: removed 0 artifact(s), 0.0 kB freed; kept 2 in use" in caplog.text


def test_no_pass_while_an_optimization_runs_or_a_model_cannot_be_read() -> None:
    kube = GcKube([], optimizer_running=True)
    assert asyncio.run(controller(kube).collect_garbage("ml")) is None
    broken = {"apiVersion": "flotilla.dev/v1alpha1", "kind": "SmallModel", "metadata": {"name": "x"}, "spec": {}}
    kube2 = GcKube([broken])
    assert asyncio.run(controller(kube2).collect_garbage("ml")) is None
    assert kube.created == kube2.created == [] and kube.events == kube2.events == []


def test_a_job_without_a_summary_is_a_warning_event() -> None:
    kube = GcKube([], message="Traceback: boom")
    outcome = asyncio.run(controller(kube).collect_garbage("ml"))
    assert outcome is not None and outcome.summary is None
    ((_, type_, reason, text),) = kube.events
    assert (type_, reason) == ("Warning", "ArtifactGCFailed") and "failed" in text


def test_an_optimization_job_waits_for_a_running_sweep_of_its_namespace() -> None:
    """The controller's side of "never a sweep beside an optimization": a reconcile that would
    create an optimization Job takes the namespace's GC lock."""
    from flotilla.reconcile import Observed

    async def main() -> list[str]:
        order: list[str] = []
        ctl = controller(GcKube([]))

        async def fake_now(model: Any, observed: Any, body: Any) -> tuple[Any, None]:
            order.append("plan")
            return None, None

        ctl._plan_and_execute_now = fake_now
        async with ctl._gc_lock("ml"):
            task = asyncio.create_task(ctl._plan_and_execute(model(), Observed(), {}))
            await asyncio.sleep(0.05)
            order.append("sweep done")
        await task
        return order

    assert asyncio.run(main()) == ["sweep done", "plan"]


def test_a_gc_job_left_by_a_stopped_operator_is_waited_for_and_reported_not_doubled() -> None:
    message = Summary(removed=[KEYS["old"]], bytes_freed=1, in_use=0).to_termination_message()
    kube = GcKube([], optimizer_running=True, message=message)  # an optimization runs: no new pass
    kube.created.append(build_gc_job("ml", [], OperatorConfig()))  # ...but one is there already
    outcome = asyncio.run(controller(kube).collect_garbage("ml"))
    assert len(kube.created) == 1 and outcome is not None and outcome.summary is not None
    assert [e[2] for e in kube.events] == ["ArtifactsCollected"] and kube.deleted == ["flotilla-artifacts-gc"]


def test_no_pass_on_a_claim_that_is_not_bound_or_admits_one_pod_at_a_time() -> None:
    for claim in (
        {"status": {"phase": "Pending"}},
        {"spec": {"accessModes": ["ReadWriteOncePod"]}, "status": {"phase": "Bound"}},
    ):
        kube = GcKube([])

        async def this_claim(namespace: str, name: str, claim: dict[str, Any] = claim) -> dict[str, Any]:
            return claim

        kube.claim = this_claim  # type: ignore[method-assign]
        assert asyncio.run(controller(kube).collect_garbage("ml")) is None and kube.created == []


S3 = {"artifact_store": "s3", "s3_bucket": "models", "s3_endpoint": "http://minio:9000", "s3_credentials_secret": "s3"}


def test_the_s3_gc_job_sweeps_the_bucket_with_the_stores_settings_and_no_claim() -> None:
    job = build_gc_job("ml", [KEYS["stable"]], OperatorConfig(**S3))
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"][:3] == ["sweep", "--store", "s3"] and "--root" not in container["args"]
    env = {e["name"]: e for e in container["env"]}
    assert (
        env["FLOTILLA_S3_BUCKET"]["value"] == "models" and env["FLOTILLA_S3_ENDPOINT"]["value"] == "http://minio:9000"
    )
    assert env["FLOTILLA_S3_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {"name": "s3", "key": "AWS_ACCESS_KEY_ID"}
    assert not any("persistentVolumeClaim" in v for v in pod["volumes"])


def test_an_s3_pass_keeps_every_namespaces_models_and_reports_on_the_namespace_it_ran_in() -> None:
    a = model("a").model_dump(by_alias=True, mode="json")
    b = model("b", optimize={"precision": "int8"}).model_dump(by_alias=True, mode="json")
    b["metadata"]["namespace"] = "aaa"
    message = Summary(removed=[KEYS["old"]], bytes_freed=10).to_termination_message()
    kube = GcKube([a, b], message=message)
    ctl = controller(kube, **S3)

    async def main() -> Any:
        ctl.gc_tick(["ml", "aaa"])  # namespaces with claims: with S3, one pass for the store instead
        assert list(ctl._gc_passes) == [""]
        return await ctl._gc_passes[""]

    outcome = asyncio.run(main())
    (job,) = kube.created
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert {args[i + 1] for i, x in enumerate(args) if x == "--keep"} == model_keys(model("a")) | model_keys(
        model("b", optimize={"precision": "int8"})
    )
    assert job["metadata"]["namespace"] == "aaa" == outcome.namespace  # the first namespace with a model
    ((kind, _, reason, _),) = kube.events
    assert (kind, reason) == ("Namespace", "ArtifactsCollected")


def test_with_s3_an_optimization_anywhere_waits_for_the_sweep() -> None:
    ctl = controller(GcKube([]), **S3)
    assert ctl._gc_scope("ml") == ctl._gc_scope("other") == ""
    assert controller(GcKube([]))._gc_scope("ml") == "ml"


def test_a_gc_pod_that_never_starts_is_deleted_before_the_namespace_is_released() -> None:
    kube = GcKube([])
    kube.looks = -(10**9)  # the Job never finishes
    unscheduled = {"status": {"phase": "Pending", "conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3 nodes are available"}
    ]}}  # fmt: skip

    async def pods(namespace: str, job: str) -> list[dict[str, Any]]:
        return [unscheduled]

    kube.job_pods = pods  # type: ignore[method-assign]
    ctl = controller(kube)
    ctl.gc_start_seconds = 0
    outcome = asyncio.run(ctl.collect_garbage("ml"))
    assert outcome is not None and outcome.summary is None and kube.deleted[0] == "flotilla-artifacts-gc"
    assert (
        outcome.failed is not None
        and "did not start within 0 s (Unschedulable: 0/3 nodes are available)" in outcome.failed
    )
    ((_, type_, reason, text),) = kube.events
    assert (type_, reason) == ("Warning", "ArtifactGCFailed") and "Unschedulable" in text


def test_a_deletion_cut_short_is_finished_by_the_next_sweep(tmp_path: Path) -> None:
    artifact(tmp_path, KEYS["old"], timedelta(days=9), name=f".{KEYS['old']}.deleting-abc")  # a pass died here
    artifact(tmp_path, KEYS["old"], timedelta(days=9))  # ...and the same key was published again since
    summary = sweep(DirectoryStore(tmp_path), frozenset(), datetime.now(UTC), WEEK)
    assert sorted(summary.removed) == sorted([KEYS["old"], f".{KEYS['old']}.deleting-abc"]) and not summary.errors
    assert list(tmp_path.iterdir()) == []
