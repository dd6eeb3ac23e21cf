"""The api models refuse what the CRD refuses, with the same message, and accept what it accepts
(the shared table in tests/validation_cases.py; tests/integration/test_validation.py runs it
against the real API server)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from pydantic import ValidationError

from flotilla.api.v1alpha1 import SmallModel
from flotilla.api.v1alpha1.model import NAME_PATTERN, NAME_RULES, name_errors
from flotilla.api.v1alpha1.quantity import parse_quantity
from flotilla.api.v1alpha1.spec import STORED, SmallModelSpec
from flotilla.resources.meta import config_map_name, deployment_name, job_name
from flotilla.resources.serving import endpoint_slice_name
from tests.validation_cases import ACCEPTED, REFUSED, SOURCE, Case, example_manifests


@pytest.mark.parametrize("case", REFUSED, ids=[c.id for c in REFUSED])
def test_refused_with_the_crd_message(case: Case) -> None:
    with pytest.raises((ValidationError, ValueError)) as caught:
        SmallModel.admit(case.body())
    assert case.pydantic_message is not None
    assert case.pydantic_message in str(caught.value)


@pytest.mark.parametrize("case", ACCEPTED, ids=[c.id for c in ACCEPTED])
def test_accepted(case: Case) -> None:
    SmallModel.admit(case.body())


@pytest.mark.parametrize(("path", "body"), example_manifests(), ids=[p for p, _ in example_manifests()])
def test_examples_are_accepted(path: str, body: dict[str, Any]) -> None:
    SmallModel.admit(body)


def test_every_example_is_found() -> None:
    assert len(example_manifests()) >= 2


def test_cel_rule_messages_are_the_python_messages() -> None:
    """Where a CEL rule refuses, pydantic raises that rule's message text, not a paraphrase."""
    from flotilla import crdgen

    crd_messages = [r["message"] for node in _walk(crdgen.crd()) for r in node.get("x-kubernetes-validations", [])]
    cel_cases = [c for c in REFUSED if c.message and any(c.message in m for m in crd_messages)]
    assert len(cel_cases) >= 30
    assert all(c.pydantic is None for c in cel_cases)


def _walk(node: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if isinstance(node, dict):
        out.append(node)
        for v in node.values():
            out.extend(_walk(v))
    elif isinstance(node, list):
        for v in node:
            out.extend(_walk(v))
    return out


# --- names ----------------------------------------------------------------------------------

LONGEST = "a" * 40
DERIVED = [
    lambda m: m,  # Service, HTTPRoute
    lambda m: f"{m}-stable",
    lambda m: f"{m}-canary",
    endpoint_slice_name,
    lambda m: deployment_name(m, "f" * 10),  # Deployment, PodDisruptionBudget
    lambda m: config_map_name(m, "f" * 10),
    lambda m: job_name(m, "f" * 64),
]


@pytest.mark.parametrize("name", [LONGEST, "a", "a-1", "z9-" * 13 + "z"])
def test_every_derived_name_is_a_dns1035_label_for_any_accepted_name(name: str) -> None:
    assert not name_errors(name)
    for derive in DERIVED:
        child = derive(name)
        assert len(child) <= 63 and re.fullmatch(NAME_PATTERN, child), child


def test_derived_names_of_two_models_never_collide() -> None:
    """Services take <m>, <m>-stable and <m>-canary: with the reserved suffixes refused, two
    accepted names never share one. The other kinds add a fixed-length suffix (one name per kind)."""
    names = ["chat", "chat-x", "chat-stable", "chat-canary", "chat-stable-canary", "stable", "canary", "c", "chat-1"]
    accepted = [n for n in names if not name_errors(n)]
    assert "chat-stable" not in accepted and "chat-canary" not in accepted
    services: dict[str, str] = {}
    for model in accepted:
        for service in (model, f"{model}-stable", f"{model}-canary"):
            assert services.setdefault(service, model) == model, f"{model} and {services[service]} share {service}"


def test_name_rules_are_the_crd_root_rules() -> None:
    from flotilla import crdgen

    root = crdgen.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["x-kubernetes-validations"]
    assert [(r["rule"], r["message"]) for r in root] == list(NAME_RULES)


# --- replicas, stored objects, pruned fields ---------------------------------------------------


def test_replicas_while_autoscaling_and_stored_objects_from_before_the_rule() -> None:
    auto = {"enabled": True, "latencyObjective": {"thresholdMs": 250}}
    assert SmallModelSpec.model_validate({"source": SOURCE, "autoscaling": auto}).replicas == 1
    legacy = {"source": SOURCE, "replicas": 3, "autoscaling": auto}
    with pytest.raises(ValidationError, match=r"spec\.replicas is not used while autoscaling"):
        SmallModelSpec.model_validate(legacy)
    # What the API server stored before the rule: the operator still reads it (and ignores the count).
    assert SmallModelSpec.model_validate(legacy, context={STORED: True}).autoscaling.enabled
    assert SmallModel.from_body({"metadata": {"name": "m"}, "spec": legacy}).spec.replicas == 3


def test_pruned_fields_are_read_from_the_last_applied_configuration() -> None:
    sent = '{"spec": {"source": {"uri": "hf://a/b"}, "replica": 3, "serving": {"maxBatchSise": 4}}}'
    annotations = {"kubectl.kubernetes.io/last-applied-configuration": sent}
    model = SmallModel.from_body({"metadata": {"name": "m", "annotations": annotations}, "spec": {"source": SOURCE}})
    assert model.pruned_fields() == ["spec.replica", "spec.serving.maxBatchSise"]
    clean = SmallModel.from_body({"metadata": {"name": "m"}, "spec": {"source": SOURCE}})
    assert clean.pruned_fields() == []
    broken = {"kubectl.kubernetes.io/last-applied-configuration": "{not json"}
    assert (
        SmallModel.from_body(
            {"metadata": {"name": "m", "annotations": broken}, "spec": {"source": SOURCE}}
        ).pruned_fields()
        == []
    )


# --- quantities -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [("2", 2), ("500m", 0.5), ("4Gi", 4 * 2**30), ("1e3", 1000), ("1.5", 1.5), (".5", 0.5), ("5.", 5),
     ("-1Gi", -(2**30)), ("2E", 2 * 10**18), ("3k", 3000), ("100u", 0.0001), (7, 7)],
)  # fmt: skip
def test_quantities_parse_as_kubernetes_does(text: str | int, value: float) -> None:
    assert parse_quantity(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["2 cores", "lots", "1e", "Gi", "2gi", "1.2.3", "", "0x10", "2Ki "])
def test_non_quantities_are_refused(text: str) -> None:
    assert parse_quantity(text) is None


# --- what the optimizer can build -------------------------------------------------------------


def test_auto_on_tensorrt_only_tries_recipes_tensorrt_builds(tmp_path: Any) -> None:
    from pathlib import Path

    from flotilla.optimize import recipes, tensorrt

    auto = recipes.candidates("auto", True, target="tensorrt")
    assert {r.name for r in auto} == {"int8-static-qdq", "fp16"}
    assert {r.name for r in recipes.candidates("int8", True, target="tensorrt")} == {"int8-static-qdq"}
    assert recipes.candidates("int4", True, target="tensorrt") == []  # and the CRD refuses it
    for recipe in [*auto, *recipes.candidates("fp32", True, target="tensorrt")]:
        tensorrt.trtexec_command(Path("m.onnx"), Path("e"), ["input_ids"], recipe.precision)  # never raises
    assert len(recipes.candidates("auto", False)) == len(
        [r for r in recipes.RECIPES if r.precision not in {"fp32", "fp16"}]
    )


def test_the_plan_reports_pruned_fields_in_status_and_once_as_an_event() -> None:
    from flotilla.reconcile import plan

    from .objects import context, model, observed

    sent = '{"spec": {"source": {"uri": "hf://a/b"}, "replica": 3}}'
    m = model()
    m = m.model_copy(
        update={
            "metadata": m.metadata.model_copy(
                update={"annotations": {"kubectl.kubernetes.io/last-applied-configuration": sent}}
            )
        }
    )
    first = plan(m, observed(pvc=False), context())
    assert first.status.pruned_fields == ["spec.replica"]
    warned = [e for e in first.events if e.reason == "UnknownFieldsPruned"]
    assert len(warned) == 1 and "spec.replica" in warned[0].message and "--validate=strict" in warned[0].message
    again = plan(m.model_copy(update={"status": first.status}), observed(pvc=False), context())
    assert not [e for e in again.events if e.reason == "UnknownFieldsPruned"]
    assert plan(model(), observed(pvc=False), context()).status.pruned_fields is None
