"""Line searches: the parameters move to ``x - t * update`` with ``t`` chosen by the search."""

from .backtracking import AdaptiveBacktracking, Backtracking
from .base import LineSearch
from .scipy import ScipyMinimizeScalar
from .strong_wolfe import StrongWolfe

__all__ = [
    "AdaptiveBacktracking",
    "Backtracking",
    "LineSearch",
    "ScipyMinimizeScalar",
    "StrongWolfe",
]
