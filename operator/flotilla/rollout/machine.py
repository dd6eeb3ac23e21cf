"""The canary state machine: (canary spec, last rollout state, what is ready, one metrics window,
now) -> next rollout state, replica targets and traffic weights.

Pure: no I/O and no clock, so a restarted operator that reads the same status and observes the
same world decides the same thing. Every piece of state lives in `RevisionsStatus`.

A rollout walks `steps` (for example 10, 50, 100 percent). At a step below 100 the canary runs
the fewest replicas that carry its weight and the stable revision shrinks only as canary pods
become ready; the step's clock starts once the canary's pods for the step are ready. The judge
looks at every metrics window; a step passes after stepSeconds and minRequests with a passing
verdict, fails at once on a failing one, and is extended while inconclusive (then follows
onInconclusive). Reaching 100 scales the canary to the full count; once it is ready it becomes
stable and the old revision is removed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

from flotilla.api.v1alpha1 import CanarySpec, RevisionsStatus
from flotilla.api.v1alpha1.status import PromotionStatus, RollbackStatus
from flotilla.metrics import Window

from .judge import Evidence, JudgeSettings, Verdict, judge, observe

Command = Literal["promote", "abort"]
Outcome = Literal["idle", "progressing", "promoted", "rolled_back", "cancelled"]
NoteType = Literal["Normal", "Warning"]


@dataclass(frozen=True)
class Note:
    """Something worth an Event."""

    type: NoteType
    reason: str
    message: str


@dataclass(frozen=True)
class Observation:
    """What the planner observed for this rollout."""

    target: str  # the serving revision the spec asks for
    target_key: str
    total: int  # replicas the model should have (spec.replicas or the autoscaler's)
    stable_ready: int
    canary_ready: int
    window: Window | None  # one metrics look, or None between looks
    now: float  # seconds since the epoch
    now_text: str  # the same instant, RFC 3339
    command: Command | None = None  # flotilla promote / abort
    http_route: bool = False  # weights are set on an HTTPRoute (Gateway API present)


@dataclass(frozen=True)
class Decision:
    revisions: RevisionsStatus
    stable_replicas: int
    canary_replicas: int  # 0: the canary has no Deployment (none, promoted, or rolled back)
    canary_weight: int  # HTTPRoute weight (percent) for the canary
    outcome: Outcome
    condition_status: Literal["True", "False"]
    condition_reason: str
    condition_message: str
    notes: tuple[Note, ...] = ()


def _with(state: RevisionsStatus, **changes: object) -> RevisionsStatus:
    return state.model_copy(update=changes)


def parse_time(text: str | None) -> float | None:
    """RFC 3339 (as the operator writes it, UTC with Z) -> epoch seconds."""
    if not text:
        return None
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def settings_of(spec: CanarySpec) -> JudgeSettings:
    return JudgeSettings(
        max_error_rate=spec.max_error_rate,
        max_latency_regression=spec.max_latency_regression,
        min_requests=spec.min_requests,
    )


def canary_replicas_for(weight: int, total: int) -> int:
    """Fewest replicas that carry `weight` percent of `total` (one at small weights)."""
    if weight >= 100:
        return max(total, 1)
    return max(1, min(total, math.ceil(weight * total / 100)))


def stable_replicas_for(weight: int, total: int, canary_ready: int) -> int:
    """Stable shrinks only as canary pods become ready, never below its share."""
    share = 0 if weight >= 100 else math.ceil((100 - weight) * total / 100)
    return max(share, total - canary_ready, 0)


def _steady(prev: RevisionsStatus, total: int, message: str, reason: str = "NoCanary") -> Decision:
    idle = _with(
        prev,
        canary=None,
        canary_artifact_key=None,
        canary_weight=None,
        step=None,
        step_started_time=None,
        step_extensions=None,
        step_requests=None,
        started_time=None,
        traffic=None,
        evidence=None,
        verdict=None,
        stable_replicas=total,
        canary_replicas=None,
    )
    return Decision(idle, total, 0, 0, "idle", "False", reason, message)


def idle(prev: RevisionsStatus, total: int) -> Decision:
    """No rollout in progress: the stable revision serves everything. The condition keeps the
    outcome of the last rollout (RolledBack or Promoted, whichever came last) until the next one
    starts, so a reader polling the resource sees it, not only one who watched the transition."""
    rolled, promoted = prev.last_rollback, prev.last_promotion
    if promoted is not None and promoted.revision != prev.stable:
        promoted = None  # stable changed since (a first rollout after a delete, a hand edit)
    if rolled is not None and (promoted is None or rolled.time >= promoted.time):
        return _steady(prev, total, f"revision {rolled.revision} was rolled back: {rolled.reason}", "RolledBack")
    if promoted is not None:
        return _steady(prev, total, f"revision {promoted.revision} promoted {promoted.reason}", "Promoted")
    return _steady(prev, total, f"revision {prev.stable} serves all traffic")


def _start(prev: RevisionsStatus, obs: Observation) -> RevisionsStatus:
    return _with(
        prev,
        canary=obs.target,
        canary_artifact_key=obs.target_key,
        canary_weight=0,
        step=0,
        step_started_time=None,
        step_extensions=0,
        step_requests=0,
        started_time=obs.now_text,
        evidence={},
        verdict=None,
    )


def _rollback(prev: RevisionsStatus, obs: Observation, why: str, reason: str = "RolledBack") -> Decision:
    revision = prev.canary or obs.target
    rolled = _with(
        prev,
        last_rollback=RollbackStatus(
            revision=revision, reason=why, time=obs.now_text, artifact_key=prev.canary_artifact_key or obs.target_key
        ),
    )
    done = _steady(rolled, obs.total, f"revision {revision} rolled back: {why}", "RolledBack")
    note = Note("Warning", reason, f"canary {revision} rolled back to {prev.stable}: {why}")
    return replace(done, outcome="rolled_back", notes=(note,))


def _promote(prev: RevisionsStatus, obs: Observation, how: str) -> Decision:
    record = PromotionStatus(
        revision=prev.canary or obs.target,
        replaced=prev.stable,
        reason=how,
        time=obs.now_text,
        replaced_artifact_key=prev.stable_artifact_key,
    )
    promoted = _with(prev, stable=prev.canary, stable_artifact_key=prev.canary_artifact_key, last_promotion=record)
    done = _steady(promoted, obs.total, f"revision {prev.canary} promoted {how}", "Promoted")
    note = Note("Normal", "Promoted", f"canary {prev.canary} replaced {prev.stable} {how}")
    return replace(done, outcome="promoted", notes=(note,))


def _traffic(prev: RevisionsStatus, obs: Observation, weight: int) -> tuple[int, str]:
    """(effective canary weight, how traffic is split, in words)."""
    ready = obs.canary_ready + obs.stable_ready
    share = round(100 * obs.canary_ready / ready) if ready else 0
    by_pods = f"Service: {obs.canary_ready} of {ready} ready replicas ({share}%) for a {weight}% step"
    if obs.http_route:
        effective = weight if obs.canary_ready > 0 else 0
        return effective, f"HTTPRoute: {effective}% exact; {by_pods}"
    return share, f"ReadyReplicas: {by_pods}"


def _advance(state: RevisionsStatus) -> RevisionsStatus:
    return _with(state, step=(state.step or 0) + 1, step_started_time=None, step_extensions=0, step_requests=0)


def _inconclusive(
    spec: CanarySpec, state: RevisionsStatus, verdict: Verdict, obs: Observation
) -> tuple[RevisionsStatus, Decision | None, Note | None, str]:
    """Extend the step, or apply onInconclusive once the extensions are spent."""
    extensions = state.step_extensions or 0
    seen = state.step_requests or 0
    why = f"{verdict.message} ({seen} canary requests this step, {spec.min_requests} needed)"
    if extensions < spec.max_step_extensions:
        note = Note(
            "Normal", "StepExtended", f"step {state.step} extended ({extensions + 1}/{spec.max_step_extensions}): {why}"
        )
        return _with(state, step_extensions=extensions + 1), None, note, verdict.reason
    if spec.on_inconclusive == "Rollback":
        return state, _rollback(state, obs, f"inconclusive after {extensions} extensions: {why}"), None, verdict.reason
    if spec.on_inconclusive == "Promote":
        note = Note("Warning", "PromotedInconclusive", f"step {state.step} promoted by onInconclusive: {why}")
        return _advance(state), None, note, "Progressing"
    return state, None, None, verdict.reason  # Hold: stay, keep judging, say why


def _judge(spec: CanarySpec, state: RevisionsStatus, obs: Observation) -> tuple[RevisionsStatus, Verdict]:
    settings = settings_of(spec)
    evidence = Evidence.from_dict(state.evidence or {})
    if obs.window is not None and obs.canary_ready > 0:
        canary = obs.window.of(state.canary)
        evidence = observe(evidence, canary, obs.window.of(state.stable), settings)
        seen = (state.step_requests or 0) + (canary.requests if canary else 0)
        state = _with(state, step_requests=seen)
    verdict = judge(evidence, settings)
    return _with(state, evidence=dict(evidence.to_dict()), verdict=verdict.message), verdict


def _progress(spec: CanarySpec, state: RevisionsStatus, obs: Observation) -> Decision:
    """One look at a rollout in progress."""
    state, verdict = _judge(spec, state, obs)
    if verdict.decision == "fail":
        return _rollback(state, obs, verdict.message)
    weight = spec.steps[min(state.step or 0, len(spec.steps) - 1)]
    if weight < 100:
        return _step(spec, state, verdict, obs)
    target = canary_replicas_for(weight, obs.total)
    if obs.canary_ready >= target:
        return _promote(state, obs, "after every step passed" if len(spec.steps) > 1 else "once ready")
    message = f"scaling {state.canary} to {target} replicas ({obs.canary_ready} ready)"
    return _progress_sized(spec, state, obs, [], "Promoting", message)


def _step(spec: CanarySpec, state: RevisionsStatus, verdict: Verdict, obs: Observation) -> Decision:
    """A step below 100%: start its clock once its pods are ready; pass, extend or hold when due."""
    notes: list[Note] = []
    reason, step = "Progressing", state.step or 0
    weight, target = spec.steps[step], canary_replicas_for(spec.steps[step], obs.total)
    started = parse_time(state.step_started_time)
    if started is None and obs.canary_ready >= target:
        state, started = _with(state, step_started_time=obs.now_text), obs.now
    if started is None:
        message = f"waiting for {target} canary replicas ({obs.canary_ready} ready)"
        return _progress_sized(spec, state, obs, notes, reason, message)
    elapsed = obs.now - started
    due = spec.step_seconds * (1 + (state.step_extensions or 0))
    if elapsed >= due:
        if verdict.decision == "pass" and (state.step_requests or 0) >= spec.min_requests:
            notes.append(Note("Normal", "StepPassed", f"step {step} ({weight}%) passed: {verdict.message}"))
            state = _advance(state)
        else:
            state, done, note, reason = _inconclusive(spec, state, verdict, obs)
            if done is not None:
                return done
            notes += [note] if note else []
    if state.step != step:  # moved on: size for the next step at once
        return _progress_sized(spec, state, obs, notes, "Progressing", f"step {step} passed")
    seen = f"{state.step_requests or 0} canary requests this step, {spec.min_requests} needed"
    if (state.step_extensions or 0) >= spec.max_step_extensions and elapsed >= due:
        message = (
            f"held at step {step + 1}/{len(spec.steps)} ({weight}%) after {spec.max_step_extensions} extensions "
            f"(onInconclusive: Hold): {seen}; {verdict.message}"
        )
    else:
        message = f"step {step + 1}/{len(spec.steps)} at {weight}% for {elapsed:.0f}/{due}s, {seen}; {verdict.message}"
    return _progress_sized(spec, state, obs, notes, reason, message)


def _progress_sized(
    spec: CanarySpec, state: RevisionsStatus, obs: Observation, notes: list[Note], reason: str, message: str
) -> Decision:
    step = min(state.step or 0, len(spec.steps) - 1)
    weight = spec.steps[step]
    stable = stable_replicas_for(weight, obs.total, obs.canary_ready)
    # One extra pod at most (like maxSurge 1): the canary grows as stable pods go.
    canary = max(1, min(canary_replicas_for(weight, obs.total), obs.total + 1 - stable))
    effective, traffic = _traffic(state, obs, weight)
    state = _with(state, canary_weight=effective, traffic=traffic, stable_replicas=stable, canary_replicas=canary)
    route_weight = effective if obs.http_route else 0
    return Decision(state, stable, canary, route_weight, "progressing", "True", reason, message, tuple(notes))


def decide(spec: CanarySpec, prev: RevisionsStatus, obs: Observation) -> Decision:
    """The rollout's next state. `prev.stable` must be set (a first rollout has no canary)."""
    if obs.target == prev.stable:
        if prev.canary is not None:  # spec put back to the stable revision: the rollout ends now
            done = _steady(prev, obs.total, f"spec is back at stable {prev.stable}; canary {prev.canary} removed")
            note = Note("Normal", "CanaryCancelled", done.condition_message)
            return replace(done, outcome="cancelled", condition_reason="Cancelled", notes=(note,))
        return idle(prev, obs.total)
    if prev.last_rollback is not None and prev.last_rollback.revision == obs.target and prev.canary != obs.target:
        return idle(prev, obs.total)  # not retried until the spec changes again
    notes: tuple[Note, ...] = ()
    state = prev
    if prev.canary != obs.target:
        if prev.canary is not None:
            notes = (Note("Normal", "CanaryReplaced", f"spec changed: canary {prev.canary} replaced by {obs.target}"),)
        state = _start(prev, obs)
        notes += (Note("Normal", "CanaryStarted", f"canary {obs.target} starts at {spec.steps[0]}% of traffic"),)
    if obs.command == "abort":
        return _rollback(state, obs, "aborted by flotilla abort", "Aborted")
    if obs.command == "promote":
        state = _with(state, step=len(spec.steps) - 1, step_started_time=None)
        notes += (Note("Normal", "ManualPromote", f"canary {state.canary} promoted by flotilla promote"),)
    decision = _progress(spec, state, obs)
    return replace(decision, notes=notes + decision.notes)
