"""The S3 artifact store's client (docs/objectstore.md): the optimization Job uploads an
artifact directory (manifest last), the serving pods' fetch-artifact init container downloads
and verifies it (`python -m flotilla.objectstore fetch`), the GC sweep lists and deletes.

Runs in pods, not in the operator: it imports nothing of ours but api (for the termination
message's shape), and boto3 only when a client is made.
"""

from .errors import EXIT_CODES, StoreError, StoreReason, classify
from .settings import S3Settings
from .store import (
    MANIFEST,
    FetchResult,
    Meter,
    StoredArtifact,
    artifact_complete,
    build_manifest,
    delete_artifact,
    fetch_artifact,
    list_artifacts,
    read_manifest,
    sha256_file,
    upload_artifact,
    verify,
)

__all__ = [
    "EXIT_CODES",
    "MANIFEST",
    "FetchResult",
    "Meter",
    "S3Settings",
    "StoreError",
    "StoreReason",
    "StoredArtifact",
    "artifact_complete",
    "build_manifest",
    "classify",
    "delete_artifact",
    "fetch_artifact",
    "list_artifacts",
    "read_manifest",
    "sha256_file",
    "upload_artifact",
    "verify",
]
