"""Carry out a plan. Skips applies whose content hash the live object already carries, and
the status write when nothing in status changed, so a steady state costs no requests."""

from __future__ import annotations

from flotilla.api.v1alpha1 import API_VERSION, KIND, SmallModel
from flotilla.kube import Kube
from flotilla.reconcile import Observed, Plan
from flotilla.resources.meta import ANNOTATION_APPLIED_HASH


def _changed(obj: dict[str, object], observed: Observed) -> bool:
    meta = obj["metadata"]
    assert isinstance(meta, dict)
    wanted = (meta.get("annotations") or {}).get(ANNOTATION_APPLIED_HASH)
    return wanted is None or observed.hash_of(str(obj["kind"]), str(meta["name"])) != wanted


async def execute(kube: Kube, model: SmallModel, plan: Plan, observed: Observed, body: dict[str, object]) -> str | None:
    """Carry out `plan`; the SmallModel's resourceVersion after our status write (None: no write)."""
    ns = model.metadata.namespace
    version: str | None = None
    for obj in plan.apply:
        if _changed(obj, observed):
            await kube.apply(obj)
    for scale in plan.scale:
        await kube.scale(scale.deployment, ns, scale.replicas)
    for note in plan.annotate:
        await kube.annotate(note.ref.api_version, note.ref.kind, note.ref.name, ns, note.annotations)
    for ref in plan.delete:
        await kube.delete(ref.api_version, ref.kind, ref.name, ns)
    if plan.status.to_wire() != model.status.to_wire():
        version = await kube.apply_status(model.metadata.name, ns, plan.status.to_wire())
    if plan.clear_annotations:  # after status: a command lost to a crash here is honoured again, harmlessly
        await kube.annotate(API_VERSION, KIND, model.metadata.name, ns, dict.fromkeys(plan.clear_annotations))
    for event in plan.events:
        await kube.event(body, event.type, event.reason, event.message)
    return version
