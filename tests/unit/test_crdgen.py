"""The generated CRD: structural, with CEL rules, printer columns, subresources; and fresh."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flotilla import crdgen

REPO = Path(__file__).resolve().parents[2]


def walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        found.append((path, node))
        for key, value in node.items():
            found.extend(walk(value, f"{path}.{key}"))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found.extend(walk(value, f"{path}[{i}]"))
    return found


def schema() -> dict[str, Any]:
    return crdgen.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_schema_is_structural() -> None:
    for path, node in walk(schema()):
        assert "$ref" not in node, path
        assert "anyOf" not in node and "oneOf" not in node, path
        assert node.get("additionalProperties") is not False, path
        assert "title" not in node or path.endswith(".properties"), path
        if "properties" in node and not path.endswith(".properties"):
            assert node.get("type") == "object", path


def test_every_spec_field_is_described() -> None:
    spec = schema()["properties"]["spec"]
    for path, node in walk(spec):
        if path.endswith(".properties"):
            for name, field in node.items():
                assert field.get("description"), f"spec{path}.{name} has no description"


def test_cel_rules_present() -> None:
    rules = [r["rule"] for _, node in walk(schema()) for r in node.get("x-kubernetes-validations", [])]
    assert "self.minReplicas <= self.maxReplicas" in rules
    assert any("steps.isSorted()" in r for r in rules)
    assert any("migProfile" in r for r in rules)
    assert any("'fp16'" in r for r in rules)
    assert any("metadata.name.size()" in r for r in rules)


def test_nested_defaults_cascade() -> None:
    spec = schema()["properties"]["spec"]["properties"]
    assert spec["optimize"]["default"]["accuracyBudget"]["maxTop1Disagreement"] == 0.03
    assert spec["optimize"]["properties"]["accuracyBudget"]["default"]["minCosineSimilarity"] == 0.99
    assert spec["rollout"]["default"]["canary"]["steps"] == [10, 50, 100]
    assert spec["rollout"]["properties"]["canary"]["properties"]["steps"]["default"] == [10, 50, 100]
    assert "default" not in spec["source"]["properties"]["revision"]


def test_quantities_are_int_or_string() -> None:
    resources = schema()["properties"]["spec"]["properties"]["serving"]["properties"]["resources"]
    assert resources["properties"]["requests"]["additionalProperties"]["x-kubernetes-int-or-string"] is True


def test_subresources_and_columns() -> None:
    version = crdgen.crd()["spec"]["versions"][0]
    assert version["subresources"]["scale"]["specReplicasPath"] == ".spec.replicas"
    assert "status" in version["subresources"]
    names = [c["name"] for c in version["additionalPrinterColumns"]]
    assert names[:7] == ["Ready", "Precision", "Stable", "Canary %", "Replicas", "p95", "Age"]
    conditions = schema()["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]


def test_checked_in_crd_is_fresh(monkeypatch: Any) -> None:
    monkeypatch.chdir(REPO)
    assert crdgen.main(["--check"]) == 0


def test_check_detects_staleness(tmp_path: Path) -> None:
    stale = tmp_path / "crd.yaml"
    stale.write_text(crdgen.render().replace("maxBatchSize", "maxBatchSise"))
    assert crdgen.main(["--check", "--out", str(stale)]) == 1
    assert crdgen.main(["--out", str(stale)]) == 0
    assert crdgen.main(["--check", "--out", str(stale)]) == 0


def test_chart_template_is_the_crd_wrapped_for_helm() -> None:
    """Drop the Helm lines (the `crds.install` guard, the `crds.keep` annotation) and the
    template is the plain CRD, text for text (test_chart.py also compares helm's rendering)."""
    template = crdgen.render_chart_template().splitlines()
    helm_lines = {i for i, line in enumerate(template) if "{{" in line}
    keep = template.index("  annotations:")
    plain = [line for i, line in enumerate(template) if i not in helm_lines | {keep, keep + 1}]
    assert plain[1:] == crdgen.render().splitlines()[1:]  # the header line differs
    assert "helm.sh/resource-policy: keep" in template[keep + 1]


def test_check_covers_the_chart_template(tmp_path: Path) -> None:
    stale = tmp_path / "smallmodels.yaml"
    stale.write_text(crdgen.render())  # the plain CRD where the template belongs
    assert crdgen.main(["--check", "--chart-out", str(stale)]) == 1
    assert crdgen.main(["--chart-out", str(stale)]) == 0
    assert crdgen.main(["--check", "--chart-out", str(stale)]) == 0
