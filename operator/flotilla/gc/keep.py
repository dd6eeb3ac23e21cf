"""The keep set: every artifact key a SmallModel of the namespace references (pure).

A model references
- the artifact of its current spec (`artifact_key(source, optimize)`: an optimization may be
  running for it, or a model just applied may reuse an existing artifact);
- the artifact its status records (status.artifact.key);
- the stable and the canary revision's artifacts (status.revisions);
- the artifact of the last rolled-back canary (status.revisions.lastRollback.artifactKey) and
  of the stable revision the last promotion replaced (lastPromotion.replacedArtifactKey):
  what a rollback by hand (re-applying the previous spec) reuses without optimizing again.

A body that cannot be parsed makes the whole set unknown (`UnknownModelError`): a sweep without a
complete keep set could delete an artifact in use, so the pass is skipped instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from flotilla.api.v1alpha1 import SmallModel, artifact_key


class UnknownModelError(ValueError):
    """A SmallModel whose references cannot be read: no sweep may run on a partial keep set."""


def model_keys(model: SmallModel) -> set[str]:
    keys = {artifact_key(model.spec.source, model.spec.optimize)}
    status = model.status
    if status.artifact is not None:
        keys.add(status.artifact.key)
    rev = status.revisions
    if rev is not None:
        keys.update(k for k in (rev.stable_artifact_key, rev.canary_artifact_key) if k)
        if rev.last_rollback is not None and rev.last_rollback.artifact_key:
            keys.add(rev.last_rollback.artifact_key)
        if rev.last_promotion is not None and rev.last_promotion.replaced_artifact_key:
            keys.add(rev.last_promotion.replaced_artifact_key)
    return keys


def keep_set(bodies: Iterable[Mapping[str, Any]]) -> frozenset[str]:
    """The union of every model's references; UnknownModelError if one cannot be parsed."""
    keys: set[str] = set()
    for body in bodies:
        try:
            model = SmallModel.from_body(body)
        except ValueError as err:
            name = (body.get("metadata") or {}).get("name", "?")
            raise UnknownModelError(f"SmallModel {name} cannot be read, so its artifacts are unknown: {err}") from err
        keys |= model_keys(model)
    return frozenset(keys)
