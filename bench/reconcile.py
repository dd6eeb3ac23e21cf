"""How fast the operator turns a burst of SmallModels into optimization Jobs.

Creates N SmallModels (default 1,000) in a fresh namespace of the local control plane, with
the operator running as its own process, and prints one JSON line: seconds until every one
has its Job, objects per second, API requests per object (the operator's, counted in the
process for both kopf's client and ours), and the operator's peak RSS.

    .venv/bin/python bench/reconcile.py [--count 1000] [--concurrency 32]
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
from flotilla.testing import OperatorProcess
from localcluster.cluster import Cluster, ensure_up

REPO = Path(__file__).resolve().parents[1]
SmallModel = create_namespaced_resource(GROUP, VERSION, KIND, PLURAL)


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


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
        now = operator.metric("flotilla_http_requests_total")
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
    operator = OperatorProcess(
        cluster.kubeconfig,
        Path("/tmp") / f"flotilla-bench-{namespace}.log",
        [namespace],
        {
            "FLOTILLA_TRACE_HTTP": "1",
            "FLOTILLA_JOB_NODE_SELECTOR": '{"flotilla.dev/bench": "none"}',
            "FLOTILLA_WORKERS": str(args.workers),
        },
    )
    operator.start()
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
        seconds = done - started
        cpu = psutil.Process(operator.pid).cpu_times()
        return {
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
        }
    finally:
        operator.stop()
        await release(client, namespace, args.concurrency)
        await client.close()
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32, help="parallel creates from the benchmark client")
    parser.add_argument("--workers", type=int, default=OperatorConfig().workers, help="the operator's worker limit")
    parser.add_argument("--timeout", type=float, default=600)
    print(json.dumps(asyncio.run(run(parser.parse_args()))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
