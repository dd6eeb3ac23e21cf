"""End-to-end tests share the local-cluster fixtures (`cluster`, `namespace`) with tests/,
and run pods for real on the process node (`process_node`); `crds` installs the SmallModel CRD
once for the session's stacks."""

import pytest

from demo.context import REPO
from localcluster.cluster import Cluster

pytest_plugins = ["localcluster.pytest_plugin", "processnode.pytest_plugin"]


@pytest.fixture(scope="session")
def crds(cluster: Cluster) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", "crd/smallmodels.flotilla.dev", "--timeout=60s")
