"""The real API server, with the generated CRD, refuses each class of mistake with the rule's
message and accepts the good manifests: the same table (tests/validation_cases.py) the api
models are checked against in tests/unit/test_validation.py."""

from __future__ import annotations

import json
from typing import Any

import pytest

from localcluster.cluster import Cluster
from tests.validation_cases import ACCEPTED, AUTO, REFUSED, REPLICAS_MSG, SOURCE, Case, example_manifests

pytestmark = pytest.mark.cluster
# What the API server says when a rule fails to evaluate instead of answering.
EVALUATION_ERRORS = ("no such key", "no matching overload", "index out of", "evaluation error", "internal error")


def dry_run(cluster: Cluster, namespace: str, body: dict[str, Any]) -> tuple[int, str]:
    proc = cluster.kubectl(
        "create", "--dry-run=server", "-n", namespace, "-f", "-", input=json.dumps(body), check=False
    )
    return proc.returncode, proc.stderr


def test_the_generated_crd_is_accepted_with_every_rule_compiled(crd: Cluster) -> None:
    """The API server compiles each CEL rule and checks its cost budget when the CRD is applied."""
    served = crd.kubectl_json("get", "crd", "smallmodels.flotilla.dev")
    established = {c["type"]: c["status"] for c in served["status"]["conditions"]}
    assert established.get("Established") == "True" and established.get("NamesAccepted") == "True"
    rules = json.dumps(served["spec"]["versions"][0]["schema"])
    assert "isQuantity" in rules and "endsWith('-stable')" in rules


@pytest.mark.parametrize("case", REFUSED, ids=[c.id for c in REFUSED])
def test_refused_by_the_api_server(crd: Cluster, namespace: str, case: Case) -> None:
    code, stderr = dry_run(crd, namespace, case.body())
    assert code != 0, f"{case.id} was accepted"
    assert case.message is not None and case.message in stderr, stderr
    assert not any(e in stderr for e in EVALUATION_ERRORS), stderr


@pytest.mark.parametrize("case", ACCEPTED, ids=[c.id for c in ACCEPTED])
def test_accepted_by_the_api_server(crd: Cluster, namespace: str, case: Case) -> None:
    code, stderr = dry_run(crd, namespace, case.body())
    assert code == 0, stderr


@pytest.mark.parametrize(("path", "body"), example_manifests(), ids=[p for p, _ in example_manifests()])
def test_examples_are_accepted_by_the_api_server(crd: Cluster, namespace: str, path: str, body: dict[str, Any]) -> None:
    code, stderr = dry_run(crd, namespace, body)
    assert code == 0, stderr


def test_kubectl_scale_is_refused_while_autoscaling(crd: Cluster, namespace: str) -> None:
    """The scale subresource writes spec.replicas, so the same rule refuses it, with its message."""
    body = Case("auto", {"source": SOURCE, "autoscaling": AUTO}, None, name="auto").body()
    crd.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(body))
    scale = crd.kubectl("scale", "smallmodel/auto", "-n", namespace, "--replicas=3", check=False)
    assert scale.returncode != 0 and REPLICAS_MSG in scale.stderr, scale.stderr
    got = crd.kubectl_json("get", "smallmodel", "auto", "-n", namespace, "--subresource=scale")
    assert got["spec"]["replicas"] == 1  # the default, ignored while autoscaling; an HPA can still read it
    # Turning autoscaling off hands the count back to spec.replicas and kubectl scale.
    patch = json.dumps({"spec": {"autoscaling": {"enabled": False}}})
    crd.kubectl("patch", "smallmodel", "auto", "-n", namespace, "--type=merge", "-p", patch)
    crd.kubectl("scale", "smallmodel/auto", "-n", namespace, "--replicas=3")
    assert crd.kubectl_json("get", "smallmodel", "auto", "-n", namespace)["spec"]["replicas"] == 3
    # ... and enabling it again with that count is refused until replicas goes back to unset (1).
    patch = json.dumps({"spec": {"autoscaling": {"enabled": True}}})
    again = crd.kubectl("patch", "smallmodel", "auto", "-n", namespace, "--type=merge", "-p", patch, check=False)
    assert again.returncode != 0 and REPLICAS_MSG in again.stderr, again.stderr
    patch = json.dumps({"spec": {"autoscaling": {"enabled": True}, "replicas": None}})
    crd.kubectl("patch", "smallmodel", "auto", "-n", namespace, "--type=merge", "-p", patch)
    assert crd.kubectl_json("get", "smallmodel", "auto", "-n", namespace)["spec"]["replicas"] == 1


def test_fields_pruned_without_strict_validation_survive_in_last_applied(crd: Cluster, namespace: str) -> None:
    """What the API server does with a misspelled field when the client does not ask for strict
    validation: it stores the object without it and only warns; client-side apply's annotation
    keeps what was sent (which the operator reports); server-side apply refuses it."""
    body = Case("typo", {"source": SOURCE, "replica": 3, "serving": {"maxBatchSise": 4}}, None, name="typo").body()
    text = json.dumps(body)
    applied = crd.kubectl("apply", "--validate=warn", "-n", namespace, "-f", "-", input=text)
    assert 'unknown field "spec.replica"' in applied.stderr  # a warning only
    stored = crd.kubectl_json("get", "smallmodel", "typo", "-n", namespace)
    assert "replica" not in stored["spec"] and "maxBatchSise" not in stored["spec"]["serving"]
    from flotilla.api.v1alpha1 import SmallModel

    assert SmallModel.from_body(stored).pruned_fields() == ["spec.replica", "spec.serving.maxBatchSise"]
    ssa = crd.kubectl(
        "apply", "--server-side", "--validate=false", "-n", namespace, "-f", "-",
        input=text.replace('"typo"', '"typo-ssa"'), check=False,
    )  # fmt: skip
    assert ssa.returncode != 0 and "field not declared in schema" in ssa.stderr, ssa.stderr
