"""flotilla.dev/v1alpha1: the SmallModel resource. The only schema source of the project."""

from .artifact import ArtifactSummary, FailureReason, artifact_key, serving_revision
from .constants import *  # noqa: F403  (names are the public surface)
from .model import MAX_NAME_LENGTH, ObjectMeta, SmallModel
from .spec import (
    AccuracyBudget,
    AutoscalingSpec,
    CanarySpec,
    GpuSpec,
    LatencyObjective,
    OptimizeSpec,
    Precision,
    ResourceRequirements,
    RolloutSpec,
    ServingSpec,
    SmallModelSpec,
    SourceSpec,
    Target,
    Task,
)
from .status import (
    AccuracyStatus,
    ArtifactStatus,
    Condition,
    LatencyStatus,
    RevisionsStatus,
    ScalingStatus,
    SmallModelStatus,
    SpeedupStatus,
)

__all__ = [
    "MAX_NAME_LENGTH",
    "AccuracyBudget",
    "AccuracyStatus",
    "ArtifactStatus",
    "ArtifactSummary",
    "AutoscalingSpec",
    "CanarySpec",
    "Condition",
    "FailureReason",
    "GpuSpec",
    "LatencyObjective",
    "LatencyStatus",
    "ObjectMeta",
    "OptimizeSpec",
    "Precision",
    "ResourceRequirements",
    "RevisionsStatus",
    "RolloutSpec",
    "ScalingStatus",
    "ServingSpec",
    "SmallModel",
    "SmallModelSpec",
    "SmallModelStatus",
    "SourceSpec",
    "SpeedupStatus",
    "Target",
    "Task",
    "artifact_key",
    "serving_revision",
]
