"""End-to-end tests share the local-cluster fixtures (`cluster`, `namespace`) with tests/,
and run pods for real on the process node (`process_node`)."""

pytest_plugins = ["localcluster.pytest_plugin", "processnode.pytest_plugin"]
