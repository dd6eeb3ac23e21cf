"""`flotilla run`: start the operator (kopf) with validated configuration and metrics."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import kopf

from flotilla import telemetry
from flotilla.config import ConfigError, OperatorConfig, load_config
from flotilla.kube.lease import LeaderElector, LeaseSettings


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

    elector = _lead(config, namespaces, args.liveness) if config.leader_election else None
    try:
        kopf.run(
            standalone=True,  # no kopf peering: leader election (if on) decided who runs
            namespaces=namespaces,
            clusterwide=not namespaces,
            memo=kopf.Memo(config=config),
            liveness_endpoint=args.liveness or None,
        )
    finally:
        if elector is not None:
            elector.release()
    return 0


def _lead(config: OperatorConfig, namespaces: list[str], liveness: str) -> LeaderElector:
    """Block as a standby until this replica holds the Lease; answer liveness meanwhile."""
    namespace = config.leader_election_namespace or os.environ.get("POD_NAMESPACE") or (namespaces or ["default"])[0]
    identity = f"{os.environ.get('POD_NAME') or socket.gethostname()}_{uuid.uuid4().hex[:8]}"
    elector = LeaderElector(
        LeaseSettings(
            namespace=namespace,
            name=config.leader_election_lease,
            identity=identity,
            duration_seconds=config.lease_duration_seconds,
            renew_deadline_seconds=config.lease_renew_deadline_seconds,
            retry_seconds=config.lease_retry_seconds,
        )
    )
    with standby_health(liveness):
        elector.acquire()

    def lost() -> None:
        # kopf cannot stop its handlers and give the work back cleanly: exit at once, as
        # controller-runtime does; the restarted process is a standby.
        logging.shutdown()
        os._exit(1)

    elector.keep(lost)
    return elector


@contextmanager
def standby_health(liveness: str) -> Iterator[None]:
    """While waiting for the Lease, the liveness URL answers 200 (kopf's endpoint starts only
    with kopf), so a standby is not restarted by its probe."""
    if not liveness:
        yield
        return
    url = urlsplit(liveness)

    class Health(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"standby\n")

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer((url.hostname or "0.0.0.0", url.port or 80), Health)
    thread = threading.Thread(target=server.serve_forever, name="standby-health", daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
