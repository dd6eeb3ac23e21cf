"""Artifact garbage collection: artifacts no SmallModel references go after a retention period.

- `keep`: the keys every SmallModel of a namespace references (pure, run by the operator).
- `decide`: which stored artifacts to delete, from the keep set, their ages and the
  retention (pure).
- `store`: the artifact stores a sweep walks (the claim's directory, S3 through
  flotilla.objectstore), and `sweep`, which runs in the GC Job (`python -m flotilla.gc sweep`):
  the operator cannot mount a namespace's artifact claim, a Job can (resources/gc.py).
"""

from .decide import Decision, Stored, decide
from .keep import keep_set, model_keys

__all__ = ["Decision", "Stored", "decide", "keep_set", "model_keys"]
