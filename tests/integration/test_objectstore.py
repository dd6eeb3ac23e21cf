"""flotilla.objectstore against a real S3 server (versitygw, posix backend): no cluster.

Upload (manifest last), verified fetch, node cache, failure reasons, the fetch CLI's exit
codes and termination message, list/delete for the GC, and the optimizer's --upload-key.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from flotilla.api.v1alpha1 import ArtifactSummary
from flotilla.objectstore import (
    MANIFEST,
    S3Settings,
    StoreError,
    artifact_complete,
    delete_artifact,
    fetch_artifact,
    list_artifacts,
    upload_artifact,
)
from flotilla.reconcile.observed import PodView

KEY = "0123456789abcdef0123"
OTHER = "fedcba9876543210fedc"
REPO = Path(__file__).resolve().parents[2]


def _artifact(root: Path, size: int = 300_000) -> Path:
    """A small artifact directory shaped like the optimizer's."""
    root.mkdir(parents=True)
    (root / "embed" / "1").mkdir(parents=True)
    (root / "embed" / "config.pbtxt").write_text('name: "embed"\n')
    (root / "embed" / "1" / "model.onnx").write_bytes(os.urandom(size))
    (root / "embed" / "1" / "tokenizer.json").write_text('{"v": 1}')
    (root / MANIFEST).write_text(json.dumps({"key": KEY, "complete": True, "modelName": "embed"}))
    return root


def _with(settings: S3Settings, changes: dict[str, Any]) -> S3Settings:
    """The same settings with some changed, validated (model_copy would not make a SecretStr)."""
    return S3Settings(**{**settings.model_dump(), **changes})


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _stored(server: Any, settings: S3Settings, key: str, rel: str) -> Path:
    return Path(server.data_dir) / settings.bucket / settings.object_key(key, rel)


def test_round_trip_puts_every_file_under_the_key_and_the_manifest_lists_their_checksums(
    s3: S3Settings, tmp_path: Path
) -> None:
    src = _artifact(tmp_path / "src")
    assert not artifact_complete(s3, KEY)
    manifest = upload_artifact(s3, KEY, src)
    assert artifact_complete(s3, KEY)
    assert set(manifest["store"]["files"]) == {"embed/config.pbtxt", "embed/1/model.onnx", "embed/1/tokenizer.json"}
    assert manifest["modelName"] == "embed" and manifest["complete"] is True and manifest["key"] == KEY
    result = fetch_artifact(s3, KEY, tmp_path / "dest")
    got = _tree(tmp_path / "dest")
    want = _tree(src)
    assert {k: v for k, v in got.items() if k != MANIFEST} == {k: v for k, v in want.items() if k != MANIFEST}
    assert json.loads(got[MANIFEST]) == manifest
    assert result.files == 3 and not result.from_cache and result.bytes > 300_000


def test_fetch_into_an_existing_directory_leaves_no_staging_behind(s3: S3Settings, tmp_path: Path) -> None:
    upload_artifact(s3, KEY, _artifact(tmp_path / "src"))
    dest = tmp_path / "mount"
    dest.mkdir()  # the pod's emptyDir: a mount point, whose parent may be read-only
    fetch_artifact(s3, KEY, dest)
    assert sorted(p.name for p in dest.iterdir()) == ["embed", MANIFEST]


def test_the_manifest_goes_last_so_a_cut_upload_leaves_the_key_incomplete(
    s3: S3Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = _artifact(tmp_path / "src")
    uploaded: list[str] = []
    real_client = S3Settings.client

    def client(self: S3Settings) -> Any:
        c = real_client(self)
        upload_file = c.upload_file

        def cut(filename: str, bucket: str, key: str, **kw: Any) -> None:
            if len(uploaded) == 2:
                raise KeyboardInterrupt  # the pod is killed mid-upload
            upload_file(filename, bucket, key, **kw)
            uploaded.append(key)

        c.upload_file = cut
        return c

    monkeypatch.setattr(S3Settings, "client", client)
    with pytest.raises(KeyboardInterrupt):
        upload_artifact(s3, KEY, src)
    monkeypatch.setattr(S3Settings, "client", real_client)
    assert len(uploaded) == 2
    assert not artifact_complete(s3, KEY)
    (listed,) = list_artifacts(s3)
    assert listed.key == KEY and not listed.complete
    with pytest.raises(StoreError) as err:
        fetch_artifact(s3, KEY, tmp_path / "dest")
    assert err.value.reason == "ArtifactMissing" and not (tmp_path / "dest").exists()


def test_a_corrupted_stored_file_is_a_checksum_mismatch_and_dest_stays_untouched(
    s3: S3Settings, s3_server: Any, tmp_path: Path
) -> None:
    upload_artifact(s3, KEY, _artifact(tmp_path / "src"))
    stored = _stored(s3_server, s3, KEY, "embed/1/model.onnx")
    data = bytearray(stored.read_bytes())
    data[1000] ^= 0xFF  # same size, one byte flipped on the server's disk
    stored.write_bytes(bytes(data))
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep").write_text("before")
    with pytest.raises(StoreError) as err:
        fetch_artifact(s3, KEY, dest)
    assert err.value.reason == "ArtifactChecksumMismatch", err.value
    assert sorted(p.name for p in dest.iterdir()) == ["keep"]


def test_a_missing_key_is_artifact_missing(s3: S3Settings, tmp_path: Path) -> None:
    with pytest.raises(StoreError) as err:
        fetch_artifact(s3, OTHER, tmp_path / "dest")
    assert err.value.reason == "ArtifactMissing"


def test_wrong_credentials(s3: S3Settings, tmp_path: Path) -> None:
    bad = _with(s3, {"secret_access_key": "not-the-secret"})
    with pytest.raises(StoreError) as err:
        fetch_artifact(bad, KEY, tmp_path / "dest")
    assert err.value.reason == "StoreCredentialsInvalid"
    with pytest.raises(StoreError) as err:
        upload_artifact(bad, KEY, _artifact(tmp_path / "src"))
    assert err.value.reason == "StoreCredentialsInvalid"
    wrong_key = _with(s3, {"access_key_id": "nobody"})
    with pytest.raises(StoreError) as err:
        artifact_complete(wrong_key, KEY)
    assert err.value.reason == "StoreCredentialsInvalid"


def test_an_account_without_access_to_the_bucket_is_credentials_invalid(
    s3: S3Settings, s3_server: Any, tmp_path: Path
) -> None:
    upload_artifact(s3, KEY, _artifact(tmp_path / "src"))
    s3_server.add_user("other-team", "other-secret")  # a real account, not the bucket's owner
    other = _with(s3, {"access_key_id": "other-team", "secret_access_key": "other-secret"})
    with pytest.raises(StoreError) as err:
        fetch_artifact(other, KEY, tmp_path / "dest")
    assert err.value.reason == "StoreCredentialsInvalid" and "AccessDenied" in err.value.message
    assert not (tmp_path / "dest").exists()


def test_a_missing_bucket(s3: S3Settings, tmp_path: Path) -> None:
    gone = _with(s3, {"bucket": "no-such-bucket-here"})
    for call in (
        lambda: fetch_artifact(gone, KEY, tmp_path / "dest"),
        lambda: upload_artifact(gone, KEY, _artifact(tmp_path / "src")),
        lambda: artifact_complete(gone, KEY),
        lambda: list_artifacts(gone),
    ):
        with pytest.raises(StoreError) as err:
            call()
        assert err.value.reason == "StoreBucketMissing", err.value


def test_an_unreachable_endpoint_fails_fast_with_bounded_retries(s3: S3Settings, tmp_path: Path) -> None:
    from localcluster.s3server import free_port

    down = _with(s3, {"endpoint": f"http://127.0.0.1:{free_port()}", "max_attempts": 3})
    started = time.monotonic()
    with pytest.raises(StoreError) as err:
        fetch_artifact(down, KEY, tmp_path / "dest")
    assert err.value.reason == "StoreUnreachable"
    assert time.monotonic() - started < 30  # 3 attempts with backoff, not minutes


def test_https_with_and_without_the_ca_bundle(s3: S3Settings, tmp_path: Path) -> None:
    from localcluster import s3server

    server = s3server.start(tmp_path / "tls-s3", tls=True)
    try:
        assert server.ca_bundle is not None
        server.create_bucket("tls-bucket")
        tls = _with(
            s3,
            {
                "endpoint": server.endpoint,
                "bucket": "tls-bucket",
                "access_key_id": server.access_key,
                "secret_access_key": server.secret_key,
                "ca_bundle": server.ca_bundle,
            },
        )
        upload_artifact(tls, KEY, _artifact(tmp_path / "src"))
        fetch_artifact(tls, KEY, tmp_path / "dest")
        assert (tmp_path / "dest" / "embed" / "1" / "model.onnx").is_file()
        untrusted = _with(tls, {"ca_bundle": None})
        with pytest.raises(StoreError) as err:
            fetch_artifact(untrusted, KEY, tmp_path / "dest2")
        assert err.value.reason == "StoreUnreachable" and "CA_BUNDLE" in err.value.message
    finally:
        server.stop()


def test_a_cache_hit_needs_no_store_and_links_read_only_copies(s3: S3Settings, s3_server: Any, tmp_path: Path) -> None:
    upload_artifact(s3, KEY, _artifact(tmp_path / "src"))
    cache = tmp_path / "cache"
    first = fetch_artifact(s3, KEY, tmp_path / "a", cache)
    assert not first.from_cache and (cache / KEY / MANIFEST).is_file()
    s3_server.stop()  # nothing can be downloaded from here on
    second = fetch_artifact(s3, KEY, tmp_path / "b", cache)
    assert second.from_cache
    assert _tree(tmp_path / "a") == _tree(tmp_path / "b")
    model = tmp_path / "b" / "embed" / "1" / "model.onnx"
    assert model.stat().st_ino == (cache / KEY / "embed" / "1" / "model.onnx").stat().st_ino  # a hard link
    assert not os.access(model, os.W_OK) or os.geteuid() == 0
    assert model.stat().st_mode & 0o222 == 0


def test_a_corrupt_cache_entry_is_fetched_again(s3: S3Settings, tmp_path: Path) -> None:
    upload_artifact(s3, KEY, _artifact(tmp_path / "src"))
    cache = tmp_path / "cache"
    fetch_artifact(s3, KEY, tmp_path / "a", cache)
    cached = cache / KEY / "embed" / "1" / "tokenizer.json"
    cached.chmod(0o600)
    cached.write_text('{"v": 2}')  # same size, other bytes
    again = fetch_artifact(s3, KEY, tmp_path / "b", cache)
    assert not again.from_cache
    assert (tmp_path / "b" / "embed" / "1" / "tokenizer.json").read_text() == '{"v": 1}'
    assert (cache / KEY / "embed" / "1" / "tokenizer.json").read_text() == '{"v": 1}'


def _cli(
    tmp_path: Path, key: str, *extra: str, env: dict[str, str] | None = None, dest: Path | None = None
) -> tuple[int, str, str]:
    log = tmp_path / f"termination-{time.monotonic_ns()}"
    dest = dest or tmp_path / f"dest-{time.monotonic_ns()}"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "flotilla.objectstore",
            "fetch",
            "--key",
            key,
            "--dest",
            str(dest),
            "--termination-message-path",
            str(log),
            *extra,
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "operator"), **(env or {})},
        timeout=120,
        check=False,
    )
    return proc.returncode, proc.stderr, log.read_text() if log.exists() else ""


def test_the_cli_exit_codes_and_termination_messages_are_what_the_operator_reads(
    s3: S3Settings, s3_server: Any, tmp_path: Path
) -> None:
    upload_artifact(s3, KEY, _artifact(tmp_path / "src"))
    dest = tmp_path / "volume"
    code, err, message = _cli(tmp_path, KEY, "--cache", str(tmp_path / "cache"), dest=dest)
    assert code == 0, err
    assert "MB/s" in err and message == ""
    # the layout of the artifact claim: the serving container mounts <key>/<model>/1 of the volume
    assert (dest / KEY / "embed" / "1" / "model.onnx").is_file() and (dest / KEY / MANIFEST).is_file()
    cases = [
        (OTHER, {}, 14, "ArtifactMissing"),
        (KEY, {"FLOTILLA_S3_SECRET_ACCESS_KEY": "wrong"}, 10, "StoreCredentialsInvalid"),
        (KEY, {"FLOTILLA_S3_BUCKET": "no-such-bucket-here"}, 11, "StoreBucketMissing"),
    ]
    stored = _stored(s3_server, s3, KEY, "embed/1/model.onnx")
    for key, env, want_code, reason in cases:
        code, err, message = _cli(tmp_path, key, env=env)
        assert code == want_code, err
        summary = ArtifactSummary.from_termination_message(message)
        assert not summary.ok and summary.reason == reason and summary.key == key
        # what the operator makes of it: the reason of the init container's termination
        pod = PodView.from_object(_pod_with_termination(message, want_code))
        assert pod.said_reason == reason
    stored.write_bytes(b"x" * stored.stat().st_size)
    code, err, message = _cli(tmp_path, KEY)
    assert code == 13 and ArtifactSummary.from_termination_message(message).reason == "ArtifactChecksumMismatch"
    s3_server.stop()
    code, err, message = _cli(tmp_path, KEY)
    assert code == 12 and ArtifactSummary.from_termination_message(message).reason == "StoreUnreachable"


def _pod_with_termination(message: str, code: int) -> dict[str, Any]:
    terminated = {"exitCode": code, "reason": "Error", "message": message}
    return {
        "metadata": {"name": "p", "namespace": "ns", "labels": {}},
        "status": {
            "phase": "Pending",
            "initContainerStatuses": [
                {
                    "name": "fetch-artifact",
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {"terminated": terminated},
                    "restartCount": 2,
                }
            ],
        },
    }


def test_list_and_delete_for_the_gc(s3: S3Settings, tmp_path: Path) -> None:
    from flotilla.gc.store import ObjectStore

    upload_artifact(s3, KEY, _artifact(tmp_path / "a"))
    upload_artifact(s3, OTHER, _artifact(tmp_path / "b"))
    listed = {a.key: a for a in list_artifacts(s3)}
    assert set(listed) == {KEY, OTHER} and all(a.complete for a in listed.values())
    assert listed[KEY].size > 300_000 and listed[KEY].modified.tzinfo is not None
    store = ObjectStore(s3)
    assert {s.key for s in store.list()} == {KEY, OTHER}
    store.delete(KEY)
    assert [a.key for a in list_artifacts(s3)] == [OTHER]
    assert not artifact_complete(s3, KEY)
    with pytest.raises(ValueError, match="not an artifact key"):
        delete_artifact(s3, "../etc")


def test_the_optimizer_uploads_and_skips_the_build_when_the_key_is_complete(
    s3: S3Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flotilla.optimize import cli, pipeline

    built: list[Path] = []

    def fake_optimize(req: Any) -> tuple[ArtifactSummary, dict[str, Any]]:
        out = _artifact(req.out)
        built.append(out)
        manifest = json.loads((out / MANIFEST).read_text())
        summary = ArtifactSummary(ok=True, key=req.key(), model_name="embed", precision="int8", size_bytes=42)
        manifest.update(key=req.key(), summary=summary.model_dump(by_alias=True, exclude_none=True, mode="json"))
        (out / MANIFEST).write_text(json.dumps(manifest))
        return summary, manifest

    monkeypatch.setattr(pipeline, "optimize", fake_optimize)
    args = ["--source", "file:///nowhere", "--task", "feature-extraction", "--name", "embed"]
    key_args = [*args, "--out", str(tmp_path / "w1" / "k")]
    key = cli._failure_key(cli.build_parser().parse_args(key_args))
    log = tmp_path / "termination"
    first = [*key_args, "--upload-key", key, "--termination-message-path", str(log)]
    assert cli.main(first) == 0
    assert len(built) == 1 and artifact_complete(s3, key)
    assert ArtifactSummary.from_termination_message(log.read_text()).ok
    again = [*args, "--out", str(tmp_path / "w2" / "k"), "--upload-key", key, "--termination-message-path", str(log)]
    assert cli.main(again) == 0
    assert len(built) == 1  # not built again
    summary = ArtifactSummary.from_termination_message(log.read_text())
    assert summary.ok and summary.key == key and summary.model_name == "embed" and summary.size_bytes == 42
    bad = [*again, "--upload-key", key]
    monkeypatch.setenv("FLOTILLA_S3_BUCKET", "no-such-bucket-here")
    assert cli.main(bad) == 11
    assert ArtifactSummary.from_termination_message(log.read_text()).reason == "StoreBucketMissing"
