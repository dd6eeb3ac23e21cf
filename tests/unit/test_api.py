"""The SmallModel models: defaults, validation mirrors of the CEL rules, content addresses."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from flotilla.api.v1alpha1 import (
    ArtifactSummary,
    OptimizeSpec,
    ServingSpec,
    SmallModel,
    SmallModelSpec,
    SourceSpec,
    artifact_key,
    serving_revision,
)
from flotilla.api.v1alpha1.artifact import TERMINATION_MESSAGE_LIMIT

SOURCE = {"uri": "hf://HuggingFaceTB/SmolLM2-135M-Instruct"}


def spec(**overrides: object) -> SmallModelSpec:
    return SmallModelSpec.model_validate({"source": SOURCE, **overrides})


def test_defaults_fill_the_whole_tree() -> None:
    s = spec()
    assert s.optimize.precision == "auto"
    assert s.optimize.accuracy_budget.max_top1_disagreement == 0.03
    assert s.serving.gpu.count == 0
    assert s.rollout.canary.steps == [10, 50, 100]
    assert s.to_wire()["serving"]["maxQueueDelayMicroseconds"] == 2000


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"rollout": {"canary": {"steps": [10, 50]}}}, "must end at 100"),
        ({"rollout": {"canary": {"steps": [50, 10, 100]}}}, "strictly ascending"),
        ({"optimize": {"precision": "fp16"}}, "fp16 needs a GPU"),
        ({"optimize": {"target": "tensorrt"}, "serving": {"gpu": {"count": 0}}}, "tensorrt needs GPU"),
        ({"serving": {"maxBatchSize": -1}}, "greater than or equal to 0"),
        ({"source": {"uri": "ftp://example.com/model"}}, "String should match pattern"),
        ({"replicas": 2, "spare": True}, "Extra inputs are not permitted"),
    ],
)
def test_invalid_specs_are_rejected(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        spec(**overrides)


def test_autoscaling_may_scale_to_zero_and_says_it_needs_the_gateway() -> None:
    auto = spec(autoscaling={"enabled": True, "minReplicas": 0, "latencyObjective": {"thresholdMs": 250}}).autoscaling
    assert auto.enabled and auto.min_replicas == 0
    from flotilla.api.v1alpha1.spec import AutoscalingSpec

    description = AutoscalingSpec.model_fields["min_replicas"].description or ""
    assert "Flotilla gateway" in description and "not supported" not in description
    with pytest.raises(ValidationError, match="must not exceed"):
        spec(autoscaling={"minReplicas": 3, "maxReplicas": 2})


def test_fp16_allowed_with_gpu_serving() -> None:
    assert spec(optimize={"precision": "fp16"}, serving={"gpu": {"count": 1}}).optimize.precision == "fp16"


@pytest.mark.parametrize(
    "uri",
    ["hf://org/name", "hf://org/name@main", "s3://bucket/models/x", "pvc://claim/path/m.gguf", "file:///models/x"],
)
def test_source_uri_forms(uri: str) -> None:
    assert SourceSpec(uri=uri).uri == uri


def test_artifact_key_is_content_addressed() -> None:
    base = spec()
    same = spec(serving={"maxBatchSize": 32}, replicas=3)
    other_precision = spec(optimize={"precision": "int8"})
    other_source = spec(source={"uri": "hf://org/other"})
    key = artifact_key(base.source, base.optimize)
    assert key == artifact_key(same.source, same.optimize)  # serving settings do not rebuild
    assert key != artifact_key(other_precision.source, other_precision.optimize)
    assert key != artifact_key(other_source.source, other_source.optimize)
    assert key != artifact_key(base.source, base.optimize, optimizer_version="999")


def test_credentials_do_not_change_the_key() -> None:
    plain = SourceSpec(uri="hf://org/name")
    with_secret = SourceSpec.model_validate({"uri": "hf://org/name", "credentialsSecretRef": {"name": "hf"}})
    assert artifact_key(plain, OptimizeSpec()) == artifact_key(with_secret, OptimizeSpec())


def test_serving_revision_follows_serving_and_artifact() -> None:
    rev = serving_revision("k1", ServingSpec())
    assert rev == serving_revision("k1", ServingSpec())
    assert rev != serving_revision("k2", ServingSpec())
    assert rev != serving_revision("k1", ServingSpec(max_batch_size=16))


def test_termination_message_fits_the_kubelet_limit() -> None:
    summary = ArtifactSummary(ok=False, key="k", reason="AccuracyBudgetExceeded", message="x" * 10_000)
    text = summary.to_termination_message()
    assert len(text.encode()) <= TERMINATION_MESSAGE_LIMIT
    back = ArtifactSummary.from_termination_message(text)
    assert back.reason == "AccuracyBudgetExceeded" and back.message.endswith("...")
    assert json.loads(text)["ok"] is False


def test_smallmodel_from_body_parses_status() -> None:
    body = {
        "apiVersion": "flotilla.dev/v1alpha1",
        "kind": "SmallModel",
        "metadata": {"name": "m", "namespace": "ns", "generation": 3, "uid": "u"},
        "spec": {"source": SOURCE},
        "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "Serving", "lastTransitionTime": "t"}]},
    }
    model = SmallModel.from_body(body)
    assert model.metadata.generation == 3
    assert model.status.is_true("Ready")
    assert not model.status.is_true("Optimized")
