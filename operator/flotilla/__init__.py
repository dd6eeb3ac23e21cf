"""Flotilla: a Kubernetes operator for fleets of small language models."""

__version__ = "0.1.0"
