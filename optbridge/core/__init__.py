"""The chain engine: modules, the step context, the closure protocol and ``Modular``."""

from .closure import ClosureError, CountedClosure, EvalCounts
from .context import StepContext
from .modular import Modular
from .module import Borrowed, Chain, Module, Part, Ratio, Transform

__all__ = [
    "Borrowed",
    "Chain",
    "ClosureError",
    "CountedClosure",
    "EvalCounts",
    "Modular",
    "Module",
    "Part",
    "Ratio",
    "StepContext",
    "Transform",
]
