"""Where the artifact for the current spec stands, from the Job that builds it."""

from __future__ import annotations

from dataclasses import dataclass

from flotilla.api.v1alpha1 import ArtifactStatus, ArtifactSummary, SmallModel
from flotilla.api.v1alpha1.artifact import Accuracy, Speedup
from flotilla.resources.meta import job_name

from .observed import JobView, Observed, PodProblem, PodView, parse_summary


@dataclass(frozen=True)
class Ready:
    summary: ArtifactSummary
    job: str
    newly_read: bool  # read from the pod this time: persist it on the Job


@dataclass(frozen=True)
class Building:
    job: str
    exists: bool  # False: the planner must create the Job
    problem: PodProblem | None  # why its pod does not run (unschedulable, image pull, OOMKilled, ...)
    queued: str | None = None  # the Job waits for a slot under the fleet-wide cap: why


@dataclass(frozen=True)
class Failed:
    summary: ArtifactSummary
    job: str
    newly_read: bool


ArtifactState = Ready | Building | Failed


def _pod_summary(pods: list[PodView]) -> ArtifactSummary | None:
    for pod in sorted(pods, key=lambda p: p.name, reverse=True):
        summary = parse_summary(pod.terminated_message)
        if summary is not None:
            return summary
    return None


def _pod_failure_detail(pods: list[PodView]) -> str:
    for pod in pods:
        if pod.terminated_reason or pod.exit_code is not None:
            tail = (pod.terminated_message or "").strip()[-500:]
            detail = f"pod {pod.name}: {pod.terminated_reason or 'terminated'} (exit code {pod.exit_code})"
            return f"{detail}: {tail}" if tail else detail
    return ""


def _from_finished_job(job: JobView, key: str, pods: list[PodView]) -> ArtifactState:
    summary = _pod_summary(pods)
    if summary is not None:
        return (Ready if summary.ok and job.complete else Failed)(summary, job.name, True)
    if job.complete:
        message = f"Job {job.name} completed without reporting a result"
    else:
        message = f"Job {job.name} failed ({job.failure_reason}: {job.failure_message})"
        if detail := _pod_failure_detail(pods):
            message += f"; {detail}"
    reason = "OOMKilled" if any(p.oom_killed for p in pods) else "OptimizerError"
    return Failed(ArtifactSummary(ok=False, key=key, reason=reason, message=message), job.name, True)


def _job_problem(pods: list[PodView]) -> PodProblem | None:
    """A live pod's problem first; else a failed attempt's OOM kill, which the Job's retry repeats."""
    live = [p for p in pods if p.phase not in ("Failed", "Succeeded")]
    problem = next((p.problem for p in live if p.problem), None)
    if problem is None:
        problem = next((p.problem for p in pods if p.oom_killed and p.problem), None)
    return problem


def _from_status(model: SmallModel, key: str) -> ArtifactSummary | None:
    """An artifact recorded in status survives its Job being deleted (TTL, a user)."""
    art = model.status.artifact
    if art is None or art.key != key or art.model_name is None or not model.status.is_true("Optimized"):
        return None
    return ArtifactSummary(
        ok=True,
        key=key,
        model_name=art.model_name,
        backend=art.backend,
        precision=art.precision,
        recipe=art.recipe,
        size_bytes=art.size_bytes,
        size_ratio=art.size_ratio,
        accuracy=Accuracy.model_validate(art.accuracy.model_dump()) if art.accuracy else None,
        speedup=Speedup.model_validate(art.speedup.model_dump()) if art.speedup else None,
    )


def artifact_state(model: SmallModel, key: str, observed: Observed) -> ArtifactState:
    name = job_name(model.metadata.name, key)
    job = observed.job(name)
    if job is not None and job.result is not None:
        return (Ready if job.result.ok else Failed)(job.result, name, False)
    if job is not None and (job.complete or job.failed):
        return _from_finished_job(job, key, observed.pods_of_job(name))
    if job is not None:
        return Building(name, exists=True, problem=_job_problem(observed.pods_of_job(name)))
    if (recorded := _from_status(model, key)) is not None:
        return Ready(recorded, name, False)
    return Building(name, exists=False, problem=None)


def _rounded(values: dict[str, float | None], digits: int) -> dict[str, float | None]:
    """Figures as people read them (kubectl prints status numbers verbatim)."""
    return {k: (round(v, digits) if v is not None else None) for k, v in values.items()}


def artifact_status(state: ArtifactState, key: str) -> ArtifactStatus:
    if not isinstance(state, Ready):
        return ArtifactStatus(key=key, job_name=state.job)
    s = state.summary
    return ArtifactStatus.model_validate(
        {
            "key": key,
            "uri": f"{key}/{s.model_name}",
            "model_name": s.model_name,
            "backend": s.backend,
            "precision": s.precision,
            "recipe": s.recipe,
            "size_bytes": s.size_bytes,
            "size_ratio": round(s.size_ratio, 3) if s.size_ratio is not None else None,
            "accuracy": _rounded(s.accuracy.model_dump(), 4) if s.accuracy else None,
            "speedup": _rounded(s.speedup.model_dump(), 2) if s.speedup else None,
            "job_name": state.job,
        }
    )


def describe(summary: ArtifactSummary) -> str:
    """One line for the Optimized condition and its Event."""
    parts = [f"{summary.precision or '?'} ({summary.recipe or 'recipe unknown'})"]
    if summary.size_bytes:
        ratio = f", {summary.size_ratio:.2f}x of fp32" if summary.size_ratio else ""
        parts.append(f"{summary.size_bytes / 1e6:.0f} MB{ratio}")
    if summary.speedup and summary.speedup.prefill:
        parts.append(f"prefill {summary.speedup.prefill:.2f}x")
    if summary.accuracy and summary.accuracy.top1_agreement is not None:
        parts.append(f"top-1 agreement {summary.accuracy.top1_agreement:.3f}")
    return ", ".join(parts)
