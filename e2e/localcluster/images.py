"""`make images`: OCI image archives of Flotilla's CPU images, built without a Docker engine.

`python -m localcluster.images [--version V] [--revision SHA] [NAME ...]` writes
dist/images/<name>.tar (an OCI image layout in a tar: `skopeo copy oci-archive:...`,
`kind load image-archive`) and dist/images/digests.txt, for operator, gateway, optimizer, triton.

Every image is three (triton: two) gzip layers, each built once and cached under
~/.cache/flotilla/images/<layer>-<hash of its inputs>/:
- base: Debian bookworm from mmdebstrap (`essential` variant + images/base/packages.txt), the
  non-root user 1000, shared by all four images (one blob);
- <name>-deps: the Python packages of images/<name>/requirements.txt at the versions of
  requirements/lock.txt (uv, wheels cached in ~/.cache/uv), in Debian's
  /usr/local/lib/python3.11/dist-packages;
- flotilla: the operator/flotilla package itself and a `flotilla` script (shared by operator,
  gateway and optimizer).

Reproducible: the layer tars are written here (sorted, numeric owners, mtimes clamped to the
commit time of the layer's inputs), gzip without a timestamp, the config's `created` is
SOURCE_DATE_EPOCH (default: HEAD's commit time). The same inputs give the same manifest digest;
what the Debian mirror and PyPI serve for the same names is pinned by the lock, not by this file.

The plan (specs, input hashes, labels, configs, manifests) is pure and unit-tested
(tests/unit/test_images.py); mmdebstrap, uv and git are called at the edge.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from .versions import REPO_ROOT, cache_root

IMAGES_DIR = REPO_ROOT / "images"
LOCK = REPO_ROOT / "requirements" / "lock.txt"
PACKAGE = REPO_ROOT / "operator" / "flotilla"
CHART = REPO_ROOT / "charts" / "flotilla" / "Chart.yaml"
DIST = REPO_ROOT / "dist" / "images"
REGISTRY = "ghcr.io/flotilla-dev"
SOURCE = "https://github.com/flotilla-dev/flotilla"
SUITE = "bookworm"
MIRRORS = (
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
)
# Docs, man pages and translations are not installed (dpkg path filters); copyright files are.
DPKG_OPTS = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
)
SITE = "usr/local/lib/python3.11/dist-packages"
PY_PLATFORM = "x86_64-manylinux_2_36"  # bookworm's glibc 2.36
UID = 1000
BIG_LAYER = 1 << 30  # layers above this are gzipped at level 1 (the optimizer's CUDA libraries)
IMAGES = ("operator", "gateway", "optimizer", "triton")

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"

PATH_ENV = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TRITON_ROOT = f"/{SITE}/pytriton/tritonserver"
TRITON_LIBS = f"/{SITE}/nvidia_pytriton.libs"
FLOTILLA_SCRIPT = b"#!/usr/bin/python3\nimport sys\n\nfrom flotilla.cli import main\n\nsys.exit(main())\n"


class ImageError(RuntimeError):
    """A one-line cause, fit to print as the last line of a failed `make images`."""


def progress(message: str) -> None:
    print(f"[images] {message}", flush=True)


# --- the plan (pure) ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageSpec:
    """What the image runs: the chart and the operator's builders set only `args` (operator,
    gateway) or `command` + `args` (the optimizer Job: `python -m flotilla optimize`, the
    serving pod: `tritonserver`), so the entrypoints below are what they rely on."""

    name: str
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    ports: tuple[str, ...] = ()
    flotilla: bool = True  # carries the flotilla layer

    @property
    def repository(self) -> str:
        return f"{REGISTRY}/flotilla-{self.name}"


BASE_ENV = (("PATH", PATH_ENV), ("PYTHONDONTWRITEBYTECODE", "1"), ("PYTHONUNBUFFERED", "1"))
SPECS: dict[str, ImageSpec] = {
    "operator": ImageSpec("operator", ("flotilla",), ("run",), ports=("8080/tcp",)),
    "gateway": ImageSpec("gateway", ("flotilla",), ("gateway",), ports=("8080/tcp",)),
    "optimizer": ImageSpec(
        "optimizer", ("python", "-m", "flotilla"), ("optimize", "--help"), env=(("HF_HOME", "/tmp/hf"),)
    ),
    "triton": ImageSpec(
        "triton",
        ("tritonserver",),
        (),
        env=(("LD_LIBRARY_PATH", TRITON_LIBS),),
        ports=("8000/tcp", "8001/tcp", "8002/tcp"),
        flotilla=False,
    ),
}


def read_list(path: Path) -> tuple[str, ...]:
    """Lines of a packages.txt / requirements.txt without comments and blanks."""
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return tuple(line for line in lines if line)


def inputs_hash(parts: Mapping[str, bytes]) -> str:
    """16 hex digits of sha256 over the named inputs, in name order."""
    digest = hashlib.sha256()
    for name in sorted(parts):
        digest.update(name.encode() + b"\0" + hashlib.sha256(parts[name]).digest())
    return digest.hexdigest()[:16]


def package_files(root: Path = PACKAGE) -> list[Path]:
    """The flotilla package's files as they go into the image (no bytecode caches)."""
    return sorted(
        p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo")
    )


@dataclass(frozen=True)
class LayerPlan:
    key: str  # <layer>-<hash of the inputs>
    what: str  # history's created_by
    sources: tuple[Path, ...]  # the epoch is the last commit time of these

    @property
    def layer(self) -> str:
        return self.key.rsplit("-", 1)[0]


def cache_key(plan: LayerPlan, epoch: int) -> str:
    """The cache directory's name: <layer>-<hash of the inputs and the mtime clamp>. The clamp is
    part of the layer's bytes, so an entry built before its inputs were committed (another
    clamp) is not taken for the one a fresh build from the commit gives."""
    return f"{plan.layer}-{inputs_hash({'inputs': plan.key.encode(), 'epoch': str(epoch).encode()})}"


def base_plan(packages: Sequence[str]) -> LayerPlan:
    parts = {"packages": "\n".join(packages).encode(), "suite": SUITE.encode(), "dpkg": "\n".join(DPKG_OPTS).encode()}
    parts["mirrors"] = "\n".join(MIRRORS).encode()
    parts["recipe"] = b"base-v1"
    return LayerPlan(f"base-{inputs_hash(parts)}", f"mmdebstrap {SUITE} essential + {' '.join(packages)}", (
        IMAGES_DIR / "base" / "packages.txt",
    ))  # fmt: skip


def deps_plan(name: str, requirements: Sequence[str], lock: bytes) -> LayerPlan:
    parts = {"requirements": "\n".join(requirements).encode(), "lock": lock, "platform": PY_PLATFORM.encode()}
    parts["recipe"] = f"deps-v1-{name}".encode()
    what = f"uv pip install -r images/{name}/requirements.txt -c requirements/lock.txt"
    return LayerPlan(f"{name}-deps-{inputs_hash(parts)}", what, (IMAGES_DIR / name / "requirements.txt", LOCK))


def flotilla_plan(files: Mapping[str, bytes]) -> LayerPlan:
    return LayerPlan(f"flotilla-{inputs_hash({**files, '/recipe': b'flotilla-v1'})}", "operator/flotilla", (PACKAGE,))


def tag(name: str, version: str) -> str:
    return f"{REGISTRY}/flotilla-{name}:{version}"


def labels(version: str, revision: str, created: str) -> dict[str, str]:
    return {
        "org.opencontainers.image.source": SOURCE,
        "org.opencontainers.image.version": version,
        "org.opencontainers.image.revision": revision,
        "org.opencontainers.image.created": created,
        "org.opencontainers.image.licenses": "Apache-2.0",
    }


def rfc3339(epoch: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


@dataclass(frozen=True)
class Layer:
    """A built layer blob: what its descriptor and the config's rootfs need."""

    digest: str  # sha256:<hex> of the gzip blob
    size: int
    diff_id: str  # sha256:<hex> of the uncompressed tar
    uncompressed: int
    what: str
    epoch: int

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("digest", "size", "diff_id", "uncompressed", "what", "epoch")}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Layer:
        return cls(**{k: data[k] for k in ("digest", "size", "diff_id", "uncompressed", "what", "epoch")})


def image_config(spec: ImageSpec, layers: Sequence[Layer], created: int, image_labels: Mapping[str, str]) -> bytes:
    config: dict[str, Any] = {
        "User": f"{UID}:{UID}",
        "Env": [f"{k}={v}" for k, v in (*BASE_ENV, *spec.env)],
        "Entrypoint": list(spec.entrypoint),
        "WorkingDir": "/",
        "Labels": dict(image_labels),
    }
    if spec.cmd:
        config["Cmd"] = list(spec.cmd)
    if spec.ports:
        config["ExposedPorts"] = {p: {} for p in spec.ports}
    document = {
        "created": rfc3339(created),
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [{"created": rfc3339(layer.epoch), "created_by": layer.what} for layer in layers],
    }
    return canonical(document)


def canonical(document: Any) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def manifest(config: bytes, layers: Sequence[Layer], image_labels: Mapping[str, str]) -> bytes:
    return canonical(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": {"mediaType": MEDIA_CONFIG, "digest": sha256(config), "size": len(config)},
            "layers": [{"mediaType": MEDIA_LAYER, "digest": layer.digest, "size": layer.size} for layer in layers],
            "annotations": dict(image_labels),
        }
    )


def index(manifest_bytes: bytes, ref: str) -> bytes:
    descriptor = {
        "mediaType": MEDIA_MANIFEST,
        "digest": sha256(manifest_bytes),
        "size": len(manifest_bytes),
        "annotations": {REF_NAME: ref, CONTAINERD_NAME: ref},
        "platform": {"architecture": "amd64", "os": "linux"},
    }
    return canonical({"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": [descriptor]})


# --- layers: tar + gzip, written here so that they are reproducible ---------------------------------


class _Hashing:
    """A write-only file that hashes and counts what passes through to `out`."""

    def __init__(self, out: BinaryIO | gzip.GzipFile) -> None:
        self.out = out
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.size += len(data)
        self.out.write(data)
        return len(data)

    def flush(self) -> None:
        self.out.flush()


def _normalizer(epoch: int) -> Callable[[tarfile.TarInfo], tarfile.TarInfo]:
    def normalize(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.mtime = int(min(info.mtime, epoch))
        info.uname = info.gname = ""
        return info

    return normalize


def tree_size(root: Path) -> int:
    return sum(p.lstat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def pack_layer(root: Path, blob: Path, epoch: int, what: str) -> Layer:
    """`root`'s contents as a gzip tar layer at `blob` (sorted, mtimes clamped to `epoch`)."""
    level = 1 if tree_size(root) > BIG_LAYER else 6
    with blob.open("wb") as raw:
        compressed = _Hashing(raw)
        with gzip.GzipFile(filename="", fileobj=compressed, mode="wb", compresslevel=level, mtime=0) as gz:
            uncompressed = _Hashing(gz)
            with tarfile.open(fileobj=uncompressed, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
                for child in sorted(root.iterdir()):
                    tar.add(child, arcname=child.name, recursive=True, filter=_normalizer(epoch))
    return Layer(
        digest="sha256:" + compressed.hash.hexdigest(),
        size=compressed.size,
        diff_id="sha256:" + uncompressed.hash.hexdigest(),
        uncompressed=uncompressed.size,
        what=what,
        epoch=epoch,
    )


def cached_layer(plan: LayerPlan, epoch: int, build: Callable[[Path], None]) -> tuple[Layer, Path]:
    """The layer of `plan` from the cache, or built into a staging root by `build` and packed."""
    key = cache_key(plan, epoch)
    entry = cache_root() / "images" / key
    meta, blob = entry / "layer.json", entry / "layer.tar.gz"
    if meta.is_file() and blob.is_file():
        layer = Layer.from_json(json.loads(meta.read_text()))
        progress(f"{key}: cached ({layer.size / 1e6:.0f} MB)")
        return layer, blob
    for stale in entry.parent.glob(f"{plan.layer}-*"):  # older builds of this layer: the cache stays bounded
        if stale.is_dir() and stale.name.count("-") == key.count("-"):
            progress(f"{stale.name}: removing (stale)")
            shutil.rmtree(stale, ignore_errors=True)
    entry.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f".{key}-", dir=entry.parent) as tmp:
        staging = Path(tmp) / "root"
        staging.mkdir()
        progress(f"{key}: building ({plan.what})")
        build(staging)
        progress(f"{key}: packing")
        out = Path(tmp) / "out"
        out.mkdir()
        layer = pack_layer(staging, out / "layer.tar.gz", epoch, plan.what)
        (out / "layer.json").write_text(json.dumps(layer.to_json(), indent=1))
        shutil.rmtree(entry, ignore_errors=True)
        out.rename(entry)
    progress(
        f"{key}: built in {time.monotonic() - started:.0f}s "
        f"({layer.uncompressed / 1e6:.0f} MB, {layer.size / 1e6:.0f} MB gzip)"
    )
    return layer, entry / "layer.tar.gz"


# --- what goes into each layer (the edge: mmdebstrap, uv) -----------------------------------------


def run(argv: Sequence[str], what: str, env: Mapping[str, str] | None = None) -> None:
    proc = subprocess.run(
        argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env, check=False, timeout=3600
    )
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
        raise ImageError(f"{what} failed ({proc.returncode}):\n" + "\n".join(tail))


def need_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise ImageError(f"{name} not found: `make image-tools` installs mmdebstrap and runc (apt-get, as root)")
    return path


def build_base(packages: Sequence[str], epoch: int) -> Callable[[Path], None]:
    def build(root: Path) -> None:
        argv = [need_tool("mmdebstrap"), "--variant=essential", "--mode=root", "--quiet"]
        argv += [f"--include={','.join(packages)}", *(f"--dpkgopt={o}" for o in DPKG_OPTS)]
        argv += [SUITE, str(root), *MIRRORS]
        run(argv, "mmdebstrap", {**os.environ, "SOURCE_DATE_EPOCH": str(epoch)})
        for pattern in ("var/cache/apt/*", "var/lib/apt/lists/*", "var/log/*", "var/cache/ldconfig/*"):
            for path in root.glob(pattern):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
        for old in root.glob("var/lib/dpkg/*-old"):
            old.unlink()
        (root / "etc" / "machine-id").write_text("")
        with (root / "etc" / "passwd").open("a") as passwd:
            passwd.write(f"flotilla:x:{UID}:{UID}:flotilla:/tmp:/usr/sbin/nologin\n")
        with (root / "etc" / "group").open("a") as group:
            group.write(f"flotilla:x:{UID}:\n")

    return build


def uv() -> str:
    here = Path(sys.executable).parent / "uv"
    return str(here) if here.is_file() else need_tool("uv")


def build_deps(name: str, requirements: Path) -> Callable[[Path], None]:
    def build(root: Path) -> None:
        site = root / SITE
        argv = [uv(), "pip", "install", "--quiet", "--no-config", "--target", str(site)]
        argv += ["--python-version", "3.11", "--python-platform", PY_PLATFORM, "--python", sys.executable]
        argv += ["-r", str(requirements), "-c", str(LOCK)]
        run(argv, f"uv pip install for {name}")
        shutil.rmtree(site / "bin", ignore_errors=True)  # console scripts with this machine's shebang
        if name == "triton":
            triton_layout(root)

    return build


def triton_layout(root: Path) -> None:
    """tritonserver on PATH and its default backend directory (/opt/tritonserver/backends)
    with the python backend's stub for Python 3.11, as flotilla.local.triton prepares them."""
    wheel = root / TRITON_ROOT.lstrip("/")
    backends = root / "opt" / "tritonserver" / "backends"
    backends.parent.mkdir(parents=True)
    shutil.copytree(wheel / "backends", backends, symlinks=True)
    shutil.copy2(wheel / "python_backend_stubs" / "3.11" / "triton_python_backend_stub", backends / "python")
    bin_dir = root / "usr" / "local" / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    (bin_dir / "tritonserver").symlink_to(f"{TRITON_ROOT}/bin/tritonserver")


def build_flotilla(files: Mapping[str, bytes]) -> Callable[[Path], None]:
    def build(root: Path) -> None:
        for rel, data in files.items():
            dest = root / SITE / "flotilla" / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
            dest.chmod(0o644)
        script = root / "usr" / "local" / "bin" / "flotilla"
        script.parent.mkdir(parents=True)
        script.write_bytes(FLOTILLA_SCRIPT)
        script.chmod(0o755)

    return build


# --- git, the archive ----------------------------------------------------------------------------


def git(*args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else ""


def commit_time(paths: Iterable[Path] = ()) -> int:
    """The last commit time touching `paths` (all: HEAD); SOURCE_DATE_EPOCH when set wins for HEAD."""
    rel = [str(p.relative_to(REPO_ROOT)) for p in paths]
    if not rel and (env := os.environ.get("SOURCE_DATE_EPOCH")):
        return int(env)
    out = git("log", "-1", "--format=%ct", "HEAD", "--", *rel)
    return int(out) if out else int(os.environ.get("SOURCE_DATE_EPOCH", "0"))


def chart_version() -> str:
    for line in CHART.read_text().splitlines():
        if line.startswith("appVersion:"):
            return line.split(":", 1)[1].strip().strip("\"'")
    raise ImageError(f"no appVersion in {CHART}")


def _tar_entry(
    tar: tarfile.TarFile, name: str, epoch: int, data: bytes | None = None, path: Path | None = None
) -> None:
    info = tarfile.TarInfo(name)
    info.mtime, info.mode, info.uid, info.gid = epoch, 0o644, 0, 0
    if data is None and path is None:
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(info)
    elif path is not None:
        info.size = path.stat().st_size
        with path.open("rb") as f:
            tar.addfile(info, f)
    else:
        assert data is not None
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def write_archive(out: Path, blobs: Sequence[tuple[str, bytes | Path]], index_bytes: bytes, epoch: int) -> None:
    """An OCI image layout as a tar (skopeo's oci-archive: transport): oci-layout, index.json, blobs."""
    tmp = out.with_suffix(".tmp")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        _tar_entry(tar, "oci-layout", epoch, canonical({"imageLayoutVersion": "1.0.0"}))
        _tar_entry(tar, "index.json", epoch, index_bytes)
        _tar_entry(tar, "blobs", epoch)
        _tar_entry(tar, "blobs/sha256", epoch)
        for digest, content in sorted(blobs, key=lambda b: b[0]):
            name = "blobs/sha256/" + digest.removeprefix("sha256:")
            if isinstance(content, Path):
                _tar_entry(tar, name, epoch, path=content)
            else:
                _tar_entry(tar, name, epoch, content)
    tmp.replace(out)


def archive_index(path: Path) -> bytes | None:
    """index.json of an existing archive (it is the second entry), or None."""
    try:
        with tarfile.open(path) as tar:
            member = tar.extractfile("index.json")
            return member.read() if member else None
    except (OSError, tarfile.TarError, KeyError):
        return None


@dataclass
class Built:
    name: str
    ref: str
    digest: str
    archive: Path
    layers: list[Layer] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def uncompressed(self) -> int:
        return sum(layer.uncompressed for layer in self.layers)


def build_images(names: Sequence[str], version: str, revision: str, dist: Path = DIST) -> list[Built]:
    created = commit_time()
    image_labels = labels(version, revision, rfc3339(created))
    packages = read_list(IMAGES_DIR / "base" / "packages.txt")
    base = base_plan(packages)
    base_layer = cached_layer(base, commit_time(base.sources), build_base(packages, commit_time(base.sources)))
    files = {str(p.relative_to(PACKAGE)): p.read_bytes() for p in package_files()}
    app = flotilla_plan(files)
    dist.mkdir(parents=True, exist_ok=True)
    built: list[Built] = []
    for name in names:
        started = time.monotonic()
        spec = SPECS[name]
        requirements = IMAGES_DIR / name / "requirements.txt"
        deps = deps_plan(name, read_list(requirements), LOCK.read_bytes())
        layers = [base_layer, cached_layer(deps, commit_time(deps.sources), build_deps(name, requirements))]
        if spec.flotilla:
            layers.append(cached_layer(app, commit_time(app.sources), build_flotilla(files)))
        config = image_config(spec, [layer for layer, _ in layers], created, image_labels)
        manifest_bytes = manifest(config, [layer for layer, _ in layers], image_labels)
        ref = tag(name, version)
        index_bytes = index(manifest_bytes, ref)
        archive = dist / f"{name}.tar"
        if archive_index(archive) == index_bytes:
            progress(f"{name}: {archive} up to date")
        else:
            progress(f"{name}: writing {archive}")
            blobs: list[tuple[str, bytes | Path]] = [(layer.digest, blob) for layer, blob in layers]
            blobs += [(sha256(config), config), (sha256(manifest_bytes), manifest_bytes)]
            write_archive(archive, blobs, index_bytes, created)
        result = Built(name, ref, sha256(manifest_bytes), archive, [layer for layer, _ in layers])
        result.seconds = time.monotonic() - started
        progress(
            f"{name}: {ref}@{result.digest} ({result.uncompressed / 1e6:.0f} MB, "
            f"archive {archive.stat().st_size / 1e6:.0f} MB, {result.seconds:.0f}s)"
        )
        built.append(result)
    write_digests(dist / "digests.txt", built)
    return built


def write_digests(path: Path, built: Sequence[Built]) -> None:
    """name, tag, manifest digest, archive size in bytes, uncompressed size in bytes."""
    existing = {}
    if path.is_file():
        existing = {line.split()[0]: line for line in path.read_text().splitlines() if line.strip()}
    for b in built:
        existing[b.name] = f"{b.name} {b.ref} {b.digest} {b.archive.stat().st_size} {b.uncompressed}"
    path.write_text("".join(existing[n] + "\n" for n in sorted(existing)))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localcluster.images", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"default: all of {' '.join(IMAGES)}")
    parser.add_argument("--version", default="", help="tag (default: the chart's appVersion)")
    parser.add_argument("--revision", default="", help="org.opencontainers.image.revision (default: git HEAD)")
    parser.add_argument("--dist", type=Path, default=DIST)
    args = parser.parse_args(argv)
    if unknown := sorted(set(args.names) - set(IMAGES)):
        parser.error(f"no such image: {' '.join(unknown)} (images: {' '.join(IMAGES)})")
    started = time.monotonic()
    try:
        built = build_images(
            args.names or IMAGES, args.version or chart_version(), args.revision or git("rev-parse", "HEAD"), args.dist
        )
    except ImageError as exc:
        print(f"[images] error: {exc}", file=sys.stderr)
        return 1
    progress(f"{len(built)} image(s) in {time.monotonic() - started:.0f}s: {args.dist / 'digests.txt'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
