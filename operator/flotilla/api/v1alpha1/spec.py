"""SmallModel spec: what the user asks for. Written only by the user (or their GitOps tool)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from .base import ApiModel

Task = Literal["text-generation", "feature-extraction", "text-classification"]
Target = Literal["onnx", "tensorrt"]
Precision = Literal["auto", "int8", "int4", "fp16", "fp32"]
# A Kubernetes resource quantity ("2", "500m", "4Gi"); an integer is accepted as well.
Quantity = Annotated[
    int | str,
    Field(description="A resource quantity such as 2, 500m or 4Gi."),
]

SOURCE_URI_PATTERN = r"^(hf://[A-Za-z0-9][\w.\-]*/[\w.\-]+(@[\w.\-/]+)?|s3://[a-z0-9][a-z0-9.\-]*/.+|pvc://[a-z0-9]([a-z0-9\-]*[a-z0-9])?/.*|file:///.+)$"
MIG_PROFILE_PATTERN = r"^([1-7]g\.[0-9]+gb(\+me)?)?$"


class LocalObjectReference(ApiModel):
    name: str = Field(min_length=1, max_length=253, description="Name of an object in the SmallModel's namespace.")


class SourceSpec(ApiModel):
    uri: str = Field(
        pattern=SOURCE_URI_PATTERN,
        max_length=2048,
        description=(
            "Where the model comes from: hf://org/name[@revision] (Hugging Face Hub), s3://bucket/path, "
            "pvc://claim/path (a checkpoint directory or .gguf file on a PVC in this namespace), "
            "or file:///path (development: a path the optimizer pod can read)."
        ),
    )
    revision: str | None = Field(
        default=None,
        max_length=128,
        pattern=r"^[\w.\-/]+$",
        description="Pin of the source (a Hub commit, tag or branch) so the artifact is reproducible.",
    )
    task: Task = Field(
        default="text-generation",
        description="What the model does, as optimum names tasks: text-generation (with KV cache), "
        "feature-extraction (sentence embeddings) or text-classification.",
    )
    credentials_secret_ref: LocalObjectReference | None = Field(
        default=None,
        description="Secret with credentials for the source (HF_TOKEN for hf://; AWS_* keys for s3://).",
    )

    cel_rules = (
        (
            "!has(self.credentialsSecretRef) || self.uri.startsWith('hf://') || self.uri.startsWith('s3://')",
            "source.credentialsSecretRef is only used with hf:// and s3:// sources",
        ),
    )


class AccuracyBudget(ApiModel):
    max_top1_disagreement: float = Field(
        default=0.03,
        ge=0,
        le=1,
        description="Largest share of next-token (or label) predictions allowed to differ from fp32 on the "
        "evaluation text; 0.03 means at least 97% agreement.",
    )
    max_perplexity_increase: float = Field(
        default=0.05,
        ge=0,
        le=10,
        description="Largest relative perplexity increase over fp32 allowed (text-generation); 0.05 = +5%.",
    )
    min_cosine_similarity: float = Field(
        default=0.99,
        ge=0,
        le=1,
        description="Smallest mean cosine similarity to fp32 embeddings allowed (feature-extraction).",
    )


class OptimizeSpec(ApiModel):
    target: Target = Field(
        default="onnx",
        description="onnx: ONNX Runtime (CPU or GPU). tensorrt: a TensorRT engine, built on a GPU node.",
    )
    precision: Precision = Field(
        default="auto",
        description="Numeric precision of the artifact. auto tries the recipes and keeps the fastest one "
        "within accuracyBudget. fp16 needs a GPU.",
    )
    accuracy_budget: AccuracyBudget = Field(
        default_factory=AccuracyBudget,
        description="How much accuracy the optimized artifact may lose against fp32; over budget, nothing "
        "is rolled out.",
    )


class GpuSpec(ApiModel):
    count: int = Field(
        default=0,
        ge=0,
        le=16,
        description="GPUs per replica. 0 serves on CPU. With migProfile set, the number of MIG slices.",
    )
    product: str | None = Field(
        default=None,
        max_length=128,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$",
        description="Required GPU product, matched against the node label nvidia.com/gpu.product "
        "(for example NVIDIA-L4, NVIDIA-H100-80GB-HBM3).",
    )
    mig_profile: str | None = Field(
        default=None,
        pattern=MIG_PROFILE_PATTERN,
        description="A MIG profile such as 1g.10gb: the replica requests nvidia.com/mig-<profile> "
        "slices instead of whole GPUs (mixed MIG strategy).",
    )

    cel_rules = (
        (
            "!has(self.migProfile) || self.migProfile == '' || self.count > 0",
            "serving.gpu.migProfile needs serving.gpu.count > 0 (the number of MIG slices)",
        ),
        (
            "!has(self.product) || self.count > 0",
            "serving.gpu.product needs serving.gpu.count > 0",
        ),
    )


class ResourceRequirements(ApiModel):
    requests: dict[str, Quantity] | None = Field(default=None, description="Minimum resources per replica.")
    limits: dict[str, Quantity] | None = Field(default=None, description="Maximum resources per replica.")


class ServingSpec(ApiModel):
    gpu: GpuSpec = Field(default_factory=GpuSpec, description="GPUs per replica and which product.")
    resources: ResourceRequirements = Field(
        default_factory=ResourceRequirements,
        description="CPU and memory for the Triton container (GPUs come from serving.gpu).",
    )
    max_batch_size: int = Field(
        default=8,
        ge=0,
        le=1024,
        description="Largest batch Triton's dynamic batcher forms; 0 turns batching off.",
    )
    max_queue_delay_microseconds: int = Field(
        default=2000,
        ge=0,
        le=10_000_000,
        description="How long the dynamic batcher may hold a request to fill a batch.",
    )
    instance_count: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Model instances per replica (per GPU on GPU serving).",
    )
    priority_class_name: str | None = Field(
        default=None, max_length=253, description="PriorityClass of the serving pods."
    )


class LatencyObjective(ApiModel):
    percentile: Literal[50, 90, 95, 99] = Field(default=95, description="Which latency percentile to hold.")
    threshold_ms: int = Field(
        ge=1,
        le=600_000,
        description="Target for that percentile, in milliseconds, of request latency as Triton measures it "
        "inside the serving pods (queue plus compute, its request-latency summary); network hops and the "
        "gateway are not included.",
    )


class AutoscalingSpec(ApiModel):
    enabled: bool = Field(default=False, description="Scale replicas to hold latencyObjective.")
    min_replicas: int = Field(
        default=1,
        ge=0,
        le=1000,
        description="Fewest replicas while autoscaling. 0 scales the model to zero after scaleDownDelaySeconds "
        "without requests; a request then wakes it, and only requests through the Flotilla gateway are held "
        "while the first replica starts (the gateway's count is the only demand a model without pods has). "
        "Clients of the model's Service get connection failures while it is at zero.",
    )
    max_replicas: int = Field(default=4, ge=1, le=1000, description="Most replicas while autoscaling.")
    latency_objective: LatencyObjective | None = Field(
        default=None, description="The latency to hold, for example p95 under 250 ms."
    )
    scale_down_delay_seconds: int = Field(
        default=300,
        ge=0,
        le=86_400,
        description="How long the desired count must stay lower before replicas are removed (with "
        "minReplicas 0: how long without requests before the model goes to zero).",
    )

    cel_rules = (
        ("self.minReplicas <= self.maxReplicas", "autoscaling.minReplicas must not exceed autoscaling.maxReplicas"),
        (
            "!self.enabled || has(self.latencyObjective)",
            "autoscaling.latencyObjective is required when autoscaling is enabled",
        ),
    )

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError(self.cel_rules[0][1])
        return self


class CanarySpec(ApiModel):
    steps: list[Annotated[int, Field(ge=1, le=100)]] = Field(
        default_factory=lambda: [10, 50, 100],
        min_length=1,
        max_length=10,
        description="Traffic percentages the canary walks through, strictly ascending, ending at 100.",
    )
    step_seconds: int = Field(
        default=60,
        ge=1,
        le=86_400,
        description="Minimum time spent at each step, counted from the moment the "
        "canary's pods for the step are ready.",
    )
    min_requests: int = Field(
        default=200,
        ge=0,
        le=10_000_000,
        description="Requests the canary must serve at a step before the step can pass.",
    )
    max_latency_regression: float = Field(
        default=0.10,
        ge=0,
        le=2,
        description="Largest allowed latency increase over stable, as a fraction (0.10 = +10%). The canary fails "
        "when its latency is shown, with 95% confidence under repeated looks, to exceed stable's by more.",
    )
    max_error_rate: float = Field(
        default=0.01,
        ge=0,
        le=0.5,
        description="Largest allowed canary error rate, as a fraction of its requests (0.01 = 1%). The canary "
        "fails when its error rate is shown, with 95% confidence under repeated looks, to exceed this.",
    )
    max_step_extensions: int = Field(
        default=3,
        ge=0,
        le=100,
        description="How many times a step whose verdict is still inconclusive after stepSeconds (too little "
        "traffic or evidence) is extended by another stepSeconds before onInconclusive applies.",
    )
    on_inconclusive: Literal["Hold", "Promote", "Rollback"] = Field(
        default="Hold",
        description="What an inconclusive step does once its extensions are spent: Hold (stay at the step, keep "
        "judging, say why in the CanaryProgressing condition), Promote (go on as if it passed) or Rollback.",
    )

    cel_rules = (
        (
            "self.steps.size() > 0 && self.steps[self.steps.size() - 1] == 100",
            "rollout.canary.steps must end at 100",
        ),
        (
            "self.steps.isSorted() && self.steps.all(s, self.steps.exists_one(t, t == s))",
            "rollout.canary.steps must be strictly ascending",
        ),
    )

    @model_validator(mode="after")
    def _steps_ascending_to_100(self) -> CanarySpec:
        if self.steps[-1] != 100:
            raise ValueError("rollout.canary.steps must end at 100")
        if any(b <= a for a, b in zip(self.steps, self.steps[1:], strict=False)):
            raise ValueError("rollout.canary.steps must be strictly ascending")
        return self


class ParentReference(ApiModel):
    name: str = Field(min_length=1, max_length=253, description="Name of the Gateway.")
    namespace: str | None = Field(
        default=None,
        max_length=63,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        description="Namespace of the Gateway; the SmallModel's own when unset.",
    )
    section_name: str | None = Field(
        default=None, max_length=253, description="Listener of the Gateway to attach to (all when unset)."
    )


class RolloutSpec(ApiModel):
    canary: CanarySpec = Field(
        default_factory=CanarySpec,
        description="How a new serving revision is promoted over the stable one. steps [100] replaces the "
        "stable revision as soon as the new one is ready, without judging it.",
    )
    gateway_ref: ParentReference | None = Field(
        default=None,
        description="Gateway that the model's HTTPRoute attaches to, where the cluster serves the Gateway "
        "API (overrides the operator's gatewayParent setting). Canary weights are set on that HTTPRoute.",
    )


class SmallModelSpec(ApiModel):
    source: SourceSpec = Field(description="The model to optimize and serve.")
    optimize: OptimizeSpec = Field(default_factory=OptimizeSpec, description="How the model is optimized.")
    serving: ServingSpec = Field(default_factory=ServingSpec, description="How Triton serves the artifact.")
    replicas: int = Field(
        default=1,
        ge=0,
        le=1000,
        description="Serving replicas while autoscaling is off (also the scale subresource).",
    )
    autoscaling: AutoscalingSpec = Field(
        default_factory=AutoscalingSpec, description="Latency-driven scaling of replicas."
    )
    rollout: RolloutSpec = Field(default_factory=RolloutSpec, description="Promotion of new revisions.")

    cel_rules = (
        (
            "self.optimize.precision != 'fp16' || self.optimize.target == 'tensorrt' || self.serving.gpu.count > 0",
            "optimize.precision fp16 needs a GPU: set optimize.target to tensorrt or serving.gpu.count > 0",
        ),
        (
            "self.optimize.target != 'tensorrt' || self.serving.gpu.count > 0",
            "optimize.target tensorrt needs GPU serving (serving.gpu.count > 0)",
        ),
    )

    @model_validator(mode="after")
    def _gpu_rules(self) -> SmallModelSpec:
        gpu = self.serving.gpu.count > 0
        if self.optimize.precision == "fp16" and not (gpu or self.optimize.target == "tensorrt"):
            raise ValueError(self.cel_rules[0][1])
        if self.optimize.target == "tensorrt" and not gpu:
            raise ValueError(self.cel_rules[1][1])
        return self
