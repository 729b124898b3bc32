"""Termination criteria: modules that stop the optimizer (``optimizer.terminated``,
``optimizer.stop_reason``) on a budget or on convergence, and their combinations."""

from .base import TerminateAll, TerminateAny, TerminateNever, TerminationCriteriaBase
from .criteria import (
    TerminateAfterNEvaluations,
    TerminateAfterNSeconds,
    TerminateAfterNSteps,
    TerminateByGradientNorm,
    TerminateByUpdateNorm,
    TerminateOnLossReached,
    TerminateOnNoImprovement,
)

__all__ = [
    "TerminateAfterNEvaluations",
    "TerminateAfterNSeconds",
    "TerminateAfterNSteps",
    "TerminateAll",
    "TerminateAny",
    "TerminateByGradientNorm",
    "TerminateByUpdateNorm",
    "TerminateNever",
    "TerminateOnLossReached",
    "TerminateOnNoImprovement",
    "TerminationCriteriaBase",
]
