"""flotilla.metrics: the Triton text parser on captured real output, the Sampler's deltas,
and the scrape source against a real HTTP server on 127.0.0.1 serving that output.

The captured texts (tests/unit/data/triton-metrics-probe*.txt) come from the real Triton 2.51
serving the probe model of tests/slow/test_metrics_real.py (which also regenerates them):
each execution takes 0.2 s whatever the batch. Traffic before `probe.txt`: one request, four
concurrent requests (one dynamic batch), one request carrying three items, one answered with
an error response, one that raises in the model, one malformed (rejected with HTTP 400).
`probe-45s` / `probe-62s` are the same server 45 s / 62 s later (the summary window expired).
`chat-embed.txt` is the session server of tests/slow serving the optimized real models.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import pytest
from aiohttp import web

from flotilla.metrics import MetricsFormatError, PodCounters, PodReading, PodTarget, Sampler, parse, parse_model
from flotilla.metrics.sampler import delta, interval
from flotilla.metrics.sources import MetricsSource, PrometheusError, PrometheusSource, ScrapeSource, scrape
from flotilla.metrics.sources.prometheus import query
from flotilla.metrics.sources.scrape import endpoint
from flotilla.metrics.triton import counters_of

DATA = Path(__file__).parent / "data"


def captured(name: str) -> str:
    return (DATA / f"triton-metrics-{name}.txt").read_text()


def probe_counters(name: str) -> PodCounters:
    found = parse_model(captured(name), "probe")
    assert found is not None
    return found


PROBE = probe_counters("probe")
IDLE = probe_counters("probe-idle")


# ---------------------------------------------------------------- parser


def test_parse_captured_probe_counters() -> None:
    # 7 successes: 1 + 4 + 1 (three items) + 1 error response (Triton counts it a success).
    assert (PROBE.success, PROBE.failure) == (7, 1)
    assert (PROBE.inferences, PROBE.executions) == (9, 5)  # items; the raise is an execution too
    assert PROBE.request_us == 3574076
    assert PROBE.queue_us == 2097360
    assert PROBE.compute_infer_us == 1472325
    assert PROBE.compute_input_us > 0 and PROBE.compute_output_us > 0
    assert PROBE.quantiles == {0.5: 500760, 0.9: 501845, 0.95: 501845, 0.99: 501845, 0.999: 501845}


def test_parse_batch_accounting_is_per_request() -> None:
    """Seven successful requests in four executions of ~0.2 s: the compute counter is ~7 x 0.2 s."""
    assert PROBE.compute_infer_us / 1e6 == pytest.approx(7 * 0.2, rel=0.1)


def test_parse_idle_and_expired_summaries_have_no_quantiles() -> None:
    assert PodCounters(pending=0.0) == IDLE  # all zero, quantiles NaN -> left out, nothing waiting
    expired, still = probe_counters("probe-62s"), probe_counters("probe-45s")
    assert expired.quantiles == {} and expired.success == 7  # counters stay, the window moved on
    assert still.quantiles == PROBE.quantiles  # 45 s later: still inside the 60 s window


def test_parse_captured_real_models() -> None:
    """The optimized SmolLM2 ("chat") and MiniLM ("embed") after test_real_models_counts_are_exact:
    six concurrent one-text embed requests and one of three texts; two chat requests."""
    models = parse(captured("chat-embed"))
    assert set(models) == {"chat", "embed"}
    chat, embed = models["chat"], models["embed"]
    assert (embed.success, embed.failure, embed.inferences) == (7, 0, 9)
    assert embed.executions < 7  # the concurrent ones ran batched
    assert (chat.success, chat.failure, chat.inferences, chat.executions) == (2, 0, 2, 2)
    for model in (chat, embed):
        assert 0 < model.compute_infer_us <= model.request_us
        assert set(model.quantiles) == {0.5, 0.9, 0.95, 0.99, 0.999}
        assert model.quantiles[0.5] <= model.quantiles[0.99]


def test_parse_sums_failure_reasons_and_merges_versions() -> None:
    text = """# TYPE nv_inference_request_failure counter
nv_inference_request_failure{model="m",reason="BACKEND",version="1"} 2
nv_inference_request_failure{model="m",reason="REJECTED",version="1"} 3
nv_inference_request_failure{model="m",reason="BACKEND",version="2"} 1
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="m",version="1"} 30
nv_inference_request_success{model="m",version="2"} 10
nv_inference_request_success{model="other",version="1"} 5
# TYPE nv_inference_request_summary_us summary
nv_inference_request_summary_us_count{model="m",version="1"} 30
nv_inference_request_summary_us{model="m",version="1",quantile="0.5"} 1000
nv_inference_request_summary_us{model="m",version="2",quantile="0.5"} 2000
nv_inference_request_summary_us{model="other",version="1",quantile="0.5"} Nan
# TYPE nv_gpu_utilization gauge
nv_gpu_utilization{gpu_uuid="x"} 0.5
"""
    models = parse(text)
    assert set(models) == {"m", "other"}
    assert (models["m"].failure, models["m"].success) == (6, 40)
    assert models["m"].quantiles == {0.5: pytest.approx((1000 * 30 + 2000 * 10) / 40)}
    assert models["other"].quantiles == {}


@pytest.mark.parametrize("text", ["<html>502 Bad Gateway</html>", 'nv_inference_count{model="m" 1\n', "a b c\n"])
def test_parse_rejects_what_is_not_exposition_format(text: str) -> None:
    with pytest.raises(MetricsFormatError):
        parse(text)


def test_parse_model_missing_is_none() -> None:
    assert parse_model(captured("probe"), "absent") is None
    assert parse("") == {}


# ---------------------------------------------------------------- sampler


def counters(
    success: float = 0, failure: float = 0, quantiles: dict[float, float] | None = None, **fields: float
) -> PodCounters:
    return counters_of({"success": success, "failure": failure, **fields}, quantiles or {})


def reading(pod: str, c: PodCounters | None, revision: str = "r1", error: str | None = None) -> PodReading:
    return PodReading(pod, revision, 0.0, c, error)


def test_sampler_first_look_is_a_baseline() -> None:
    sampler = Sampler()
    window = sampler.observe([reading("a", PROBE)], at=100.0)
    assert window is not None
    assert (window.intervals, window.errors, window.seconds) == ({}, {}, 0.0)
    assert set(sampler.baseline) == {"a"} and sampler.last_at == 100.0


def test_sampler_interval_is_the_delta_of_captured_texts() -> None:
    sampler = Sampler()
    sampler.observe([reading("a", IDLE)], at=10.0)
    window = sampler.observe([reading("a", PROBE)], at=40.0)
    assert window is not None and window.seconds == 30.0
    iv = window.of("r1")
    assert iv is not None and window.of("r2") is None and window.of(None) is None
    assert (iv.requests, iv.errors, iv.successes, iv.pods) == (8, 1, 7, 1)
    assert (iv.inferences, iv.executions) == (9, 5)
    assert iv.rate == pytest.approx(8 / 30)
    assert iv.mean_latency_ms == pytest.approx(3574.076 / 7)
    assert iv.mean_queue_ms == pytest.approx(2097.360 / 7)
    assert iv.mean_batch == pytest.approx(9 / 5)
    # Per request, so the mean batch time comes out at the probe's 0.2 s (+ overhead).
    assert iv.compute_ms_per_batch == pytest.approx(200, rel=0.1)
    assert iv.quantile_ms(0.95) == pytest.approx(501.845)
    assert iv.quantile_ms(0.42) is None


def test_sampler_restarted_pod_counts_from_zero() -> None:
    sampler = Sampler()
    sampler.observe([reading("a", counters(100, 2, request_us=1e6))], at=0.0)
    window = sampler.observe([reading("a", counters(5, 1, request_us=2e4))], at=10.0)
    assert window is not None
    iv = window.intervals["r1"]
    assert (iv.requests, iv.errors, iv.request_us) == (6, 1, 2e4)


def test_delta_restart_detected_on_any_counter() -> None:
    before = counters(10, 0, executions=10)
    assert delta(before, counters(12, 0, executions=11)) == counters(2, 0, executions=1)
    assert delta(before, counters(12, 0, executions=3)) == counters(12, 0, executions=3)


def test_sampler_failed_pod_is_reported_not_averaged_and_keeps_its_baseline() -> None:
    sampler = Sampler()
    sampler.observe([reading("a", counters(10)), reading("b", counters(10))], at=0.0)
    window = sampler.observe([reading("a", counters(20)), reading("b", None, error="timed out")], at=10.0)
    assert window is not None
    iv = window.intervals["r1"]
    assert (iv.requests, iv.pods, iv.failed_pods) == (10, 1, ("b: timed out",))
    assert window.errors == {"b": "timed out"}
    # b answers again: everything since its last good reading counts (nothing is hidden).
    window = sampler.observe([reading("a", counters(30)), reading("b", counters(40))], at=20.0)
    assert window is not None
    assert (window.intervals["r1"].requests, window.intervals["r1"].pods, window.errors) == (10 + 30, 2, {})


def test_sampler_revision_with_only_failed_pods_has_no_interval() -> None:
    sampler = Sampler()
    sampler.observe([reading("a", counters(1)), reading("c", counters(1), "r2")], at=0.0)
    window = sampler.observe([reading("a", counters(2)), reading("c", None, "r2", "HTTP 503")], at=5.0)
    assert window is not None
    assert set(window.intervals) == {"r1"} and window.errors == {"c": "HTTP 503"}
    window = sampler.observe([reading("a", counters(3)), reading("c", None, "r2")], at=10.0)
    assert window is not None and window.errors == {"c": "no counters"}


def test_sampler_new_pod_is_a_baseline_and_vanished_pods_are_forgotten() -> None:
    sampler = Sampler()
    sampler.observe([reading("a", counters(10))], at=0.0)
    window = sampler.observe([reading("a", counters(11)), reading("b", counters(500))], at=5.0)
    assert window is not None and window.intervals["r1"].requests == 1  # b's 500 predate us
    window = sampler.observe([reading("b", counters(510))], at=10.0)
    assert window is not None and window.intervals["r1"].requests == 10
    assert set(sampler.baseline) == {"b"}
    # a comes back (same name, say): a new baseline, not a delta from its old counters.
    window = sampler.observe([reading("a", counters(50)), reading("b", counters(511))], at=15.0)
    assert window is not None and window.intervals["r1"].requests == 1


def test_sampler_min_seconds_returns_none_and_keeps_the_baseline() -> None:
    sampler = Sampler(min_seconds=15.0)
    sampler.observe([reading("a", counters(0))], at=0.0)
    assert sampler.observe([reading("a", counters(5))], at=14.9) is None
    window = sampler.observe([reading("a", counters(7))], at=15.0)
    assert window is not None and window.seconds == 15.0
    assert window.intervals["r1"].requests == 7


def test_sampler_aggregates_per_revision_with_request_weighted_quantiles() -> None:
    sampler = Sampler()
    zero = counters(0)
    pods = [("s1", "stable"), ("s2", "stable"), ("c1", "canary"), ("idle", "canary")]
    sampler.observe([reading(pod, zero, rev) for pod, rev in pods], at=0.0)
    now = [
        reading("s1", counters(30, 1, request_us=30e3, quantiles={0.95: 10e3}), "stable"),
        reading("s2", counters(10, 0, request_us=20e3, quantiles={0.95: 30e3}), "stable"),
        reading("c1", counters(5, 2, request_us=50e3, quantiles={0.95: 40e3, 0.5: 8e3}), "canary"),
        # No requests in the interval: its (stale) summary does not vote.
        reading("idle", counters(0, quantiles={0.95: 900e3}), "canary"),
    ]
    window = sampler.observe(now, at=60.0)
    assert window is not None
    stable, canary = window.intervals["stable"], window.intervals["canary"]
    assert (stable.requests, stable.errors, stable.pods) == (41, 1, 2)
    assert stable.quantiles_ms == {0.95: pytest.approx((10 * 30 + 30 * 10) / 40)}
    assert stable.mean_latency_ms == pytest.approx(50 / 40)
    assert (canary.requests, canary.errors, canary.pods) == (7, 2, 2)
    assert canary.quantiles_ms == {0.5: 8.0, 0.95: 40.0}


def test_sampler_state_is_plain_data_and_a_new_one_starts_over() -> None:
    sampler = Sampler(min_seconds=5.0)
    sampler.observe([reading("a", counters(3))], at=0.0)
    copy = replace(sampler, baseline=dict(sampler.baseline))
    assert copy == sampler
    restarted = Sampler(min_seconds=5.0)  # an operator restart: nothing carried over
    window = restarted.observe([reading("a", counters(9))], at=100.0)
    assert window is not None and window.intervals == {}


def test_pending_gauge_is_read_and_is_no_counter() -> None:
    assert IDLE.pending == 0.0 and PROBE.pending is not None  # the real server exports it
    text = captured("probe").replace(
        'nv_inference_pending_request_count{model="probe",version="1"} 0',
        'nv_inference_pending_request_count{model="probe",version="1"} 4',
    )
    waiting = parse_model(text, "probe")
    assert waiting is not None and waiting.pending == 4.0
    # A gauge going down is no restart: the counters decide.
    assert delta(waiting, PROBE) == replace(delta(PROBE, PROBE), pending=PROBE.pending, pending_change=-4.0)


def test_arrival_rate_is_completions_plus_the_growth_of_the_queue() -> None:
    sampler = Sampler()
    sampler.observe([reading("a", replace(counters(100), pending=2.0)),
                     reading("b", replace(counters(50), pending=0.0))], at=0.0)  # fmt: skip
    window = sampler.observe([reading("a", replace(counters(200), pending=30.0)),
                              reading("b", replace(counters(150), pending=12.0))], at=10.0)  # fmt: skip
    assert window is not None
    iv = window.intervals["r1"]
    assert (iv.requests, iv.pending, iv.pending_change) == (200, 42, 40)
    assert iv.rate == pytest.approx(20.0) and iv.arrival_rate == pytest.approx(24.0)


def test_arrival_rate_is_unknown_unless_every_pod_exports_the_gauge() -> None:
    sampler = Sampler()
    sampler.observe([reading("a", replace(counters(100), pending=2.0)), reading("b", counters(50))], at=0.0)
    window = sampler.observe([reading("a", replace(counters(200), pending=3.0)), reading("b", counters(60))], at=10.0)
    assert window is not None
    iv = window.intervals["r1"]
    assert (iv.pending, iv.pending_change, iv.arrival_rate) == (None, None, None)
    assert iv.rate == pytest.approx(11.0)


def test_restarted_pod_queue_counts_from_zero() -> None:
    before, after = replace(counters(100), pending=9.0), replace(counters(5), pending=3.0)
    assert delta(before, after).pending_change == 3.0


def test_interval_of_no_parts_is_zero() -> None:
    iv = interval("r1", 10.0, [])
    assert (iv.requests, iv.rate, iv.mean_latency_ms, iv.mean_batch, iv.compute_ms_per_batch) == (
        0,
        0.0,
        None,
        None,
        None,
    )


# ---------------------------------------------------------------- scrape source (real HTTP)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def text_handler(text: str, status: int = 200, delay: float = 0.0) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        if delay:
            await asyncio.sleep(delay)
        # Triton's content type for its text exposition.
        return web.Response(text=text, status=status, content_type="text/plain")

    return handle


@contextlib.asynccontextmanager
async def serve(handler: Handler, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[int]:
    """A real aiohttp server with `handler` on /metrics; yields its port."""
    app = web.Application()
    app.router.add_get("/metrics", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pod(name: str, ip: str | None = "127.0.0.1", revision: str = "r1") -> PodTarget:
    return PodTarget(pod=name, revision=revision, ip=ip, ready=True)


def test_scrape_reads_captured_text_from_a_real_server() -> None:
    async def run() -> list[PodReading]:
        async with serve(text_handler(captured("probe"))) as port:
            return await scrape([pod("a"), pod("no-ip", ip=None)], "probe", port=port)

    readings = asyncio.run(run())
    assert [(r.pod, r.revision, r.error) for r in readings] == [("a", "r1", None)]
    assert readings[0].counters == PROBE
    assert readings[0].at <= time.monotonic()


@pytest.mark.parametrize(
    ("handler", "expected"),
    [
        (text_handler("not found", status=404), "HTTP 404"),
        (text_handler(captured("probe")), "model 'chat' not in the metrics"),
        (text_handler("<html>oops</html>"), "not Prometheus text format"),
        (text_handler(captured("probe"), delay=1.0), "timed out after 0.3s"),
    ],
    ids=["404", "model-missing", "garbage", "timeout"],
)
def test_scrape_reports_failures_per_pod(handler: Handler, expected: str) -> None:
    async def run() -> list[PodReading]:
        async with serve(handler) as port:
            return await scrape([pod("a")], "chat", port=port, timeout=0.3)

    [failed] = asyncio.run(run())
    assert failed.counters is None and failed.error is not None
    assert expected in failed.error and "127.0.0.1" in failed.error


def test_scrape_refused() -> None:
    [failed] = asyncio.run(scrape([pod("a")], "probe", port=unused_port(), timeout=2.0))
    assert failed.counters is None and "ClientConnectorError" in str(failed.error)


def test_scrape_reads_pods_concurrently_and_shares_a_session() -> None:
    """Slow pods cost one timeout together, not one each; the fast pods still answer."""
    import aiohttp

    async def run() -> tuple[list[PodReading], float]:
        slow = text_handler("", delay=1.2)
        async with (
            serve(text_handler(captured("probe"))) as port,
            serve(slow, "127.0.0.2", port),
            serve(slow, "127.0.0.3", port),
            aiohttp.ClientSession() as session,
        ):
            targets = [
                pod("slow-1", "127.0.0.2"),
                pod("slow-2", "127.0.0.3"),
                pod("fast-1"),
                pod("fast-2", revision="r2"),
            ]
            started = time.monotonic()
            readings = await ScrapeSource(port=port, timeout=0.5, session=session).read("ns", "probe", targets)
            return readings, time.monotonic() - started

    readings, elapsed = asyncio.run(run())
    assert [(r.pod, r.counters is not None) for r in readings] == [
        ("slow-1", False),
        ("slow-2", False),
        ("fast-1", True),
        ("fast-2", True),
    ]
    assert elapsed < 0.95  # one after the other would take 2 x 0.5 s


def test_scrape_no_readable_targets() -> None:
    assert asyncio.run(scrape([pod("a", ip=None)], "probe")) == []


def test_endpoint_brackets_ipv6() -> None:
    assert endpoint(PodTarget("p", "r", "10.0.0.7", True), 8002) == "http://10.0.0.7:8002/metrics"
    assert endpoint(PodTarget("p", "r", "fd00::7", True), 8002) == "http://[fd00::7]:8002/metrics"
    via_proxy = "http://127.0.0.1:9/{namespace}/{pod}/metrics?ip={ip}"
    assert (
        endpoint(PodTarget("p", "r", "10.0.0.7", True), 8002, via_proxy, "ml")
        == "http://127.0.0.1:9/ml/p/metrics?ip=10.0.0.7"
    )


# ---------------------------------------------------------------- Prometheus source (no server)


def test_sources_satisfy_the_protocol() -> None:
    sources: list[MetricsSource] = [ScrapeSource(), PrometheusSource("http://127.0.0.1:9090")]
    assert len(sources) == 2


def test_prometheus_query_selects_the_model_in_the_namespace() -> None:
    promql = query("ml", 'we"ird', namespace_label="kubernetes_namespace")
    assert promql.startswith('{__name__=~"nv_inference_request_success|nv_inference_request_failure|')
    assert 'kubernetes_namespace="ml"' in promql and 'model="we\\"ird"' in promql
    assert '|nv_inference_request_summary_us"' in promql and "summary_us_count" not in promql


def test_prometheus_unreachable_is_an_exception() -> None:
    source = PrometheusSource(f"http://127.0.0.1:{unused_port()}", timeout=2.0)
    with pytest.raises(PrometheusError, match="unreachable"):
        asyncio.run(source.read("ml", "chat", [pod("a")]))
    # Nothing to read: no query at all.
    assert asyncio.run(source.read("ml", "chat", [pod("a", ip=None)])) == []
