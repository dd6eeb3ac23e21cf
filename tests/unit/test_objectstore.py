"""Pure parts of flotilla.objectstore: manifest, verification, error mapping, settings, CLI
edges that need no server (tests/integration/test_objectstore.py has the real S3 server)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from botocore import exceptions as bx

from flotilla.api.v1alpha1 import ArtifactSummary
from flotilla.objectstore import EXIT_CODES, MANIFEST, S3Settings, StoreError, build_manifest, classify, verify
from flotilla.objectstore import cli as fetch_cli
from flotilla.objectstore.store import Meter, manifest_files
from flotilla.optimize import cli as optimize_cli
from flotilla.reconcile.store import DOWNLOAD_FAILURES, RETRIED_STORE_FAILURES
from flotilla.resources.optimizer import PERMANENT_EXIT_CODES

KEY = "0123456789abcdef0123"


def _client_error(code: str, status: int = 400) -> bx.ClientError:
    return bx.ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "Op"
    )


def test_every_reason_the_operator_knows_has_its_own_exit_code_and_none_is_permanent() -> None:
    assert set(EXIT_CODES) == DOWNLOAD_FAILURES
    assert set(EXIT_CODES) >= RETRIED_STORE_FAILURES
    assert sorted(EXIT_CODES.values()) == [10, 11, 12, 13, 14]
    for reason, code in EXIT_CODES.items():
        assert optimize_cli.EXIT_CODES[reason] == code  # the Job's upload ends with the same codes
        assert code not in PERMANENT_EXIT_CODES


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (_client_error("InvalidAccessKeyId", 403), "StoreCredentialsInvalid"),
        (_client_error("SignatureDoesNotMatch", 403), "StoreCredentialsInvalid"),
        (_client_error("AccessDenied", 403), "StoreCredentialsInvalid"),
        (_client_error("403", 403), "StoreCredentialsInvalid"),
        (_client_error("NoSuchBucket", 404), "StoreBucketMissing"),
        (_client_error("NoSuchKey", 404), "ArtifactMissing"),
        (_client_error("404", 404), "ArtifactMissing"),
        (_client_error("InternalError", 500), "StoreUnreachable"),
        (bx.EndpointConnectionError(endpoint_url="http://x"), "StoreUnreachable"),
        (bx.ConnectTimeoutError(endpoint_url="http://x"), "StoreUnreachable"),
        (bx.SSLError(endpoint_url="https://x", error="bad cert"), "StoreUnreachable"),
        (bx.FlexibleChecksumError(error_msg="crc32 mismatch"), "ArtifactChecksumMismatch"),
        (bx.NoCredentialsError(), "StoreCredentialsInvalid"),
    ],
)
def test_botocore_errors_map_to_the_store_reasons(exc: Exception, reason: str) -> None:
    err = classify(exc, "fetch")
    assert err is not None and err.reason == reason and err.message.startswith("fetch")


def test_a_wrapped_error_is_found_and_an_unknown_one_is_not_a_store_reason() -> None:
    try:
        try:
            raise bx.EndpointConnectionError(endpoint_url="http://x")
        except Exception as inner:
            raise RuntimeError("s3transfer said so") from inner
    except RuntimeError as outer:
        found = classify(outer, "download")
    assert found is not None and found.reason == "StoreUnreachable"
    assert classify(ValueError("mine"), "x") is None
    assert classify(_client_error("InvalidRequest", 400), "x") is None


def test_the_manifest_keeps_the_optimizers_and_adds_each_files_checksum(tmp_path: Path) -> None:
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "1" / "model.onnx").write_bytes(b"abc")
    (tmp_path / MANIFEST).write_text(json.dumps({"key": "old", "modelName": "m", "files": {"x": 1}}))
    manifest = build_manifest(KEY, tmp_path)
    assert manifest["key"] == KEY and manifest["complete"] is True and manifest["modelName"] == "m"
    assert manifest["store"]["files"] == {
        "m/1/model.onnx": {"sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", "size": 3}
    }
    verify(tmp_path, manifest_files(manifest))
    (tmp_path / "m" / "1" / "model.onnx").write_bytes(b"abd")
    with pytest.raises(StoreError, match="sha256") as err:
        verify(tmp_path, manifest_files(manifest))
    assert err.value.reason == "ArtifactChecksumMismatch"
    (tmp_path / "m" / "1" / "model.onnx").write_bytes(b"ab")
    with pytest.raises(StoreError, match="bytes"):
        verify(tmp_path, manifest_files(manifest))


@pytest.mark.parametrize("bad", ["../etc/passwd", "/abs", "a/../../b", ""])
def test_a_manifest_cannot_name_a_path_outside_the_artifact(bad: str) -> None:
    with pytest.raises(StoreError) as err:
        manifest_files({"complete": True, "store": {"files": {bad: {"sha256": "", "size": 0}}}})
    assert err.value.reason == "ArtifactChecksumMismatch"


def test_settings_come_from_flotilla_s3_env_and_keep_the_secret_out_of_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOTILLA_S3_BUCKET", "arts")
    monkeypatch.setenv("FLOTILLA_S3_PREFIX", "fleet/")
    monkeypatch.setenv("FLOTILLA_S3_PATH_STYLE", "true")
    monkeypatch.setenv("FLOTILLA_S3_SECRET_ACCESS_KEY", "hunter2")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "the-sources-own")
    settings = S3Settings()
    assert settings.bucket == "arts" and settings.path_style and settings.max_attempts == 4
    assert settings.object_key(KEY, "a/b") == f"fleet/{KEY}/a/b"
    assert settings.secret_access_key is not None and settings.secret_access_key.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(settings)


def test_the_fetch_cli_without_settings_says_so_in_the_termination_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FLOTILLA_S3_BUCKET", raising=False)
    log = tmp_path / "termination-log"
    code = fetch_cli.main(
        ["fetch", "--key", KEY, "--dest", str(tmp_path / "d"), "--termination-message-path", str(log)]
    )
    assert code == 2
    summary = ArtifactSummary.from_termination_message(log.read_text())
    assert not summary.ok and summary.reason == "InvalidArguments" and summary.key == KEY


def test_the_meter_says_megabytes_and_rate() -> None:
    lines: list[str] = []
    meter = Meter("fetch", say=lines.append)
    meter.last -= 2  # a second has passed
    meter(5_000_000)
    assert lines and lines[0].startswith("fetch: 5.0 MB, ") and lines[0].endswith("MB/s")
