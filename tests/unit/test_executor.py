"""The executor writes a child when our content changed, or when someone else wrote it since our
last write (a hand edit keeps our hash but moves the object's generation)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from flotilla.executor import Applied, execute
from flotilla.kube import Kube
from flotilla.reconcile import Observed, Plan
from flotilla.reconcile.observed import DeploymentView
from flotilla.reconcile.plan import Scale
from flotilla.resources.meta import stamped

from .objects import model


class RecordingKube:
    def __init__(self, generation: int) -> None:
        self.generation = generation
        self.applied: list[str] = []
        self.scaled: list[tuple[str, int]] = []

    async def apply(self, obj: dict[str, Any]) -> int:
        self.applied.append(obj["metadata"]["name"])
        return self.generation

    async def scale(self, name: str, namespace: str, replicas: int) -> int:
        self.scaled.append((name, replicas))
        self.generation += 1
        return self.generation


def deployment(image: str) -> dict[str, Any]:
    meta = {"name": "chat-abc", "namespace": "ns", "labels": {}}
    return stamped({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta, "spec": {"image": image}})


def live(obj: dict[str, Any], generation: int) -> Observed:
    view = DeploymentView.from_object({**obj, "metadata": {**obj["metadata"], "generation": generation}})
    return Observed(deployments=(view,))


def run(kube: RecordingKube, plan: Plan, observed: Observed, applied: Applied) -> list[str]:
    kube.applied.clear()
    m = model().model_copy(update={"status": plan.status})
    asyncio.run(execute(cast(Kube, kube), m, plan, observed, {}, applied))
    return kube.applied


def test_a_hand_edit_is_written_back_and_our_own_writes_are_not_repeated() -> None:
    obj = deployment("triton:1")
    plan = Plan(apply=(obj,))
    kube, applied = RecordingKube(generation=3), {}
    assert run(kube, plan, live(obj, 2), applied) == []  # same hash, nothing remembered: trust it
    assert run(kube, Plan(apply=(deployment("triton:2"),)), live(obj, 2), applied) == ["chat-abc"]
    assert applied == {("ml", "Deployment", "chat-abc"): 3}
    new = deployment("triton:2")
    assert run(kube, Plan(apply=(new,)), live(new, 3), applied) == []  # our own write
    assert run(kube, Plan(apply=(new,)), live(new, 2), applied) == []  # the watch lags behind
    assert run(kube, Plan(apply=(new,)), live(new, 4), applied) == ["chat-abc"]  # someone edited it


def test_our_own_scale_does_not_count_as_a_hand_edit() -> None:
    obj = deployment("triton:1")
    kube, applied = RecordingKube(generation=5), {("ml", "Deployment", "chat-abc"): 5}
    assert run(kube, Plan(apply=(obj,), scale=(Scale("chat-abc", 3),)), live(obj, 5), applied) == []
    assert kube.scaled == [("chat-abc", 3)]
    assert run(kube, Plan(apply=(obj,)), live(obj, 6), applied) == []  # 6: our scale, not an edit
    assert run(kube, Plan(apply=(obj,)), live(obj, 7), applied) == ["chat-abc"]
