"""API keys from a Secret: who may call which models. Pure.

Each entry of the Secret's data is one client, under a name of your choice (the entry name is
shown by `kubectl describe secret`, so it must not be the key itself); its value is JSON:

    {"key": "sk-team-a-...", "namespaces": ["ml"], "models": ["chat", "ml/embed"]}
    {"sha256": "<hex digest of the key>", "namespaces": ["ml"]}

`key` is the bearer token in clear, or `sha256` its digest (so the Secret need not hold it).
`namespaces` (optional) limits the key to some of the gateway's namespaces; `models`
(optional) to some models, each `namespace/name` or a bare name in the key's namespaces; `*`
or absent means all. Entries that do not parse are skipped and named in `KeyRing.problems`.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from .protocol import GatewayError


@dataclass(frozen=True)
class Grant:
    client: str  # the Secret entry's name: a label for logs and metrics, never the key
    namespaces: frozenset[str] | None = None  # None: all of the gateway's
    models: frozenset[str] | None = None  # None: all; else "ns/name" or bare names

    def allows(self, namespace: str, name: str) -> bool:
        if self.namespaces is not None and namespace not in self.namespaces:
            return False
        return self.models is None or f"{namespace}/{name}" in self.models or name in self.models


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _names(value: object, what: str) -> frozenset[str] | None:
    if value is None or value == "*" or (isinstance(value, list) and "*" in value):
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"{what} must be a list of names")
    return frozenset(value)


def parse_entry(client: str, text: str) -> tuple[str, Grant]:
    spec = json.loads(text)
    if not isinstance(spec, dict):
        raise ValueError("the value must be a JSON object")
    if isinstance(spec.get("key"), str) and spec["key"]:
        hashed = digest(spec["key"])
    elif isinstance(spec.get("sha256"), str) and len(spec["sha256"]) == 64:
        hashed = spec["sha256"].lower()
    else:
        raise ValueError("needs `key` (the token) or `sha256` (its hex digest)")
    grant = Grant(client, _names(spec.get("namespaces"), "namespaces"), _names(spec.get("models"), "models"))
    return hashed, grant


@dataclass(frozen=True)
class KeyRing:
    """`enabled` False: no Secret configured, every request is anonymous and allowed.
    Enabled with no keys (the Secret is missing or empty): every request is refused."""

    enabled: bool
    grants: Mapping[str, Grant] = field(default_factory=dict)  # sha256 hex -> grant
    problems: tuple[str, ...] = ()

    @classmethod
    def from_secret_data(cls, data: Mapping[str, str] | None) -> KeyRing:
        grants: dict[str, Grant] = {}
        problems: list[str] = []
        for client, encoded in sorted((data or {}).items()):
            try:
                hashed, grant = parse_entry(client, base64.b64decode(encoded).decode())
            except (ValueError, UnicodeDecodeError) as err:
                problems.append(f"{client}: {err}")
                continue
            grants[hashed] = grant
        return cls(True, grants, tuple(problems))

    def authenticate(self, authorization: str | None) -> Grant | None:
        """The caller's grant (None when keys are off); 401 for a missing or unknown key."""
        if not self.enabled:
            return None
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise GatewayError("unauthorized", "Missing API key: send `Authorization: Bearer <key>`")
        # A dict lookup on the digest: no comparison against stored keys in clear.
        grant = self.grants.get(digest(token.strip()))
        if grant is None:
            raise GatewayError("unauthorized", "Incorrect API key provided")
        return grant


def authorize(grant: Grant | None, namespace: str, name: str, shown: str) -> None:
    if grant is not None and not grant.allows(namespace, name):
        raise GatewayError("forbidden", f"This API key may not use the model `{shown}`", "model")


OPEN = KeyRing(enabled=False)
