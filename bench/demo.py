"""Time `make demo` and the memory of the whole stack while it runs.

Runs `python -m demo` (cold when --cold: the demo's artifacts are removed first, so the
optimizer runs) and samples, twice a second, the resident memory of every process of the
stack: control plane, KWOK, process node, operator, the optimizer Job, Triton. Prints one
JSON line: seconds in total, `kubectl apply` -> first answer, peak RSS of the stack and the
peak of each part.

    PYTHONPATH=e2e .venv/bin/python bench/demo.py [--cold]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
PARTS = [
    ("optimizer", re.compile(r"flotilla optimize")),
    ("triton", re.compile(r"tritonserver|triton_python_backend_stub")),
    ("operator", re.compile(r"flotilla run")),
    ("process-node", re.compile(r"-m processnode")),
    ("control-plane", re.compile(r"kube-apiserver|kube-controller-manager|kube-scheduler|/etcd |kwok")),
]


def part_of(cmdline: str) -> str | None:
    return next((name for name, pattern in PARTS if pattern.search(cmdline)), None)


class Sampler(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.peak_total = 0
        self.peaks: dict[str, int] = defaultdict(int)

    def run(self) -> None:
        while not self.stop.wait(0.5):
            by_part: dict[str, int] = defaultdict(int)
            for proc in psutil.process_iter(["cmdline", "memory_info"]):
                part = part_of(" ".join(proc.info["cmdline"] or []))
                if part and proc.info["memory_info"] is not None:
                    by_part[part] += proc.info["memory_info"].rss
            self.peak_total = max(self.peak_total, sum(by_part.values()))
            for part, rss in by_part.items():
                self.peaks[part] = max(self.peaks[part], rss)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cold", action="store_true", help="remove the demo's artifacts first (the optimizer runs)")
    args = parser.parse_args()
    if args.cold:
        subprocess.run([sys.executable, "-m", "demo", "--down"], cwd=REPO, check=False, capture_output=True)
        shutil.rmtree(
            REPO / ".flotilla/processnode/local-0/volumes/flotilla-demo/flotilla-artifacts", ignore_errors=True
        )
    sampler = Sampler()
    sampler.start()
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "demo"], cwd=REPO, capture_output=True, text=True, check=False)
    seconds = time.monotonic() - started
    sampler.stop.set()
    sampler.join()
    first_answer = re.search(r"kubectl apply -> first answer: (\d+)s", proc.stdout)
    mib = 1024 * 1024
    print(
        json.dumps(
            {
                "benchmark": "demo",
                "cold": args.cold,
                "exit_code": proc.returncode,
                "demo_seconds": round(seconds, 1),
                "apply_to_first_answer_s": int(first_answer.group(1)) if first_answer else None,
                "stack_peak_rss_mib": round(sampler.peak_total / mib),
                "peak_rss_mib_by_part": {k: round(v / mib) for k, v in sorted(sampler.peaks.items())},
            }
        )
    )
    if proc.returncode:
        print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
