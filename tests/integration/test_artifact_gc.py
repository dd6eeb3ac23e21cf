"""Artifact garbage collection on the real control plane, its Job run for real on the process
node: a claim seeded with artifacts (referenced and not, old and young, complete and not)
loses exactly the unreferenced old ones, and the claim gets an ArtifactsCollected Event."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from localcluster.cluster import Cluster, wait_for

from .conftest import Operator, get
from .test_operator import SPEC, apply, key_for, manifest, wait_condition

pytestmark = pytest.mark.cluster

CLAIM = "flotilla-artifacts"
DAY = timedelta(days=1)
GC_REASONS = ("ArtifactsCollected", "ArtifactGCFailed")


def seed(root: Path, name: str, age: timedelta, *, key: str | None = None, complete: bool = True) -> None:
    """An artifact directory as the optimizer publishes it (or leaves it, interrupted)."""
    path = root / name
    (path / "m" / "1").mkdir(parents=True)
    (path / "m" / "1" / "model.onnx").write_bytes(b"\0" * 4096)
    (path / "m" / "config.pbtxt").write_text('backend: "python"\n')
    if complete:
        (path / "manifest.json").write_text(json.dumps({"key": key or name, "complete": True, "modelName": "m"}))
    when = time.time() - age.total_seconds()
    for p in [*path.rglob("*"), path]:
        os.utime(p, (when, when))


def claim_events(cluster: Cluster, namespace: str) -> list[dict[str, Any]]:
    events = get(cluster, "events", namespace) or {"items": []}
    return [
        e
        for e in events["items"]
        if e["involvedObject"].get("kind") == "PersistentVolumeClaim" and e["involvedObject"]["name"] == CLAIM
    ]


def test_a_gc_pass_deletes_exactly_the_unreferenced_old_artifacts_and_says_so_on_the_claim(
    operator_with: Callable[..., Operator],
    namespace: str,
    artifact_store: str,
    process_node: Any,
) -> None:
    root = Path(f"/tmp/flotilla-pv/{namespace}")
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    try:
        referenced = key_for(SPEC)  # the SmallModel's spec: in use, however old
        old, young, crashed, uploading, copied = (f"{i}" * 20 for i in (1, 2, 3, 4, 5))
        seed(root, referenced, 30 * DAY)
        seed(root, old, 30 * DAY)
        seed(root, young, timedelta(0))
        seed(root, f".{crashed}.partial-x1", 30 * DAY, key=crashed, complete=False)
        seed(root, f".{uploading}.partial-x2", timedelta(0), key=uploading, complete=False)
        seed(root, copied, 30 * DAY, complete=False)  # no manifest: an interrupted copy
        (root / "lost+found").mkdir()
        (root / "lost+found").chmod(0o755)

        op = operator_with(
            FLOTILLA_JOB_NODE_SELECTOR=json.dumps(process_node.node_selector),
            # The model's optimization fails at once (a bad argument, a permanent failure): no
            # optimizer runs, and a pass never runs beside one.
            FLOTILLA_OPTIMIZER_EXTRA_ARGS="--no-such-option",
            FLOTILLA_CREATE_ARTIFACT_PVC="false",
            FLOTILLA_ARTIFACT_GC_INTERVAL_SECONDS="3",
            FLOTILLA_ARTIFACT_RETENTION_SECONDS="600",
        )
        apply(op.cluster, namespace, manifest("chat", SPEC))
        wait_condition(op.cluster, namespace, "chat", "Optimized", "False", "InvalidArguments")
        started = time.time()

        def collected() -> dict[str, Any] | None:
            found = [e for e in claim_events(op.cluster, namespace) if e["reason"] in GC_REASONS]
            return found[0] if found else None

        event = wait_for(collected, timeout=180, what="an ArtifactsCollected Event on the claim")
        assert event["reason"] == "ArtifactsCollected", event
        waited = time.time() - started
        removed = sorted([old, f".{crashed}.partial-x1", copied])
        assert sorted(p.name for p in root.iterdir()) == sorted(
            [referenced, young, f".{uploading}.partial-x2", "lost+found"]
        )
        message = event["message"]
        assert event["type"] == "Normal" and "removed 3 artifact(s)" in message, message
        for name in removed:
            assert name in message, (name, message)
        assert "kept 1 in use, 2 within the retention" in message, message
        # The Job is gone once read; the next passes find nothing more to remove (no Event).
        wait_for(lambda: get(op.cluster, "job", namespace, f"{CLAIM}-gc") is None, timeout=30, what="the GC Job gone")
        time.sleep(8)
        assert len([e for e in claim_events(op.cluster, namespace) if e["reason"] in GC_REASONS]) == 1
        assert sorted(p.name for p in root.iterdir()) == sorted(
            [referenced, young, f".{uploading}.partial-x2", "lost+found"]
        )
        print(f"\n[artifact-gc] model failed -> ArtifactsCollected in {waited:.1f} s: {message}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
