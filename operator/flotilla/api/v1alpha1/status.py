"""SmallModel status: what the operator observed. Written only through the status subresource."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .base import StatusModel

ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(StatusModel):
    """metav1.Condition, field for field."""

    type: str = Field(max_length=316, description="Condition type, e.g. Ready, Optimized, Reconciling.")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(max_length=1024, description="CamelCase reason for the last transition.")
    message: str = Field(default="", max_length=32768, description="Human-readable details.")
    observed_generation: int | None = Field(
        default=None, ge=0, description="The .metadata.generation this condition was computed from."
    )
    last_transition_time: str = Field(description="When status last changed (RFC 3339).")


class AccuracyStatus(StatusModel):
    top1_agreement: float | None = Field(default=None, description="Share of next-token/label agreement with fp32.")
    kl_divergence: float | None = Field(default=None, description="Mean KL divergence from fp32 next-token logits.")
    perplexity_ratio: float | None = Field(default=None, description="Perplexity relative to fp32 (1.02 = +2%).")
    cosine_similarity: float | None = Field(default=None, description="Mean cosine similarity to fp32 embeddings.")


class SpeedupStatus(StatusModel):
    prefill: float | None = Field(default=None, description="Prefill (prompt) throughput relative to fp32.")
    decode: float | None = Field(default=None, description="Decode tokens/s relative to fp32.")


class ArtifactStatus(StatusModel):
    key: str = Field(description="Content address: hash of source, optimize settings and optimizer version.")
    uri: str | None = Field(default=None, description="Where the artifact lives in the artifact store.")
    model_name: str | None = Field(default=None, description="Model directory inside the artifact.")
    backend: str | None = Field(default=None, description="Triton backend the artifact is served with.")
    precision: str | None = Field(default=None, description="Precision the optimizer chose.")
    recipe: str | None = Field(default=None, description="Quantization recipe the optimizer chose.")
    size_bytes: int | None = Field(default=None, ge=0, description="Size of the model files.")
    size_ratio: float | None = Field(default=None, description="Size relative to the fp32 export.")
    accuracy: AccuracyStatus | None = Field(default=None, description="Accuracy against fp32.")
    speedup: SpeedupStatus | None = Field(default=None, description="Speed against fp32 on the optimizer's CPU.")
    job_name: str | None = Field(default=None, description="The Job that built it.")


class RollbackStatus(StatusModel):
    revision: str = Field(description="The serving revision that was rolled back.")
    reason: str = Field(description="Why the canary failed, with the measured numbers.")
    time: str = Field(description="When (RFC 3339).")
    artifact_key: str | None = Field(
        default=None, description="Artifact the rolled-back revision served (kept from artifact garbage collection)."
    )


class PromotionStatus(StatusModel):
    revision: str = Field(description="The serving revision that was promoted to stable.")
    replaced: str | None = Field(default=None, description="The stable revision it replaced.")
    reason: str = Field(description="How it was promoted (every step passed, a promote command, ...).")
    time: str = Field(description="When (RFC 3339).")
    replaced_artifact_key: str | None = Field(
        default=None,
        description="Artifact the replaced stable revision served: what rolling back to it reuses "
        "(kept from artifact garbage collection).",
    )


class RevisionsStatus(StatusModel):
    stable: str | None = Field(default=None, description="Serving revision that takes the stable share of traffic.")
    stable_artifact_key: str | None = Field(default=None, description="Artifact the stable revision serves.")
    canary: str | None = Field(default=None, description="Serving revision under evaluation, if any.")
    canary_artifact_key: str | None = Field(default=None, description="Artifact the canary serves.")
    canary_weight: int | None = Field(
        default=None, ge=0, le=100, description="Canary share of traffic now in effect, percent."
    )
    step: int | None = Field(default=None, ge=0, description="Index into rollout.canary.steps.")
    step_started_time: str | None = Field(
        default=None, description="When the current step's canary pods were ready and the step began (RFC 3339)."
    )
    step_extensions: int | None = Field(default=None, ge=0, description="Times the current step was extended.")
    step_requests: int | None = Field(default=None, ge=0, description="Canary requests seen in the current step.")
    started_time: str | None = Field(default=None, description="When this canary started (RFC 3339).")
    traffic: str | None = Field(
        default=None,
        description="How traffic is split: HTTPRoute (exact weights on the model's HTTPRoute) or ReadyReplicas "
        "(in proportion to ready pods behind the model's Service), with the approximation in words.",
    )
    stable_replicas: int | None = Field(default=None, ge=0, description="Replicas the operator set on stable.")
    canary_replicas: int | None = Field(default=None, ge=0, description="Replicas the operator set on the canary.")
    evidence: dict[str, float] | None = Field(
        default=None,
        description="The canary judge's accumulated evidence (sufficient statistics), so a "
        "restarted operator resumes the test where it was.",
    )
    verdict: str | None = Field(default=None, description="The judge's last verdict in words.")
    last_rollback: RollbackStatus | None = Field(default=None, description="The last failed canary.")
    last_promotion: PromotionStatus | None = Field(default=None, description="The last promoted canary.")


class LatencyStatus(StatusModel):
    p50_ms: float | None = Field(default=None, description="Median request latency, milliseconds.")
    p95_ms: float | None = Field(default=None, description="95th percentile request latency, milliseconds.")
    p99_ms: float | None = Field(default=None, description="99th percentile request latency, milliseconds.")
    requests_per_second: float | None = Field(default=None, description="Request rate over the window.")
    window: str | None = Field(default=None, description="Measurement window, e.g. 60s.")


class ScalingStatus(StatusModel):
    desired_replicas: int | None = Field(default=None, ge=0, description="Replicas the autoscaler wants.")
    reason: str | None = Field(default=None, description="Why, in words, with the inputs it used.")
    last_scale_time: str | None = Field(default=None, description="When replicas last changed (RFC 3339).")
    cold_start_seconds: float | None = Field(
        default=None, ge=0, description="Measured time from scale-from-zero to the first ready replica."
    )
    state: dict[str, float] | None = Field(
        default=None,
        description="The control law's memory (feedback correction, headroom timer), so a "
        "restarted operator decides as before.",
    )


class SmallModelStatus(StatusModel):
    observed_generation: int | None = Field(default=None, description="The generation the status reflects.")
    conditions: list[Condition] = Field(default_factory=list, description="Latest observations of state.")
    artifact: ArtifactStatus | None = Field(default=None, description="The optimized artifact for the spec.")
    revisions: RevisionsStatus | None = Field(default=None, description="Stable and canary serving revisions.")
    replicas: int | None = Field(default=None, ge=0, description="Serving pods (scale subresource).")
    ready_replicas: int | None = Field(default=None, ge=0, description="Serving pods that are ready.")
    selector: str | None = Field(default=None, description="Label selector of serving pods (scale subresource).")
    latency: LatencyStatus | None = Field(default=None, description="Observed serving latency.")
    scaling: ScalingStatus | None = Field(default=None, description="Autoscaler decision.")
    endpoint: str | None = Field(default=None, description="In-cluster URL of Triton's HTTP endpoint.")
    pruned_fields: list[str] | None = Field(
        default=None,
        description="Spec fields the last client-side apply sent that the API server dropped as unknown "
        "(misspelled?): they have no effect. Apply with strict field validation to have them refused.",
    )

    def condition(self, type_: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)

    def is_true(self, type_: str) -> bool:
        cond = self.condition(type_)
        return cond is not None and cond.status == "True"
