"""`python -m localcluster build|up|down|status` (the Makefile's cluster-* targets)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import build, cluster
from .config import Settings
from .nodes import NodeFileError

NOT_RUNNING = 3  # LSB's "program is not running", so scripts can tell it from an error


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m localcluster", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build the missing binaries into ~/.cache/flotilla/bin")
    b.add_argument("groups", nargs="*", help="only these groups: kubernetes etcd kwok helm")
    sub.add_parser("up", help="start the cluster (or reuse a running one) and wait until nodes are Ready")
    sub.add_parser("down", help="stop every cluster process (by pid) and remove its data")
    sub.add_parser("status", help=f"describe the cluster; exit {NOT_RUNNING} when it is not running")
    return parser


def main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "build":
            return build.main(args.groups)
        settings = Settings.from_env()
        if args.command == "up":
            cluster.up(settings)
        elif args.command == "down":
            cluster.down(settings)
        else:
            status = cluster.inspect(settings)
            print("\n".join(cluster.describe(status)))
            return 0 if status.running else NOT_RUNNING
    except (cluster.ClusterError, NodeFileError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; `make cluster-down` removes anything half-started", file=sys.stderr)
        return 130
    return 0
