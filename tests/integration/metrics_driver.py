"""A metrics source the test drives: Triton's metrics text for the simulated serving pods.

KWOK pods run nothing, so nothing answers on their IPs. The operator scrapes this server
instead (FLOTILLA_METRICS_URL_TEMPLATE=http://127.0.0.1:<port>/{namespace}/{pod}/metrics):
the real scrape source, parser and sampler run, and the test sets each revision's request
rate, latency and error rate. Counters advance with wall time between scrapes, exactly as a
Triton server's do; the text has Triton 2.51's metric names and labels (the unit tier checks
the parser on text captured from the real server).
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Profile:
    """What every pod of one revision sees, per pod."""

    rate: float  # requests per second
    latency_ms: float  # mean request latency (queue + compute)
    error_rate: float = 0.0
    batch: float = 1.0  # mean batch size Triton forms
    service_ms: float | None = None  # compute time of a batch; the rest of the latency is queueing

    @property
    def compute_ms(self) -> float:
        return min(self.service_ms if self.service_ms is not None else self.latency_ms * 0.85, self.latency_ms)


@dataclass
class PodState:
    last: float
    success: float = 0.0
    failure: float = 0.0
    request_us: float = 0.0
    queue_us: float = 0.0
    compute_us: float = 0.0
    inferences: float = 0.0
    executions: float = 0.0
    quantiles: dict[float, float] = field(default_factory=dict)


class MetricsDriver:
    def __init__(self, model: str, seed: int = 7) -> None:
        self.model = model
        self.profiles: dict[str, Profile] = {}  # revision (first 8 characters) -> profile
        self.pods: dict[str, PodState] = {}
        self.scrapes: dict[str, int] = {}
        self.down: set[str] = set()  # revisions whose pods answer 503
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def set(self, revision: str, profile: Profile) -> None:
        with self._lock:
            self.profiles[revision[:8]] = profile

    @property
    def url_template(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/{{namespace}}/{{pod}}/metrics"

    def _profile(self, pod: str) -> tuple[str, Profile] | None:
        # Pods are named <model>-<revision[:8]>-<replicaset hash>-<suffix>.
        rest = pod.removeprefix(f"{self.model}-")
        return next(((rev, p) for rev, p in self.profiles.items() if rest.startswith(rev)), None)

    def text(self, pod: str) -> str | None:
        with self._lock:
            found = self._profile(pod)
            if found is None or found[0] in self.down:
                return None
            self.scrapes[pod] = self.scrapes.get(pod, 0) + 1
            state = self.pods.setdefault(pod, PodState(last=time.monotonic()))
            self._advance(state, found[1])
            return self._render(state)

    def _advance(self, state: PodState, profile: Profile) -> None:
        now = time.monotonic()
        elapsed, state.last = now - state.last, now
        jitter = self._rng.uniform(0.9, 1.1)
        requests = profile.rate * elapsed * jitter
        failed = requests * profile.error_rate
        ok = requests - failed
        noise = self._rng.uniform(0.95, 1.05)
        latency_us = profile.latency_ms * 1000 * noise
        compute_us = profile.compute_ms * 1000 * noise  # Triton adds a batch's time to each of its requests
        state.success += ok
        state.failure += failed
        state.request_us += ok * latency_us
        state.queue_us += ok * max(latency_us - compute_us, 0.0)
        state.compute_us += ok * compute_us
        state.inferences += requests
        state.executions += requests / max(profile.batch, 1.0)
        state.quantiles = {q: latency_us * f for q, f in ((0.5, 0.9), (0.9, 1.3), (0.95, 1.5), (0.99, 2.0))}

    def _render(self, s: PodState) -> str:
        labels = f'model="{self.model}",version="1"'
        counters = {
            "nv_inference_request_success": s.success,
            "nv_inference_count": s.inferences,
            "nv_inference_exec_count": s.executions,
            "nv_inference_request_duration_us": s.request_us,
            "nv_inference_queue_duration_us": s.queue_us,
            "nv_inference_compute_input_duration_us": s.compute_us * 0.01,
            "nv_inference_compute_infer_duration_us": s.compute_us * 0.98,
            "nv_inference_compute_output_duration_us": s.compute_us * 0.01,
        }
        lines = []
        for name, value in counters.items():
            lines += [f"# HELP {name} {name}", f"# TYPE {name} counter", f"{name}{{{labels}}} {int(value)}"]
        lines += [
            "# HELP nv_inference_request_failure failures",
            "# TYPE nv_inference_request_failure counter",
            f'nv_inference_request_failure{{model="{self.model}",reason="BACKEND",version="1"}} {int(s.failure)}',
            "# HELP nv_inference_request_summary_us Summary of inference request duration in microseconds",
            "# TYPE nv_inference_request_summary_us summary",
        ]
        for q, v in sorted(s.quantiles.items()):
            lines.append(f'nv_inference_request_summary_us{{{labels},quantile="{q}"}} {v:.0f}')
        lines.append(f"nv_inference_request_summary_us_count{{{labels}}} {int(s.success)}")
        lines.append(f"nv_inference_request_summary_us_sum{{{labels}}} {int(s.request_us)}")
        return "\n".join(lines) + "\n"

    def start(self) -> MetricsDriver:
        driver = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = self.path.strip("/").split("/")
                body = driver.text(parts[1]) if len(parts) == 3 and parts[2] == "metrics" else None
                if body is None:
                    self.send_response(503)
                    self.end_headers()
                    return
                data = body.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
