"""The gateway's route table and endpoint picking (pure, with an injected RNG)."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from flotilla.gateway.protocol import GatewayError, render
from flotilla.gateway.routing import Endpoint, ModelRoute, NoEndpointError, RouteTable, pick
from tests.gateway_objects import endpoint, endpoint_slice, smallmodel, smallmodel_status


def binomial_interval(n: int, p: float, confidence: float = 0.999) -> tuple[int, int]:
    """Central interval of Binomial(n, p) holding at least `confidence` of the mass (exact)."""
    pmf = [math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(n + 1)]
    tail = (1 - confidence) / 2
    lo, acc = 0, 0.0
    while acc + pmf[lo] <= tail:
        acc += pmf[lo]
        lo += 1
    hi, acc = n, 0.0
    while acc + pmf[hi] <= tail:
        acc += pmf[hi]
        hi -= 1
    return lo, hi


def table_with(*objs: dict[str, object], namespaces: tuple[str, ...] = ("ml",)) -> RouteTable:
    table = RouteTable(namespaces)
    for obj in objs:
        if obj["kind"] == "SmallModel":
            table.upsert_model(obj)
        else:
            table.upsert_slice(obj)
    return table


def canary_table(weight: int) -> RouteTable:
    return table_with(
        smallmodel("chat", status=smallmodel_status("r1", "r2", weight, ready="False", reason="CanaryProgressing")),
        endpoint_slice("chat", "stable", [endpoint("10.0.0.1"), endpoint("10.0.0.2")]),
        endpoint_slice("chat", "canary", [endpoint("10.0.1.1")]),
    )


def route(table: RouteTable, name: str = "chat") -> ModelRoute:
    return table.resolve("ml", name, name)


def test_binomial_interval_helper() -> None:
    lo, hi = binomial_interval(1000, 0.1)
    assert 65 < lo < 75 and 125 < hi < 135


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_weights_10_90_split_binomially_over_1000_picks(seed: int) -> None:
    r = route(canary_table(10))
    rng = random.Random(seed)
    roles = Counter(pick(r, rng).role for _ in range(1000))
    lo, hi = binomial_interval(1000, 0.10)
    assert lo <= roles["canary"] <= hi, roles
    assert roles["canary"] + roles["stable"] == 1000


def test_weight_0_and_100_are_exact() -> None:
    rng = random.Random(0)
    assert {pick(route(canary_table(0)), rng).role for _ in range(200)} == {"stable"}
    assert {pick(route(canary_table(100)), rng).role for _ in range(200)} == {"canary"}


def test_revision_is_the_system_fingerprint_source() -> None:
    got = pick(route(canary_table(100)), random.Random(0))
    assert (got.revision, got.endpoint.address) == ("r2", "10.0.1.1:8000")


def test_least_outstanding_wins_and_ties_are_random() -> None:
    r = route(canary_table(0))
    rng = random.Random(4)
    busy = {"10.0.0.1:8000": 3, "10.0.0.2:8000": 1}
    assert {pick(r, rng, busy).endpoint.ip for _ in range(50)} == {"10.0.0.2"}
    tie = Counter(pick(r, rng, {}).endpoint.ip for _ in range(400))
    assert set(tie) == {"10.0.0.1", "10.0.0.2"} and min(tie.values()) > 120, tie


def test_terminating_and_not_ready_endpoints_are_never_picked() -> None:
    table = table_with(
        smallmodel("chat", status=smallmodel_status("r1")),
        endpoint_slice(
            "chat",
            "stable",
            [endpoint("10.0.0.1", terminating=True), endpoint("10.0.0.2", ready=False), endpoint("10.0.0.3")],
        ),
    )
    rng = random.Random(0)
    assert {pick(route(table), rng).endpoint.ip for _ in range(100)} == {"10.0.0.3"}


def test_unset_conditions_follow_the_endpointslice_api() -> None:
    """ready unset means ready; terminating unset means not terminating."""
    table = table_with(
        smallmodel("chat", status=smallmodel_status("r1")),
        endpoint_slice("chat", "stable", [{"addresses": ["10.0.0.9"], "conditions": {}}]),
    )
    assert pick(route(table), random.Random(0)).endpoint.ip == "10.0.0.9"


def test_a_retry_excludes_endpoints_already_tried() -> None:
    r = route(canary_table(0))
    rng = random.Random(0)
    first = pick(r, rng)
    second = pick(r, rng, exclude=[first.endpoint.address])
    assert second.endpoint.address != first.endpoint.address
    with pytest.raises(NoEndpointError):
        pick(r, rng, exclude=[first.endpoint.address, second.endpoint.address])


def test_a_pinned_role_is_strict() -> None:
    r = route(canary_table(10))
    rng = random.Random(0)
    assert {pick(r, rng, role="canary").revision for _ in range(50)} == {"r2"}
    with pytest.raises(NoEndpointError):
        pick(r, rng, exclude=["10.0.1.1:8000"], role="canary")


def test_avoided_endpoints_are_used_only_when_nothing_else_is_left() -> None:
    r = route(canary_table(0))
    rng = random.Random(0)
    assert {pick(r, rng, avoid=["10.0.0.1:8000"]).endpoint.ip for _ in range(50)} == {"10.0.0.2"}
    both = ["10.0.0.1:8000", "10.0.0.2:8000"]
    assert {pick(r, rng, avoid=both).endpoint.ip for _ in range(50)} == {"10.0.0.1", "10.0.0.2"}


def test_spill_to_the_other_revision_only_when_it_has_weight() -> None:
    # Canary at 10% with no ready pod: its share goes to stable (weight 90 > 0).
    table = table_with(
        smallmodel("chat", status=smallmodel_status("r1", "r2", 10)),
        endpoint_slice("chat", "stable", [endpoint("10.0.0.1")]),
        endpoint_slice("chat", "canary", [endpoint("10.0.1.1", ready=False)]),
    )
    rng = random.Random(0)
    assert {pick(route(table), rng).revision for _ in range(300)} == {"r1"}
    # Canary at 0% never takes stable's overflow, even with stable down.
    table = table_with(
        smallmodel("chat", status=smallmodel_status("r1", "r2", 0)),
        endpoint_slice("chat", "stable", [endpoint("10.0.0.1", terminating=True)]),
        endpoint_slice("chat", "canary", [endpoint("10.0.1.1")]),
    )
    with pytest.raises(NoEndpointError):
        pick(route(table), rng)


def test_no_endpoints_at_all_is_no_endpoint() -> None:
    table = table_with(smallmodel("chat", status=smallmodel_status("r1")))
    with pytest.raises(NoEndpointError):
        pick(route(table), random.Random(0))


def test_slices_merge_and_deletes_apply() -> None:
    table = table_with(
        smallmodel("chat", status=smallmodel_status("r1")),
        endpoint_slice("chat", "stable", [endpoint("10.0.0.1")], suffix="a"),
        endpoint_slice("chat", "stable", [endpoint("10.0.0.2")], suffix="b"),
    )
    assert {e.ip for e in route(table).usable("stable")} == {"10.0.0.1", "10.0.0.2"}
    table.delete_slice("ml", "chat-stable-a")
    assert [e.ip for e in route(table).usable("stable")] == ["10.0.0.2"]
    table.replace_slices("ml", [])
    assert route(table).usable("stable") == []
    table.delete_model("ml", "chat")
    with pytest.raises(GatewayError):
        route(table)


def test_a_slice_without_an_http_port_gives_no_endpoint() -> None:
    slice_ = endpoint_slice("chat", "stable", [endpoint("10.0.0.1")])
    slice_["ports"] = [{"name": "grpc", "port": 8001}]
    table = table_with(smallmodel("chat", status=smallmodel_status("r1")), slice_)
    assert route(table).usable("stable") == []


def test_served_means_a_stable_revision_not_just_ready() -> None:
    table = table_with(
        smallmodel("serving", status=smallmodel_status("r1")),
        smallmodel("in-canary", status=smallmodel_status("r1", "r2", 10, ready="False", reason="CanaryProgressing")),
        smallmodel("optimizing", status=smallmodel_status(None, ready="False", reason="Optimizing")),
        smallmodel("fresh"),
    )
    assert [r.name for r in table.served()] == ["in-canary", "serving"]
    for name in ("optimizing", "fresh", "missing"):
        with pytest.raises(GatewayError) as exc:
            table.resolve("ml", name, name)
        status, _, raw = render(exc.value)
        assert status == 404 and b"model_not_found" in raw


def test_namespace_isolation() -> None:
    """Objects of other namespaces never enter the table, and asking for one is a plain 404."""
    table = table_with(
        smallmodel("chat", status=smallmodel_status("r1")),
        smallmodel("chat", namespace="secret", status=smallmodel_status("r9")),
        endpoint_slice("chat", "stable", [endpoint("10.9.9.9")], namespace="secret"),
    )
    table.replace_models("secret", [smallmodel("other", namespace="secret", status=smallmodel_status("r1"))])
    assert [(r.namespace, r.name) for r in table.served()] == [("ml", "chat")]
    with pytest.raises(GatewayError) as exc:
        table.resolve("secret", "chat", "secret/chat")
    assert render(exc.value)[0] == 404
    assert table.get("secret", "chat") is None


def test_scale_from_zero_flag_needs_autoscaling_with_min_replicas_0() -> None:
    table = table_with(
        smallmodel("zero", status=smallmodel_status("r1"), min_replicas=0, autoscaling=True),
        smallmodel("one", status=smallmodel_status("r1"), autoscaling=True),
        # Scaled to 0 by hand: nothing would wake it, so requests are not held.
        smallmodel("manual", status=smallmodel_status("r1"), min_replicas=0),
    )
    assert route(table, "zero").scales_from_zero
    assert not route(table, "one").scales_from_zero and not route(table, "manual").scales_from_zero


def test_an_unparseable_model_is_skipped() -> None:
    table = RouteTable(["ml"])
    table.upsert_model({"kind": "SmallModel", "metadata": {"name": "bad", "namespace": "ml"}, "spec": {}})
    assert table.served() == []


def test_listeners_hear_every_change() -> None:
    table = RouteTable(["ml"])
    seen: list[int] = []
    table.listeners.append(lambda: seen.append(1))
    table.upsert_model(smallmodel("chat", status=smallmodel_status("r1")))
    table.upsert_slice(endpoint_slice("chat", "stable", [endpoint("10.0.0.1")]))
    assert len(seen) >= 2


def test_endpoint_usable() -> None:
    assert Endpoint("1.2.3.4", 1).usable and not Endpoint("1.2.3.4", 1, terminating=True).usable
