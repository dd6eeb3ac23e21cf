"""Pick a kubectl within the API server's supported version skew (+/-1 minor)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from .versions import Versions


def client_minor(kubectl: Path) -> int | None:
    try:
        out = subprocess.run(
            [str(kubectl), "version", "--client", "-o", "json"], capture_output=True, text=True, timeout=20, check=True
        ).stdout
        return int(json.loads(out)["clientVersion"]["minor"].rstrip("+"))
    except (OSError, subprocess.SubprocessError, ValueError, KeyError):
        return None


def candidates(versions: Versions) -> list[Path]:
    """`kubectl.<minor>` beside a versioned-dispatcher kubectl (gcloud's layout), then plain kubectl."""
    found: list[Path] = []
    named = shutil.which(f"kubectl.{versions.kubectl_minor}")
    if named:
        found.append(Path(named))
    plain = shutil.which("kubectl")
    if plain:
        sibling = Path(os.path.realpath(plain)).parent / f"kubectl.{versions.kubectl_minor}"
        if sibling.is_file():
            found.append(sibling)
        found.append(Path(plain))
    return found


def find_kubectl(versions: Versions) -> Path | None:
    server_minor = int(versions.kubernetes.lstrip("v").split(".")[1])
    for path in candidates(versions):
        minor = client_minor(path)
        if minor is not None and abs(minor - server_minor) <= 1:
            return path
    return None
