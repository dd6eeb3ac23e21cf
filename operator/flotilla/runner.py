"""`flotilla run`: start the operator (kopf) with validated configuration and metrics."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

import kopf

from flotilla import telemetry
from flotilla.config import ConfigError, load_config


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="flotilla run", description=__doc__)
    parser.add_argument("--namespace", "-n", action="append", default=[], help="watch only these (repeatable)")
    parser.add_argument("--liveness", default="http://0.0.0.0:8080/healthz", help="kopf liveness endpoint URL")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    try:
        config = load_config()
    except ConfigError as err:
        print(f"flotilla: {err}", file=sys.stderr)
        return 2
    namespaces: list[str] = args.namespace or config.namespaces
    config = config.model_copy(update={"namespaces": namespaces})
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # kopf logs each handler at INFO; keep the operator's log about the models.
    logging.getLogger("kopf").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # lightkube's client logs every request
    telemetry.serve(config.metrics_port)
    if os.environ.get("FLOTILLA_TRACE_HTTP") == "1":
        telemetry.trace_http()
    import flotilla.handlers  # noqa: F401  (registers the handlers with kopf)

    kopf.run(
        standalone=True,  # one replica, no peering objects needed
        namespaces=namespaces,
        clusterwide=not namespaces,
        memo=kopf.Memo(config=config),
        liveness_endpoint=args.liveness or None,
    )
    return 0
