"""Common base for the api models: camelCase on the wire, snake_case in Python."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class ApiModel(BaseModel):
    """Base of every model that is part of the Kubernetes resource.

    `cel_rules` holds (rule, message) pairs that crdgen emits as
    `x-kubernetes-validations` on the object's schema; the same rules are enforced in Python
    by `validate_cel_equivalents` where a model overrides it, so a unit test catches them too.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
    )

    cel_rules: ClassVar[tuple[tuple[str, str], ...]] = ()

    def to_wire(self) -> dict[str, Any]:
        """The object as the API server stores it: camelCase, no unset optional fields."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class StatusModel(ApiModel):
    """Status is ours; tolerate fields written by newer operator versions."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="ignore",
        frozen=True,
    )
