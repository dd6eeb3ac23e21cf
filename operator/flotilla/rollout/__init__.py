"""Canary rollout: the sequential statistical judge (pure); the state machine joins it here.

`flotilla.rollout.judge` is the judge *module* (call `judge.judge(evidence, settings)`); the
function is deliberately not re-exported here, so that name keeps meaning the module.
"""

from flotilla.rollout.judge import Evidence, JudgeSettings, Verdict, observe

__all__ = ["Evidence", "JudgeSettings", "Verdict", "observe"]
