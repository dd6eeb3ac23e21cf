"""Shared pytest setup: the local-cluster fixtures (`cluster`, `namespace`) from e2e/localcluster."""

pytest_plugins = ["localcluster.pytest_plugin"]
