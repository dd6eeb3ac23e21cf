"""SmallModel spec: what the user asks for. Written only by the user (or their GitOps tool)."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, ValidationInfo, model_validator

from .base import ApiModel
from .quantity import parse_quantity

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
# Names of Kubernetes objects the spec refers to (Secret, PriorityClass): DNS-1123 subdomains.
DNS1123_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# A label value (serving.gpu.product is matched against a node label).
LABEL_VALUE_PATTERN = r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
# Gateway API SectionName.
SECTION_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


# Validation context of objects read back from the API server (already admitted, perhaps under an
# older schema): `SmallModelSpec.model_validate(body, context={STORED: True})`.
STORED = "stored"


def _fraction(path: str, field: str, high: float, example: str) -> tuple[str, str]:
    """A CEL rule bounding a ratio from above, with a message that says the unit. (Not `maximum`:
    the API server words a fractional maximum as "less than or equal to 0".)"""
    return f"self.{field} <= {high}", f"{path}.{field} is a fraction from 0 to {high}, not a percent ({example})"


def _raise_first(info: ValidationInfo, checks: list[tuple[bool, str]]) -> None:
    """The pydantic side of a model's CEL rules: raise the message of the first rule broken.

    Not for stored objects (`context={STORED: True}`): the API server admitted them, perhaps under an
    older, looser CRD, and the operator must still read them (the server refuses their next update).
    """
    if info.context and info.context.get(STORED):
        return
    for ok, message in checks:
        if not ok:
            raise ValueError(message)


class LocalObjectReference(ApiModel):
    name: str = Field(
        min_length=1,
        max_length=253,
        pattern=DNS1123_SUBDOMAIN_PATTERN,
        description="Name of an object in the SmallModel's namespace (a DNS-1123 subdomain: lowercase).",
    )


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
        (
            "!has(self.revision) || !self.uri.startsWith('hf://') || !self.uri.contains('@')",
            "source.revision and an @revision in source.uri both pin the source: use one",
        ),
    )

    @model_validator(mode="after")
    def _cel(self, info: ValidationInfo) -> SourceSpec:
        _raise_first(
            info,
            [
                (self.credentials_secret_ref is None or self.uri.startswith(("hf://", "s3://")), self.cel_rules[0][1]),
                (
                    self.revision is None or not self.uri.startswith("hf://") or "@" not in self.uri,
                    self.cel_rules[1][1],
                ),
            ],
        )
        return self


class AccuracyBudget(ApiModel):
    max_top1_disagreement: float = Field(
        default=0.03,
        ge=0,
        description="Largest share of next-token (or label) predictions allowed to differ from fp32 on the "
        "evaluation text, as a fraction from 0 to 0.5 (not a percent): 0.03 means at least 97% agreement.",
    )
    max_perplexity_increase: float = Field(
        default=0.05,
        ge=0,
        description="Largest relative perplexity increase over fp32 allowed (text-generation), as a fraction "
        "from 0 to 0.5 (not a percent): 0.05 = +5%.",
    )
    min_cosine_similarity: float = Field(
        default=0.99,
        ge=0,
        le=1,
        description="Smallest mean cosine similarity to fp32 embeddings allowed (feature-extraction), from "
        "0.5 to 1 (not a percent): 0.99 = 99%.",
    )
    max_kl_divergence: float | None = Field(
        default=None,
        ge=0,
        alias="maxKLDivergence",
        description="Largest mean KL divergence KL(fp32 || candidate) of the next-token (or label) "
        "distributions allowed, in nats per position, from 0 to 10 (text-generation, text-classification; "
        "refused for feature-extraction, which has no such distribution). Unset: KL is measured and reported "
        "but not gated.",
    )

    cel_rules = (
        _fraction("optimize.accuracyBudget", "maxTop1Disagreement", 0.5, "0.03 = 3%"),
        _fraction("optimize.accuracyBudget", "maxPerplexityIncrease", 0.5, "0.05 = +5%"),
        (
            "self.minCosineSimilarity >= 0.5",
            "optimize.accuracyBudget.minCosineSimilarity must be from 0.5 to 1, not a percent (0.99 = 99%)",
        ),
        (
            "!has(self.maxKLDivergence) || self.maxKLDivergence <= 10.0",
            "optimize.accuracyBudget.maxKLDivergence is in nats per position, from 0 to 10 (0.05 is a tight budget)",
        ),
    )

    @model_validator(mode="after")
    def _cel(self, info: ValidationInfo) -> AccuracyBudget:
        _raise_first(
            info,
            [
                (self.max_top1_disagreement <= 0.5, self.cel_rules[0][1]),
                (self.max_perplexity_increase <= 0.5, self.cel_rules[1][1]),
                (self.min_cosine_similarity >= 0.5, self.cel_rules[2][1]),
                (self.max_kl_divergence is None or self.max_kl_divergence <= 10.0, self.cel_rules[3][1]),
            ],
        )
        return self


class ConfigMapKeyRef(ApiModel):
    name: str = Field(
        min_length=1,
        max_length=253,
        pattern=DNS1123_SUBDOMAIN_PATTERN,
        description="Name of a ConfigMap in the SmallModel's namespace.",
    )
    key: str = Field(
        default="calibration.txt",
        min_length=1,
        max_length=253,
        pattern=r"^[-._a-zA-Z0-9]+$",
        description="Key of the ConfigMap that holds the text.",
    )


class CalibrationSpec(ApiModel):
    """Text the quantizer learns from; never text the accuracy gate scores."""

    config_map_ref: ConfigMapKeyRef | None = Field(
        default=None,
        description="A ConfigMap key with the text, one sentence or document per line (# starts a comment). "
        "The artifact key includes the ConfigMap's name and key, not its content: to calibrate on new text, "
        "use a new name (kustomize's configMapGenerator does).",
    )
    source_path: str | None = Field(
        default=None,
        min_length=1,
        max_length=1024,
        pattern=r"^[^/].*$",
        description="A text file on the source's PVC (source.uri pvc://claim/...), relative to the claim's root.",
    )

    cel_rules = (
        (
            "has(self.configMapRef) != has(self.sourcePath)",
            "optimize.calibration needs exactly one of configMapRef and sourcePath",
        ),
        (
            "!has(self.sourcePath) || !self.sourcePath.matches('(^|/)[.][.](/|$)')",
            "optimize.calibration.sourcePath must stay inside the claim (no .. segment)",
        ),
    )

    @model_validator(mode="after")
    def _cel(self, info: ValidationInfo) -> CalibrationSpec:
        escapes = self.source_path is not None and re.search(r"(^|/)[.][.](/|$)", self.source_path) is not None
        _raise_first(
            info,
            [
                ((self.config_map_ref is None) != (self.source_path is None), self.cel_rules[0][1]),
                (not escapes, self.cel_rules[1][1]),
            ],
        )
        return self


class OptimizeSpec(ApiModel):
    target: Target = Field(
        default="onnx",
        description="onnx: ONNX Runtime (CPU or GPU). tensorrt: a TensorRT engine, built on a GPU node.",
    )
    precision: Precision = Field(
        default="auto",
        description="Numeric precision of the artifact. auto tries the recipes the target can build and keeps "
        "the fastest one within accuracyBudget. fp16 needs a GPU; tensorrt builds fp16, int8 and fp32 (not int4).",
    )
    accuracy_budget: AccuracyBudget = Field(
        default_factory=AccuracyBudget,
        description="How much accuracy the optimized artifact may lose against fp32; over budget, nothing "
        "is rolled out.",
    )
    calibration: CalibrationSpec | None = Field(
        default=None,
        description="Your own calibration text (int8 activation ranges, the mixed-precision search), at least 8 "
        "non-empty lines; unset: the optimizer's shipped set. The accuracy gate still scores the shipped held-out "
        "sentences, which calibration never sees.",
    )

    cel_rules = (
        (
            "self.target != 'tensorrt' || self.precision != 'int4'",
            "optimize.precision int4 is not supported by optimize.target tensorrt (it builds fp16, int8 and fp32)",
        ),
    )

    @model_validator(mode="after")
    def _cel(self, info: ValidationInfo) -> OptimizeSpec:
        _raise_first(info, [(self.target != "tensorrt" or self.precision != "int4", self.cel_rules[0][1])])
        return self


class GpuSpec(ApiModel):
    count: int = Field(
        default=0,
        ge=0,
        le=16,
        description="GPUs per replica. 0 serves on CPU. With migProfile set, the number of MIG slices.",
    )
    product: str | None = Field(
        default=None,
        max_length=63,
        pattern=LABEL_VALUE_PATTERN,
        description="Required GPU product, matched against the node label nvidia.com/gpu.product "
        "(for example NVIDIA-L4, NVIDIA-H100-80GB-HBM3).",
    )
    mig_profile: str | None = Field(
        default=None,
        max_length=16,
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

    @model_validator(mode="after")
    def _cel(self, info: ValidationInfo) -> GpuSpec:
        _raise_first(
            info,
            [
                (not self.mig_profile or self.count > 0, self.cel_rules[0][1]),
                (self.product is None or self.count > 0, self.cel_rules[1][1]),
            ],
        )
        return self


RESOURCE_NAMES = ("cpu", "memory", "ephemeral-storage")
MIN_MEMORY = "32Mi"
MAX_CPU = "256"
_RESOURCE_MAPS = ("requests", "limits")


def _each(cond: str) -> str:
    """A CEL rule that `cond` holds for every entry of requests and of limits; `cond` speaks of
    the entry as k (its name) and V (its value, int or string, as a string)."""
    return " && ".join(
        f"(!has(self.{m}) || self.{m}.all(k, {cond.replace('V', f'string(self.{m}[k])')}))" for m in _RESOURCE_MAPS
    )


class ResourceRequirements(ApiModel):
    requests: dict[str, Quantity] | None = Field(
        default=None,
        max_length=len(RESOURCE_NAMES),
        description="Minimum resources per replica: cpu (cores: 2, 500m), memory (bytes: 2Gi, 512Mi) and "
        "ephemeral-storage.",
    )
    limits: dict[str, Quantity] | None = Field(
        default=None,
        max_length=len(RESOURCE_NAMES),
        description="Maximum resources per replica (cpu, memory, ephemeral-storage); not below requests.",
    )

    cel_rules = (
        (
            _each("!k.startsWith('nvidia.com/')"),
            "GPUs are requested with serving.gpu (count, product, migProfile), not serving.resources",
        ),
        (
            _each(f"k in {list(RESOURCE_NAMES)} || k.startsWith('nvidia.com/')"),
            "serving.resources names must be cpu, memory or ephemeral-storage",
        ),
        (
            _each("isQuantity(V) && quantity(V).compareTo(quantity('0')) >= 0"),
            "serving.resources values must be non-negative quantities such as 500m, 2 or 4Gi",
        ),
        (
            _each(f"k != 'memory' || !isQuantity(V) || quantity(V).compareTo(quantity('{MIN_MEMORY}')) >= 0"),
            f"serving.resources memory must be at least {MIN_MEMORY}: a plain number is bytes (write 2Gi, not 2)",
        ),
        (
            _each(f"k != 'cpu' || !isQuantity(V) || quantity(V).compareTo(quantity('{MAX_CPU}')) <= 0"),
            f"serving.resources cpu must be at most {MAX_CPU} cores: a plain number is cores (write 500m, not 500)",
        ),
        (
            "!has(self.requests) || !has(self.limits) || self.requests.all(k, !(k in self.limits) "
            "|| !isQuantity(string(self.requests[k])) || !isQuantity(string(self.limits[k])) "
            "|| quantity(string(self.limits[k])).compareTo(quantity(string(self.requests[k]))) >= 0)",
            "serving.resources limits must not be below requests",
        ),
    )

    @model_validator(mode="after")
    def _cel(self, info: ValidationInfo) -> ResourceRequirements:
        entries = [(k, v, parse_quantity(v)) for m in (self.requests, self.limits) for k, v in (m or {}).items()]
        requests = {k: parse_quantity(v) for k, v in (self.requests or {}).items()}
        limits = {k: parse_quantity(v) for k, v in (self.limits or {}).items()}
        min_memory, max_cpu = parse_quantity(MIN_MEMORY), parse_quantity(MAX_CPU)
        assert min_memory is not None and max_cpu is not None
        _raise_first(
            info,
            [
                (all(not k.startswith("nvidia.com/") for k, _, _ in entries), self.cel_rules[0][1]),
                (all(k in RESOURCE_NAMES or k.startswith("nvidia.com/") for k, _, _ in entries), self.cel_rules[1][1]),
                (all(q is not None and q >= 0 for _, _, q in entries), self.cel_rules[2][1]),
                (all(k != "memory" or q is None or q >= min_memory for k, _, q in entries), self.cel_rules[3][1]),
                (all(k != "cpu" or q is None or q <= max_cpu for k, _, q in entries), self.cel_rules[4][1]),
                (
                    all(
                        k not in limits or q is None or limits[k] is None or limits[k] >= q  # type: ignore[operator]
                        for k, q in requests.items()
                    ),
                    self.cel_rules[5][1],
                ),
            ],
        )
        return self


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
        default=None,
        max_length=253,
        pattern=DNS1123_SUBDOMAIN_PATTERN,
        description="PriorityClass of the serving pods (a DNS-1123 subdomain: lowercase).",
    )


class LatencyObjective(ApiModel):
    percentile: Literal[50, 90, 95, 99] = Field(default=95, description="Which latency percentile to hold.")
    threshold_ms: int = Field(
        ge=1,
        le=120_000,
        description="Target for that percentile, in milliseconds (1 to 120000: 250 is a quarter second; "
        "not microseconds), of request latency as Triton measures it "
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
    def _bounds(self, info: ValidationInfo) -> AutoscalingSpec:
        _raise_first(
            info,
            [
                (self.min_replicas <= self.max_replicas, self.cel_rules[0][1]),
                (not self.enabled or self.latency_objective is not None, self.cel_rules[1][1]),
            ],
        )
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
        description="Largest allowed latency increase over stable, as a fraction from 0 to 0.5, not a percent "
        "(0.10 = +10%). The canary fails "
        "when its latency is shown, with 95% confidence under repeated looks, to exceed stable's by more.",
    )
    max_error_rate: float = Field(
        default=0.01,
        ge=0,
        description="Largest allowed canary error rate, as a fraction of its requests from 0 to 0.2, not a "
        "percent (0.01 = 1%). The canary "
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
        _fraction("rollout.canary", "maxLatencyRegression", 0.5, "0.10 = +10%"),
        _fraction("rollout.canary", "maxErrorRate", 0.2, "0.01 = 1%"),
    )

    @model_validator(mode="after")
    def _steps_ascending_to_100(self, info: ValidationInfo) -> CanarySpec:
        _raise_first(
            info,
            [
                (bool(self.steps) and self.steps[-1] == 100, self.cel_rules[0][1]),
                (all(b > a for a, b in zip(self.steps, self.steps[1:], strict=False)), self.cel_rules[1][1]),
                (self.max_latency_regression <= 0.5, self.cel_rules[2][1]),
                (self.max_error_rate <= 0.2, self.cel_rules[3][1]),
            ],
        )
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
        default=None,
        max_length=253,
        pattern=SECTION_NAME_PATTERN,
        description="Listener of the Gateway to attach to (all when unset); lowercase, as Gateway API names it.",
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
        description="Serving replicas while autoscaling is off (also the scale subresource: kubectl scale, an "
        "HPA). While autoscaling.enabled is true the autoscaler owns the count: leave replicas unset (1, the "
        "default, which is then ignored); any other value, or scaling to one, is refused.",
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
        (
            "!self.autoscaling.enabled || self.replicas == 1",
            "spec.replicas is not used while autoscaling.enabled is true: the autoscaler owns the replica count "
            "(kubectl scale does not apply); leave replicas unset",
        ),
        (
            "!has(self.optimize.accuracyBudget) || !has(self.optimize.accuracyBudget.maxKLDivergence) "
            "|| !has(self.source.task) || self.source.task != 'feature-extraction'",
            "optimize.accuracyBudget.maxKLDivergence does not apply to feature-extraction (embeddings have no "
            "next-token distribution): use minCosineSimilarity",
        ),
        (
            "!has(self.optimize.calibration) || !has(self.optimize.calibration.sourcePath) "
            "|| self.source.uri.startsWith('pvc://')",
            "optimize.calibration.sourcePath is a file on the source's PVC: it needs a pvc:// source.uri",
        ),
    )

    @model_validator(mode="after")
    def _gpu_rules(self, info: ValidationInfo) -> SmallModelSpec:
        gpu = self.serving.gpu.count > 0
        _raise_first(
            info,
            [
                (self.optimize.precision != "fp16" or gpu or self.optimize.target == "tensorrt", self.cel_rules[0][1]),
                (self.optimize.target != "tensorrt" or gpu, self.cel_rules[1][1]),
                (not self.autoscaling.enabled or self.replicas == 1, self.cel_rules[2][1]),
                (
                    self.optimize.accuracy_budget.max_kl_divergence is None or self.source.task != "feature-extraction",
                    self.cel_rules[3][1],
                ),
                (
                    self.optimize.calibration is None
                    or self.optimize.calibration.source_path is None
                    or self.source.uri.startswith("pvc://"),
                    self.cel_rules[4][1],
                ),
            ],
        )
        return self
