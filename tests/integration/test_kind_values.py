"""The chart values `make kind-demo` installs with (e2e/kind/values.yaml), and the objects it
applies around them (e2e/kind/model-store.yaml, examples/01-smollm2/smallmodel.yaml), accepted by
a real API server: `helm template | kubectl apply --dry-run=server` on the local control plane.
The kind cluster itself needs Docker and is not run here (.github/workflows/kind.yml runs it)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from kind import plan
from localcluster.cluster import Cluster

from .test_chart import CHART, helm

pytestmark = pytest.mark.cluster
KIND_DIR = plan.KIND_DIR
REPO = KIND_DIR.parents[1]


def rendered(cluster: Cluster) -> list[dict[str, Any]]:
    out = helm(
        cluster,
        "template",
        plan.RELEASE,
        str(CHART),
        "-n",
        plan.RELEASE_NAMESPACE,
        "--kube-version",
        cluster.server_version,
        "-f",
        str(KIND_DIR / "values.yaml"),
    )
    return [d for d in yaml.safe_load_all(out) if d]


def dry_run(cluster: Cluster, docs: list[dict[str, Any]]) -> str:
    body = "\n---\n".join(yaml.safe_dump(d) for d in docs)
    proc = cluster.kubectl("apply", "--server-side", "--force-conflicts", "--dry-run=server", "-f", "-", input=body)
    return proc.stdout


def test_kind_values_render_and_the_api_server_accepts_them(crd: Cluster, tmp_path: Path) -> None:
    docs = rendered(crd)
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    deployments = {d["metadata"]["name"]: d for d in by_kind["Deployment"]}
    operator = deployments[f"{plan.RELEASE}-flotilla"]["spec"]
    gateway = deployments[f"{plan.RELEASE}-flotilla-gateway"]["spec"]
    assert operator["replicas"] == 1 and gateway["replicas"] == 1
    for spec, name in ((operator, "operator"), (gateway, "gateway")):
        (container,) = spec["template"]["spec"]["containers"]
        assert container["image"] == f"ghcr.io/flotilla-dev/flotilla-{name}:0.1.0"
        assert container["imagePullPolicy"] == "IfNotPresent"
    # Namespaced mode: the operator's and the gateway's Roles are in the demo namespace.
    assert {(r["metadata"]["namespace"]) for r in by_kind["Role"]} == {plan.NAMESPACE, plan.RELEASE_NAMESPACE}
    (service,) = [s for s in by_kind["Service"] if s["metadata"]["name"] == f"{plan.RELEASE}-flotilla-gateway"]
    assert service["spec"]["type"] == "NodePort"

    # The operator accepts the configuration the chart renders from these values.
    from flotilla.config import load_config

    (config_map,) = by_kind["ConfigMap"]
    config_file = tmp_path / "config.yaml"
    config_file.write_text(config_map["data"]["config.yaml"])
    config = load_config({"FLOTILLA_CONFIG": str(config_file)})
    assert config.namespaces == [plan.NAMESPACE] and config.create_artifact_pvc
    # local-path (`standard`) offers ReadWriteOnce only: the operator's claim asks for that.
    assert (config.artifact_storage_class, config.artifact_pvc_access_mode) == ("standard", "ReadWriteOnce")
    assert config.optimizer_image.endswith("flotilla-optimizer:0.1.0")
    assert config.triton_image.endswith("flotilla-triton:0.1.0")
    assert config.job_node_selector == config.serving_node_selector == {"flotilla.dev/kind-demo": "true"}

    # What `make kind-demo` does to the gateway Service: nodePort 30080, in the API server's range.
    service["spec"]["ports"][0]["nodePort"] = plan.GATEWAY_NODE_PORT

    store = [d for d in yaml.safe_load_all((KIND_DIR / "model-store.yaml").read_text()) if d]
    model = yaml.safe_load((REPO / "examples" / "01-smollm2" / "smallmodel.yaml").read_text())
    model["metadata"]["namespace"] = plan.NAMESPACE

    # A server-side dry run creates nothing, namespaces included: they must exist. Created here only
    # if absent, and then deleted again.
    created = [
        ns
        for ns in (plan.RELEASE_NAMESPACE, plan.NAMESPACE)
        if crd.kubectl("create", "namespace", ns, check=False).returncode == 0
    ]
    try:
        out = dry_run(crd, [d for d in docs if d["kind"] != "CustomResourceDefinition"])
        out += dry_run(crd, [d for d in store if d["kind"] != "Namespace"] + [model])
    finally:
        for ns in created:
            crd.kubectl("delete", "namespace", ns, "--wait=false", check=False)
    lines = out.strip().splitlines()
    assert all(line.endswith("(server dry run)") for line in lines), out
    applied = {line.split()[0] for line in lines}
    assert {
        f"deployment.apps/{plan.RELEASE}-flotilla",
        f"service/{plan.RELEASE}-flotilla-gateway",
        "persistentvolumeclaim/flotilla-models",
        f"pod/{plan.LOADER_POD}",
        f"smallmodel.flotilla.dev/{plan.MODEL}",
    } <= applied, out


def test_kind_values_pass_the_charts_schema_and_lint() -> None:
    """values.schema.json refuses unknown keys: `helm lint --strict` with the kind values."""
    proc = subprocess.run(
        [str(helm_binary()), "lint", "--strict", str(CHART), "-f", str(KIND_DIR / "values.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_chart_takes_no_node_port_so_the_demo_patches_it(crd: Cluster) -> None:
    """Why `make kind-demo` patches the gateway Service's nodePort after installing: the chart's
    schema has no such value and refuses it (the chart is not this change's to edit)."""
    proc = subprocess.run(
        [str(helm_binary()), "template", "r", str(CHART), "-f", str(KIND_DIR / "values.yaml"),
         "--set", f"gateway.service.nodePort={plan.GATEWAY_NODE_PORT}"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip
    assert proc.returncode != 0 and "nodePort" in proc.stderr, proc.stderr


def helm_binary() -> Path:
    from .test_chart import helm_path

    return helm_path()
