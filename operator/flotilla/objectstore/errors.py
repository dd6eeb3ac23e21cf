"""The store's failures, named by the reasons the operator knows (flotilla.reconcile.store)."""

from __future__ import annotations

from typing import Literal

StoreReason = Literal[
    "StoreCredentialsInvalid",
    "StoreBucketMissing",
    "StoreUnreachable",
    "ArtifactChecksumMismatch",
    "ArtifactMissing",
]

# Exit codes of `python -m flotilla.objectstore fetch`, one per reason (1: anything else).
EXIT_CODES: dict[str, int] = {
    "StoreCredentialsInvalid": 10,
    "StoreBucketMissing": 11,
    "StoreUnreachable": 12,
    "ArtifactChecksumMismatch": 13,
    "ArtifactMissing": 14,
}

CREDENTIAL_CODES = frozenset(
    {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken", "ExpiredToken", "403"}
)


class StoreError(Exception):
    def __init__(self, reason: StoreReason, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason: StoreReason = reason
        self.message = message


def classify(exc: BaseException, what: str, *, missing: StoreReason = "ArtifactMissing") -> StoreError | None:
    """A botocore/s3transfer error as a StoreError, None when it is none of the store's reasons;
    `missing` is what a 404 means where it is raised."""
    from botocore import exceptions as bx

    if isinstance(exc, StoreError):
        return exc
    if isinstance(exc, bx.FlexibleChecksumError):
        return StoreError("ArtifactChecksumMismatch", f"{what}: {exc}")
    if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError):
        return StoreError("StoreCredentialsInvalid", f"{what}: {exc}")
    if isinstance(exc, bx.SSLError):
        return StoreError("StoreUnreachable", f"{what}: TLS: {exc} (is FLOTILLA_S3_CA_BUNDLE the endpoint's CA?)")
    if isinstance(exc, bx.EndpointConnectionError | bx.ConnectTimeoutError | bx.ReadTimeoutError | bx.HTTPClientError):
        return StoreError("StoreUnreachable", f"{what}: {exc}")
    if isinstance(exc, bx.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        said = f"{what}: {code} {error.get('Message', '')}".strip()
        if code in CREDENTIAL_CODES:
            return StoreError("StoreCredentialsInvalid", said)
        if code == "NoSuchBucket":
            return StoreError("StoreBucketMissing", said)
        if code in {"NoSuchKey", "404", "NotFound"}:
            return StoreError(missing, said)
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if isinstance(status, int) and status >= 500:
            return StoreError("StoreUnreachable", said)
        return None
    inner = exc.__cause__ or exc.__context__  # s3transfer wraps some errors
    if inner is not None and inner is not exc:
        return classify(inner, what, missing=missing)
    return None
