"""API-server I/O: server-side apply, deletes, scale, status and events. Knows nothing of
the planner: `flotilla.executor` turns a plan into these calls."""

from .client import ALL_NAMESPACES, Kube

__all__ = ["ALL_NAMESPACES", "Kube"]
