"""`python -m localcluster build|up|down|status` (the Makefile's cluster-* targets), and
`supervise`, which `up` starts in the background."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from . import build, cluster, supervisor
from .config import DEFAULT_PORT_BASE, Settings
from .nodes import NodeFileError

NOT_RUNNING = 3  # LSB's "program is not running", so scripts can tell it from an error


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m localcluster", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build the missing binaries into ~/.cache/flotilla/bin")
    b.add_argument(
        "groups",
        nargs="*",
        help="only these groups: kubernetes etcd kwok gateway-api prometheus-operator helm prometheus kstatus "
        "actionlint",
    )
    sub.add_parser("up", help="start the cluster (or reuse a running one) and wait until nodes are Ready")
    sub.add_parser("down", help="stop every cluster process (by pid) and remove its data")
    sub.add_parser("status", help=f"describe the cluster; exit {NOT_RUNNING} when it is not running")
    s = sub.add_parser("supervise", help="restart components that exit (started by `up`; not for direct use)")
    s.add_argument("--state-dir", required=True, type=Path)
    s.add_argument("--port-base", type=int, default=DEFAULT_PORT_BASE)
    s.add_argument("--daemon", action="store_true", help="fork into the background first")
    return parser


def main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "build":
            return build.main(args.groups)
        if args.command == "supervise":
            if args.daemon:
                supervisor.daemonize()
            return supervisor.run(Settings(state_dir=args.state_dir.resolve(), port_base=args.port_base))
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
