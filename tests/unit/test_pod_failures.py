"""Pod failures surface within one reconcile as condition reasons with the kubelet's words:
image pulls, crash loops (with the last termination message), OOM kills, missing Secrets."""

from __future__ import annotations

from typing import Any

import pytest

from flotilla.reconcile import Plan, plan
from flotilla.reconcile.observed import PodView
from flotilla.resources.meta import job_name

from .objects import (
    context,
    deployment_object,
    job_object,
    job_pod_object,
    key_of,
    model,
    observed,
    revision_of,
    serving_pod_object,
    summary,
)

PULL = 'Back-off pulling image "registry.example/triton:typo"'
CONFIG = 'secret "hf-token" not found'


def cond(p: Plan, type_: str) -> tuple[str, str, str]:
    c = p.status.condition(type_)
    assert c is not None, type_
    return c.status, c.reason, c.message


def waiting(reason: str, message: str, *, restarts: int = 0, last: dict[str, Any] | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {"name": "c", "ready": False, "restartCount": restarts, "state": {"waiting": {}}}
    status["state"]["waiting"] = {"reason": reason, "message": message}
    if last:
        status["lastState"] = {"terminated": last}
    return status


def with_containers(pod: dict[str, Any], *statuses: dict[str, Any], phase: str = "Pending") -> dict[str, Any]:
    pod["status"] = {**pod["status"], "phase": phase, "containerStatuses": list(statuses)}
    pod["status"]["conditions"] = [{"type": "Ready", "status": "False"}]
    return pod


def live_job_pod(m: Any, *statuses: dict[str, Any], name: str = "-b") -> dict[str, Any]:
    pod = job_pod_object(m, message=None)
    pod["metadata"]["name"] = job_name("chat", key_of(m)) + name
    return with_containers(pod, *statuses)


CRASH = {"exitCode": 1, "reason": "Error", "message": "tritonserver: failed to load 'chat': no such file"}
OOM = {"exitCode": 137, "reason": "OOMKilled"}


@pytest.mark.parametrize(
    ("container", "reason", "words"),
    [
        (waiting("ImagePullBackOff", PULL), "ImagePullBackOff", [PULL]),
        (waiting("ErrImagePull", "rpc error: not found"), "ErrImagePull", ["not found"]),
        (waiting("CreateContainerConfigError", CONFIG), "CreateContainerConfigError", [CONFIG]),
        (
            waiting("CrashLoopBackOff", "back-off 40s restarting failed container", restarts=3, last=CRASH),
            "CrashLoopBackOff",
            ["back-off 40s", "exit code 1 (Error, 3 restarts)", "failed to load 'chat'"],
        ),
        (waiting("CrashLoopBackOff", "back-off 10s", restarts=1, last=OOM), "OOMKilled", ["exit code 137", "memory"]),
    ],
)
def test_a_serving_pod_that_cannot_run_names_the_kubelets_reason(
    container: dict[str, Any], reason: str, words: list[str]
) -> None:
    m = model()
    key, rev = key_of(m), revision_of(m)
    pod = with_containers(serving_pod_object(m, rev, "chat-1", None, ready=False), container)
    obs = observed(job_object(m, complete=True, result=summary(key)), deployment_object(m, rev, key, ready=0), pod)
    p = plan(m, obs, context())
    status, got, message = cond(p, "Ready")
    assert (status, got) == ("False", reason)
    assert "chat-1" in message and all(w in message for w in words), message
    assert [(e.type, e.reason) for e in p.events if e.reason == reason] == [("Warning", reason)]
    assert cond(p, "Reconciling")[:2] == ("True", reason)  # the kubelet keeps retrying: not stalled


def test_a_healthy_pod_is_no_problem_and_a_terminating_one_is_not_reported() -> None:
    m = model()
    key, rev = key_of(m), revision_of(m)
    assert PodView.from_object(serving_pod_object(m, rev, "ok", "10.0.0.1")).problem is None
    dying = serving_pod_object(m, rev, "old", None, terminating=True)
    dying = with_containers(dying, waiting("ImagePullBackOff", PULL))
    obs = observed(job_object(m, complete=True, result=summary(key)), deployment_object(m, rev, key, ready=0), dying)
    assert cond(plan(m, obs, context()), "Ready")[1] == "Deploying"


def test_a_canary_that_cannot_pull_says_so_and_the_stable_revision_keeps_serving() -> None:
    stable = model()
    changed = model(serving={"maxBatchSize": 16})
    old_rev, new_rev, key = revision_of(stable), revision_of(changed), key_of(changed)
    status = {"revisions": {"stable": old_rev}}
    m = model(status=status, serving={"maxBatchSize": 16})
    pod = serving_pod_object(m, new_rev, "chat-new", None, ready=False)
    pod = with_containers(pod, waiting("ImagePullBackOff", PULL))
    obs = observed(
        job_object(m, complete=True, result=summary(key)),
        deployment_object(m, old_rev, key, ready=1),
        deployment_object(m, new_rev, key, ready=0),
        pod,
    )
    _, reason, message = cond(plan(m, obs, context()), "Ready")
    assert reason == "ImagePullBackOff"
    assert PULL in message and f"revision {old_rev} keeps serving" in message


def test_an_optimizer_pod_that_cannot_pull_its_image_is_reported_at_once() -> None:
    m = model()
    p = plan(m, observed(job_object(m), live_job_pod(m, waiting("ImagePullBackOff", PULL))), context())
    status, reason, message = cond(p, "Optimized")
    assert (status, reason) == ("False", "ImagePullBackOff")
    assert PULL in message and job_name("chat", key_of(m)) in message
    assert any(e.type == "Warning" and e.reason == "ImagePullBackOff" for e in p.events)


def test_an_oom_killed_attempt_is_reported_while_the_job_retries_and_when_it_gives_up() -> None:
    m = model()
    killed = job_pod_object(m, message=None, exit_code=137, reason="OOMKilled")
    retry = live_job_pod(m, {"name": "optimizer", "state": {"running": {}}})
    retry["status"]["phase"] = "Running"
    _, reason, message = cond(plan(m, observed(job_object(m), killed, retry), context()), "Optimized")
    assert reason == "OOMKilled" and "memory limit" in message
    failed = job_object(m, failed=True)
    _, reason, message = cond(plan(m, observed(failed, killed), context()), "Optimized")
    assert reason == "OOMKilled" and "OOMKilled (exit code 137)" in message


def test_a_running_job_pod_is_still_just_optimizing() -> None:
    m = model()
    running = live_job_pod(m, {"name": "optimizer", "state": {"running": {}}})
    running["status"]["phase"] = "Running"
    assert cond(plan(m, observed(job_object(m), running), context()), "Optimized")[1] == "Optimizing"


def test_an_init_container_that_reports_its_reason_gives_the_condition_that_reason() -> None:
    """The S3 download (init container) ends with an ArtifactSummary termination message: its
    reason (e.g. a checksum mismatch) names the problem better than the kubelet's CrashLoopBackOff."""
    m = model()
    key, rev = key_of(m), revision_of(m)
    said = summary(key).model_copy(update={"ok": False, "reason": "OutOfDisk", "message": "no space left on /artifact"})
    last = {"exitCode": 1, "reason": "Error", "message": said.to_termination_message()}
    pod = serving_pod_object(m, rev, "chat-1", None, ready=False)
    pod = with_containers(pod, waiting("PodInitializing", ""))
    pod["status"]["initContainerStatuses"] = [waiting("CrashLoopBackOff", "back-off 20s", restarts=2, last=last)]
    obs = observed(job_object(m, complete=True, result=summary(key)), deployment_object(m, rev, key, ready=0), pod)
    status, reason, message = cond(plan(m, obs, context()), "Ready")
    assert (status, reason) == ("False", "OutOfDisk")
    assert "no space left on /artifact" in message and "back-off 20s" in message
    plain = {"exitCode": 1, "reason": "Error", "message": "Traceback: not a summary"}
    pod["status"]["initContainerStatuses"] = [waiting("CrashLoopBackOff", "back-off 20s", restarts=2, last=plain)]
    obs = observed(job_object(m, complete=True, result=summary(key)), deployment_object(m, rev, key, ready=0), pod)
    assert cond(plan(m, obs, context()), "Ready")[1] == "CrashLoopBackOff"


def test_a_replica_that_cannot_download_from_s3_is_named_while_another_serves() -> None:
    from dataclasses import replace

    from flotilla.config import OperatorConfig

    ctx = replace(context(), config=OperatorConfig(artifact_store="s3", s3_bucket="models"))
    m = model(replicas=2)
    key, rev = key_of(m), revision_of(m)
    said = summary(key).model_copy(
        update={"ok": False, "reason": "ArtifactChecksumMismatch", "message": "onnx/model.onnx: sha256 differs"}
    )
    last = {"exitCode": 1, "reason": "Error", "message": said.to_termination_message()}
    bad = with_containers(serving_pod_object(m, rev, "chat-2", None, ready=False), waiting("PodInitializing", ""))
    bad["status"]["initContainerStatuses"] = [waiting("CrashLoopBackOff", "back-off 40s", restarts=3, last=last)]
    good = serving_pod_object(m, rev, "chat-1", "10.0.0.1")
    job = job_object(m, complete=True, result=summary(key))
    obs = observed(job, deployment_object(m, rev, key, replicas=2, ready=1), good, bad)
    status, reason, message = cond(plan(m, obs, ctx), "Ready")
    assert (status, reason) == ("True", "ArtifactChecksumMismatch")  # the stable revision keeps serving
    assert "1/2 ready" in message and "sha256 differs" in message
