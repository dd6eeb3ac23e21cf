"""One table of SmallModel manifests, each refused (with the message the user sees) or accepted.

tests/unit/test_validation.py checks the api models against it, tests/integration/
test_validation.py the real API server with the generated CRD: the two gates must agree.
`message` is what both say; where the schema itself (not a CEL rule) refuses, the API server
and pydantic word it differently and `pydantic` holds pydantic's wording.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
SOURCE = {"uri": "hf://HuggingFaceTB/SmolLM2-135M-Instruct"}
GPU = {"gpu": {"count": 1}}
AUTO = {"enabled": True, "latencyObjective": {"thresholdMs": 250}}


@dataclass(frozen=True)
class Case:
    id: str
    spec: dict[str, Any]
    message: str | None  # None: accepted
    name: str = "m"
    pydantic: str | None = None

    def body(self) -> dict[str, Any]:
        return {
            "apiVersion": "flotilla.dev/v1alpha1",
            "kind": "SmallModel",
            "metadata": {"name": self.name},
            "spec": self.spec,
        }

    @property
    def pydantic_message(self) -> str | None:
        return self.pydantic or self.message


def s(**fields: Any) -> dict[str, Any]:
    return {"source": SOURCE, **fields}


def resources(requests: dict[str, Any] | None = None, limits: dict[str, Any] | None = None) -> dict[str, Any]:
    res: dict[str, Any] = {}
    if requests is not None:
        res["requests"] = requests
    if limits is not None:
        res["limits"] = limits
    return s(serving={"resources": res})


def budget(**fields: Any) -> dict[str, Any]:
    return s(optimize={"accuracyBudget": fields})


def canary(**fields: Any) -> dict[str, Any]:
    return s(rollout={"canary": fields})


GPU_MSG = "GPUs are requested with serving.gpu (count, product, migProfile), not serving.resources"
NAMES_MSG = "serving.resources names must be cpu, memory or ephemeral-storage"
VALUE_MSG = "serving.resources values must be non-negative quantities such as 500m, 2 or 4Gi"
MEMORY_MSG = "serving.resources memory must be at least 32Mi"
CPU_MSG = "serving.resources cpu must be at most 256 cores"
LIMITS_MSG = "serving.resources limits must not be below requests"
NAME_MSG = "metadata.name must be a DNS-1035 label"
SUFFIX_MSG = "metadata.name must not end in -stable or -canary"
REPLICAS_MSG = "spec.replicas is not used while autoscaling.enabled is true"
PATTERN = "should match"

REFUSED: list[Case] = [
    # resources: quantities, names, GPUs in the wrong place
    Case("res-not-quantity", resources({"cpu": "2 cores"}), VALUE_MSG),
    Case("res-negative", resources({"memory": "-1Gi"}), VALUE_MSG),
    Case("res-junk-limit", resources(limits={"memory": "lots"}), VALUE_MSG),
    Case("res-unknown-name", resources({"cpus": "2"}), NAMES_MSG),
    Case("res-mem-name", resources({"mem": "2Gi"}), NAMES_MSG),
    Case("res-gpu-requests", resources({"nvidia.com/gpu": 1}), GPU_MSG),
    Case("res-gpu-limits", resources(limits={"nvidia.com/gpu": "1"}), GPU_MSG),
    Case("res-mig-limits", resources(limits={"nvidia.com/mig-1g.10gb": 1}), GPU_MSG),
    Case("res-memory-bytes", resources({"memory": "2"}), MEMORY_MSG),
    Case("res-memory-int", resources(limits={"memory": 4}), MEMORY_MSG),
    Case("res-cpu-cores-slip", resources({"cpu": "500"}), CPU_MSG),
    Case("res-limit-below-request", resources({"cpu": "2", "memory": "2Gi"}, {"cpu": "1"}), LIMITS_MSG),
    Case("res-limit-below-request-units", resources({"memory": "1Gi"}, {"memory": "1000Mi"}), LIMITS_MSG),
    # names of the child objects
    Case("name-digit-first", s(), NAME_MSG, name="1model"),
    Case("name-dot", s(), NAME_MSG, name="my.model"),
    Case("name-too-long", s(), "metadata.name must be at most 40 characters", name="x" * 41),
    Case("name-stable-suffix", s(), SUFFIX_MSG, name="chat-stable"),
    Case("name-canary-suffix", s(), SUFFIX_MSG, name="chat-canary"),
    # what the optimizer cannot do
    Case("fp16-cpu", s(optimize={"precision": "fp16"}), "fp16 needs a GPU"),
    Case("trt-cpu", s(optimize={"target": "tensorrt"}), "tensorrt needs GPU serving"),
    Case(
        "trt-int4",
        s(optimize={"target": "tensorrt", "precision": "int4"}, serving=GPU),
        "optimize.precision int4 is not supported by optimize.target tensorrt",
    ),
    # ratios: fractions, bounded to what means something
    Case(
        "top1-percent", budget(maxTop1Disagreement=3), "maxTop1Disagreement is a fraction from 0 to 0.5, not a percent"
    ),
    Case("top1-one-percent-slip", budget(maxTop1Disagreement=1), "maxTop1Disagreement is a fraction from 0 to 0.5"),
    Case("perplexity-percent", budget(maxPerplexityIncrease=5), "maxPerplexityIncrease is a fraction from 0 to 0.5"),
    Case("cosine-vacuous", budget(minCosineSimilarity=0), "minCosineSimilarity must be from 0.5 to 1, not a percent"),
    Case("cosine-percent", budget(minCosineSimilarity=99), "less than or equal to 1"),
    Case("top1-negative", budget(maxTop1Disagreement=-0.1), "greater than or equal to 0"),
    Case("kl-huge", budget(maxKLDivergence=50), "maxKLDivergence is in nats per position, from 0 to 10"),
    Case("kl-negative", budget(maxKLDivergence=-1), "greater than or equal to 0"),
    Case(
        "kl-on-embeddings",
        {"source": {**SOURCE, "task": "feature-extraction"}, "optimize": {"accuracyBudget": {"maxKLDivergence": 0.1}}},
        "maxKLDivergence does not apply to feature-extraction",
    ),
    Case(
        "calibration-both",
        s(optimize={"calibration": {"configMapRef": {"name": "calib"}, "sourcePath": "calib.txt"}}),
        "optimize.calibration needs exactly one of configMapRef and sourcePath",
    ),
    Case("calibration-empty", s(optimize={"calibration": {}}), "needs exactly one of configMapRef and sourcePath"),
    Case(
        "calibration-path-without-pvc",
        {"source": SOURCE, "optimize": {"calibration": {"sourcePath": "calib.txt"}}},
        "calibration.sourcePath is a file on the source's PVC: it needs a pvc:// source.uri",
    ),
    Case(
        "calibration-path-escapes",
        {"source": {"uri": "pvc://models/m"}, "optimize": {"calibration": {"sourcePath": "m/../../etc/passwd"}}},
        "must stay inside the claim",
    ),
    Case(
        "latency-regression-percent",
        canary(maxLatencyRegression=10),
        "maxLatencyRegression is a fraction from 0 to 0.5",
    ),
    Case("latency-regression-one", canary(maxLatencyRegression=1), "maxLatencyRegression is a fraction from 0 to 0.5"),
    Case("error-rate-percent", canary(maxErrorRate=1), "maxErrorRate is a fraction from 0 to 0.2, not a percent"),
    Case("error-rate-vacuous", canary(maxErrorRate=0.5), "maxErrorRate is a fraction from 0 to 0.2"),
    # replicas while the autoscaler owns the count
    Case("replicas-with-autoscaling", s(replicas=2, autoscaling=AUTO), REPLICAS_MSG),
    Case("replicas-0-with-autoscaling", s(replicas=0, autoscaling=AUTO), REPLICAS_MSG),
    # rules that must answer with their message, not an evaluation error
    Case("steps-empty", s(rollout={"canary": {"steps": []}}), "should have at least 1 item"),
    Case("steps-not-100", s(rollout={"canary": {"steps": [10, 50]}}), "must end at 100"),
    Case("steps-unsorted", s(rollout={"canary": {"steps": [50, 10, 100]}}), "strictly ascending"),
    Case("steps-repeated", s(rollout={"canary": {"steps": [50, 50, 100]}}), "strictly ascending"),
    # every other field a typo or a unit slip can break
    Case("auto-no-objective", s(autoscaling={"enabled": True}), "latencyObjective is required"),
    Case("min-over-max", s(autoscaling={"minReplicas": 5, "maxReplicas": 2}), "minReplicas must not exceed"),
    Case(
        "threshold-microseconds",
        s(autoscaling={"enabled": True, "latencyObjective": {"thresholdMs": 250_000}}),
        "less than or equal to 120000",
    ),
    Case("mig-no-gpu", s(serving={"gpu": {"migProfile": "1g.10gb"}}), "migProfile needs serving.gpu.count > 0"),
    Case("mig-upper-case", s(serving={"gpu": {"count": 1, "migProfile": "1g.10GB"}}), PATTERN),
    Case("product-no-gpu", s(serving={"gpu": {"product": "NVIDIA-L4"}}), "product needs serving.gpu.count > 0"),
    Case("product-not-label", s(serving={"gpu": {"count": 1, "product": "NVIDIA L4"}}), PATTERN),
    Case("product-trailing-dash", s(serving={"gpu": {"count": 1, "product": "NVIDIA-L4-"}}), PATTERN),
    Case("priority-class-upper", s(serving={"priorityClassName": "High"}), PATTERN),
    Case(
        "secret-name-env-style",
        {"source": {**SOURCE, "credentialsSecretRef": {"name": "HF_TOKEN"}}},
        PATTERN,
    ),
    Case(
        "secret-file",
        {"source": {"uri": "file:///m", "credentialsSecretRef": {"name": "s"}}},
        "only used with hf:// and s3://",
    ),
    Case(
        "revision-twice",
        {"source": {"uri": "hf://org/name@main", "revision": "v2"}},
        "source.revision and an @revision in source.uri both pin the source",
    ),
    Case("uri-scheme", {"source": {"uri": "ftp://example.com/model"}}, "spec.source.uri", pydantic=PATTERN),
    Case("section-name-upper", s(rollout={"gatewayRef": {"name": "gw", "sectionName": "HTTP"}}), PATTERN),
    Case("bad-precision", s(optimize={"precision": "int3"}), 'Unsupported value: "int3"', pydantic="Input should be"),
    Case("negative-batch", s(serving={"maxBatchSize": -1}), "greater than or equal to 0"),
    Case("no-source", {"replicas": 1}, "spec.source: Required value", pydantic="Field required"),
    Case("misspelled-field", s(replica=2), 'unknown field "spec.replica"', pydantic="Extra inputs are not permitted"),
]

ACCEPTED: list[Case] = [
    Case("minimal", s(), None),
    Case("name-40", s(), None, name="a" * 40),
    Case("name-stable-alone", s(), None, name="stable"),
    Case("name-stable-inside", s(), None, name="stable-chat"),
    Case("name-one-letter", s(), None, name="a"),
    Case("resources-usual", resources({"cpu": "500m", "memory": "2Gi"}, {"cpu": 2, "memory": "4G"}), None),
    Case("resources-equal", resources({"cpu": "1.5", "memory": "512Mi"}, {"cpu": "1500m", "memory": "0.5Gi"}), None),
    Case("resources-storage", resources({"ephemeral-storage": "10Gi"}), None),
    Case("resources-exponent", resources({"memory": "1e9", "cpu": "256"}), None),
    Case("gpu-serving", s(serving={"gpu": {"count": 1, "product": "NVIDIA-H100-80GB-HBM3"}}), None),
    Case("mig", s(serving={"gpu": {"count": 2, "migProfile": "1g.10gb"}}), None),
    Case("trt-int8", s(optimize={"target": "tensorrt", "precision": "int8"}, serving=GPU), None),
    Case("trt-auto", s(optimize={"target": "tensorrt"}, serving=GPU), None),
    Case(
        "ratios-at-bounds",
        s(
            optimize={
                "accuracyBudget": {"maxTop1Disagreement": 0.5, "maxPerplexityIncrease": 0.5, "minCosineSimilarity": 0.5}
            },
            rollout={"canary": {"maxLatencyRegression": 0.5, "maxErrorRate": 0.2}},
        ),
        None,
    ),
    Case("kl-budget", budget(maxKLDivergence=0.05), None),
    Case("calibration-configmap", s(optimize={"calibration": {"configMapRef": {"name": "calib-7f3k"}}}), None),
    Case(
        "calibration-on-the-source-claim",
        {"source": {"uri": "pvc://models/m"}, "optimize": {"calibration": {"sourcePath": "m/calib..v2.txt"}}},
        None,
    ),
    Case("kl-on-labels", {"source": {**SOURCE, "task": "text-classification"}, **budget(maxKLDivergence=10)}, None),
    Case("autoscaling-without-replicas", s(autoscaling=AUTO), None),
    Case("replicas-without-autoscaling", s(replicas=3), None),
    Case("replicas-default-with-autoscaling", s(replicas=1, autoscaling=AUTO), None),  # the default: ignored
    Case("replicas-autoscaling-off", s(replicas=0, autoscaling={**AUTO, "enabled": False}), None),
    Case("steps-100", s(rollout={"canary": {"steps": [100]}}), None),
    Case("revision-field", {"source": {"uri": "hf://org/name", "revision": "v2"}}, None),
    Case("revision-in-uri", {"source": {"uri": "hf://org/name@v2"}}, None),
    Case("s3-at-sign", {"source": {"uri": "s3://bucket/a@b", "revision": "x"}}, None),
    Case("secret-hf", {"source": {**SOURCE, "credentialsSecretRef": {"name": "hf-token"}}}, None),
    Case("gateway-ref", s(rollout={"gatewayRef": {"name": "gw", "namespace": "infra", "sectionName": "http"}}), None),
]


def example_manifests() -> list[tuple[str, dict[str, Any]]]:
    """Every SmallModel in examples/ (each must be accepted by both gates)."""
    found = []
    for path in sorted((REPO / "examples").rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "SmallModel":
                found.append((str(path.relative_to(REPO)), doc))
    return found
