"""The process node: a node agent that runs the pods bound to it as local processes.

    import processnode
    node = processnode.start(cluster)          # Node "local-0", Ready when this returns
    node.node_selector                         # {"flotilla.dev/process-node": "true", ...}
    node.stop()

`python -m processnode --kubeconfig K --name local-0 --state-dir DIR [--gpus N]` runs it in
the foreground. See README.md in this directory.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .config import DEFAULT_NAME, NODE_LABEL, NODE_SELECTOR
from .handle import ProcessNode, ProcessNodeError, start, stop_detached

__all__ = [
    "DEFAULT_NAME",
    "NODE_LABEL",
    "NODE_SELECTOR",
    "ProcessNode",
    "ProcessNodeError",
    "__version__",
    "start",
    "stop_detached",
]
