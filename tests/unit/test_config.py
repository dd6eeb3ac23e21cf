"""Operator configuration from environment and file, with clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from flotilla.config import ConfigError, load_config


def test_defaults() -> None:
    config = load_config({})
    assert config.artifact_pvc == "flotilla-artifacts"
    assert config.namespaces == []


def test_environment_overrides_file(tmp_path: Path) -> None:
    file = tmp_path / "config.yaml"
    file.write_text("triton-image: example.com/triton:1\nworkers: 8\nnamespaces: [a, b]\n")
    config = load_config(
        {"FLOTILLA_CONFIG": str(file), "FLOTILLA_WORKERS": "16", "FLOTILLA_JOB_NODE_SELECTOR": "{pool: cpu}"}
    )
    assert config.triton_image == "example.com/triton:1"
    assert config.workers == 16
    assert config.namespaces == ["a", "b"]
    assert config.job_node_selector == {"pool": "cpu"}


def test_gateway_pods_default_to_the_charts_gateway_and_may_be_turned_off() -> None:
    config = load_config({})
    assert config.gateway_pods_namespace == "flotilla-system" and config.gateway_pods_port == 8080
    assert config.gateway_pods_labels == {"app.kubernetes.io/name": "flotilla-gateway"}
    env = {"FLOTILLA_GATEWAY_PODS_LABELS": "{}", "FLOTILLA_GATEWAY_PODS_NAMESPACE": "edge"}
    off = load_config(env)
    assert off.gateway_pods_labels == {} and off.gateway_pods_namespace == "edge"


def test_image_pull_secrets_from_environment_and_file(tmp_path: Path) -> None:
    assert load_config({}).image_pull_secrets == []
    config = load_config({"FLOTILLA_IMAGE_PULL_SECRETS": "regcred, mirror.example,regcred"})
    assert config.image_pull_secrets == ["regcred", "mirror.example"]  # each once
    file = tmp_path / "config.yaml"
    file.write_text("image_pull_secrets: [from-file]\n")
    assert load_config({"FLOTILLA_CONFIG": str(file)}).image_pull_secrets == ["from-file"]


def test_list_settings_from_environment() -> None:
    config = load_config({"FLOTILLA_OPTIMIZER_EXTRA_ARGS": "--eval-limit,64", "FLOTILLA_NAMESPACES": "a, b"})
    assert config.optimizer_extra_args == ["--eval-limit", "64"]
    assert config.namespaces == ["a", "b"]


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"FLOTILLA_WORKERS": "0"}, "FLOTILLA_WORKERS"),
        ({"FLOTILLA_NAMESPACES": "ok,Not_Valid"}, "Not_Valid"),
        ({"FLOTILLA_ARTIFACT_PVC": "UPPER"}, "FLOTILLA_ARTIFACT_PVC"),
        ({"FLOTILLA_METRICS_PORT": "99999"}, "FLOTILLA_METRICS_PORT"),
        ({"FLOTILLA_IMAGE_PULL_SECRETS": "ok,Reg_Cred"}, "FLOTILLA_IMAGE_PULL_SECRETS.*Reg_Cred"),
        ({"FLOTILLA_CONFIG": "/nonexistent/flotilla.yaml"}, "cannot read"),
    ],
)
def test_bad_settings_are_named(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load_config(env)


def test_unknown_file_setting_is_rejected(tmp_path: Path) -> None:
    file = tmp_path / "config.yaml"
    file.write_text("tritn_image: typo\n")
    with pytest.raises(ConfigError, match="TRITN_IMAGE"):
        load_config({"FLOTILLA_CONFIG": str(file)})


def test_lease_timing_must_let_a_holder_give_up_before_a_standby_takes_over() -> None:
    ok = load_config({"FLOTILLA_LEADER_ELECTION": "true", "FLOTILLA_LEASE_DURATION_SECONDS": "4",
                      "FLOTILLA_LEASE_RENEW_DEADLINE_SECONDS": "3", "FLOTILLA_LEASE_RETRY_SECONDS": "0.5"})  # fmt: skip
    assert ok.leader_election and ok.lease_duration_seconds == 4
    with pytest.raises(ConfigError, match="lease_renew_deadline_seconds < lease_duration_seconds"):
        load_config({"FLOTILLA_LEASE_DURATION_SECONDS": "10", "FLOTILLA_LEASE_RENEW_DEADLINE_SECONDS": "10"})
