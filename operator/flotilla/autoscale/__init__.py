"""Latency-objective autoscaling: the pure control law (`law`) over queueing formulas (`queueing`)."""

from flotilla.autoscale.law import (
    Bounds,
    Decision,
    LawConfig,
    LawState,
    Objective,
    Observation,
    decide,
    observation_from_interval,
)

__all__ = [
    "Bounds",
    "Decision",
    "LawConfig",
    "LawState",
    "Objective",
    "Observation",
    "decide",
    "observation_from_interval",
]
