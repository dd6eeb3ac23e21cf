"""Carry out a plan. Skips applies whose content hash the live object already carries, and
the status write when nothing in status changed, so a steady state costs no requests.

A hand edit of a child (kubectl edit, patch) leaves our hash in place, so the hash alone would
keep it forever: `Applied` remembers each child's change marker after our own write, and a
live marker past it means someone else wrote the object since, so it is applied again."""

from __future__ import annotations

from flotilla.api.v1alpha1 import API_VERSION, KIND, SmallModel
from flotilla.kube import Kube
from flotilla.reconcile import Observed, Plan
from flotilla.resources.meta import ANNOTATION_APPLIED_HASH

# (namespace, kind, name) -> the child's marker after our last write. In memory: after a
# restart nothing is remembered and the hash decides until the next write of that child.
Applied = dict[tuple[str, str, str], int]


def _changed(obj: dict[str, object], observed: Observed, applied: Applied, ns: str) -> bool:
    meta = obj["metadata"]
    assert isinstance(meta, dict)
    kind, name = str(obj["kind"]), str(meta["name"])
    wanted = (meta.get("annotations") or {}).get(ANNOTATION_APPLIED_HASH)
    if wanted is None or observed.hash_of(kind, name) != wanted:
        return True
    ours, live = applied.get((ns, kind, name)), observed.marker_of(kind, name)
    return ours is not None and live is not None and live > ours


async def execute(
    kube: Kube,
    model: SmallModel,
    plan: Plan,
    observed: Observed,
    body: dict[str, object],
    applied: Applied | None = None,
) -> str | None:
    """Carry out `plan`; the SmallModel's resourceVersion after our status write (None: no write)."""
    ns = model.metadata.namespace
    version: str | None = None
    applied = {} if applied is None else applied
    for obj in plan.apply:
        if _changed(obj, observed, applied, ns):
            written = await kube.apply(obj)
            key = (ns, str(obj["kind"]), str(obj["metadata"]["name"]))
            if written is not None:
                applied[key] = written
    for scale in plan.scale:
        generation = await kube.scale(scale.deployment, ns, scale.replicas)
        if (key := (ns, "Deployment", scale.deployment)) in applied and generation is not None:
            applied[key] = generation  # our own replicas change moved it
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
