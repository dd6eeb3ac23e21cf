"""The pure part of `make images` (localcluster.images): lists, input hashes, labels, the
image config, manifest and index, and a layer packed twice being the same bytes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from localcluster import images


def test_every_image_has_a_requirements_list_and_the_dockerfiles_read_it() -> None:
    assert images.read_list(images.IMAGES_DIR / "base" / "packages.txt")
    lock = {line.split("==")[0].lower() for line in images.LOCK.read_text().splitlines() if "==" in line}
    for name in images.IMAGES:
        requirements = images.read_list(images.IMAGES_DIR / name / "requirements.txt")
        assert requirements, name
        for req in requirements:  # every name is pinned by the lock
            assert req.split("[")[0].lower() in lock, (name, req)
        dockerfile = (images.IMAGES_DIR / name / "Dockerfile").read_text()
        assert f"images/{name}/requirements.txt" in dockerfile and "requirements/lock.txt" in dockerfile, name


def test_no_torch_outside_the_optimizer() -> None:
    for name in ("operator", "gateway", "triton"):
        requirements = images.read_list(images.IMAGES_DIR / name / "requirements.txt")
        assert not {"torch", "accelerate", "optimum-onnx[onnxruntime]"} & set(requirements), name


def test_the_gpu_optimizer_has_trtexec_on_path() -> None:
    dockerfile = (images.IMAGES_DIR / "optimizer" / "Dockerfile.gpu").read_text()
    assert "nvcr.io/nvidia/tensorrt:" in dockerfile and "/usr/src/tensorrt/bin" in dockerfile


def test_inputs_hash_follows_content_not_order() -> None:
    a = images.inputs_hash({"x": b"1", "y": b"2"})
    assert a == images.inputs_hash({"y": b"2", "x": b"1"})
    assert a != images.inputs_hash({"x": b"1", "y": b"3"})
    assert images.deps_plan("operator", ["kopf"], b"lock1").key != images.deps_plan("operator", ["kopf"], b"lock2").key
    assert images.deps_plan("operator", ["kopf"], b"l").key.startswith("operator-deps-")


def test_entrypoints_match_how_the_chart_and_the_operator_run_them() -> None:
    # chart: operator and gateway containers set only args (run ..., gateway)
    assert images.SPECS["operator"].entrypoint == ("flotilla",)
    assert images.SPECS["gateway"].entrypoint == ("flotilla",) and images.SPECS["gateway"].cmd == ("gateway",)
    # the Job's command is `python -m flotilla optimize`, the serving pod's `tritonserver`
    assert images.SPECS["optimizer"].entrypoint[:3] == ("python", "-m", "flotilla")
    assert images.SPECS["triton"].entrypoint == ("tritonserver",)


def test_config_manifest_and_index() -> None:
    layer = images.Layer("sha256:" + "a" * 64, 10, "sha256:" + "b" * 64, 20, "base", 100)
    lab = images.labels("0.1.0", "abc", images.rfc3339(200))
    assert lab["org.opencontainers.image.created"] == "1970-01-01T00:03:20Z"
    config = images.image_config(images.SPECS["operator"], [layer], 200, lab)
    doc = json.loads(config)
    assert doc["config"]["User"] == "1000:1000" and doc["config"]["Entrypoint"] == ["flotilla"]
    assert doc["rootfs"]["diff_ids"] == [layer.diff_id] and doc["created"] == "1970-01-01T00:03:20Z"
    assert doc["history"][0]["created"] == "1970-01-01T00:01:40Z"
    manifest = images.manifest(config, [layer], lab)
    assert json.loads(manifest)["config"]["digest"] == images.sha256(config)
    ref = images.tag("operator", "0.1.0")
    assert ref == "ghcr.io/flotilla-dev/flotilla-operator:0.1.0"
    index = json.loads(images.index(manifest, ref))
    assert index["manifests"][0]["annotations"][images.REF_NAME] == ref
    assert index["manifests"][0]["digest"] == images.sha256(manifest)
    assert images.image_config(images.SPECS["operator"], [layer], 200, lab) == config  # canonical


def test_a_layer_packed_twice_is_the_same_blob(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "usr" / "bin" / "tool").write_text("#!/bin/sh\n")
    (root / "etc").mkdir()
    (root / "etc" / "b").write_text("b")
    (root / "etc" / "a").write_text("a")
    first = images.pack_layer(root, tmp_path / "1.tar.gz", 1000, "test")
    os.utime(root / "etc" / "a", (5000, 5000))  # newer than the epoch: clamped
    second = images.pack_layer(root, tmp_path / "2.tar.gz", 1000, "test")
    assert first == second
    assert (tmp_path / "1.tar.gz").read_bytes() == (tmp_path / "2.tar.gz").read_bytes()
    import tarfile

    with tarfile.open(tmp_path / "1.tar.gz") as tar:
        names = tar.getnames()
        assert names == sorted(names, key=lambda n: n.split("/")) or names[0] == "etc"
        assert all(m.mtime <= 1000 and m.uname == "" for m in tar.getmembers())


@pytest.mark.parametrize("line", ["kopf  # the framework", "  kopf", "kopf"])
def test_read_list_strips_comments(tmp_path: Path, line: str) -> None:
    (tmp_path / "r.txt").write_text(f"# header\n\n{line}\n")
    assert images.read_list(tmp_path / "r.txt") == ("kopf",)


def test_the_cache_key_follows_the_inputs_and_the_mtime_clamp() -> None:
    plan = images.deps_plan("optimizer", ["torch"], b"lock")
    assert images.cache_key(plan, 100).startswith("optimizer-deps-")
    assert images.cache_key(plan, 100) == images.cache_key(plan, 100)
    assert images.cache_key(plan, 100) != images.cache_key(plan, 101)
    assert plan.layer == "optimizer-deps"


def test_the_images_that_run_the_s3_client_have_boto3() -> None:
    # the fetch-artifact init container runs in the operator image (config.artifact_fetch_image),
    # the Job's upload and the GC Job's S3 pass in the optimizer image
    for name in ("operator", "optimizer"):
        requirements = set(images.read_list(images.IMAGES_DIR / name / "requirements.txt"))
        assert {"boto3", "pydantic-settings"} <= requirements, name
