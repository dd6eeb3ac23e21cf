"""api models -> the SmallModel CustomResourceDefinition.

The pydantic models are the only schema source; this module turns their JSON Schema into a
structural OpenAPI v3 schema as Kubernetes wants it (no $ref, no `anyOf` with null:
optional fields are plain optional properties, int-or-string for quantities, no `additionalProperties: false`), with
the models' CEL rules as `x-kubernetes-validations`.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue, NoDefault
from pydantic_core import core_schema

from flotilla.api.v1alpha1 import constants as c
from flotilla.api.v1alpha1 import model as api_model
from flotilla.api.v1alpha1 import spec as api_spec
from flotilla.api.v1alpha1 import status as api_status
from flotilla.api.v1alpha1.base import ApiModel

CRD_FILE = Path("crds") / f"{c.CRD_NAME}.yaml"
# The Helm chart ships the same CRD as a template, not in crds/ (which Helm installs once and
# never upgrades): `helm upgrade` then applies a changed schema. `crds.install` renders it,
# `crds.keep` keeps it (and every SmallModel) on `helm uninstall`, as cert-manager does.
CHART_CRD_TEMPLATE = Path("charts") / "flotilla" / "templates" / "crds" / f"{c.PLURAL}.yaml"
DROP_KEYS = {"title", "$defs"}


class _Schema(GenerateJsonSchema):
    """Emit defaults from default factories too, so the API server defaults the whole tree.

    A nested object's default is spelled out in full rather than `{}`: the API server checks
    default values against the CEL rules as written, before nested defaults apply.
    """

    def get_default_value(self, schema: core_schema.WithDefaultSchema) -> Any:
        factory = schema.get("default_factory")
        if factory is None:
            return super().get_default_value(schema)
        value = factory()  # type: ignore[call-arg]
        return value.to_wire() if isinstance(value, ApiModel) else value

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        out = super().default_schema(schema)
        if out.get("default", NoDefault) is None:  # optional fields: absent, not null
            out.pop("default")
        return out


def _all_models(module: Any) -> dict[str, type[ApiModel]]:
    return {
        name: obj
        for name, obj in vars(module).items()
        if isinstance(obj, type) and issubclass(obj, ApiModel) and obj.__module__ == module.__name__
    }


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_inline(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = _inline(defs[node["$ref"].rsplit("/", 1)[1]], defs)
        extra = {k: v for k, v in node.items() if k != "$ref"}
        return {**target, **_inline(extra, defs)}
    out = {k: _inline(v, defs) for k, v in node.items() if k not in DROP_KEYS}
    return _structural(out)


def _structural(node: dict[str, Any]) -> dict[str, Any]:
    """Rewrite the JSON Schema idioms Kubernetes rejects."""
    variants = node.pop("anyOf", None)
    if variants is not None:
        types = [v.get("type") for v in variants]
        non_null = [v for v in variants if v.get("type") != "null"]
        if sorted(t for t in types if t != "null") == ["integer", "string"]:
            node["x-kubernetes-int-or-string"] = True
        elif len(non_null) == 1:
            node = {**non_null[0], **node}
        else:
            raise ValueError(f"cannot express anyOf {types} structurally")
        # An optional field is simply absent when unset. Not marking it nullable makes the API
        # server prune an explicit `null` (common in Helm-rendered YAML) instead of storing it.
    if node.get("additionalProperties") is False:
        node.pop("additionalProperties")
    return node


def _with_rules(defs: dict[str, Any], models: dict[str, type[ApiModel]]) -> None:
    for name, schema in defs.items():
        model = models.get(name)
        if model is not None and model.cel_rules:
            schema["x-kubernetes-validations"] = [{"rule": r, "message": m} for r, m in model.cel_rules]


def _strip_defaults(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _strip_defaults(v) for k, v in node.items() if k != "default"}
    if isinstance(node, list):
        return [_strip_defaults(v) for v in node]
    return node


def _model_schema(model: type[BaseModel], models: dict[str, type[ApiModel]]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, schema_generator=_Schema, ref_template="#/$defs/{model}")
    defs = raw.pop("$defs", {})
    defs[model.__name__] = raw
    _with_rules(defs, models)
    result: dict[str, Any] = _inline(defs[model.__name__], defs)
    return result


def openapi_schema() -> dict[str, Any]:
    models = {**_all_models(api_spec), **_all_models(api_status)}
    spec = _model_schema(api_spec.SmallModelSpec, models)
    status = _strip_defaults(_model_schema(api_status.SmallModelStatus, models))
    conditions = status["properties"]["conditions"]
    conditions["x-kubernetes-list-type"] = "map"
    conditions["x-kubernetes-list-map-keys"] = ["type"]
    return {
        "type": "object",
        "description": "A small language model that Flotilla optimizes, gates on accuracy and serves with "
        "Triton Inference Server.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
        "x-kubernetes-validations": [{"rule": rule, "message": message} for rule, message in api_model.NAME_RULES],
    }


PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
    {"name": "Precision", "type": "string", "jsonPath": ".status.artifact.precision"},
    {"name": "Stable", "type": "string", "jsonPath": ".status.revisions.stable"},
    {"name": "Canary %", "type": "integer", "jsonPath": ".status.revisions.canaryWeight"},
    {"name": "Replicas", "type": "integer", "jsonPath": ".status.readyReplicas"},
    {"name": "p95", "type": "number", "jsonPath": ".status.latency.p95Ms", "description": "p95 latency, ms"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {"name": "Size", "type": "integer", "jsonPath": ".status.artifact.sizeBytes", "priority": 1},
    {"name": "Speedup", "type": "number", "jsonPath": ".status.artifact.speedup.prefill", "priority": 1},
    {"name": "Top1", "type": "number", "jsonPath": ".status.artifact.accuracy.top1Agreement", "priority": 1},
    {"name": "Reason", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].reason', "priority": 1},
]


def crd() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": c.CRD_NAME, "labels": {"app.kubernetes.io/part-of": "flotilla"}},
        "spec": {
            "group": c.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": c.KIND,
                "listKind": f"{c.KIND}List",
                "plural": c.PLURAL,
                "singular": c.SINGULAR,
                "shortNames": list(c.SHORT_NAMES),
                "categories": ["flotilla"],
            },
            "versions": [
                {
                    "name": c.VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": openapi_schema()},
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": ".spec.replicas",
                            "statusReplicasPath": ".status.replicas",
                            "labelSelectorPath": ".status.selector",
                        },
                    },
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                }
            ],
        },
    }


HEADER = "# Generated by `python -m flotilla crds` from operator/flotilla/api. Do not edit.\n"
# Inserted under the CRD's metadata.labels in the chart's template; the rest is the same text.
HELM_ANNOTATIONS = (
    "  {{- if .Values.crds.keep }}\n"
    "  annotations:\n"
    "    helm.sh/resource-policy: keep   # helm uninstall leaves the CRD and every SmallModel\n"
    "  {{- end }}\n"
)


def render() -> str:
    return HEADER + yaml.safe_dump(crd(), sort_keys=False, width=120)


def render_chart_template() -> str:
    """The CRD as a chart template: the same YAML, behind `crds.install`, with `crds.keep`."""
    body = yaml.safe_dump(crd(), sort_keys=False, width=120)
    if "{{" in body or "}}" in body:
        raise ValueError("the CRD text holds template delimiters; escape them before wrapping it for Helm")
    head, sep, rest = body.partition("\nspec:\n")
    if not sep or "\n  labels:\n" not in head or "annotations:" in head:
        raise ValueError("unexpected CRD layout: metadata.labels then spec, no annotations")
    return (
        HEADER.replace("Do not edit.", "Do not edit (the same CRD as crds/, wrapped for Helm).")
        + "{{- if .Values.crds.install }}\n"
        + head
        + "\n"
        + HELM_ANNOTATIONS
        + "spec:\n"
        + rest
        + "{{- end }}\n"
    )


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="flotilla crds", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a checked-in CRD is stale")
    parser.add_argument("--out", type=Path, action="append", help=f"plain CRD files; default: {CRD_FILE}")
    parser.add_argument(
        "--chart-out", type=Path, action="append", help=f"chart templates of the CRD; default: {CHART_CRD_TEMPLATE}"
    )
    args = parser.parse_args(argv)
    if args.out or args.chart_out:
        plain: list[Path] = args.out or []
        chart: list[Path] = args.chart_out or []
    else:
        plain, chart = [CRD_FILE], [CHART_CRD_TEMPLATE]
    targets = [(path, render()) for path in plain] + [(path, render_chart_template()) for path in chart]
    if args.check:
        stale = [path for path, text in targets if not _fresh(path, text)]
        for path in stale:
            print(f"{path} is stale: run `make crds` (python -m flotilla crds)", file=sys.stderr)
        return 1 if stale else 0
    for path, text in targets:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path}")
    return 0


def _fresh(path: Path, text: str) -> bool:
    current = path.read_text() if path.exists() else ""
    if current != text:
        diff = difflib.unified_diff(current.splitlines(), text.splitlines(), str(path), "generated", lineterm="")
        print("\n".join(list(diff)[:60]), file=sys.stderr)
    return current == text
