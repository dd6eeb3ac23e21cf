"""Gateway settings: FLOTILLA_GATEWAY_* environment variables, validated once at start."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLOTILLA_GATEWAY_", frozen=True, extra="forbid")

    # NoDecode: a plain comma-separated list in the environment ("ml,team-a"), not JSON.
    namespaces: Annotated[list[str], NoDecode] = Field(
        min_length=1,
        description="The only namespaces the gateway reads SmallModels and EndpointSlices from and routes "
        "to. There is no all-namespaces mode: a request can never name its way into another namespace.",
    )
    default_namespace: str | None = Field(
        default=None, description="Namespace of a bare model name (`chat`); the first of `namespaces` when unset."
    )
    own_namespace: str = Field(
        default="flotilla-system", pattern=DNS_LABEL, description="The gateway's own namespace (API keys Secret)."
    )
    host: str = Field(default="0.0.0.0", description="Listen address.")
    port: int = Field(default=8080, ge=0, le=65535, description="Listen port (0: any free port).")
    api_keys_secret: str | None = Field(
        default=None, description="Secret in own_namespace holding API keys; unset: no authentication."
    )
    max_body_bytes: int = Field(default=1 << 20, ge=1024, description="Largest request body; larger is 413.")
    max_tokens_limit: int = Field(default=4096, ge=1, description="Largest max_tokens a request may ask for.")
    default_max_tokens: int = Field(default=256, ge=1, description="max_tokens when a request sets none.")
    per_key_concurrency: int = Field(
        default=64, ge=0, description="In-flight requests per API key (0: unlimited); over it is 429."
    )
    connect_timeout_seconds: float = Field(default=2.0, gt=0, description="TCP connect to a pod.")
    read_timeout_seconds: float = Field(
        default=120.0, gt=0, description="Longest silence from a pod (before the first byte or between chunks)."
    )
    # Cold start = the operator's next look (metrics interval) + scheduling + image pull +
    # Triton loading the model: minutes on a fresh GPU node, hence a bound well above a minute.
    scale_from_zero_hold_seconds: float = Field(
        default=180.0,
        ge=0,
        description="How long a request for a model scaled to zero waits for its first ready replica (0: no "
        "hold, 503 at once).",
    )
    scale_from_zero_max_waiting: int = Field(
        default=100,
        ge=1,
        description="Requests held per model (per gateway replica) while it scales from zero; more are 429. "
        "Each held request keeps its body in memory.",
    )
    retries: int = Field(
        default=2, ge=0, le=10, description="Other endpoints tried when one fails before any byte reached the client."
    )
    eject_seconds: float = Field(
        default=5.0, ge=0, description="How long an endpoint that refused a connection is avoided."
    )
    retry_after_seconds: int = Field(default=5, ge=1, description="Retry-After of a 503.")
    pool_per_host: int = Field(default=256, ge=1, description="Pooled connections per pod.")
    drain_seconds: float = Field(
        default=5.0, ge=0, description="After SIGTERM: /readyz fails and requests are still served this long."
    )
    watch_backoff_max_seconds: float = Field(default=30.0, gt=0, description="Cap of the relist backoff.")

    @field_validator("namespaces", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("namespaces")
    @classmethod
    def _dns_labels(cls, value: list[str]) -> list[str]:
        import re

        bad = [ns for ns in value if not re.match(DNS_LABEL, ns)]
        if bad:
            raise ValueError(f"not namespace names: {bad}")
        return list(dict.fromkeys(value))

    @model_validator(mode="after")
    def _default_in_namespaces(self) -> GatewaySettings:
        if self.default_namespace is not None and self.default_namespace not in self.namespaces:
            raise ValueError(f"default_namespace {self.default_namespace!r} is not one of namespaces {self.namespaces}")
        return self

    @property
    def home_namespace(self) -> str:
        """Where a bare model name lives."""
        return self.default_namespace or self.namespaces[0]
