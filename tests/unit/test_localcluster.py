"""Pure parts of the local cluster: wrapper go.mod, build failures, node file, kwokctl config."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from localcluster import build, cluster, config, gatewayapi, nodes, procs, prometheus, supervisor
from localcluster.build import BuildError, Group
from localcluster.versions import Versions, load_versions

K8S_GOMOD = """\
// This is a generated file. Do not edit directly.
module k8s.io/kubernetes

go 1.24.0

godebug default=go1.24

require (
\tgithub.com/google/cel-go v0.26.0
\tk8s.io/api v0.0.0
\tk8s.io/client-go v0.0.0
\tk8s.io/kube-openapi v0.0.0-20250710124328-f3f2b991d03b
\tk8s.io/utils v0.0.0-20250604170112-4c0f3b243397
)

require (
\tk8s.io/cri-client v0.0.0 // indirect
)

replace (
\tk8s.io/api => ./staging/src/k8s.io/api
\tk8s.io/client-go => ./staging/src/k8s.io/client-go
\tk8s.io/cri-client => ./staging/src/k8s.io/cri-client
\tk8s.io/sample-controller => ./staging/src/k8s.io/sample-controller
)
"""

ETCD_GOMOD = """\
module go.etcd.io/etcd/server/v3

go 1.25.0

require go.etcd.io/etcd/api/v3 v3.6.16

replace go.etcd.io/etcd/api/v3 => ../api
"""


# ---------------------------------------------------------------- wrapper go.mod


def test_staging_modules_are_the_local_replaces_and_placeholders_only() -> None:
    staged = build.staging_modules(K8S_GOMOD)
    assert staged == ["k8s.io/api", "k8s.io/client-go", "k8s.io/cri-client", "k8s.io/sample-controller"]
    # Pseudo-versions are real published commits: replacing them would ask for v0.34.x
    # of modules that never had such a tag (the bug this guards against).
    assert "k8s.io/kube-openapi" not in staged
    assert "k8s.io/utils" not in staged


def test_wrapper_gomod_requires_release_and_pins_staging() -> None:
    text = build.wrapper_gomod(K8S_GOMOD, "k8s.io/kubernetes", "v1.34.4", "v0.34.4")
    lines = text.splitlines()
    assert "go 1.24.0" in lines
    assert "godebug default=go1.24" in lines
    assert "require k8s.io/kubernetes v1.34.4" in lines
    assert "\tk8s.io/api => k8s.io/api v0.34.4" in lines
    assert "\tk8s.io/cri-client => k8s.io/cri-client v0.34.4" in lines
    assert not any("kube-openapi" in ln for ln in lines)
    assert not any("./staging" in ln for ln in lines)


def test_wrapper_gomod_without_staging_version_has_no_replace() -> None:
    # etcd's own replaces point at sibling modules whose required versions are published.
    text = build.wrapper_gomod(ETCD_GOMOD, "go.etcd.io/etcd/server/v3", "v3.6.16", "")
    assert "replace" not in text
    assert "require go.etcd.io/etcd/server/v3 v3.6.16" in text
    assert "go 1.25.0" in text.splitlines()


def test_go_binary_name_skips_major_version_suffix() -> None:
    assert build.go_binary_name("go.etcd.io/etcd/server/v3") == "server"
    assert build.go_binary_name("k8s.io/kubernetes/cmd/kube-apiserver") == "kube-apiserver"
    assert build.go_binary_name("helm.sh/helm/v3/cmd/helm") == "helm"


def test_k8s_ldflags_set_the_real_version_for_kwokctl() -> None:
    flags = build.k8s_ldflags("v1.34.4")
    assert "-X k8s.io/component-base/version.gitVersion=v1.34.4" in flags
    assert "-X k8s.io/component-base/version.gitMinor=34" in flags
    assert "-X k8s.io/client-go/pkg/version.gitMajor=1" in flags


def test_helm_ldflags_set_default_capabilities_from_its_client_go() -> None:
    flags = build.helm_ldflags("v3.22.0", "module helm.sh/helm/v3\n\nrequire (\n\tk8s.io/client-go v0.37.0\n)\n")
    assert "-X helm.sh/helm/v3/internal/version.version=v3.22.0" in flags
    assert "-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=37" in flags
    assert "-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1" in flags


def test_versions_file_pins_every_group() -> None:
    versions = load_versions()
    groups = build.groups(versions, with_kubectl=False)
    names = [
        "kubernetes",
        "etcd",
        "kwok",
        "gateway-api",
        "prometheus-operator",
        "helm",
        "prometheus",
        "kstatus",
        "actionlint",
    ]
    names += ["kind", "versitygw", "kindconfig"]
    assert [g.name for g in groups] == names
    assert all(g.version.startswith("v") for g in groups)
    assert "kubectl" not in groups[0].binaries
    assert "kubectl" in build.groups(versions, with_kubectl=True)[0].binaries


# ---------------------------------------------------------------- build failures


def test_classify_network_failure_is_one_line_with_retry() -> None:
    output = (
        "go: downloading k8s.io/api v0.34.4\n"
        "go: k8s.io/api@v0.34.4: Get https://proxy.golang.org/k8s.io/api/@v/v0.34.4.zip: "
        "dial tcp: lookup proxy.golang.org: no such host\n"
    )
    message = build.classify_failure("go get", output)
    assert message.startswith("module download failed during go get:")
    assert "no such host" in message
    assert message.endswith(build.RETRY_HINT)
    assert "\n" not in message


def test_classify_reads_the_error_field_of_go_json_output() -> None:
    # `go mod download -json` ends with "}"; the cause is in its "Error" field.
    output = '{\n\t"Path": "go.etcd.io/etcd/server/v3",\n\t"Error": "x@v1: module lookup disabled by GOPROXY=off"\n}\n'
    message = build.classify_failure("go mod download", output)
    assert message == (
        "module download failed during go mod download: x@v1: module lookup disabled by GOPROXY=off; "
        + build.RETRY_HINT
    )


def test_classify_compile_failure_names_step_and_last_line() -> None:
    output = "k8s.io/apiserver/pkg/x\n# k8s.io/apiserver/pkg/x\n./x.go:3:1: syntax error: unexpected }\n"
    message = build.classify_failure("go build", output)
    assert message == f"go build failed: ./x.go:3:1: syntax error: unexpected }}; {build.RETRY_HINT}"


def test_no_go_on_path_is_a_one_line_cause(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.which", lambda _name: None)
    with pytest.raises(BuildError, match=r"Go is not installed .* retry with: make cluster-binaries"):
        build.ensure_binaries(load_versions())


def _group(name: str, step: object) -> Group:
    def builder(work: Path, out: Path) -> None:
        (out / "tool").write_bytes(b"\x7fELF half")  # a binary that is half-written...
        (work / "build.log").write_text("compiling\nboom\n")
        if isinstance(step, BaseException):
            raise step  # ...when the build fails halfway

    return Group(name, "v9.9.9", ("tool",), builder)


def test_failed_build_leaves_no_binary_in_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FLOTILLA_CACHE", str(tmp_path))
    group = _group("demo", BuildError("go build failed: boom; retry with: make cluster-binaries"))
    with pytest.raises(BuildError):
        build.build_group(group)
    assert not group.dir.exists()
    assert not group.complete()
    assert list((tmp_path / "bin").iterdir()) == []  # the temporary build dir is gone too
    assert (tmp_path / "logs" / "build-demo.log").read_text() == "compiling\nboom\n"


def test_interrupted_build_leaves_no_binary_in_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FLOTILLA_CACHE", str(tmp_path))
    group = _group("demo", KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        build.build_group(group)
    assert not group.dir.exists()


def test_successful_build_is_renamed_into_place(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FLOTILLA_CACHE", str(tmp_path))
    group = _group("demo", None)
    build.build_group(group)
    assert group.complete()
    assert [p.name for p in (tmp_path / "bin").iterdir()] == ["demo-v9.9.9"]


# ---------------------------------------------------------------- node file


def test_checked_in_fleet_has_every_kind_of_node() -> None:
    manifests = {m["metadata"]["name"]: m for m in nodes.node_manifests(nodes.load_pools())}
    h100, l4, mig, cpu = manifests["h100-0"], manifests["l4-0"], manifests["a100-mig-0"], manifests["cpu-0"]
    assert h100["status"]["capacity"]["nvidia.com/gpu"] == "8"
    assert h100["metadata"]["labels"]["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    assert l4["status"]["allocatable"]["nvidia.com/gpu"] == "4"
    assert l4["metadata"]["labels"]["nvidia.com/gpu.memory"] == "23034"
    assert mig["status"]["capacity"]["nvidia.com/mig-1g.10gb"] == "14"
    assert mig["status"]["capacity"]["nvidia.com/gpu"] == "0"
    assert mig["metadata"]["labels"]["nvidia.com/mig.strategy"] == "mixed"
    assert cpu["spec"] == {}
    assert not any(k.startswith("nvidia.com/") for k in cpu["metadata"]["labels"])
    for manifest in manifests.values():
        assert manifest["metadata"]["annotations"] == {"kwok.x-k8s.io/node": "fake"}
        gpu = "nvidia.com/gpu.present" in manifest["metadata"]["labels"]
        assert (manifest["spec"].get("taints") == [{"key": "nvidia.com/gpu", "effect": "NoSchedule"}]) == gpu


def test_gfd_labels_for_a_gpu() -> None:
    gpu = nodes.Gpu(product="NVIDIA-L4", count=4, memory_mib=23034, family="ada-lovelace", compute="8.9")
    assert nodes.gfd_labels(gpu) == {
        "nvidia.com/gpu.present": "true",
        "nvidia.com/gpu.product": "NVIDIA-L4",
        "nvidia.com/gpu.count": "4",
        "nvidia.com/gpu.memory": "23034",
        "nvidia.com/gpu.family": "ada-lovelace",
        "nvidia.com/gpu.compute.major": "8",
        "nvidia.com/gpu.compute.minor": "9",
    }


def test_single_mig_strategy_advertises_instances_as_gpus() -> None:
    gpu = nodes.Gpu(product="NVIDIA-A100-SXM4-80GB", count=2, mig=nodes.Mig("single", {"1g.10gb": 7}))
    assert nodes.gpu_resources(gpu) == {"nvidia.com/gpu": "14"}


def test_defaults_apply_and_pools_override() -> None:
    text = "defaults: {cpu: '4', labels: {zone: a}}\npools:\n- {name: small, count: 2}\n- {name: big, cpu: '64'}\n"
    small, big = nodes.parse_pools(text)
    assert (small.cpu, small.count, small.labels) == ("4", 2, {"zone": "a"})
    assert (big.cpu, big.count) == ("64", 1)
    assert small.node_names() == ["small-0", "small-1"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("pools: []\n", None),
        ("nodes: []\n", "needs a `pools:` list"),
        ("pools:\n- {name: Bad_Name}\n", "name must be a DNS label"),
        ("pools:\n- {name: g, gpu: {product: NVIDIA L4, count: 1}}\n", "pool g: gpu.product"),
        ("pools:\n- {name: g, gpu: {product: X, count: 0}}\n", "pool g: gpu.count"),
        ("pools:\n- {name: m, gpu: {product: X, count: 1, mig: {devices: {1g.10: 7}}}}\n", "bad MIG profile"),
        (
            "pools:\n- {name: m, gpu: {product: X, count: 1, mig: {strategy: none, devices: {1g.10gb: 7}}}}\n",
            "strategy",
        ),
        ("pools:\n- {name: a, count: 2}\n- {name: a}\n", "duplicate node names ['a-0']"),
        ("pools: [\n", "not valid YAML"),
    ],
)
def test_bad_node_files_name_the_problem(text: str, message: str | None) -> None:
    if message is None:
        assert nodes.parse_pools(text) == []
        return
    with pytest.raises(nodes.NodeFileError, match=message.replace("[", r"\[").replace("]", r"\]")):
        nodes.parse_pools(text, Path("nodes.yaml"))


# ---------------------------------------------------------------- settings and kwokctl config


def test_ports_are_a_fixed_contiguous_range(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLOTILLA_CLUSTER_PORT_BASE", raising=False)
    ports = config.Settings.from_env().ports
    assert sorted(ports.values()) == list(range(config.DEFAULT_PORT_BASE, config.DEFAULT_PORT_BASE + 6))
    monkeypatch.setenv("FLOTILLA_CLUSTER_PORT_BASE", "20000")
    assert config.Settings.from_env().ports["kube-apiserver"] == 20000


@pytest.mark.parametrize("base", ["abc", "80", "65533"])
def test_bad_port_base_is_rejected(monkeypatch: pytest.MonkeyPatch, base: str) -> None:
    monkeypatch.setenv("FLOTILLA_CLUSTER_PORT_BASE", base)
    with pytest.raises(ValueError, match="FLOTILLA_CLUSTER_PORT_BASE"):
        config.Settings.from_env()


def _rendered(tmp_path: Path) -> list[dict[str, object]]:
    settings = config.Settings(state_dir=tmp_path, port_base=30100)
    versions = Versions("v1.34.4", "v3.6.16", "v0.8.0", "v3.22.0", "1.33")
    names = ["etcd", "etcdctl", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kwok"]
    binaries = {n: tmp_path / "bin" / n for n in names}
    return list(yaml.safe_load_all(config.render_kwokctl_config(settings, versions, binaries)))


def test_kwokctl_config_uses_local_binaries_loopback_and_fixed_ports(tmp_path: Path) -> None:
    ctl = _rendered(tmp_path)[0]
    options = ctl["options"]
    assert isinstance(options, dict)
    binaries = {k: v for k, v in options.items() if k.endswith("Binary")}
    assert len(binaries) == 7
    assert all(str(v).startswith(str(tmp_path)) for v in binaries.values())  # nothing to download
    assert options["bindAddress"] == "127.0.0.1"
    assert options["kubeAuthorization"] is True
    assert options["kubeApiserverPort"] == 30100
    assert options["kubeVersion"] == "v1.34.4"


def test_kwok_manages_only_annotated_nodes(tmp_path: Path) -> None:
    ctl = _rendered(tmp_path)[0]
    assert ctl["componentsPatches"] == [
        {
            "name": "kwok-controller",
            "extraArgs": [
                {"key": "manage-all-nodes", "value": "false", "override": True},
                {"key": "manage-nodes-with-annotation-selector", "value": "kwok.x-k8s.io/node=fake"},
            ],
        }
    ]


def test_stages_are_complete_and_pod_complete_has_the_manual_opt_out(tmp_path: Path) -> None:
    stages = {d["metadata"]["name"]: d for d in _rendered(tmp_path)[2:]}  # type: ignore[index]
    failures = {f"flotilla-{f}" for f in ("image-pull-backoff", "crash-loop", "oom-killed", "missing-secret")}
    upstream = {"node-initialize", "node-heartbeat-with-lease", "pod-ready", "pod-complete", "pod-delete"}
    assert set(stages) == upstream | failures
    expressions = stages["pod-complete"]["spec"]["selector"]["matchExpressions"]  # type: ignore[index]
    assert {
        "key": '.metadata.labels["kwok.flotilla.dev/complete"]',
        "operator": "NotIn",
        "values": ["manual"],
    } in expressions
    # pod-ready skips exactly the images the failure stages take, so no pod matches both.
    ready = stages["pod-ready"]["spec"]["selector"]["matchExpressions"]  # type: ignore[index]
    skipped = next(e["values"] for e in ready if e["key"] == ".spec.containers.[].image")
    taken = [
        next(e["values"] for e in stages[f]["spec"]["selector"]["matchExpressions"] if "image" in e["key"])  # type: ignore[index]
        for f in sorted(failures)
    ]
    assert sorted(skipped) == sorted(v for values in taken for v in values)


# ---------------------------------------------------------------- faults at bring-up


def test_port_in_use_is_a_one_line_cause(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        busy = sock.getsockname()[1]
        settings = config.Settings(state_dir=tmp_path, port_base=busy - 1)  # etcd gets the busy port
        with pytest.raises(cluster.ClusterError) as caught:
            cluster.check_ports(settings)
    message = str(caught.value)
    assert f"port {busy} (etcd)" in message
    assert f"pid {os.getpid()}" in message
    assert "FLOTILLA_CLUSTER_PORT_BASE" in message
    assert message.endswith("retry with: make cluster-up")
    assert "\n" not in message


def test_kwokctl_log_lines_are_reduced_to_their_message() -> None:
    line = (
        '{"time":"2026-11-29T00:38:17Z","level":"ERROR","source":{"function":"main.main"},'
        '"msg":"Execute exit","err":"failed to init node lease controller"}'
    )
    assert cluster._log_level(line) == "ERROR"
    assert cluster._log_message(line) == "Execute exit: failed to init node lease controller"
    assert cluster._log_message("Error: plain text") == "Error: plain text"


def test_kwokctl_failure_prefers_its_error_then_component_logs(tmp_path: Path) -> None:
    settings = config.Settings(state_dir=tmp_path, port_base=30100)
    logs = settings.cluster_dir / "logs"
    logs.mkdir(parents=True)
    (logs / "kube-apiserver.log").write_text("starting\nE0101 listen tcp 127.0.0.1:30100: bind: address in use\n")
    assert cluster._kwokctl_failure(['{"level":"INFO","msg":"Cluster is creating"}'], settings) == (
        "kube-apiserver: E0101 listen tcp 127.0.0.1:30100: bind: address in use"
    )
    failed = ['{"level":"ERROR","msg":"Failed to setup config","err":"boom"}']
    assert cluster._kwokctl_failure(failed, settings) == "Failed to setup config: boom"


def test_stale_pid_of_an_unrelated_process_is_never_ours(tmp_path: Path) -> None:
    # A pid file from a crashed run may name a pid the kernel gave to something else.
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "pids").mkdir()
        (tmp_path / "pids" / "kube-apiserver.pid").write_text(str(child.pid))
        assert procs.read_pid_files(tmp_path / "pids") == {"kube-apiserver": child.pid}
        assert not procs.is_ours(child.pid, str(tmp_path))
        settings = config.Settings(state_dir=tmp_path, port_base=30100)
        assert cluster._component_pids(settings)["kube-apiserver"] is None
    finally:
        child.kill()
        child.wait()


def test_stop_terminates_by_pid() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    assert procs.stop([child.pid], grace_s=5) == [child.pid]
    assert child.wait(timeout=10) is not None


def test_wait_for_returns_the_value_or_names_what_it_waited_for() -> None:
    values = iter([None, 0, "ready"])
    assert cluster.wait_for(lambda: next(values), timeout=5, interval=0, what="x") == "ready"

    def refuses() -> bool:
        raise ConnectionRefusedError("nobody home")

    with pytest.raises(TimeoutError, match=r"waiting for the API \(ConnectionRefusedError: nobody home\)"):
        cluster.wait_for(refuses, timeout=0, interval=0, what="the API", ignore=(OSError,))


def test_namespace_names_are_unique_dns_labels() -> None:
    from localcluster.pytest_plugin import namespace_name

    first = namespace_name("test_something[param-1/Ü]" * 5)
    assert len(first) <= 63
    assert first.startswith("t-test-something-param-1")
    assert first != namespace_name("test_something[param-1/Ü]" * 5)


# ---------------------------------------------------------------- Prometheus


def test_process_node_tests_run_after_every_kwok_only_test_and_before_restarts() -> None:
    """Once the process node has registered, an untargeted pod of a later KWOK-only test may be
    bound to it and really run there (never Ready): CI lost 11 tests that way."""
    from localcluster.pytest_plugin import RESTART_MARKER, pytest_collection_modifyitems

    class Item:
        def __init__(self, name: str, fixtures: tuple[str, ...], restart: bool = False) -> None:
            self.name, self.fixturenames, self.restart, self.markers = name, fixtures, restart, []

        def add_marker(self, marker: object) -> None:
            self.markers.append(marker)

        def get_closest_marker(self, name: str) -> object | None:
            return object() if name == RESTART_MARKER and self.restart else None

    items = [
        Item("gc", ("cluster", "process_node")),
        Item("restart", ("cluster",), restart=True),
        Item("kwok", ("cluster", "namespace")),
        Item("pure", ()),
        Item("e2e", ("cluster", "process_node")),
        Item("kwok2", ("namespace",)),
    ]
    pytest_collection_modifyitems(items)  # type: ignore[arg-type]
    assert [i.name for i in items] == ["kwok", "pure", "kwok2", "gc", "e2e", "restart"]
    assert all(i.markers for i in items if i.name != "pure")  # every cluster user is marked


def test_prometheus_module_version_maps_to_its_release() -> None:
    assert build.prometheus_release("v0.316.0") == "3.16.0"
    assert build.prometheus_release("v0.305.12") == "3.5.12"
    with pytest.raises(ValueError, match="PROMETHEUS_VERSION"):
        build.prometheus_release("v3.16.0")
    flags = build.prometheus_ldflags("v0.316.0")
    assert "-X github.com/prometheus/common/version.Version=3.16.0" in flags
    assert "-X github.com/prometheus/common/version.Revision=v0.316.0" in flags


def test_prometheus_group_builds_only_the_server_without_service_discovery() -> None:
    (group,) = [g for g in build.groups(load_versions(), with_kubectl=False) if g.name == "prometheus"]
    assert group.binaries == ("prometheus",)
    assert group.version.startswith("v0.3")
    assert "remove_all_sd" in build.PROMETHEUS_TAGS.split(",")
    assert prometheus.binary() == group.dir / "prometheus"


def test_prometheus_argv_is_loopback_with_lifecycle_and_short_retention(tmp_path: Path) -> None:
    args = prometheus.argv(Path("/bin/prometheus"), tmp_path / "p.yml", tmp_path / "data", 19090)
    assert args[0] == "/bin/prometheus"
    assert f"--config.file={tmp_path / 'p.yml'}" in args
    assert f"--storage.tsdb.path={tmp_path / 'data'}" in args
    assert "--web.listen-address=127.0.0.1:19090" in args
    assert "--web.enable-lifecycle" in args
    assert f"--storage.tsdb.retention.time={prometheus.RETENTION}" in args


def test_prometheus_scrape_config_renders_static_targets() -> None:
    text = prometheus.render_config(prometheus.scrape_config(["127.0.0.1:8000"], job="triton", interval="2s"))
    doc = yaml.safe_load(text)
    assert doc["global"]["scrape_interval"] == "2s"
    assert doc["scrape_configs"] == [
        {"job_name": "triton", "metrics_path": "/metrics", "static_configs": [{"targets": ["127.0.0.1:8000"]}]}
    ]
    raw = "scrape_configs: []\n"
    assert prometheus.render_config(raw) == raw
    with pytest.raises(ValueError, match="mapping"):
        prometheus.render_config("- not a mapping\n")


# ---------------------------------------------------------------- Gateway API CRDs

GATEWAY_PREFIX = "sigs.k8s.io/gateway-api@v1.7.0/"
GATEWAY_FILES = [
    "config/crd/standard/gateway.networking.k8s.io_httproutes.yaml",
    "config/crd/standard/gateway.networking.k8s.io_gateways.yaml",
    "config/crd/standard/gateway.networking.k8s.io_vap_safeupgrades.yaml",
    "config/crd/standard/kustomization.yaml",
    "config/crd/experimental/gateway.networking.k8s.io_httproutes.yaml",
    "config/crd/kustomization.yaml",
    "config/crd/standard/README.md",
    "pkg/test/config/crd/standard/x.yaml/not-a-file",
]


def test_gateway_api_standard_files_are_found_in_a_tree_or_a_module_zip() -> None:
    wanted = [
        "config/crd/standard/gateway.networking.k8s.io_gateways.yaml",
        "config/crd/standard/gateway.networking.k8s.io_httproutes.yaml",
        "config/crd/standard/gateway.networking.k8s.io_vap_safeupgrades.yaml",
    ]
    assert gatewayapi.standard_crd_files(GATEWAY_FILES) == wanted
    assert gatewayapi.standard_crd_files(GATEWAY_PREFIX + n for n in GATEWAY_FILES) == [
        GATEWAY_PREFIX + n for n in wanted
    ]


def _crd_yaml(plural: str) -> str:
    name = f"{plural}.gateway.networking.k8s.io"
    return yaml.safe_dump(
        {
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": name, "annotations": {gatewayapi.BUNDLE_ANNOTATION: "v1.7.0"}},
            "spec": {"group": "gateway.networking.k8s.io"},
        }
    )


VAP = "apiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingAdmissionPolicy\nmetadata: {name: x}\n---\n"


def test_gateway_api_module_zip_gives_only_crds(tmp_path: Path) -> None:
    import zipfile

    archive = tmp_path / "v1.7.0.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr(GATEWAY_PREFIX + GATEWAY_FILES[0], _crd_yaml("httproutes"))
        zipped.writestr(GATEWAY_PREFIX + GATEWAY_FILES[1], _crd_yaml("gateways"))
        zipped.writestr(GATEWAY_PREFIX + GATEWAY_FILES[2], VAP)
        zipped.writestr(GATEWAY_PREFIX + GATEWAY_FILES[4], _crd_yaml("experimental"))
    # The shape `go mod download -json` gives for a module that wants a newer Go: no Dir.
    info = {"Error": "requires go >= 1.27.0", "Zip": str(archive)}
    files = gatewayapi.read_module_files(info)
    assert sorted(files) == [
        "gateway.networking.k8s.io_gateways.yaml",
        "gateway.networking.k8s.io_httproutes.yaml",
        "gateway.networking.k8s.io_vap_safeupgrades.yaml",
    ]
    names = [c["metadata"]["name"] for c in gatewayapi.crd_documents(files.values())]
    assert sorted(names) == ["gateways.gateway.networking.k8s.io", "httproutes.gateway.networking.k8s.io"]

    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "work").mkdir()
    gatewayapi_fetch_with(info, tmp_path / "work", out)
    assert len(__import__("json").loads((out / gatewayapi.CRDS_FILE).read_text())) == 2
    assert (out / "standard" / "gateway.networking.k8s.io_httproutes.yaml").is_file()


def gatewayapi_fetch_with(info: dict[str, object], work: Path, out: Path) -> None:
    original = gatewayapi.module_download
    gatewayapi.module_download = lambda _module, _version, _work: info  # type: ignore[assignment]
    try:
        gatewayapi.fetch("v1.7.0", work, out)
    finally:
        gatewayapi.module_download = original


def test_gateway_api_extracted_module_dir_is_preferred(tmp_path: Path) -> None:
    standard = tmp_path / "config" / "crd" / "standard"
    standard.mkdir(parents=True)
    (standard / "gateway.networking.k8s.io_grpcroutes.yaml").write_text(_crd_yaml("grpcroutes"))
    (standard / "kustomization.yaml").write_text("resources: []\n")
    files = gatewayapi.read_module_files({"Dir": str(tmp_path), "Zip": "/nonexistent.zip"})
    assert list(files) == ["gateway.networking.k8s.io_grpcroutes.yaml"]


def test_gateway_api_missing_module_is_a_one_line_build_error(tmp_path: Path) -> None:
    info = {"Error": "sigs.k8s.io/gateway-api@v9.9.9: reading https://proxy.golang.org/...: 404 Not Found"}
    with pytest.raises(BuildError, match=r"^module download failed during go mod download: .*404 Not Found; retry"):
        gatewayapi_fetch_with(info, tmp_path, tmp_path)


@pytest.mark.parametrize(("value", "on"), [(None, True), ("1", True), ("0", False), ("false", False), ("OFF", False)])
def test_gateway_api_is_on_unless_switched_off(value: str | None, on: bool) -> None:
    environ = {} if value is None else {gatewayapi.ENV: value}
    assert gatewayapi.enabled(environ) is on


# ---------------------------------------------------------------- supervisor


def test_backoff_doubles_from_one_second_to_thirty() -> None:
    assert [supervisor.backoff_delay(n) for n in range(8)] == [0, 1, 2, 4, 8, 16, 30, 30]
    assert supervisor.backoff_delay(10_000) == supervisor.MAX_BACKOFF_S


def test_capture_reads_exact_argv_cwd_and_environment(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "import time; time.sleep(60)", "--flag=a b"]
    child = subprocess.Popen(argv, cwd=tmp_path, env={**os.environ, "LOCALCLUSTER_PROBE": "42"})
    try:
        # (Until the child has exec'd, /proc shows the forking Python's argv.)
        spec = cluster.wait_for(
            lambda: (s := supervisor.capture(child.pid)) and s.argv == tuple(argv) and s,
            timeout=10,
            interval=0.01,
            what="exec",
        )
        assert spec.argv == tuple(argv)
        assert spec.cwd == str(tmp_path)
        assert spec.env["LOCALCLUSTER_PROBE"] == "42"
    finally:
        child.kill()
        child.wait()
    assert supervisor.capture(child.pid) is None


def test_exit_descriptions() -> None:
    assert supervisor.describe_exit(-9) == "killed by SIGKILL"
    assert supervisor.describe_exit(1) == "exit status 1"
    assert "unknown" in supervisor.describe_exit(None)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _fake_component(settings: config.Settings, name: str) -> subprocess.Popen[bytes]:
    """A stand-in for a component: `sleep` run from a symlink in <cluster dir>/bin, as
    kwokctl runs the real ones (so procs.is_ours accepts it)."""
    cdir = settings.cluster_dir
    for sub in ("bin", "pids", "logs"):
        (cdir / sub).mkdir(parents=True, exist_ok=True)
    link = cdir / "bin" / name
    if not link.exists():
        link.symlink_to("/bin/sleep")
    child = subprocess.Popen([str(link), "300"], cwd=cdir, start_new_session=True)
    (cdir / "pids" / f"{name}.pid").write_text(str(child.pid))
    # Until the child has exec'd, /proc shows the forking Python's argv.
    cluster.wait_for(lambda: procs.is_ours(child.pid, str(cdir)), timeout=10, interval=0.01, what="exec")
    return child


def _kill(pid: int) -> None:
    import contextlib
    import signal

    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def test_supervisor_restarts_an_exited_component_with_backoff(tmp_path: Path) -> None:
    settings = config.Settings(state_dir=tmp_path, port_base=30100)
    first = _fake_component(settings, "kube-scheduler")
    clock = FakeClock()
    sup = supervisor.Supervisor(settings, clock=clock)
    pids_dir = settings.cluster_dir / "pids"
    try:
        sup.adopt()
        spec = sup.components["kube-scheduler"].spec
        assert spec is not None
        assert spec.argv == (str(settings.cluster_dir / "bin" / "kube-scheduler"), "300")
        sup.step()
        assert supervisor.restart_counts(settings) == {"kube-scheduler": 0}

        first.kill()
        first.wait()
        clock.now += 5
        sup.step()  # noticed: restart after 1 s
        component = sup.components["kube-scheduler"]
        assert component.state == "waiting"
        assert procs.read_pid_files(pids_dir)["kube-scheduler"] == first.pid
        clock.now += 1.5
        sup.step()
        second = procs.read_pid_files(pids_dir)["kube-scheduler"]
        assert second != first.pid
        assert procs.is_ours(second, str(settings.cluster_dir))
        assert supervisor.capture(second) == spec  # the same argv, cwd and environment
        assert supervisor.read_state(settings)["components"]["kube-scheduler"]["restarts"] == 1

        _kill(second)  # exits again after 1.5 s: a crash loop, so 2 s this time
        assert component.child is not None
        component.child.wait(timeout=10)
        clock.now += 1.5
        sup.step()
        assert component.failures == 2
        clock.now += 1.5
        sup.step()
        assert procs.read_pid_files(pids_dir)["kube-scheduler"] == second
        clock.now += 1.0
        sup.step()
        third = procs.read_pid_files(pids_dir)["kube-scheduler"]
        assert third not in (first.pid, second)
        log = (settings.cluster_dir / "logs" / "kube-scheduler.log").read_text()
        assert f"pid {first.pid} exited (exit status unknown" in log
        assert f"pid {second} exited (killed by SIGKILL after 2s" in log
        assert f"restarted as pid {third} (restart 2)" in log
    finally:
        for component in sup.components.values():
            if component.pid:
                _kill(component.pid)
            if component.child:
                component.child.wait()


def test_supervisor_waits_for_what_a_component_needs_and_leaves_stopped_ones(tmp_path: Path) -> None:
    settings = config.Settings(state_dir=tmp_path, port_base=30100)
    etcd = _fake_component(settings, "etcd")
    api = _fake_component(settings, "kube-apiserver")
    kwok = _fake_component(settings, "kwok-controller")
    clock = FakeClock()
    sup = supervisor.Supervisor(settings, clock=clock)
    pids_dir = settings.cluster_dir / "pids"
    try:
        sup.adopt()
        # kwok-controller stopped on purpose (kwokctl removes the pid file): left alone.
        (pids_dir / "kwok-controller.pid").unlink()
        kwok.kill()
        kwok.wait()
        # etcd and the API server both die, and etcd cannot start (its binary is gone): the
        # API server is not started before etcd runs again.
        for proc in (etcd, api):
            proc.kill()
            proc.wait()
        etcd_link = settings.cluster_dir / "bin" / "etcd"
        etcd_link.unlink()
        clock.now += 5
        sup.step()
        clock.now += 1.5
        sup.step()
        assert sup.components["etcd"].state == "waiting"
        assert procs.read_pid_files(pids_dir)["kube-apiserver"] == api.pid
        assert "restart failed" in (settings.cluster_dir / "logs" / "etcd.log").read_text()
        etcd_link.symlink_to("/bin/sleep")
        clock.now += 2.5  # the failed start counted: the next try is 2 s later
        sup.step()
        pids = procs.read_pid_files(pids_dir)
        assert pids["etcd"] != etcd.pid
        assert pids["kube-apiserver"] != api.pid  # in the same pass, after etcd
        assert "kwok-controller" not in procs.read_pid_files(pids_dir)
        assert sup.components["kwok-controller"].state == "stopped"
    finally:
        for component in sup.components.values():
            if component.pid:
                _kill(component.pid)
            if component.child:
                component.child.wait()


def test_status_lines_show_restarts_and_the_supervisor(tmp_path: Path) -> None:
    settings = config.Settings(state_dir=tmp_path, port_base=30100)
    status = cluster.Status(
        "running",
        "healthy",
        settings,
        {"kube-scheduler": 123, "etcd": 7},
        "v1.34.4",
        7,
        7,
        supervisor=99,
        restarts={"kube-scheduler": 2},
        gateway_api="v1.7.0",
    )
    lines = cluster.describe(status)
    assert any("kube-scheduler" in ln and "pid 123" in ln and "restarts: 2" in ln for ln in lines)
    assert any("etcd" in ln and "restarts: 0" in ln for ln in lines)
    assert any("supervisor" in ln and "pid 99" in ln for ln in lines)
    assert "gateway api: v1.7.0" in lines


def test_prometheus_operator_module_gives_its_two_monitor_crds(tmp_path: Path) -> None:
    import zipfile

    from localcluster import monitoringcrds

    prefix = "github.com/prometheus-operator/prometheus-operator@v0.89.0/example/prometheus-operator-crd/"
    archive = tmp_path / "v0.89.0.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for name in (*monitoringcrds.FILES, "monitoring.coreos.com_probes.yaml"):
            zipped.writestr(prefix + name, f"# {name}\n")
        zipped.writestr(prefix.replace("example/", "jsonnet/") + monitoringcrds.FILES[0], "# elsewhere\n")
    files = monitoringcrds.read_files({"Zip": str(archive)})
    assert files == {name: f"# {name}\n" for name in monitoringcrds.FILES}  # only these, from example/
    assert monitoringcrds.read_files({"Dir": str(tmp_path / "absent")}) == {}
