"""The SmallModel resource as a whole."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .constants import API_VERSION, KIND
from .spec import STORED, SmallModelSpec
from .status import SmallModelStatus

# The longest name Flotilla derives is the ConfigMap <name>-<rev8>-config (16 more characters);
# every derived name must stay a DNS-1035 label (63 characters) for any accepted name.
MAX_NAME_LENGTH = 40
# A DNS-1035 label (what Service names must be). CEL's format.dns1035Label() says the same but
# costs more than the API server's per-rule budget on an unbounded metadata.name.
NAME_PATTERN = "^[a-z]([-a-z0-9]*[a-z0-9])?$"
# Suffixes of the model's own Service names: a model named <x>-stable would own the Service that
# model <x>'s stable revision needs.
RESERVED_SUFFIXES = ("-stable", "-canary")
NAME_RULES = (
    (
        f"self.metadata.name.size() <= {MAX_NAME_LENGTH}",
        f"metadata.name must be at most {MAX_NAME_LENGTH} characters: it prefixes the names of the objects "
        "Flotilla creates (<name>-canary, <name>-opt-<key>)",
    ),
    (
        f"self.metadata.name.matches('{NAME_PATTERN}')",
        "metadata.name must be a DNS-1035 label (lowercase letters, digits and '-', starting with a letter): "
        "it names the model's Services",
    ),
    (
        " && ".join(f"!self.metadata.name.endsWith('{s}')" for s in RESERVED_SUFFIXES),
        "metadata.name must not end in -stable or -canary: those name the Services of the stable and canary "
        "revisions of the model named without the suffix",
    ),
)
# The annotation client-side `kubectl apply` (and tools built on it) writes with what the user sent.
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


def name_errors(name: str) -> list[str]:
    """The messages of the NAME_RULES that `name` breaks (the CRD's root rules, in Python)."""
    broken = [
        len(name) > MAX_NAME_LENGTH,
        re.fullmatch(NAME_PATTERN, name) is None or len(name) > 63,
        name.endswith(RESERVED_SUFFIXES),
    ]
    return [message for (_, message), bad in zip(NAME_RULES, broken, strict=True) if bad]


class ObjectMeta(BaseModel):
    """The part of metadata the operator reads."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True)

    name: str
    namespace: str = "default"
    uid: str = ""
    generation: int = 0
    resource_version: str = Field(default="", alias="resourceVersion")
    deletion_timestamp: str | None = Field(default=None, alias="deletionTimestamp")
    annotations: dict[str, str] = Field(default_factory=dict)


class SmallModel(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True)

    api_version: str = Field(default=API_VERSION, alias="apiVersion")
    kind: str = KIND
    metadata: ObjectMeta
    spec: SmallModelSpec
    status: SmallModelStatus = Field(default_factory=SmallModelStatus)

    @classmethod
    def from_body(cls, body: Any) -> SmallModel:
        """Parse a kopf body or any Mapping as the API server returns it (admitted already, perhaps
        under an older schema: the rules that only bind new writes are not applied)."""
        return cls.model_validate(dict(body), context={STORED: True})

    @classmethod
    def admit(cls, body: Mapping[str, Any]) -> SmallModel:
        """Validate a manifest as the API server admits a new SmallModel: the root rules on
        metadata.name and the spec's schema and rules. Raises ValueError with the CRD's messages."""
        errors = name_errors(str((body.get("metadata") or {}).get("name", "")))
        if errors:
            raise ValueError("; ".join(errors))
        return cls.model_validate(dict(body))

    def pruned_fields(self) -> list[str]:
        """Spec fields the user sent that the API server dropped as unknown, where it shows them.

        A create or update without strict field validation (kubectl's --validate=false or =warn, most
        client libraries) stores the object without the unknown fields and only warns the client. What
        was sent survives in the last-applied-configuration annotation that client-side apply writes;
        server-side apply refuses unknown fields outright.
        """
        text = self.metadata.annotations.get(LAST_APPLIED)
        return list(_pruned(text)) if text else []


@functools.lru_cache(maxsize=4096)
def _pruned(last_applied: str) -> tuple[str, ...]:
    """Cached on the annotation's text: every reconcile of every model asks, and the text only
    changes when the user applies again (parsing and validating it each time cost a fleet's
    resync a full spec validation per model)."""
    try:
        sent = json.loads(last_applied)["spec"]
    except (ValueError, KeyError, TypeError):
        return ()
    if not isinstance(sent, dict):
        return ()
    try:
        SmallModelSpec.model_validate(sent, context={STORED: True})
    except ValidationError as err:
        return tuple(
            sorted(
                "spec." + ".".join(str(part) for part in e["loc"])
                for e in err.errors()
                if e["type"] == "extra_forbidden"
            )
        )
    return ()
