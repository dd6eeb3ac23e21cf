"""`flotilla` command line: a thin dispatcher; each subcommand lives with its subsystem.

Subcommands import their subsystem lazily so `flotilla crds` does not load torch and the
optimizer image does not need kopf.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

Command = Callable[[Sequence[str]], int]


def _crds(argv: Sequence[str]) -> int:
    from flotilla.crdgen import main

    return main(argv)


def _optimize(argv: Sequence[str]) -> int:
    from flotilla.optimize.cli import main

    return main(argv)


def _run(argv: Sequence[str]) -> int:
    from flotilla.runner import main

    return main(argv)


def _gateway(argv: Sequence[str]) -> int:
    from flotilla.gateway.server import main

    return main(argv)


def _rollout(verb: str) -> Command:
    def run(argv: Sequence[str]) -> int:
        from flotilla.control import main

        return main(argv, verb)

    return run


COMMANDS: dict[str, tuple[Command, str]] = {
    "crds": (_crds, "write (or --check) the CRD YAML generated from the api models"),
    "optimize": (_optimize, "run the optimizer (the optimization Job's entry point)"),
    "run": (_run, "run the operator"),
    "gateway": (_gateway, "run the OpenAI-compatible gateway in front of the served models"),
    "promote": (_rollout("promote"), "promote a SmallModel's canary now"),
    "abort": (_rollout("abort"), "roll a SmallModel's canary back now"),
    "status": (_rollout("status"), "show a SmallModel's revisions, canary, verdict and scaling"),
}


def kubectl_plugin() -> int:
    """`kubectl flotilla ...` (kubectl runs `kubectl-flotilla` found on PATH)."""
    return main()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help"} or args[0] not in COMMANDS:
        parser = argparse.ArgumentParser(prog="flotilla", description="Flotilla: SLM fleets on Kubernetes.")
        parser.add_argument(
            "command", choices=sorted(COMMANDS), help="; ".join(f"{k}: {v[1]}" for k, v in COMMANDS.items())
        )
        parser.parse_args(args[:1])
        return 2
    command, _ = COMMANDS[args[0]]
    return command(args[1:])
