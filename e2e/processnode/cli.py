"""`python -m processnode`: run the node agent in the foreground."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from .config import DEFAULT_NAME, AgentConfig, machine_capacity
from .network import DEFAULT_CIDR


def default_state_dir(name: str) -> Path:
    base = os.environ.get("FLOTILLA_CLUSTER_DIR") or str(Path(__file__).resolve().parents[2] / ".flotilla")
    return Path(base) / "processnode" / name


def _pairs(values: list[str], what: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key:
            raise SystemExit(f"{what} must be KEY=VALUE, got {value!r}")
        pairs[key] = val
    return pairs


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m processnode",
        description="A node agent that runs the pods bound to it as local processes (see e2e/processnode/README.md).",
    )
    p.add_argument("--kubeconfig", type=Path, default=os.environ.get("KUBECONFIG"), help="default: $KUBECONFIG")
    p.add_argument("--name", default=DEFAULT_NAME, help=f"Node name (default {DEFAULT_NAME})")
    p.add_argument(
        "--state-dir", type=Path, help="pods, logs, volumes (default $FLOTILLA_CLUSTER_DIR/processnode/NAME)"
    )
    p.add_argument("--gpus", type=int, default=0, help="advertise this many nvidia.com/gpu (no device is exposed)")
    p.add_argument("--gpu-product", default="", help="nvidia.com/gpu.product label when --gpus > 0")
    p.add_argument("--cpu", help="cpu capacity (default: this machine's cores)")
    p.add_argument("--memory", help="memory capacity, e.g. 64Gi (default: this machine's memory)")
    p.add_argument("--pods", help="pod capacity (default 110)")
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE", help="extra Node label")
    p.add_argument("--taint", action="store_true", help="taint the node flotilla.dev/process-node=true:NoSchedule")
    p.add_argument("--pod-cidr", default=DEFAULT_CIDR, help=f"pod addresses (default {DEFAULT_CIDR})")
    p.add_argument("--no-route", action="store_true", help="never add the local route for --pod-cidr")
    p.add_argument("--ipam-dir", type=Path, help="machine-wide address lock directory")
    p.add_argument(
        "--image-alias", action="append", default=[], metavar="IMAGE=KNOWN", help="another name for a known image"
    )
    p.add_argument("--backoff-seconds", type=float, default=10.0, help="crash back-off start (default 10)")
    p.add_argument("--max-backoff-seconds", type=float, default=300.0, help="crash back-off cap (default 300)")
    p.add_argument("--parent-pid", type=int, help="shut down when this process exits")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def config_from_args(args: argparse.Namespace) -> AgentConfig:
    if not args.kubeconfig:
        raise SystemExit("--kubeconfig (or $KUBECONFIG) is required")
    capacity = machine_capacity()
    for key in ("cpu", "memory", "pods"):
        if getattr(args, key):
            capacity[key] = str(getattr(args, key))
    return AgentConfig(
        kubeconfig=Path(args.kubeconfig).resolve(),
        state_dir=(args.state_dir or default_state_dir(args.name)).resolve(),
        name=args.name,
        gpus=args.gpus,
        gpu_product=args.gpu_product,
        capacity=capacity,
        labels=_pairs(args.label, "--label"),
        taint=args.taint,
        pod_cidr=args.pod_cidr,
        add_route=not args.no_route,
        ipam_dir=args.ipam_dir,
        image_aliases=_pairs(args.image_alias, "--image-alias"),
        backoff_seconds=args.backoff_seconds,
        max_backoff_seconds=args.max_backoff_seconds,
        parent_pid=args.parent_pid,
    )


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    config = config_from_args(args)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # httpx2 logs every request at INFO: far too chatty for a heartbeat every 10 s.
    for noisy in ("httpx", "httpx2", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from .agent import AlreadyRunningError, run_agent  # after logging is set up

    try:
        asyncio.run(run_agent(config))
    except AlreadyRunningError as err:
        logging.getLogger("processnode").error("%s", err)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0
