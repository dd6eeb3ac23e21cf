"""Shared pytest setup: the local-cluster fixtures (`cluster`, `namespace`) from e2e/localcluster
and the session's process node (`process_node`) from e2e/processnode: registered here once, so
tests/ and e2e/tests share one node (a second fixture instance would find its state dir locked)."""

pytest_plugins = ["localcluster.pytest_plugin", "processnode.pytest_plugin"]
