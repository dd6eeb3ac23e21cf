"""`make kind-demo`: the process-node demo on a kind cluster, for users with Docker (see plan.py)."""
