"""Warm local-cluster figures as one JSON line.

    .venv/bin/python bench/cluster.py [--runs N] [--idle-s S]

Uses its own state directory and port range (FLOTILLA_CLUSTER_PORT_BASE + 20 by default),
so a developer's running cluster is left alone. Binaries must already be cached
(`make cluster-binaries`); this measures starting, not building. Figures:

  up_s / api_ready_s / nodes_ready_s   cold start of the processes (median of runs): until
                                       `up` returns, /readyz answers ok, every simulated node
                                       is Ready
  gateway_api_s                        until the Gateway API CRDs are Established (median)
  reuse_up_s                           `up` again while it runs (the reuse path)
  down_s                               stopping every process and removing the data
  idle_rss_mib                         resident memory per component (and the supervisor)
                                       after --idle-s seconds
  disk_mib                             binaries cache, Go module and build caches, etcd data
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "e2e"))

from localcluster import cluster, supervisor
from localcluster.config import DEFAULT_PORT_BASE, Settings
from localcluster.versions import cache_root, load_versions

MIB = 1024 * 1024


def du_mib(path: Path) -> float | None:
    if not path.exists():
        return None
    out = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=False).stdout
    return round(int(out.split()[0]) / MIB, 1) if out else None


def go_env(name: str) -> Path:
    return Path(subprocess.run(["go", "env", name], capture_output=True, text=True, check=True).stdout.strip())


def idle_rss(settings: Settings) -> dict[str, float]:
    pids = cluster._component_pids(settings)
    pids["supervisor"] = supervisor.running_pid(settings)
    rss = {name: round(psutil.Process(pid).memory_info().rss / MIB, 1) for name, pid in pids.items() if pid}
    rss["total"] = round(sum(rss.values()), 1)
    return rss


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--idle-s", type=float, default=30.0, help="settle time before reading RSS")
    args = parser.parse_args()

    base = int(os.environ.get("FLOTILLA_CLUSTER_PORT_BASE", DEFAULT_PORT_BASE)) + 20
    state = Path(tempfile.mkdtemp(prefix="flotilla-bench-"))
    settings = Settings(state_dir=state, port_base=base)
    ups: list[dict[str, float]] = []
    result: dict[str, object] = {"bench": "cluster", "kubernetes": load_versions().kubernetes, "cpus": os.cpu_count()}
    try:
        for run in range(args.runs):
            ups.append(cluster.up(settings).timings)
            if run < args.runs - 1:
                cluster.down(settings)
        started = time.monotonic()
        cluster.up(settings)
        result["reuse_up_s"] = round(time.monotonic() - started, 2)
        time.sleep(args.idle_s)
        result["idle_rss_mib"] = idle_rss(settings)
        result["disk_mib"] = {
            "binaries": du_mib(cache_root() / "bin"),
            "gomodcache": du_mib(go_env("GOMODCACHE")),
            "gocache": du_mib(go_env("GOCACHE")),
            "cluster_state": du_mib(state),
        }
    finally:
        started = time.monotonic()
        cluster.down(settings)
        result["down_s"] = round(time.monotonic() - started, 2)
        for path in sorted(state.rglob("*"), reverse=True):
            path.unlink() if path.is_file() or path.is_symlink() else path.rmdir()
        state.rmdir()
    for key in ("total_s", "api_ready_s", "nodes_ready_s", "gateway_api_s"):
        if all(key in t for t in ups):
            result[key.replace("total_s", "up_s")] = round(statistics.median(t[key] for t in ups), 2)
    result["runs"] = args.runs
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
