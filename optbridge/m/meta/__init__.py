"""Meta modules: choosing sub-chains per step (Alternate, Switch), several inner steps
(Multistep, Sequential), per-parameter sub-chains (Split), gradient accumulation, online
two-point information, keeping the best parameters, and restarts."""

from .accumulate import GradientAccumulation
from .multistep import Multistep, Sequential
from .online import Online
from .restarts import RestartEvery, RestartOnStuck
from .save_best import SaveBest
from .split import ParamFilter, Split
from .switch import Alternate, Switch

__all__ = [
    "Alternate",
    "GradientAccumulation",
    "Multistep",
    "Online",
    "ParamFilter",
    "RestartEvery",
    "RestartOnStuck",
    "SaveBest",
    "Sequential",
    "Split",
    "Switch",
]
