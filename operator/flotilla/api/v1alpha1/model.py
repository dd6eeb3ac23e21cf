"""The SmallModel resource as a whole."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .constants import API_VERSION, KIND
from .spec import SmallModelSpec
from .status import SmallModelStatus

MAX_NAME_LENGTH = 40
NAME_RULE = (
    f"self.metadata.name.size() <= {MAX_NAME_LENGTH}",
    f"metadata.name must be at most {MAX_NAME_LENGTH} characters: it prefixes the names of the objects "
    "Flotilla creates (<name>-canary, <name>-opt-<key>)",
)


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
        """Parse a kopf body or any Mapping as the API server returns it."""
        return cls.model_validate(dict(body))
