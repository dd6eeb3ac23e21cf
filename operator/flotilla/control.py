"""`flotilla promote|abort|status NAME` (also `kubectl flotilla ...`): rollout commands through the API server.

Commands are annotations on the SmallModel that the operator honours at its next look and
then removes, so they work through RBAC and audit like any other change, need no connection
to the operator, and survive an operator restart. Not spec: GitOps tools see no drift.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from flotilla.api.v1alpha1 import ANNOTATION_ABORT, ANNOTATION_PROMOTE, COND_CANARY, COND_READY, SmallModel


def _client() -> Any:
    from lightkube import Client

    return Client(field_manager="flotilla-cli")


def _resource() -> Any:
    from lightkube.generic_resource import create_namespaced_resource

    from flotilla.api.v1alpha1 import GROUP, KIND, PLURAL, VERSION

    return create_namespaced_resource(GROUP, VERSION, KIND, PLURAL)


def _namespace(given: str | None) -> str:
    if given:
        return given
    from lightkube.config.kubeconfig import KubeConfig

    context = KubeConfig.from_env().get()
    return (context.namespace if context else None) or "default"


def command(verb: str, name: str, namespace: str) -> int:
    annotation = ANNOTATION_PROMOTE if verb == "promote" else ANNOTATION_ABORT
    client = _client()
    model = SmallModel.from_body(client.get(_resource(), name, namespace=namespace).to_dict())
    revisions = model.status.revisions
    if revisions is None or revisions.canary is None:
        print(f"{namespace}/{name}: no canary in progress; nothing to {verb}", file=sys.stderr)
        return 1
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    from lightkube.types import PatchType

    patch = {"metadata": {"annotations": {annotation: stamp}}}
    client.patch(_resource(), name, patch, namespace=namespace, patch_type=PatchType.MERGE)
    print(f"{namespace}/{name}: {verb} of canary {revisions.canary} requested (the operator acts at its next look)")
    return 0


def describe(model: SmallModel) -> list[str]:
    """What `flotilla status` prints: revisions, weight, step, verdict, conditions."""
    status = model.status
    rev = status.revisions
    lines = [f"{model.metadata.namespace}/{model.metadata.name}"]
    if rev is not None:
        lines.append(f"  stable:  {rev.stable or '-'} ({rev.stable_replicas or 0} replicas)")
        if rev.canary:
            steps = model.spec.rollout.canary.steps
            step = rev.step or 0
            lines.append(
                f"  canary:  {rev.canary} ({rev.canary_replicas or 0} replicas) at {rev.canary_weight or 0}% "
                f"(step {step + 1}/{len(steps)}: {steps[min(step, len(steps) - 1)]}%)"
            )
            lines.append(f"  traffic: {rev.traffic or '-'}")
            lines.append(f"  verdict: {rev.verdict or '-'}")
        if rev.last_rollback:
            lines.append(
                f"  last rollback: {rev.last_rollback.revision} at {rev.last_rollback.time}: {rev.last_rollback.reason}"
            )
    if status.scaling and status.scaling.desired_replicas is not None:
        lines.append(f"  scaling: {status.scaling.desired_replicas} desired: {status.scaling.reason or ''}")
    if status.latency and status.latency.p95_ms is not None:
        lines.append(f"  latency: p95 {status.latency.p95_ms} ms at {status.latency.requests_per_second}/s")
    for type_ in (COND_READY, COND_CANARY):
        cond = status.condition(type_)
        if cond is not None:
            lines.append(f"  {type_}={cond.status} ({cond.reason}): {cond.message}")
    return lines


def main(argv: Sequence[str], verb: str) -> int:
    parser = argparse.ArgumentParser(prog=f"flotilla {verb}")
    parser.add_argument("name", help="SmallModel name")
    parser.add_argument("-n", "--namespace", default=None, help="namespace (the kubeconfig's by default)")
    parser.add_argument("-o", "--output", choices=["text", "json"], default="text")
    args = parser.parse_args(list(argv))
    namespace = _namespace(args.namespace)
    if verb in {"promote", "abort"}:
        return command(verb, args.name, namespace)
    body = _client().get(_resource(), args.name, namespace=namespace).to_dict()
    model = SmallModel.from_body(body)
    if args.output == "json":
        print(json.dumps(body.get("status", {}), indent=2))
    else:
        print("\n".join(describe(model)))
    return 0
