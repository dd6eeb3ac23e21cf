"""pytest fixtures for the local cluster.

Registered with `pytest_plugins = ["localcluster.pytest_plugin"]` in tests/conftest.py and
e2e/tests/conftest.py. `cluster` (session) reuses a running cluster or brings one up once
and leaves it running afterwards (`make test` and `make cluster-down` stop it);
`namespace` gives each test its own namespace and deletes it afterwards.

Tests marked `cluster_restart` (they stop or re-create the cluster, losing its data) are
moved after every other test of the session, so session fixtures that installed something
(a CRD, say) never see it vanish mid-run. Just before them come the tests that use the
session's process node (`process_node`, e2e/processnode): once it has registered, the
scheduler may bind any later test's untargeted pod to it, where the pod really runs (a
KWOK-style pod that never gets Ready), so no KWOK-only test may follow it.

`prometheus_factory` starts real Prometheus servers (`factory(config) -> Prometheus`, with
`.url`), stopped after the test. `gateway_api` / `no_gateway_api` make the Gateway API CRDs
present or absent for one test (restoring the default, FLOTILLA_CLUSTER_GATEWAY_API, after).

A test that uses a cluster fixture is marked `cluster` automatically, so `-m "not cluster"`
skips it even when the explicit marker was forgotten. A cluster that cannot come up fails
the test with the one-line cause instead of skipping it: a suite that silently skips its
integration tier proves nothing.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from . import gatewayapi, prometheus
from .cluster import Cluster, ClusterError, ensure_up, wait_for

NAMESPACE_READY_TIMEOUT_S = 60.0


RESTART_MARKER = "cluster_restart"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{RESTART_MARKER}: stops or re-creates the local cluster (its data is lost); runs after every other test",
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if {"cluster", "namespace", "gateway_api", "no_gateway_api"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.cluster)
    # A re-created cluster has lost whatever session fixtures put there (CRDs, operators'
    # namespaces), so tests that restart it go last, in their original order; those on the
    # process node go just before them (see the module docstring).
    items.sort(key=_phase)


def _phase(item: pytest.Item) -> tuple[bool, bool]:
    restarts = item.get_closest_marker(RESTART_MARKER) is not None
    return restarts, "process_node" in getattr(item, "fixturenames", ())


@pytest.fixture(scope="session")
def cluster() -> Cluster:
    try:
        return ensure_up()
    except ClusterError as err:
        cause = str(err)
    # Outside the except block, so the report is the one-line cause, not a chained traceback.
    pytest.fail(f"the local cluster is unavailable: {cause}", pytrace=False)


def namespace_name(test_name: str) -> str:
    """A unique DNS label that still says which test made it (for `kubectl get ns`)."""
    slug = re.sub(r"[^a-z0-9]+", "-", test_name.lower()).strip("-")[:40].strip("-") or "test"
    return f"t-{slug}-{uuid.uuid4().hex[:6]}"


def create_namespace(cluster: Cluster, name: str) -> str:
    """Create the namespace and return it once pods can be created in it (for module-scoped
    fixtures that cannot use the per-test `namespace`)."""
    cluster.kubectl("create", "namespace", name)
    # Pods are rejected until kube-controller-manager has created the namespace's default
    # ServiceAccount; waiting here keeps that race out of every test.
    wait_for(
        lambda: cluster.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode == 0,
        timeout=NAMESPACE_READY_TIMEOUT_S,
        what=f"ServiceAccount default in {name}",
    )
    return name


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    name = create_namespace(cluster, namespace_name(request.node.name))
    yield name
    # Do not wait: the namespace controller finishes in the background, and a pod bound to a
    # node nobody runs (no KWOK, no process node) would hold the namespace in Terminating.
    cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


# ---------------------------------------------------------------- Prometheus

PrometheusFactory = Callable[..., prometheus.Prometheus]


@pytest.fixture
def prometheus_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusFactory]:
    """`factory(config, port=None, **start_kwargs) -> Prometheus`: a real Prometheus with this
    configuration (dict or YAML text; `prometheus.scrape_config(targets)` builds a static
    one), ready when returned; every one started is stopped after the test."""
    started: list[prometheus.Prometheus] = []

    def factory(config: dict[str, Any] | str, port: int | None = None, **kwargs: Any) -> prometheus.Prometheus:
        workdir: Path = tmp_path_factory.mktemp("prometheus")
        handle = prometheus.start(config, workdir, port, **kwargs)
        started.append(handle)
        return handle

    yield factory
    for handle in started:
        handle.stop()


# ---------------------------------------------------------------- Gateway API


@pytest.fixture
def gateway_api(cluster: Cluster) -> Iterator[Cluster]:
    """The Gateway API CRDs are installed for this test (removed again afterwards if the
    session runs without them, FLOTILLA_CLUSTER_GATEWAY_API=0)."""
    gatewayapi.install(cluster)
    yield cluster
    if not gatewayapi.enabled():
        gatewayapi.uninstall(cluster)


@pytest.fixture
def no_gateway_api(cluster: Cluster) -> Iterator[Cluster]:
    """No Gateway API on the cluster for this test (the operator's fallback path); the CRDs
    come back afterwards unless the session runs without them."""
    gatewayapi.uninstall(cluster)
    yield cluster
    if gatewayapi.enabled():
        gatewayapi.install(cluster)
