"""The Helm chart: lints, renders, installs, and its RBAC is enough to run the operator.

The operator is run here as a local process authenticated as the chart's ServiceAccount
(a token from the TokenRequest API), so a missing rule shows up as a real 403.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from flotilla.api.v1alpha1 import artifact_key
from flotilla.api.v1alpha1.spec import SmallModelSpec
from localcluster.cluster import Cluster, wait_for
from localcluster.versions import bin_dir, load_versions

from .conftest import CRD, NO_NODE, Operator, get

pytestmark = pytest.mark.cluster
CHART = Path(__file__).resolve().parents[2] / "charts" / "flotilla"


def helm_path() -> Path:
    path = bin_dir("helm", load_versions().helm) / "helm"
    if not path.is_file():
        pytest.fail(f"helm is not built ({path}): run `make cluster-binaries`", pytrace=False)
    return path


def helm(cluster: Cluster, *args: str) -> str:
    proc = subprocess.run(
        [str(helm_path()), *args], env=cluster.env(), capture_output=True, text=True, timeout=180, check=False
    )
    assert proc.returncode == 0, f"helm {' '.join(args)}: {proc.stderr}"
    return proc.stdout


@pytest.mark.parametrize("values", [None, "namespaced-values.yaml"])
def test_chart_lints(values: str | None) -> None:
    """With the default values and with a per-namespace release's (charts/flotilla/ci/)."""
    args = [str(helm_path()), "lint", str(CHART), "--strict"]
    if values:
        args += ["-f", str(CHART / "ci" / values)]
    proc = subprocess.run(args, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


def test_chart_renders_the_operator_and_its_config(crd: Cluster) -> None:
    docs = [
        d
        for d in yaml.safe_load_all(
            helm(
                crd,
                "template",
                "rel",
                str(CHART),
                "--kube-version",
                crd.server_version,
                "--set",
                "config.namespaces={a,b}",
            )
        )
        if d
    ]
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(
        ["CustomResourceDefinition"]  # crds.install (default true)
        + ["ClusterRole", "ClusterRoleBinding", "ConfigMap", "Deployment", "Service", "ServiceAccount"]
        + ["Deployment", "Service", "ServiceAccount"]  # the gateway
        + ["Role", "RoleBinding"] * 2  # the gateway's read rights in each served namespace (a, b)
        + ["Role", "RoleBinding"]  # the operator's Lease (leader election)
    )
    gateway = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-gateway"))
    env = {e["name"]: e.get("value") for e in gateway["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["FLOTILLA_GATEWAY_NAMESPACES"] == "a,b"
    operator = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "rel-flotilla")
    assert operator["spec"]["replicas"] == 2 and operator["spec"]["strategy"]["type"] == "RollingUpdate"
    selector = operator["spec"]["selector"]["matchLabels"]
    pod_labels = gateway["spec"]["template"]["metadata"]["labels"]
    assert not all(pod_labels.get(k) == v for k, v in selector.items())  # the operator never selects them
    config = yaml.safe_load(next(d for d in docs if d["kind"] == "ConfigMap")["data"]["config.yaml"])
    assert config["namespaces"] == ["a", "b"]
    from flotilla.config import load_config

    path = Path("/tmp") / f"flotilla-chart-config-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(config))
    loaded = load_config({"FLOTILLA_CONFIG": str(path)})
    assert loaded.namespaces == ["a", "b"]  # the operator accepts it
    # Scale from zero: the operator reads this release's gateway pods, and only those.
    assert loaded.gateway_pods_labels and all(pod_labels.get(k) == v for k, v in loaded.gateway_pods_labels.items())
    assert loaded.gateway_pods_namespace == gateway["metadata"]["namespace"]
    assert {p["containerPort"] for p in gateway["spec"]["template"]["spec"]["containers"][0]["ports"]} == {
        loaded.gateway_pods_port
    }


@pytest.fixture
def release(crd: Cluster, namespace: str, tmp_path: Path) -> Iterator[tuple[str, str]]:
    name, ns = f"r{uuid.uuid4().hex[:6]}", f"flotilla-system-{uuid.uuid4().hex[:6]}"
    values = tmp_path / "values.yaml"
    # No simulated node fakes the operator's or the gateway's pods; the gateway serves `namespace`.
    gateway = {"nodeSelector": NO_NODE, "namespaces": [namespace], "apiKeysSecret": "gateway-keys"}
    # The session's CRD is applied by the `crd` fixture, not owned by these releases.
    values.write_text(yaml.safe_dump({"nodeSelector": NO_NODE, "gateway": gateway, "crds": {"install": False}}))
    helm(crd, "install", name, str(CHART), "-n", ns, "--create-namespace", "-f", str(values))
    yield name, ns
    helm(crd, "uninstall", name, "-n", ns)
    crd.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def token_kubeconfig(cluster: Cluster, namespace: str, service_account: str, path: Path) -> Path:
    token = cluster.kubectl("create", "token", service_account, "-n", namespace, "--duration=1h").stdout.strip()
    config: dict[str, Any] = yaml.safe_load(cluster.kubeconfig.read_text())
    config["users"] = [{"name": "sa", "user": {"token": token}}]
    for context in config["contexts"]:
        context["context"]["user"] = "sa"
    path.write_text(yaml.safe_dump(config))
    return path


def test_operator_runs_under_the_chart_rbac(
    crd: Cluster, release: tuple[str, str], namespace: str, tmp_path: Path
) -> None:
    name, ns = release
    deployment = crd.kubectl_json("get", "deployment", f"{name}-flotilla", "-n", ns)
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == f"{name}-flotilla"

    account = f"system:serviceaccount:{ns}:{name}-flotilla"
    assert can_i(crd, account, "update", "leases.coordination.k8s.io", ns)
    assert not can_i(crd, account, "update", "leases.coordination.k8s.io", namespace)  # only its own namespace
    kubeconfig = token_kubeconfig(crd, ns, f"{name}-flotilla", tmp_path / "sa-kubeconfig")
    # With the chart's leader election: the Lease is taken under the chart's Role.
    leader = {"FLOTILLA_LEADER_ELECTION": "true", "FLOTILLA_LEADER_ELECTION_NAMESPACE": ns}
    operator = Operator(crd, namespace, tmp_path, **leader)
    operator.kubeconfig = kubeconfig
    operator.start()
    try:
        spec = {"source": {"uri": "hf://HuggingFaceTB/SmolLM2-135M-Instruct"}}
        body = {"apiVersion": "flotilla.dev/v1alpha1", "kind": "SmallModel", "metadata": {"name": "rbac"}, "spec": spec}
        crd.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(body))
        parsed = SmallModelSpec.model_validate(spec)
        job = f"rbac-opt-{artifact_key(parsed.source, parsed.optimize)[:8]}"
        wait_for(lambda: get(crd, "job", namespace, job), timeout=90, what="the Job created under the chart's role")
        wait_for(
            lambda: get(crd, "pvc", namespace, "flotilla-artifacts"), timeout=30, what="the artifact claim created"
        )

        def status_written() -> bool:
            status = crd.kubectl_json("get", "smallmodel", "rbac", "-n", namespace).get("status", {})
            return bool(status.get("conditions"))

        wait_for(status_written, timeout=60, what="status written under the chart's role")
        events = crd.kubectl_json("get", "events", "-n", namespace, "--field-selector", "involvedObject.name=rbac")
        assert "OptimizationStarted" in [e["reason"] for e in events["items"]]
    finally:
        crd.kubectl("delete", "smallmodel", "rbac", "-n", namespace, "--timeout=60s", check=False)  # finalizer
        operator.stop()
    log = operator.log()
    assert "403" not in log and "Forbidden" not in log and "forbidden" not in log, log[-3000:]


def can_i(cluster: Cluster, account: str, verb: str, resource: str, namespace: str, name: str = "") -> bool:
    args = ["auth", "can-i", verb, resource + (f"/{name}" if name else ""), "-n", namespace, "--as", account]
    return cluster.kubectl(*args, check=False).stdout.strip() == "yes"


def test_gateway_runs_under_the_chart_rbac_and_reads_nothing_else(
    crd: Cluster, release: tuple[str, str], namespace: str, tmp_path: Path
) -> None:
    from flotilla.gateway.testing import GatewayProcess

    name, ns = release
    account = f"system:serviceaccount:{ns}:{name}-flotilla-gateway"
    assert can_i(crd, account, "watch", "smallmodels.flotilla.dev", namespace)
    assert can_i(crd, account, "list", "endpointslices.discovery.k8s.io", namespace)
    assert not can_i(crd, account, "list", "smallmodels.flotilla.dev", "default")  # not a served namespace
    assert not can_i(crd, account, "patch", "smallmodels.flotilla.dev", namespace)  # it writes nothing
    assert not can_i(crd, account, "get", "secrets", namespace)
    assert can_i(crd, account, "get", "secrets", ns, "gateway-keys")
    assert not can_i(crd, account, "get", "secrets", ns, "other-secret")

    key = {"demo": json.dumps({"key": "sk-chart-test"})}
    crd.kubectl(
        "create", "secret", "generic", "gateway-keys", "-n", ns, *[f"--from-literal={k}={v}" for k, v in key.items()]
    )
    kubeconfig = token_kubeconfig(crd, ns, f"{name}-flotilla-gateway", tmp_path / "gw-kubeconfig")
    gateway = GatewayProcess(
        kubeconfig,
        tmp_path / "gateway.log",
        {
            "FLOTILLA_GATEWAY_NAMESPACES": namespace,
            "FLOTILLA_GATEWAY_OWN_NAMESPACE": ns,
            "FLOTILLA_GATEWAY_API_KEYS_SECRET": "gateway-keys",
        },
    ).start()
    try:
        # Ready only after every watch (SmallModels, EndpointSlices, the keys Secret) listed.
        wait_for(lambda: gateway.get("/readyz")[0] == 200, timeout=60, what="the gateway ready under its chart role")
        assert gateway.get("/v1/models")[0] == 401  # the keys Secret was read: no key, no answer
    finally:
        gateway.stop()
    log = gateway.log()
    assert "403" not in log and "orbidden" not in log, log[-3000:]


def test_two_operators_without_leader_election_are_refused_by_the_chart(crd: Cluster) -> None:
    args = ["template", "rel", str(CHART), "--set", "leaderElection.enabled=false"]
    proc = subprocess.run([str(helm_path()), *args], env=crd.env(), capture_output=True, text=True, check=False)
    assert proc.returncode != 0 and "replicas > 1 needs leaderElection.enabled" in proc.stderr
    single = helm(crd, *args, "--set", "replicas=1")
    docs = [d for d in yaml.safe_load_all(single) if d]
    operator = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "rel-flotilla")
    assert operator["spec"]["strategy"]["type"] == "Recreate"


def rendered(cluster: Cluster, *args: str) -> list[dict[str, Any]]:
    out = helm(cluster, "template", "rel", str(CHART), "--kube-version", cluster.server_version, *args)
    return [d for d in yaml.safe_load_all(out) if d]


def crd_documents(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == "CustomResourceDefinition"]


def test_chart_crd_is_the_generated_crd(crd: Cluster) -> None:
    """The chart's CRD template renders exactly crds/ plus the keep annotation: no drift."""
    (chart_crd,) = crd_documents(rendered(crd))
    assert chart_crd["metadata"].pop("annotations") == {"helm.sh/resource-policy": "keep"}
    assert chart_crd == yaml.safe_load(CRD.read_text())
    (not_kept,) = crd_documents(rendered(crd, "--set", "crds.keep=false"))
    assert "annotations" not in not_kept["metadata"]
    assert crd_documents(rendered(crd, "--set", "crds.install=false")) == []


def crd_description(cluster: Cluster) -> str:
    crd_object = cluster.kubectl_json("get", "crd", "smallmodels.flotilla.dev")
    description: str = crd_object["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["description"]
    return description


def test_helm_upgrade_updates_the_crd_and_uninstall_keeps_it(crd: Cluster, namespace: str, tmp_path: Path) -> None:
    """The session's CRD (applied with kubectl) is adopted by a release as README.md says for an
    install from before the CRD was a template; upgraded with a changed schema; kept on uninstall."""
    name, ns = f"r{uuid.uuid4().hex[:6]}", f"flotilla-system-{uuid.uuid4().hex[:6]}"
    crd_name = "smallmodels.flotilla.dev"
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"nodeSelector": NO_NODE, "gateway": {"enabled": False}}))
    original = crd_description(crd)
    changed = tmp_path / "flotilla"
    shutil.copytree(CHART, changed)
    template = changed / "templates" / "crds" / "smallmodels.yaml"
    template.write_text(template.read_text().replace(original, original + " Upgraded by helm."))
    try:
        crd.kubectl("label", "crd", crd_name, "app.kubernetes.io/managed-by=Helm", "--overwrite")
        crd.kubectl(
            "annotate", "crd", crd_name, f"meta.helm.sh/release-name={name}",
            f"meta.helm.sh/release-namespace={ns}", "--overwrite",
        )  # fmt: skip
        helm(crd, "install", name, str(CHART), "-n", ns, "--create-namespace", "-f", str(values))
        annotations = crd.kubectl_json("get", "crd", crd_name)["metadata"]["annotations"]
        assert annotations["helm.sh/resource-policy"] == "keep"
        assert crd_description(crd) == original

        helm(crd, "upgrade", name, str(changed), "-n", ns, "-f", str(values))
        assert crd_description(crd) == original + " Upgraded by helm."  # crds/ would have stayed as installed

        body = {
            "apiVersion": "flotilla.dev/v1alpha1",
            "kind": "SmallModel",
            "metadata": {"name": "kept"},
            "spec": {"source": {"uri": "hf://HuggingFaceTB/SmolLM2-135M-Instruct"}},
        }
        crd.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(body))
        helm(crd, "uninstall", name, "-n", ns)
        assert get(crd, "crd", "default", crd_name), "helm uninstall deleted the CRD"
        assert get(crd, "smallmodel", namespace, "kept"), "helm uninstall deleted a user's SmallModel"
        assert get(crd, "deployment", ns, f"{name}-flotilla") is None  # the rest is gone
    finally:
        helm_args = ["uninstall", name, "-n", ns, "--ignore-not-found"]
        subprocess.run([str(helm_path()), *helm_args], env=crd.env(), capture_output=True, check=False)
        crd.kubectl("delete", "smallmodel", "kept", "-n", namespace, "--ignore-not-found", check=False)
        crd.kubectl("delete", "namespace", ns, "--wait=false", check=False)
        # Back to the session's CRD, owned by nobody.
        crd.kubectl(
            "annotate", "crd", crd_name, "meta.helm.sh/release-name-", "meta.helm.sh/release-namespace-",
            "helm.sh/resource-policy-", check=False,
        )  # fmt: skip
        crd.kubectl("label", "crd", crd_name, "app.kubernetes.io/managed-by-", check=False)
        crd.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    assert crd_description(crd) == original


@pytest.mark.parametrize(
    ("setting", "error"),
    [
        ("replicsa=2", "additional properties 'replicsa' not allowed"),  # a typo
        ("replicas=two", "at '/replicas': got string, want integer"),  # a wrong type
        ("gateway.imge.tag=x", "additional properties 'imge' not allowed"),  # a typo one level down
        ("config.trafficSplit=weights", "at '/config/trafficSplit'"),  # not one of the choices
    ],
)
def test_values_schema_refuses_typos_and_wrong_types(setting: str, error: str) -> None:
    for command in (["lint", str(CHART), "--strict"], ["template", "rel", str(CHART)]):
        proc = subprocess.run(
            [str(helm_path()), *command, "--set", setting], capture_output=True, text=True, check=False
        )
        assert proc.returncode != 0 and error in proc.stdout + proc.stderr, (command, proc.stdout + proc.stderr)


def test_values_schema_accepts_what_the_chart_documents(crd: Cluster) -> None:
    docs = rendered(crd, "--set", "replicas=3", "--set", "gateway.service.type=NodePort", "--set", "global.x=1")
    operator = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "rel-flotilla")
    assert operator["spec"]["replicas"] == 3


def test_notes_say_what_to_do_next(crd: Cluster) -> None:
    install = ["install", "rel", str(CHART), "-n", "flo", "--dry-run=client", "--set", "crds.install=false"]
    notes = helm(crd, *install).split("NOTES:", 1)[1]
    assert "kubectl -n flo rollout status deployment/rel-flotilla" in notes  # the operator
    assert "get lease rel-flotilla" in notes
    assert "examples/01-smollm2/smallmodel-hf.yaml" in notes and (CHART.parents[1] / "examples/01-smollm2").is_dir()
    assert "http://rel-flotilla-gateway.flo.svc:80/v1" in notes  # the gateway address
    assert "No API keys are set" in notes
    keyed = helm(crd, *install, "--set", "gateway.apiKeysSecret=keys", "--set", "gateway.service.type=LoadBalancer")
    assert "No API keys" not in keyed and ".status.loadBalancer.ingress" in keyed
    no_gateway = helm(crd, *install, "--set", "gateway.enabled=false", "--set", "config.namespaces={a,b}")
    assert "gateway is off" in no_gateway and "kubectl apply -n a -f" in no_gateway


def test_pull_secrets_annotations_env_and_optimizer_job_settings(crd: Cluster, tmp_path: Path) -> None:
    values = {
        "imagePullSecrets": [{"name": "regcred"}],
        "podAnnotations": {"example.com/team": "ml"},
        "extraEnv": [{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}],
        "gateway": {"podAnnotations": {"example.com/gw": "yes"}, "extraEnv": [{"name": "TZ", "value": "UTC"}]},
        "config": {"optimizerCpu": 4, "optimizerMemory": "16Gi", "optimizerDeadlineSeconds": 900},
    }
    (tmp_path / "values.yaml").write_text(yaml.safe_dump(values))
    docs = rendered(crd, "-f", str(tmp_path / "values.yaml"))
    deployments = {d["metadata"]["name"]: d["spec"]["template"] for d in docs if d["kind"] == "Deployment"}
    operator, gateway = deployments["rel-flotilla"], deployments["rel-flotilla-gateway"]
    for pod in (operator, gateway):
        assert pod["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    assert operator["metadata"]["annotations"]["example.com/team"] == "ml"
    assert "checksum/config" in operator["metadata"]["annotations"]  # kept beside the user's
    assert gateway["metadata"]["annotations"] == {"example.com/gw": "yes"}
    operator_env = {e["name"]: e.get("value") for e in operator["spec"]["containers"][0]["env"]}
    assert operator_env["HTTPS_PROXY"] == "http://proxy:3128" and "POD_NAME" in operator_env
    gateway_env = {e["name"]: e.get("value") for e in gateway["spec"]["containers"][0]["env"]}
    assert gateway_env["TZ"] == "UTC" and "FLOTILLA_GATEWAY_NAMESPACES" in gateway_env

    from flotilla.config import load_config

    config = yaml.safe_load(next(d for d in docs if d["kind"] == "ConfigMap")["data"]["config.yaml"])
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    loaded = load_config({"FLOTILLA_CONFIG": str(path)})
    assert (loaded.optimizer_cpu, loaded.optimizer_memory, loaded.optimizer_deadline_seconds) == ("4", "16Gi", 900)
    defaults = yaml.safe_load(next(d for d in rendered(crd) if d["kind"] == "ConfigMap")["data"]["config.yaml"])
    path.write_text(yaml.safe_dump(defaults))
    default = load_config({"FLOTILLA_CONFIG": str(path)})
    assert default.optimizer_cpu == "2" and default.optimizer_memory == "12Gi"
    assert default.optimizer_deadline_seconds == 7200
    assert "imagePullSecrets" not in operator_pod_spec(rendered(crd))


def operator_pod_spec(docs: list[dict[str, Any]]) -> dict[str, Any]:
    deployment = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "rel-flotilla")
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return spec


def test_namespaced_values_render_a_release_per_namespace(crd: Cluster) -> None:
    docs = rendered(crd, "-f", str(CHART / "ci" / "namespaced-values.yaml"))
    assert crd_documents(docs) == []
    roles = sorted((d["metadata"]["namespace"], d["metadata"]["name"]) for d in docs if d["kind"] == "Role")
    assert roles == [("default", "rel-flotilla-gateway-keys"), ("team-a", "rel-flotilla-gateway")]


def test_install_yaml_is_fresh_and_the_api_server_accepts_it(crd: Cluster) -> None:
    """dist/install.yaml, for users without Helm: the chart as rendered now, and valid."""
    from localcluster import installyaml

    assert installyaml.main(["--check"]) == 0, "dist/install.yaml is stale: run `make install-yaml`"
    docs = [d for d in yaml.safe_load_all(installyaml.OUT.read_text()) if d]
    assert docs[0] == {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": "flotilla-system", "labels": {"app.kubernetes.io/part-of": "flotilla"}},
    }
    (plain_crd,) = crd_documents(docs)
    assert plain_crd == yaml.safe_load(CRD.read_text())
    # A server-side dry run puts nothing in place, the namespace included: it must exist.
    created = crd.kubectl("create", "namespace", installyaml.NAMESPACE, check=False).returncode == 0
    try:
        for mode in (["--server-side"], []):
            out = crd.kubectl("apply", *mode, "--dry-run=server", "-f", str(installyaml.OUT)).stdout
            assert "deployment.apps/flotilla-flotilla " in out and "(server dry run)" in out, out
    finally:
        if created:
            crd.kubectl("delete", "namespace", installyaml.NAMESPACE, "--wait=false", check=False)
    assert get(crd, "deployment", installyaml.NAMESPACE, "flotilla-flotilla") is None  # nothing applied
