"""API-server I/O: server-side apply, deletes, scale, status and events. Knows nothing of
the planner: `flotilla.executor` turns a plan into these calls."""

from .client import Kube

__all__ = ["Kube"]
