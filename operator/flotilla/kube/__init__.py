"""API-server I/O: server-side apply, deletes, scale, status and events."""

from .client import Kube
from .execute import execute

__all__ = ["Kube", "execute"]
