"""The optimizer's result, as the operator reads it, and content addresses.

The optimizer Job writes `ArtifactSummary` as compact JSON (<= 4 KiB, the kubelet's limit
for a termination message) to the container's termination-message path, the way Tekton
passes task results; the operator reads it from the pod's terminated state. The full record
is `manifest.json` next to the model in the artifact store.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from .constants import OPTIMIZER_VERSION
from .spec import OptimizeSpec, ServingSpec, SourceSpec

TERMINATION_MESSAGE_LIMIT = 4096

# Why an optimization ended without an artifact; becomes the Optimized condition's reason.
FailureReason = Literal[
    "AccuracyBudgetExceeded",
    "SourceUnavailable",
    "UnsupportedModel",
    "InvalidArguments",
    "OutOfDisk",
    "OOMKilled",  # set by the operator from the pod's state: the optimizer cannot report it
    "OptimizerError",
    # The S3 artifact store (flotilla.objectstore): from the Job's upload or a serving pod's download.
    "StoreCredentialsInvalid",
    "StoreBucketMissing",
    "StoreUnreachable",
    "ArtifactChecksumMismatch",
    "ArtifactMissing",
]


class _Wire(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class Accuracy(_Wire):
    top1_agreement: float | None = None
    kl_divergence: float | None = None
    perplexity_ratio: float | None = None
    cosine_similarity: float | None = None


class Speedup(_Wire):
    prefill: float | None = None
    decode: float | None = None


class ArtifactSummary(_Wire):
    """What a finished optimizer run reports. `ok=False` carries `reason` and `message`."""

    ok: bool
    key: str
    reason: FailureReason | None = None
    message: str = ""
    model_name: str | None = None  # directory of the model inside the artifact
    backend: str | None = None  # python | onnxruntime | tensorrt
    task: str | None = None
    precision: str | None = None
    recipe: str | None = None
    size_bytes: int | None = None
    size_ratio: float | None = None
    accuracy: Accuracy | None = None
    speedup: Speedup | None = None

    def to_termination_message(self) -> str:
        """Compact JSON within the kubelet's 4 KiB; the message is cut first if needed."""
        data = self.model_dump(by_alias=True, exclude_none=True, mode="json")
        text = json.dumps(data, separators=(",", ":"))
        if len(text.encode()) > TERMINATION_MESSAGE_LIMIT:
            overflow = len(text.encode()) - TERMINATION_MESSAGE_LIMIT + 16
            data["message"] = data.get("message", "")[: max(0, len(data.get("message", "")) - overflow)] + "..."
            text = json.dumps(data, separators=(",", ":"))
        return text

    @classmethod
    def from_termination_message(cls, text: str) -> ArtifactSummary:
        return cls.model_validate_json(text)


def _digest(payload: dict[str, Any]) -> str:
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:20]


def artifact_key(source: SourceSpec, optimize: OptimizeSpec, optimizer_version: str = OPTIMIZER_VERSION) -> str:
    """Same source, same optimize settings, same optimizer: same artifact, never rebuilt.

    Credentials are not part of the content, so rotating a Secret does not rebuild.
    """
    src = {"uri": source.uri, "revision": source.revision, "task": source.task}
    return _digest({"source": src, "optimize": optimize.to_wire(), "optimizer": optimizer_version})


def serving_revision(key: str, serving: ServingSpec) -> str:
    """A serving revision changes when the artifact or anything about how it is served does."""
    return _digest({"artifact": key, "serving": serving.to_wire()})[:10]
