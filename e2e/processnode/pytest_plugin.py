"""pytest fixture for the process node.

Register with `pytest_plugins = ["processnode.pytest_plugin"]` (beside
"localcluster.pytest_plugin"). `process_node` (session) starts one agent for the session's
cluster and stops it at the end, deleting its Node so that pods still bound to it are
garbage-collected. FLOTILLA_PROCESS_NODE names the node (default local-test); pods select it
with `process_node.node_selector`. `pod_network` (session) makes the pod address range local
the process node's way, for tests that bind pod addresses themselves without one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from . import network
from .handle import ProcessNode, ProcessNodeError, start


@pytest.fixture(scope="session")
def pod_network() -> network.PodNetwork:
    """The range made local as the agent does (adding the route when this process may), so a
    test does not depend on running after a process node; skipped where Services could not
    get endpoints."""
    found = network.setup()
    if not found.endpoints_work:
        pytest.skip(found.note)
    return found


@pytest.fixture(scope="session")
def process_node(cluster: Any) -> Iterator[ProcessNode]:
    # Not local-0: the demo's node may be running beside the tests on the same cluster.
    name = os.environ.get("FLOTILLA_PROCESS_NODE", "local-test")
    try:
        # More than this machine's cores and memory: an optimizer Job (2 CPU / 12Gi requested)
        # and Triton pods of two revisions must fit side by side; no limit is enforced anyway.
        node = start(cluster, name=name, cpu="16", memory="64Gi")
    except ProcessNodeError as err:
        pytest.fail(f"the process node did not start: {err}", pytrace=False)
    yield node
    node.stop(delete_node=True)
