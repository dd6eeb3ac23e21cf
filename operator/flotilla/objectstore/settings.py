"""FLOTILLA_S3_* settings of the artifact store, as the operator hands them to pods
(flotilla.resources.store.s3_env) and as a person sets them to run the client by hand."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class S3Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLOTILLA_S3_", extra="ignore")

    endpoint: str | None = Field(default=None, description="S3 endpoint URL; unset: AWS S3 of `region`.")
    bucket: str = Field(min_length=1, description="Bucket of the artifact store.")
    prefix: str = Field(default="", description="Key prefix inside the bucket (ends in / when set).")
    region: str = "us-east-1"
    path_style: bool = Field(default=False, description="endpoint/bucket/key addressing (most on-prem stores).")
    ca_bundle: Path | None = Field(default=None, description="PEM bundle that signs the endpoint's certificate.")
    access_key_id: str | None = Field(default=None, description="unset: the default AWS credential chain")
    secret_access_key: SecretStr | None = None
    max_attempts: int = Field(default=4, ge=1, le=20, description="botocore 'standard' retry mode, first try included")
    connect_timeout_seconds: float = Field(default=5.0, gt=0)
    read_timeout_seconds: float = Field(default=60.0, gt=0)

    def object_key(self, key: str, relative: str = "") -> str:
        """<prefix><key>/<relative>"""
        return f"{self.prefix}{key}/{relative}"

    def client(self) -> Any:
        """A boto3 S3 client with these settings (bounded retries and timeouts)."""
        import boto3
        from botocore.config import Config

        config = Config(
            region_name=self.region,
            retries={"mode": "standard", "max_attempts": self.max_attempts},
            connect_timeout=self.connect_timeout_seconds,
            read_timeout=self.read_timeout_seconds,
            s3={"addressing_style": "path" if self.path_style else "auto"},
            signature_version="s3v4",
        )
        secret = self.secret_access_key.get_secret_value() if self.secret_access_key else None
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint or None,
            aws_access_key_id=self.access_key_id or None,
            aws_secret_access_key=secret,
            verify=str(self.ca_bundle) if self.ca_bundle else None,
            config=config,
        )
