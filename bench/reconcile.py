"""How fast the operator turns a burst of SmallModels into optimization Jobs.

Creates N SmallModels (default 1,000) in a fresh namespace of the local control plane, with
the operator running as its own process, and prints one JSON line: seconds until every one
has its Job, objects per second, API requests per object (the operator's, counted in the
process for both kopf's client and ours), and the operator's peak RSS.

With `--noise N`, N unrelated PVCs, Pods and ConfigMaps are created first in other namespaces
and the operator watches the whole cluster: its RSS idle before and after them (a fresh
process each time, so the ratio is this run's own baseline), what it indexed, and after the
burst a SIGKILL and restart: seconds until a model applied after the restart has a status.

    .venv/bin/python bench/reconcile.py [--count 1000] [--concurrency 32] [--noise 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
from lightkube import AsyncClient, KubeConfig
from lightkube.generic_resource import create_namespaced_resource
from lightkube.resources.batch_v1 import Job
from lightkube.types import PatchType

from flotilla.api.v1alpha1 import GROUP, KIND, LABEL_MANAGED_BY, PLURAL, VERSION
from flotilla.config import OperatorConfig
from flotilla.testing import OperatorProcess, unrelated_objects
from localcluster.cluster import Cluster, ensure_up

REPO = Path(__file__).resolve().parents[1]
SmallModel = create_namespaced_resource(GROUP, VERSION, KIND, PLURAL)


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rss_mb(pid: int) -> float:
    return float(psutil.Process(pid).memory_info().rss / 2**20)


def add_noise(cluster: Cluster, tag: str, count: int) -> list[str]:
    """`count` unrelated objects, a thousand per namespace; the namespaces' names."""
    namespaces = [f"noise-{tag}-{i}" for i in range((count + 999) // 1000)]
    for i, ns in enumerate(namespaces):
        cluster.kubectl("create", "namespace", ns)
        size = min(1000, count - 1000 * i)
        cluster.kubectl("create", "-f", "-", input=json.dumps(unrelated_objects(ns, size)))
        print(f"[bench] {1000 * i + size}/{count} unrelated objects", file=sys.stderr)
    return namespaces


def started_operator(cluster: Cluster, namespace: str, args: argparse.Namespace, tag: str) -> OperatorProcess:
    operator = OperatorProcess(
        cluster.kubeconfig,
        Path("/tmp") / f"flotilla-bench-{namespace}-{tag}.log",
        [] if args.noise else [namespace],  # with noise: the whole cluster, as most installs run
        {
            "FLOTILLA_TRACE_HTTP": "1",
            "FLOTILLA_JOB_NODE_SELECTOR": '{"flotilla.dev/bench": "none"}',
            "FLOTILLA_WORKERS": str(args.workers),
            "FLOTILLA_MAX_CONCURRENT_OPTIMIZATIONS": str(min(args.count, 1000)),  # the setting's maximum
        },
    )
    operator.start()
    return operator


def idle_rss(cluster: Cluster, namespace: str, args: argparse.Namespace, tag: str) -> float:
    """RSS of a fresh operator once it has listed everything and gone quiet."""
    operator = started_operator(cluster, namespace, args, tag)
    try:
        time.sleep(3)
        settle(operator, quiet_s=3)
        assert operator.pid is not None
        return rss_mb(operator.pid)
    finally:
        operator.stop()


async def restart_seconds(
    cluster: Cluster, client: AsyncClient, namespace: str, args: argparse.Namespace, operator: OperatorProcess
) -> tuple[float, OperatorProcess]:
    """SIGKILL the operator, start it again; seconds until a model applied then has a status."""
    assert operator.proc is not None
    operator.proc.kill()
    operator.proc.wait()
    restarted = started_operator(cluster, namespace, args, "restart")
    started = time.monotonic()
    await client.create(
        SmallModel(metadata={"name": "after-restart", "namespace": namespace}, spec={"source": {"uri": "hf://b/r"}})
    )

    async def reconciled() -> None:  # a status written: a Job, or Queued behind the fleet cap
        async for _, model in client.watch(SmallModel, namespace=namespace, fields={"metadata.name": "after-restart"}):
            if (model.get("status") or {}).get("conditions"):
                return

    await asyncio.wait_for(reconciled(), args.timeout)
    return time.monotonic() - started, restarted


def prepare(cluster: Cluster, namespace: str) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", "crd/smallmodels.flotilla.dev", "--timeout=60s")
    cluster.kubectl("create", "namespace", namespace)
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "flotilla-artifacts", "namespace": namespace},
        "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}},
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(claim))


async def create_models(client: AsyncClient, namespace: str, count: int, concurrency: int) -> None:
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        body = SmallModel(
            metadata={"name": f"m-{i:05d}", "namespace": namespace},
            spec={"source": {"uri": f"hf://bench/model-{i}"}},
        )
        async with gate:
            await client.create(body)

    await asyncio.gather(*(one(i) for i in range(count)))


async def wait_for_jobs(client: AsyncClient, namespace: str, count: int) -> float:
    """When the count-th Job appeared. A watch, not a polling LIST: listing 1,000 Jobs twice a
    second cost the API server (the bottleneck here) a visible share of its CPU."""
    seen: set[str] = set()
    async for _, job in client.watch(Job, namespace=namespace, labels={LABEL_MANAGED_BY: "flotilla"}):
        seen.add(job.metadata.name)  # type: ignore[union-attr,arg-type]
        if len(seen) >= count:
            break
    return time.monotonic()


async def release(client: AsyncClient, namespace: str, concurrency: int) -> None:
    """Drop the operator's finalizers: with the operator stopped, nothing else would, and
    the namespace would stay Terminating (and keep the API server busy) forever."""
    gate = asyncio.Semaphore(concurrency)

    async def one(name: str) -> None:
        async with gate:
            await client.patch(
                SmallModel, name, {"metadata": {"finalizers": None}}, namespace=namespace, patch_type=PatchType.MERGE
            )

    names = [m.metadata.name async for m in client.list(SmallModel, namespace=namespace)]  # type: ignore[union-attr]
    await asyncio.gather(*(one(n) for n in names if n))


def settle(operator: OperatorProcess, quiet_s: float = 3.0, timeout: float = 120.0) -> float:
    """Total requests once the operator has gone quiet (statuses and events written)."""
    last, since, deadline = -1.0, time.monotonic(), time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            now = operator.metric("flotilla_http_requests_total")
        except OSError:  # not serving its metrics yet
            time.sleep(0.5)
            continue
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            break
        time.sleep(0.5)
    return last


async def run(args: argparse.Namespace) -> dict[str, Any]:
    cluster = ensure_up()
    namespace = f"bench-{uuid.uuid4().hex[:6]}"
    prepare(cluster, namespace)
    noise: dict[str, Any] = {}
    noise_namespaces: list[str] = []
    if args.noise:
        noise["idle_rss_mb_without"] = round(idle_rss(cluster, namespace, args, "idle-before"), 1)
        noise_namespaces = add_noise(cluster, namespace, args.noise)
        noise["idle_rss_mb_with"] = round(idle_rss(cluster, namespace, args, "idle-after"), 1)
        noise["idle_rss_ratio"] = round(noise["idle_rss_mb_with"] / noise["idle_rss_mb_without"], 3)
    operator = started_operator(cluster, namespace, args, "burst")
    client = AsyncClient(KubeConfig.from_file(cluster.kubeconfig))
    try:
        await asyncio.sleep(3)  # let kopf list and watch before the burst
        baseline = settle(operator, quiet_s=2)
        jobs = asyncio.create_task(wait_for_jobs(client, namespace, args.count))
        await asyncio.sleep(0.5)  # the watch is open before the first create
        started = time.monotonic()
        print(f"[bench] creating {args.count} SmallModels in {namespace}", file=sys.stderr)
        await create_models(client, namespace, args.count, args.concurrency)
        created = time.monotonic()
        print(f"[bench] created in {created - started:.1f}s; waiting for Jobs", file=sys.stderr)
        done = await asyncio.wait_for(jobs, args.timeout)
        total = settle(operator)
        assert operator.pid is not None
        indexed = {i: operator.metric("flotilla_indexed_objects", index=i) for i in ("jobs", "pods", "claims")}
        seconds = done - started
        cpu = psutil.Process(operator.pid).cpu_times()
        result = {
            "benchmark": "reconcile",
            "objects": args.count,
            "seconds_to_all_jobs": round(seconds, 2),
            "objects_per_second": round(args.count / seconds, 1),
            "create_seconds": round(created - started, 2),
            "api_requests_per_object": round((total - baseline) / args.count, 2),
            "operator_writes_per_object": round(operator.metric("flotilla_api_requests_total") / args.count, 2),
            "by_client": {
                c: round(operator.metric("flotilla_http_requests_total", client=c) / args.count, 2)
                for c in ("kopf", "lightkube")
            },
            "operator_peak_rss_mb": round(peak_rss_mb(operator.pid), 1),
            "operator_cpu_seconds": round(cpu.user + cpu.system, 1),
            "workers": args.workers,
            "indexed": indexed,
            "unrelated_objects": args.noise,
            **noise,
        }
        if args.noise:
            seconds, operator = await restart_seconds(cluster, client, namespace, args, operator)
            result["restart_to_reconcile_seconds"] = round(seconds, 2)
            assert operator.pid is not None
            result["restarted_rss_mb"] = round(rss_mb(operator.pid), 1)
            # What resuming 1,000 unchanged models costs the API server (writes are the point).
            settle(operator)
            result["restart_writes_per_object"] = round(operator.metric("flotilla_api_requests_total") / args.count, 2)
        return result
    finally:
        operator.stop()
        await release(client, namespace, args.concurrency)
        await client.close()
        for ns in [namespace, *noise_namespaces]:
            cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32, help="parallel creates from the benchmark client")
    parser.add_argument("--workers", type=int, default=OperatorConfig().workers, help="the operator's worker limit")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--noise", type=int, default=0, help="unrelated objects in other namespaces (cluster-wide)")
    print(json.dumps(asyncio.run(run(parser.parse_args()))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
