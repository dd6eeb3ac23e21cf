"""A tiny HTTPS client for the local API server, authenticated with kwokctl's admin cert.

Bring-up polls readiness and writes nodes many times in a few seconds; spawning kubectl
for each would cost ~100 ms apiece on 2 cores, and the stdlib is all this needs.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class ApiError(RuntimeError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


@dataclass(frozen=True)
class Pki:
    ca: Path
    cert: Path
    key: Path

    @classmethod
    def in_dir(cls, pki_dir: Path) -> Pki:
        return cls(ca=pki_dir / "ca.crt", cert=pki_dir / "admin.crt", key=pki_dir / "admin.key")


class KubeAPI:
    def __init__(self, server: str, pki: Pki, timeout_s: float = 10.0) -> None:
        self.server = server.rstrip("/")
        self.timeout_s = timeout_s
        self._ssl = ssl.create_default_context(cafile=str(pki.ca))
        self._ssl.load_cert_chain(str(pki.cert), str(pki.key))

    def request(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.server + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s, context=self._ssl) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as err:
            raise ApiError(err.code, _status_message(err.read())) from None
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return raw.decode(errors="replace")  # /readyz, /livez answer plain text

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, body: Any) -> Any:
        return self.request("POST", path, body)

    def merge_patch(self, path: str, body: Any) -> Any:
        return self.request("PATCH", path, body, "application/merge-patch+json")

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    def exists(self, path: str) -> bool:
        try:
            self.get(path)
        except ApiError as err:
            if err.status == 404:
                return False
            raise
        return True


def _status_message(raw: bytes) -> str:
    try:
        return str(json.loads(raw).get("message", raw.decode(errors="replace")))
    except ValueError:
        return raw.decode(errors="replace").strip()
