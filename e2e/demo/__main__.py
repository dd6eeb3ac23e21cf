"""`make demo`: from `kubectl apply` to answered prompts, on this machine.

A list of steps, each printed as it runs: the local control plane, the process node (runs
pods as local processes), the CRD and the operator, the model's weights in a claim, the
SmallModel applied, the optimizer Job's progress, Ready, prompts through the Service's
endpoints to Triton's generate endpoint, the gateway and one streamed question through it with
the `openai` client, and `kubectl get slm`. The cluster, the node and
the operator keep running afterwards; `make demo-down` stops them.

    python -m demo            # run (again: reuses the cluster and the built artifact)
    python -m demo --down     # stop everything it started
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from . import steps
from .context import Demo


@dataclass(frozen=True)
class Step:
    title: str
    run: Callable[[Demo], None]


STEPS = [
    Step("Local control plane (etcd, kube-apiserver, controller-manager, scheduler, KWOK)", steps.cluster),
    Step("Process node: a node whose pods run as local processes", steps.process_node),
    Step("SmallModel CRD and the operator", steps.operator),
    Step("Model weights into a claim (examples/01-smollm2/model-store.yaml)", steps.model_store),
    Step("kubectl apply -f examples/01-smollm2/smallmodel.yaml", steps.apply_model),
    Step("Optimization Job: ONNX export, quantization recipes, accuracy gate", steps.wait_optimized),
    Step("Triton serving the artifact", steps.wait_ready),
    Step("Ask the model (through the Service's endpoints)", steps.ask),
    Step("The OpenAI-compatible gateway (flotilla gateway)", steps.gateway),
    Step("Ask through the gateway with the openai client, streamed", steps.ask_gateway),
    Step("What Flotilla reports", steps.report),
]


def run() -> int:
    demo = Demo.create()
    started = time.monotonic()
    for number, step in enumerate(STEPS, 1):
        print(f"\n==> [{number}/{len(STEPS)}] {step.title}", flush=True)
        began = time.monotonic()
        try:
            step.run(demo)
        except steps.DemoError as err:
            print(f"\nerror: {err}", file=sys.stderr)
            print(
                "Look around with the commands below, or start over with `make demo-down && make demo`.",
                file=sys.stderr,
            )
            steps.next_steps(demo)
            return 1
        print(f"    done in {time.monotonic() - began:.1f}s", flush=True)
    print(f"\nDemo finished in {time.monotonic() - started:.0f}s.")
    steps.next_steps(demo)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__.splitlines()[0])
    parser.add_argument("--down", action="store_true", help="stop the operator, the process node and the cluster")
    args = parser.parse_args()
    if args.down:
        steps.down(Demo.create())
        return 0
    return run()


if __name__ == "__main__":
    sys.exit(main())
