"""Pure planning: from a SmallModel and its observed children to a plan and a new status."""

from .observed import DeploymentView, JobView, ObjectView, Observed, PodView
from .plan import Annotate, Context, Event, Plan, Ref, Scale, plan

__all__ = [
    "Annotate",
    "Context",
    "DeploymentView",
    "Event",
    "JobView",
    "ObjectView",
    "Observed",
    "Plan",
    "PodView",
    "Ref",
    "Scale",
    "plan",
]
