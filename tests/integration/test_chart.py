"""The Helm chart: lints, renders, installs, and its RBAC is enough to run the operator.

The operator is run here as a local process authenticated as the chart's ServiceAccount
(a token from the TokenRequest API), so a missing rule shows up as a real 403.
"""

from __future__ import annotations

import json
import re
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
        + ["ClusterRole", "ClusterRoleBinding"]  # namespaced mode: cluster-wide reads only
        + ["ConfigMap", "Deployment", "Service", "ServiceAccount"]
        + ["Role", "RoleBinding"] * 2  # the operator's rights in each watched namespace (a, b)
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
def release(crd: Cluster, namespace: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    """A release in its own namespace; `request.param` "namespaced" makes it watch only `namespace`
    (config.namespaces), else it is cluster-wide (the default values)."""
    name, ns = f"r{uuid.uuid4().hex[:6]}", f"flotilla-system-{uuid.uuid4().hex[:6]}"
    values = tmp_path / "values.yaml"
    # No simulated node fakes the operator's or the gateway's pods; the gateway serves `namespace`.
    gateway = {"nodeSelector": NO_NODE, "namespaces": [namespace], "apiKeysSecret": "gateway-keys"}
    # The session's CRD is applied by the `crd` fixture, not owned by these releases.
    chosen: dict[str, Any] = {"nodeSelector": NO_NODE, "gateway": gateway, "crds": {"install": False}}
    if getattr(request, "param", "cluster") == "namespaced":
        chosen["config"] = {"namespaces": [namespace]}
    values.write_text(yaml.safe_dump(chosen))
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


# What the operator writes in a namespace it watches (charts/flotilla/templates/_helpers.tpl).
CHILD_WRITES = [
    ("create", "jobs.batch", ""),
    ("delete", "jobs.batch", ""),
    ("create", "deployments.apps", ""),
    ("update", "deployments.apps", "scale"),
    ("patch", "services", ""),
    ("create", "configmaps", ""),
    ("create", "persistentvolumeclaims", ""),
    ("create", "poddisruptionbudgets.policy", ""),
    ("create", "endpointslices.discovery.k8s.io", ""),
    ("create", "httproutes.gateway.networking.k8s.io", ""),
    ("patch", "smallmodels.flotilla.dev", ""),
    ("patch", "smallmodels.flotilla.dev", "status"),
    ("create", "events", ""),
    ("list", "events", ""),  # not a write: the Warnings of an artifact claim that does not bind
]


@pytest.mark.parametrize("release", ["cluster", "namespaced"], indirect=True)
def test_operator_runs_under_the_chart_rbac(
    crd: Cluster, release: tuple[str, str], namespace: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Cluster mode: its children anywhere; namespaced mode (config.namespaces=[namespace]): only in
    `namespace`, no write right elsewhere. Neither reads Secrets. Then the operator runs under it."""
    name, ns = release
    namespaced = request.node.callspec.params["release"] == "namespaced"
    deployment = crd.kubectl_json("get", "deployment", f"{name}-flotilla", "-n", ns)
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == f"{name}-flotilla"

    account = f"system:serviceaccount:{ns}:{name}-flotilla"
    assert can_i(crd, account, "update", "leases.coordination.k8s.io", ns)
    assert not can_i(crd, account, "update", "leases.coordination.k8s.io", namespace)  # only its own namespace
    other = f"elsewhere-{uuid.uuid4().hex[:6]}"  # a namespace the release does not watch
    for verb, resource, sub in CHILD_WRITES:
        assert can_i(crd, account, verb, resource, namespace, subresource=sub), (verb, resource, sub)
        assert can_i(crd, account, verb, resource, other, subresource=sub) != namespaced, (verb, resource, sub, other)
    assert can_i(crd, account, "list", "smallmodels.flotilla.dev", "", all_namespaces=True) != namespaced
    assert can_i(crd, account, "create", "deployments.apps", "", all_namespaces=True) != namespaced
    for where in (namespace, ns, other):
        assert not can_i(crd, account, "get", "secrets", where)  # it reads none
        assert not can_i(crd, account, "list", "secrets", where)
    # What kopf reads cluster-wide in either mode, and nothing more.
    assert can_i(crd, account, "watch", "namespaces", "", all_namespaces=True)
    assert can_i(crd, account, "watch", "customresourcedefinitions.apiextensions.k8s.io", "", all_namespaces=True)
    assert not can_i(crd, account, "create", "namespaces", "", all_namespaces=True)
    assert not can_i(crd, account, "patch", "customresourcedefinitions.apiextensions.k8s.io", "", all_namespaces=True)
    assert not can_i(crd, account, "create", "clusterroles.rbac.authorization.k8s.io", "", all_namespaces=True)
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


def can_i(
    cluster: Cluster,
    account: str,
    verb: str,
    resource: str,
    namespace: str,
    name: str = "",
    *,
    subresource: str = "",
    all_namespaces: bool = False,
) -> bool:
    """`kubectl auth can-i` as `account` (the API server's SelfSubjectAccessReview verdict)."""
    args = ["auth", "can-i", verb, resource + (f"/{name}" if name else ""), "--as", account]
    args += ["--all-namespaces"] if all_namespaces else ["-n", namespace]
    if subresource:
        args += ["--subresource", subresource]
    proc = cluster.kubectl(*args, check=False)
    answer = proc.stdout.strip()
    assert answer in {"yes", "no"}, proc.stdout + proc.stderr  # not an error read as "no"
    return answer == "yes"


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
    # A refused read logs a 403 or "Forbidden"; timestamps are cut first, since "15:46:59,403" also holds a 403.
    refused = re.search(r"\b403\b|[Ff]orbidden", re.sub(r"^\S+ \S+ ", "", log, flags=re.M))
    assert refused is None, log[-3000:]


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
    assert "write nowhere else" in no_gateway and "pull with the Secret" not in no_gateway
    pulls = ["--set", "imagePullSecrets[0].name=regcred", "--set", "metrics.dashboard.enabled=true"]
    pulling = helm(crd, *install, *pulls)
    assert "pull with the Secret(s) regcred" in pulling and "ConfigMap flo/rel-flotilla-dashboard" in pulling


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
    # The pods the operator creates pull with the same Secrets' names by default...
    assert loaded.image_pull_secrets == ["regcred"] and default.image_pull_secrets == []
    # ...or with their own list (in each SmallModel's namespace), or none.
    for own, expected in (["team-pull", "mirror"], ["team-pull", "mirror"]), ([], []):
        (tmp_path / "own.yaml").write_text(yaml.safe_dump({**values, "config": {"imagePullSecrets": own}}))
        docs = rendered(crd, "-f", str(tmp_path / "own.yaml"))
        assert operator_pod_spec(docs)["imagePullSecrets"] == [{"name": "regcred"}]  # the operator's own
        path.write_text(next(d for d in docs if d["kind"] == "ConfigMap")["data"]["config.yaml"])
        assert load_config({"FLOTILLA_CONFIG": str(path)}).image_pull_secrets == expected


def operator_pod_spec(docs: list[dict[str, Any]]) -> dict[str, Any]:
    deployment = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "rel-flotilla")
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return spec


READ = {"get", "list", "watch"}


def test_namespaced_values_render_a_release_per_namespace(crd: Cluster) -> None:
    """Roles in the watched namespaces only; cluster-wide, only reads of what kopf follows."""
    docs = rendered(crd, "-f", str(CHART / "ci" / "namespaced-values.yaml"))
    assert crd_documents(docs) == []
    roles = sorted((d["metadata"]["namespace"], d["metadata"]["name"]) for d in docs if d["kind"] == "Role")
    assert roles == [
        ("default", "rel-flotilla-gateway-keys"),
        ("team-a", "rel-flotilla"),
        ("team-a", "rel-flotilla-gateway"),
        ("team-b", "rel-flotilla"),
    ]  # no Lease Role: leader election is off in these values
    bindings = sorted((d["metadata"]["namespace"], d["roleRef"]["name"]) for d in docs if d["kind"] == "RoleBinding")
    assert ("team-a", "rel-flotilla") in bindings and ("team-b", "rel-flotilla") in bindings
    (cluster_role,) = [d for d in docs if d["kind"] == "ClusterRole"]
    assert {r for rule in cluster_role["rules"] for r in rule["resources"]} == {
        "namespaces",
        "customresourcedefinitions",
    }
    assert all(set(rule["verbs"]) <= READ for rule in cluster_role["rules"])
    # The Roles carry the same rules as the cluster mode's ClusterRole, less the cluster-wide reads.
    (wide,) = [d for d in rendered(crd) if d["kind"] == "ClusterRole"]
    team_a = next(
        d for d in docs if d["kind"] == "Role" and (d["metadata"]["namespace"], d["metadata"]["name"]) == roles[1]
    )
    assert team_a["rules"] + cluster_role["rules"] == wide["rules"]
    assert not any("secrets" in rule["resources"] for rule in wide["rules"])


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


DASHBOARD = CHART / "dashboards" / "flotilla-fleet.json"


def monitoring(docs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The PodMonitors and the dashboard ConfigMaps among rendered documents."""
    pod_monitors = [d for d in docs if d["kind"] == "PodMonitor"]
    dashboards = [d for d in docs if d["kind"] == "ConfigMap" and "grafana_dashboard" in d["metadata"]["labels"]]
    return pod_monitors, dashboards


def test_pod_monitors_and_dashboard_render_only_when_enabled(crd: Cluster) -> None:
    from flotilla.api.v1alpha1 import SmallModel
    from flotilla.config import OperatorConfig
    from flotilla.resources import serving

    assert monitoring(rendered(crd)) == ([], [])  # neither by default
    on = ["--set", "metrics.podMonitor.enabled=true", "--set", "metrics.dashboard.enabled=true"]
    pod_monitors, (dashboard,) = monitoring(rendered(crd, *on, "--set", "metrics.podMonitor.labels.release=kps"))
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["flotilla-fleet.json"]) == json.loads(DASHBOARD.read_text())
    by_name = {d["metadata"]["name"]: d for d in pod_monitors}
    assert set(by_name) == {"rel-flotilla-serving", "rel-flotilla-gateway"}
    assert all(d["metadata"]["labels"]["release"] == "kps" for d in pod_monitors)

    # The serving PodMonitor selects the pods the operator's builder makes, on Triton's metrics port.
    body = {
        "apiVersion": "flotilla.dev/v1alpha1",
        "kind": "SmallModel",
        "metadata": {"name": "chat", "namespace": "ml", "uid": "u"},
        "spec": {"source": {"uri": "hf://HuggingFaceTB/SmolLM2-135M-Instruct"}},
    }
    pod = serving.build_deployment(SmallModel.from_body(body), "rev0000000", "k" * 20, "chat", OperatorConfig())
    pod_labels = pod["spec"]["template"]["metadata"]["labels"]
    container = pod["spec"]["template"]["spec"]["containers"][0]
    monitor = by_name["rel-flotilla-serving"]["spec"]
    assert monitor["selector"]["matchLabels"].items() <= pod_labels.items()
    (endpoint,) = monitor["podMetricsEndpoints"]
    assert {"name": endpoint["port"], "containerPort": serving.METRICS_PORT} in container["ports"]
    # Relabelled from pod labels the builder really sets (Prometheus' meta label spelling of them).
    for relabel in endpoint["relabelings"]:
        (source,) = relabel["sourceLabels"]
        assert any(source == "__meta_kubernetes_pod_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", k) for k in pod_labels)
    assert monitor["namespaceSelector"] == {"any": True}
    (namespaced,) = [
        d for d in rendered(crd, *on, "--set", "config.namespaces={a,b}") if d["kind"] == "PodMonitor"
        if d["metadata"]["name"] == "rel-flotilla-serving"
    ]  # fmt: skip
    assert namespaced["spec"]["namespaceSelector"] == {"matchNames": ["a", "b"]}
    # The gateway's PodMonitor selects the gateway's pods, on the port its /metrics is served.
    docs = rendered(crd, *on)
    gateway = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "rel-flotilla-gateway")
    gateway_monitor = next(d for d in docs if d["kind"] == "PodMonitor" and d["metadata"]["name"].endswith("-gateway"))
    template = gateway["spec"]["template"]
    assert gateway_monitor["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    ports = {p["name"] for p in template["spec"]["containers"][0]["ports"]}
    assert gateway_monitor["spec"]["podMetricsEndpoints"][0]["port"] in ports
    off = rendered(crd, *on, "--set", "gateway.enabled=false")
    assert [d["metadata"]["name"] for d in monitoring(off)[0]] == ["rel-flotilla-serving"]


def test_monitors_are_accepted_by_the_prometheus_operators_own_crds(crd: Cluster) -> None:
    """The ServiceMonitor and PodMonitors as rendered, against the Prometheus operator's real CRDs
    (cached by `localcluster build`): the API server accepts them with strict field validation,
    and refuses the same documents with a misspelt field or a wrongly typed one, so the schema is
    really applied."""
    from localcluster.monitoringcrds import crd_paths

    for path in crd_paths():
        crd.kubectl("apply", "--server-side", "-f", str(path))
    for name in ("servicemonitors", "podmonitors"):
        crd.kubectl("wait", "--for=condition=Established", f"crd/{name}.monitoring.coreos.com", "--timeout=60s")
    on = ["--set", "metrics.serviceMonitor.enabled=true", "--set", "metrics.podMonitor.enabled=true"]
    monitors = [d for d in rendered(crd, *on) if d["kind"] in {"ServiceMonitor", "PodMonitor"}]
    assert sorted(d["kind"] for d in monitors) == ["PodMonitor", "PodMonitor", "ServiceMonitor"]

    def dry_run(docs: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
        text = yaml.safe_dump_all(docs)
        return crd.kubectl("apply", "--dry-run=server", "--validate=strict", "-f", "-", input=text, check=False)

    accepted = dry_run(monitors)
    assert accepted.returncode == 0, accepted.stderr
    assert accepted.stdout.count("(server dry run)") == 3, accepted.stdout

    misspelt = json.loads(json.dumps(monitors[0]))
    misspelt["spec"]["endpoint"] = misspelt["spec"].pop(
        "endpoints" if misspelt["kind"] == "ServiceMonitor" else "podMetricsEndpoints"
    )
    refused = dry_run([misspelt])
    assert refused.returncode != 0 and 'unknown field "spec.endpoint"' in refused.stderr, refused.stderr
    pod_monitor = json.loads(json.dumps(next(d for d in monitors if d["kind"] == "PodMonitor")))
    pod_monitor["spec"]["podMetricsEndpoints"][0]["interval"] = 30  # a number where a duration is due
    refused = dry_run([pod_monitor])
    assert refused.returncode != 0 and "interval" in refused.stderr, refused.stderr


# How prometheus_client exposes a family's samples, by the family's type.
SAMPLE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
}
# Labels Triton puts on its nv_inference_* series (operator/flotilla/metrics/triton.py) and the
# ones the Prometheus operator adds to every PodMonitor target.
TRITON_LABELS = {"model", "version", "reason", "quantile"}
TARGET_LABELS = {"namespace", "pod", "container", "endpoint", "job", "instance"}


def exported_metrics() -> set[str]:
    """Every series name the code exports: the operator's and the gateway's registries as
    prometheus_client exposes them, and the Triton families the operator reads."""
    from flotilla import telemetry
    from flotilla.gateway.metrics import GatewayMetrics
    from flotilla.metrics.triton import COUNTERS, GAUGES, SUMMARY

    names: set[str] = set()
    for registry in (telemetry.REGISTRY, GatewayMetrics().registry):
        for family in registry.collect():
            names |= {family.name + suffix for suffix in SAMPLE_SUFFIXES[family.type]}
    # Triton's counters and gauges carry no suffix; its summary adds _sum and _count.
    return names | set(COUNTERS) | set(GAUGES) | {SUMMARY, f"{SUMMARY}_sum", f"{SUMMARY}_count"}


def dashboard_expressions(dashboard: dict[str, Any]) -> list[str]:
    """The PromQL of every panel target (rows included) and the selector of every label_values()
    variable, with the dashboard's variables and Grafana's built-ins put in."""
    values = {"__rate_interval": "1m", "__interval": "1m", "__range": "1h"}
    exprs: list[str] = []
    for variable in dashboard["templating"]["list"]:
        current = variable.get("current", {}).get("value")
        values[variable["name"]] = ".*" if variable.get("includeAll") else str(current)
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((.+),\s*\w+\)", variable["query"]["query"])
            assert match, variable
            exprs.append(match.group(1))
    panels = [p for top in dashboard["panels"] for p in [top, *top.get("panels", [])]]
    assert all(p["type"] == "row" or p["targets"] for p in panels)
    exprs += [t["expr"] for p in panels for t in p.get("targets", [])]

    def substitute(expr: str) -> str:
        out = re.sub(r"\$\{?(\w+)\}?", lambda m: values[m.group(1)], expr)
        assert "$" not in out, out
        return out

    return [substitute(e) for e in exprs]


def selectors(node: Any) -> Iterator[dict[str, Any]]:
    """Vector and matrix selectors in Prometheus' own parse tree (/api/v1/parse_query)."""
    if isinstance(node, dict):
        if node.get("type") in {"vectorSelector", "matrixSelector"} and "matchers" in node:
            yield node
        for child in node.values():
            yield from selectors(child)
    elif isinstance(node, list):
        for child in node:
            yield from selectors(child)


def test_dashboard_queries_parse_and_name_only_exported_metrics(crd: Cluster, tmp_path: Path) -> None:
    """Valid dashboard JSON whose every expression Prometheus parses, selecting only series the
    code exports (with the labels the serving PodMonitor gives Triton's); it covers latency vs
    objective, replicas, the canary split and optimization outcomes."""
    from localcluster import prometheus

    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    ids = [p["id"] for top in dashboard["panels"] for p in [top, *top.get("panels", [])]]
    assert len(ids) == len(set(ids))
    docs = rendered(crd, "--set", "metrics.podMonitor.enabled=true")
    serving_monitor = next(d for d in docs if d["kind"] == "PodMonitor" and d["metadata"]["name"].endswith("-serving"))
    relabelled = {r["targetLabel"] for r in serving_monitor["spec"]["podMetricsEndpoints"][0]["relabelings"]}
    exported = exported_metrics()
    used: set[str] = set()
    with prometheus.start({"scrape_configs": []}, tmp_path / "prometheus") as prom:
        for expr in dashboard_expressions(dashboard):
            tree = prom.api("parse_query", query=expr)  # a parse error raises PrometheusError
            for selector in selectors(tree):
                name = selector.get("name")
                assert name in exported, f"{name!r} is not a metric Flotilla or Triton exports: {expr}"
                used.add(name)
                if name.startswith("nv_"):
                    labels = {m["name"] for m in selector["matchers"]} - {"__name__"}
                    assert labels <= TRITON_LABELS | TARGET_LABELS | relabelled, (labels, expr)
    assert {
        "flotilla_gateway_request_duration_seconds_bucket",  # latency vs objective
        "nv_inference_request_summary_us",
        "flotilla_desired_replicas",  # replicas
        "flotilla_gateway_request_duration_seconds_count",  # canary traffic split
        "flotilla_optimization_jobs_total",  # optimization outcomes
        "flotilla_smallmodels",
    } <= used
