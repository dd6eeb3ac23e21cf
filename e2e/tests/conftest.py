"""End-to-end tests share the local-cluster fixtures (`cluster`, `namespace`) with tests/."""

pytest_plugins = ["localcluster.pytest_plugin"]
