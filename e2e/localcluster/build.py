"""Build the control plane's binaries from Go modules, cached by version.

Kubernetes and etcd carry `replace` directives in their go.mod, so `go install pkg@ver`
refuses them; each is built through a throwaway wrapper module that requires the release
and restates the replacements with published versions. KWOK and helm `go install` cleanly.

Every group builds into a temporary directory next to its cache entry and is renamed into
place only when complete, so a failed or interrupted build never leaves a half-written
binary where the next run would trust it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .versions import (
    TOOLS_DIR,
    Versions,
    bin_dir,
    cache_root,
    kindconfig_version,
    kstatus_version,
    load_versions,
    manifests_dir,
)

RETRY_HINT = "retry with: make cluster-binaries"


class BuildError(RuntimeError):
    """A one-line cause, fit to print as the last line of a failed `make`."""


@dataclass(frozen=True)
class Group:
    name: str
    version: str
    binaries: tuple[str, ...]
    build: Callable[[Path, Path], None]  # (workdir, outdir) -> None
    manifests: bool = False  # upstream files rather than binaries: cached under manifests/

    @property
    def dir(self) -> Path:
        return manifests_dir(self.name, self.version) if self.manifests else bin_dir(self.name, self.version)

    def complete(self) -> bool:
        return all((self.dir / b).is_file() for b in self.binaries)


def go_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        GOTOOLCHAIN="local",  # never fetch another toolchain behind the user's back
        GOFLAGS="-mod=mod",
        GOWORK="off",
        CGO_ENABLED="0",  # the control plane binaries are static upstream too
    )
    return env


def log(message: str) -> None:
    print(f"[cluster-binaries] {message}", flush=True)


NETWORK_MARKERS = (
    "dial tcp",
    "no such host",
    "connection refused",
    "timeout",
    "TLS handshake",
    "proxy.golang.org",
    "GOPROXY",
    "unknown revision",
    "403 Forbidden",
    "404 Not Found",
    "410 Gone",
    "reading https://",
    "verifying module",
)


def _telling_line(output: str) -> str:
    """The line that says what went wrong: `go ... -json`'s "Error" field, else the last line
    that reads like an error, else the last line."""
    errors = re.findall(r'^\s*"Error":\s*"((?:[^"\\]|\\.)*)"', output, re.M)
    if errors:
        return str(json.loads(f'"{errors[-1]}"'))
    lines = [ln.strip() for ln in output.strip().splitlines() if ln.strip()]
    pattern = re.compile(r"^go: |error|failed|cannot|forbidden|not found|undefined|no such", re.I)
    telling = [ln for ln in lines if pattern.search(ln)]
    return (telling or lines or ["(no output)"])[-1]


def classify_failure(step: str, output: str) -> str:
    """One line: what failed, the telling line of its output, and how to retry."""
    last = _telling_line(output)
    if any(marker in output for marker in NETWORK_MARKERS):
        return f"module download failed during {step}: {last}; {RETRY_HINT}"
    return f"{step} failed: {last}; {RETRY_HINT}"


def run_go(args: Sequence[str], cwd: Path, step: str, log_file: Path, env: dict[str, str] | None = None) -> str:
    """Run one go command, printing a heartbeat so a long build never looks hung."""
    started = time.monotonic()
    compiled = downloaded = 0
    output: list[str] = []
    proc = subprocess.Popen(
        ["go", *args],
        cwd=cwd,
        env={**go_env(), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    done = threading.Event()

    def heartbeat() -> None:
        while not done.wait(20):
            elapsed = int(time.monotonic() - started)
            fetched = f"{downloaded} modules downloaded, " if downloaded else ""
            log(f"  {step}: {fetched}{compiled} packages compiled, {elapsed // 60}m{elapsed % 60:02d}s")

    beat = threading.Thread(target=heartbeat, daemon=True)
    beat.start()
    assert proc.stdout is not None
    with log_file.open("a") as sink:
        for line in proc.stdout:
            sink.write(line)
            output.append(line)
            # `go build -v` prints one import path per package it compiles; module fetches
            # print "go: downloading <module> <version>" (a cold `go get` is minutes of these).
            if re.fullmatch(r"[\w.\-/]+", line.strip()):
                compiled += 1
            elif line.startswith("go: downloading "):
                downloaded += 1
    code = proc.wait()
    done.set()
    if code != 0:
        raise BuildError(classify_failure(step, "".join(output[-40:])))
    return "".join(output)


def module_gomod(module: str, version: str, work: Path, log_file: Path) -> Path:
    out = run_go(["mod", "download", "-json", f"{module}@{version}"], work, "go mod download", log_file)
    info = json.loads(out[out.index("{") :])
    if "Error" in info:
        raise BuildError(f"module download failed: {info['Error']}; {RETRY_HINT}")
    return Path(info["GoMod"])


def wrapper_gomod(upstream_gomod: str, module: str, version: str, staging_version: str) -> str:
    """A go.mod that requires `module@version` and pins each local replace to a release.

    The staging list comes from the release's own go.mod (`require k8s.io/x v0.0.0`), so a
    version bump that adds a staging module needs no change here. `go` and `godebug` lines
    are copied because Go ignores them in dependencies.
    """
    lines = [f"module flotilla.local/{module.replace('/', '-')}-wrapper", ""]
    lines += [ln for ln in upstream_gomod.splitlines() if re.match(r"^(go|godebug) ", ln)]
    lines += ["", f"require {module} {version}", ""]
    staged = staging_modules(upstream_gomod) if staging_version else []
    if staged:
        lines.append("replace (")
        lines += [f"\t{m} => {m} {staging_version}" for m in staged]
        lines.append(")")
    return "\n".join(lines) + "\n"


def staging_modules(upstream_gomod: str) -> list[str]:
    """Modules the release resolves from its own tree, which a dependent cannot see.

    Two signals, either suffices: a replace onto a local path (`k8s.io/api =>
    ./staging/src/k8s.io/api`) and a placeholder requirement at exactly `v0.0.0` (a
    pseudo-version such as `v0.0.0-2025...` is a real published commit and must stay).
    """
    local = re.findall(r"^\s*(?:replace\s+)?(\S+)\s+=>\s+\.{1,2}/", upstream_gomod, re.M)
    placeholder = re.findall(r"^\s*(?:require\s+)?(\S+)\s+v0\.0\.0(?:\s|$)", upstream_gomod, re.M)
    return sorted(set(local) | set(placeholder))


def go_binary_name(package: str) -> str:
    """The file name `go build -o dir/` gives a main package (a /vN suffix is skipped)."""
    parts = package.split("/")
    return parts[-2] if re.fullmatch(r"v\d+", parts[-1]) else parts[-1]


def k8s_ldflags(version: str) -> str:
    minor = version.lstrip("v").split(".")[1]
    flags = ["-s", "-w"]
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {pkg}.gitVersion={version}",
            f"-X {pkg}.gitMajor=1",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
            f"-X {pkg}.gitCommit=0000000000000000000000000000000000000000",
            f"-X {pkg}.buildDate=1970-01-01T00:00:00Z",
        ]
    return " ".join(flags)


def build_wrapped(
    module: str,
    version: str,
    packages: dict[str, str],
    staging_version: str,
    ldflags: str,
    tags: str,
) -> Callable[[Path, Path], None]:
    def build(work: Path, out: Path) -> None:
        log_file = work / "build.log"
        upstream = module_gomod(module, version, work, log_file).read_text()
        (work / "go.mod").write_text(wrapper_gomod(upstream, module, version, staging_version))
        log(f"  resolving modules for {module}@{version}")
        run_go(["get", *(f"{p}@{version}" for p in packages.values())], work, "go get", log_file)
        log(f"  compiling {', '.join(packages)}")
        built = work / "out"
        built.mkdir()
        args = ["build", "-v", "-trimpath", "-ldflags", ldflags, "-o", f"{built}/"]
        if tags:
            args += ["-tags", tags]
        run_go([*args, *packages.values()], work, "go build", log_file)
        for name, pkg in packages.items():
            shutil.move(built / go_binary_name(pkg), out / name)

    return build


def build_installed(
    packages: dict[str, str], version: str, ldflags: str | Callable[[Path], str] = "-s -w", tags: str = ""
) -> Callable[[Path, Path], None]:
    """`go install pkg@version` for modules without replace lines. `ldflags` may be computed
    from the work dir (after reading the release's go.mod), as helm's are."""

    def build(work: Path, out: Path) -> None:
        (work / "gobin").mkdir()
        flags = ldflags if isinstance(ldflags, str) else ldflags(work)
        args = ["install", "-v", "-trimpath", "-ldflags", flags]
        if tags:
            args += ["-tags", tags]
        args += [f"{p}@{version}" for p in packages.values()]
        run_go(args, work, "go install", work / "build.log", env={"GOBIN": str(work / "gobin")})
        for name, pkg in packages.items():
            shutil.move(work / "gobin" / go_binary_name(pkg), out / name)

    return build


def build_tool(name: str) -> Callable[[Path, Path], None]:
    """One of our own Go programs (e2e/tools/<name>: main.go, go.mod, go.sum checked in),
    built from a copy with `-mod=readonly`: the checked-in go.sum is the whole truth, and a
    dependency it does not list fails the build instead of being added."""

    def build(work: Path, out: Path) -> None:
        src = work / "src"
        src.mkdir()
        for path in (TOOLS_DIR / name).iterdir():
            if path.name in {"go.mod", "go.sum"} or path.suffix == ".go":
                shutil.copy(path, src / path.name)
        args = ["build", "-v", "-trimpath", "-ldflags", "-s -w", "-o", str(out / name), "."]
        run_go(args, src, "go build", work / "build.log", env={"GOFLAGS": "-mod=readonly"})

    return build


def helm_ldflags(version: str, helm_gomod: str) -> str:
    """What helm's Makefile sets: its version, and the Kubernetes version of the client-go it
    compiles against as the default `.Capabilities.KubeVersion` (unset, `helm template`
    claims v1.20 and charts with a `kubeVersion` constraint refuse to render)."""
    match = re.search(r"^\s*k8s\.io/client-go v0\.(\d+)\.", helm_gomod, re.M)
    flags = ["-s", "-w", f"-X helm.sh/helm/v3/internal/version.version={version}"]
    if match:
        for pkg in ("helm.sh/helm/v3/pkg/chartutil", "helm.sh/helm/v3/pkg/lint/rules"):
            flags += [f"-X {pkg}.k8sVersionMajor=1", f"-X {pkg}.k8sVersionMinor={match.group(1)}"]
    return " ".join(flags)


def prometheus_release(module_version: str) -> str:
    """Prometheus 3.x is published as module v0.3XX.Y: v0.316.0 is release 3.16.0."""
    match = re.fullmatch(r"v0\.(\d+)(\d\d)\.(\d+)", module_version)
    if not match:
        raise ValueError(f"PROMETHEUS_VERSION={module_version!r} is not a v0.3XX.Y module version")
    return f"{int(match.group(1))}.{int(match.group(2))}.{match.group(3)}"


def prometheus_ldflags(module_version: str) -> str:
    """What promu sets (`prometheus --version`, the build_info metric); fixed values where
    promu stamps the build machine, so the binary is reproducible."""
    pkg = "github.com/prometheus/common/version"
    values = {
        "Version": prometheus_release(module_version),
        "Revision": module_version,
        "Branch": "HEAD",
        "BuildUser": "flotilla",
        "BuildDate": "19700101-00:00:00",
    }
    return " ".join(["-s", "-w", *(f"-X {pkg}.{k}={v}" for k, v in values.items())])


# Without `remove_all_sd` every service discovery plugin (AWS, Azure, GCE, Kubernetes, ...) is
# compiled in: most of the dependency graph. Tests need static_configs (file and http SD stay,
# plugins/minimum.go). `netgo` as upstream's .promu.yml; the web UI assets are left out
# (`builtinassets` unset): the HTTP API and /-/ready work without them.
PROMETHEUS_TAGS = "netgo,remove_all_sd"


def groups(versions: Versions, with_kubectl: bool) -> list[Group]:
    from . import gatewayapi, monitoringcrds  # they use this module's go helpers

    kube = {c: f"k8s.io/kubernetes/cmd/{c}" for c in ("kube-apiserver", "kube-controller-manager", "kube-scheduler")}
    if with_kubectl:
        kube["kubectl"] = "k8s.io/kubernetes/cmd/kubectl"
    staging = "v0." + versions.kubernetes.lstrip("v").split(".", 1)[1]
    etcd = {"etcd": "go.etcd.io/etcd/server/v3", "etcdctl": "go.etcd.io/etcd/etcdctl/v3"}
    kwok = {"kwok": "sigs.k8s.io/kwok/cmd/kwok", "kwokctl": "sigs.k8s.io/kwok/cmd/kwokctl"}

    def helm_ld(work: Path) -> str:
        gomod = module_gomod("helm.sh/helm/v3", versions.helm, work, work / "build.log").read_text()
        return helm_ldflags(versions.helm, gomod)

    return [
        Group(
            "kubernetes",
            versions.kubernetes,
            tuple(kube),
            build_wrapped(
                "k8s.io/kubernetes",
                versions.kubernetes,
                kube,
                staging,
                k8s_ldflags(versions.kubernetes),
                "notest,grpcnotrace",
            ),
        ),
        Group(
            "etcd",
            versions.etcd,
            tuple(etcd),
            build_wrapped("go.etcd.io/etcd/server/v3", versions.etcd, etcd, "", "-s -w", ""),
        ),
        Group("kwok", versions.kwok, tuple(kwok), build_installed(kwok, versions.kwok)),
        Group(
            "gateway-api",
            versions.gateway_api,
            (gatewayapi.CRDS_FILE,),
            lambda work, out: gatewayapi.fetch(versions.gateway_api, work, out),
            manifests=True,
        ),
        Group(
            "prometheus-operator",
            versions.prometheus_operator,
            monitoringcrds.FILES,
            lambda work, out: monitoringcrds.fetch(versions.prometheus_operator, work, out),
            manifests=True,
        ),
        Group(
            "helm",
            versions.helm,
            ("helm",),
            build_installed({"helm": "helm.sh/helm/v3/cmd/helm"}, versions.helm, helm_ld),
        ),
        Group(
            "prometheus",
            versions.prometheus,
            ("prometheus",),
            build_installed(
                {"prometheus": "github.com/prometheus/prometheus/cmd/prometheus"},
                versions.prometheus,
                prometheus_ldflags(versions.prometheus),
                PROMETHEUS_TAGS,
            ),
        ),
        # Test tool, not a cluster binary: kstatus's own verdict (tests/unit/test_gitops.py).
        Group("kstatus", kstatus_version(), ("kstatus",), build_tool("kstatus")),
        # Test tool: rhysd/actionlint checks .github/workflows (tests/unit/test_workflows.py).
        Group(
            "actionlint",
            versions.actionlint,
            ("actionlint",),
            build_installed(
                {"actionlint": "github.com/rhysd/actionlint/cmd/actionlint"},
                versions.actionlint,
                f"-s -w -X github.com/rhysd/actionlint.version={versions.actionlint}",
            ),
        ),
        # For users with Docker: `make kind-demo` (e2e/kind/). Here only built and its config checked.
        Group("kind", versions.kind, ("kind",), build_installed({"kind": "sigs.k8s.io/kind"}, versions.kind)),
        # Test tool: the real S3 server of the object-store tests (e2e/localcluster/s3server.py).
        Group(
            "versitygw",
            versions.versitygw,
            ("versitygw",),
            build_installed(
                {"versitygw": "github.com/versity/versitygw/cmd/versitygw"},
                versions.versitygw,
                f"-s -w -X main.Version={versions.versitygw}",
            ),
        ),
        # Test tool: kind's own config loader and validation (tests/unit/test_kind.py).
        Group("kindconfig", kindconfig_version(), ("kindconfig",), build_tool("kindconfig")),
    ]


def build_group(group: Group) -> None:
    started = time.monotonic()
    log(f"building {group.name} {group.version} ({', '.join(group.binaries)})")
    group.dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".build-{group.name}-", dir=group.dir.parent))
    try:
        staged = work / "bin"
        staged.mkdir()
        group.build(work, staged)
        if group.dir.exists():  # an incomplete entry from an older layout: replace it whole
            shutil.rmtree(group.dir)
        staged.rename(group.dir)  # atomic: the cache entry appears complete or not at all
    except BuildError:
        kept = cache_root() / "logs" / f"build-{group.name}.log"
        kept.parent.mkdir(parents=True, exist_ok=True)
        if (work / "build.log").exists():
            shutil.copy(work / "build.log", kept)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log(f"built {group.name} {group.version} in {time.monotonic() - started:.0f}s -> {group.dir}")


def ensure_binaries(
    versions: Versions | None = None, *, kubectl_found: bool = True, only: Sequence[str] = ()
) -> dict[str, Path]:
    """Build whatever is missing; return binary name -> path."""
    if shutil.which("go") is None:
        raise BuildError("Go is not installed (no `go` on PATH): install Go 1.26 and " + RETRY_HINT)
    chosen = [g for g in groups(versions or load_versions(), not kubectl_found) if not only or g.name in only]
    for group in chosen:
        if group.complete():
            log(f"cached: {group.name} {group.version}")
        else:
            build_group(group)
    return {b: g.dir / b for g in chosen for b in g.binaries}


def main(argv: Sequence[str]) -> int:
    from .kubectl import find_kubectl

    versions = load_versions()
    try:
        found = find_kubectl(versions) is not None
        ensure_binaries(versions, kubectl_found=found, only=argv)
    except BuildError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def module_download(module: str, version: str, work: Path) -> dict[str, Any]:
    """`go mod download -json module@version` (module cache, checksum-verified); its JSON, Error
    included. For modules whose files, not binaries, a group caches (CRD YAML)."""
    proc = subprocess.run(
        ["go", "mod", "download", "-json", f"{module}@{version}"],
        cwd=work,
        env=go_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    (work / "build.log").write_text(proc.stdout + proc.stderr)
    try:
        info: dict[str, Any] = json.loads(proc.stdout[proc.stdout.index("{") :])
    except ValueError:
        raise BuildError(classify_failure("go mod download", proc.stdout + proc.stderr)) from None
    return info


if __name__ == "__main__":  # `python3 -m localcluster.build`: the Makefile runs it before the venv exists
    sys.exit(main(sys.argv[1:]))
