"""Fixtures for the image tests: the images built by the same code as `make images`
(localcluster.images, cached under ~/.cache/flotilla/images) and a runc runner.

runc, not crun: Debian's crun 1.8.1 refuses this kind of machine (cgroup v1 with a v2
`unified` mount: "cgroups in hybrid mode not supported"); runc runs there and on cgroup v2.
No tool missing is skipped: the fixture fails with the reason (`make image-tools`)."""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from localcluster import images

RUNC_STATE = Path("/tmp/flotilla-runc")


@pytest.fixture(scope="session")
def built() -> dict[str, images.Built]:
    for tool in ("mmdebstrap", "runc"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} not found: run `make image-tools` (apt-get install, as root)", pytrace=False)
    result = images.build_images(images.IMAGES, images.chart_version(), images.git("rev-parse", "HEAD") or "dev")
    return {b.name: b for b in result}


def _blob(outer: tarfile.TarFile, digest: str) -> Any:
    member = outer.extractfile("blobs/sha256/" + digest.removeprefix("sha256:"))
    assert member is not None, digest
    return member


def unpack(archive: Path, dest: Path) -> dict[str, Any]:
    """The archive's layers extracted in order into dest/rootfs; the image config."""
    rootfs = dest / "rootfs"
    rootfs.mkdir(parents=True)
    with tarfile.open(archive) as outer:
        index = json.load(_blob_index(outer))
        manifest = json.load(_blob(outer, index["manifests"][0]["digest"]))
        for layer in manifest["layers"]:
            with tarfile.open(fileobj=_blob(outer, layer["digest"]), mode="r|gz") as tar:
                tar.extractall(rootfs, filter="fully_trusted")
        config: dict[str, Any] = json.load(_blob(outer, manifest["config"]["digest"]))
    return config


def _blob_index(outer: tarfile.TarFile) -> Any:
    member = outer.extractfile("index.json")
    assert member is not None
    return member


class Container:
    """One `runc run` of a bundle: host network, read-only root, /tmp a tmpfs, user 1000."""

    def __init__(
        self,
        bundle: Path,
        config: dict[str, Any],
        args: Sequence[str] | None = None,
        env: dict[str, str] | None = None,
        binds: Sequence[tuple[Path, str, bool]] = (),
    ) -> None:
        self.bundle = bundle
        self.id = f"flotilla-test-{uuid.uuid4().hex[:8]}"
        self.log_path = bundle / f"{self.id}.log"
        image = config["config"]
        argv = list(args) if args is not None else [*image.get("Entrypoint", []), *image.get("Cmd", [])]
        environment = [*image.get("Env", []), *(f"{k}={v}" for k, v in (env or {}).items())]
        spec_file = bundle / "config.json"
        spec_file.unlink(missing_ok=True)
        subprocess.run(["runc", "spec", "--bundle", str(bundle)], check=True)
        spec = json.loads(spec_file.read_text())
        uid, _, gid = image["User"].partition(":")
        spec["process"].update(
            terminal=False,
            args=argv,
            env=environment,
            cwd=image.get("WorkingDir") or "/",
            user={"uid": int(uid), "gid": int(gid or uid)},
        )
        spec["root"] = {"path": "rootfs", "readonly": True}
        spec["hostname"] = "image-test"
        spec["linux"]["namespaces"] = [n for n in spec["linux"]["namespaces"] if n["type"] != "network"]
        spec["mounts"].append(
            {
                "destination": "/tmp",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "nodev", "mode=1777", "size=1g"],
            }
        )
        for shm in (m for m in spec["mounts"] if m["destination"] == "/dev/shm"):
            shm["options"] = [o for o in shm["options"] if not o.startswith("size=")] + ["size=256m"]
        for source, dest, writable in binds:
            spec["mounts"].append(
                {
                    "destination": dest,
                    "type": "bind",
                    "source": str(source),
                    "options": ["rbind", "rw" if writable else "ro"],
                }
            )
        spec_file.write_text(json.dumps(spec))
        self.proc: subprocess.Popen[bytes] | None = None

    def _runc(self, *args: str) -> list[str]:
        return ["runc", "--root", str(RUNC_STATE), *args]

    def start(self) -> Container:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self._runc("run", "--bundle", str(self.bundle), self.id),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            pytest.fail(f"{self.id} still running after {timeout:.0f}s:\n{self.log()[-4000:]}", pytrace=False)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            subprocess.run(self._runc("kill", self.id, "TERM"), capture_output=True, check=False)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                subprocess.run(self._runc("kill", self.id, "KILL"), capture_output=True, check=False)
                self.proc.wait(timeout=10)
        subprocess.run(self._runc("delete", "--force", self.id), capture_output=True, check=False)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@pytest.fixture(scope="session")
def bundle_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("bundles")
    yield root
    shutil.rmtree(root, ignore_errors=True)


def bundle_of(built: dict[str, images.Built], root: Path, name: str) -> tuple[Path, dict[str, Any]]:
    bundle = root / name
    marker = bundle / "image-config.json"
    if marker.is_file():
        return bundle, json.loads(marker.read_text())
    started = time.monotonic()
    config = unpack(built[name].archive, bundle)
    marker.write_text(json.dumps(config))
    print(f"[images] unpacked {name} in {time.monotonic() - started:.0f}s")
    return bundle, config
