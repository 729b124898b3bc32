"""Adaptive (diagonally preconditioned, sign-based and orthogonalizing) modules."""

from .adagrad import Adagrad, AdagradNorm
from .adam import Adam
from .adan import Adan
from .ademamix import AdEMAMix
from .adopt import ADOPT
from .laprop import LaProp
from .lion import Lion
from .nadam import NAdam
from .orthogonalize import Muon, OrthoGrad, Orthogonalize
from .radam import RAdam
from .rmsprop import RMSprop
from .rprop import Rprop
from .sign import Signum, SignSGD

__all__ = [
    "ADOPT",
    "AdEMAMix",
    "Adagrad",
    "AdagradNorm",
    "Adam",
    "Adan",
    "LaProp",
    "Lion",
    "Muon",
    "NAdam",
    "OrthoGrad",
    "Orthogonalize",
    "RAdam",
    "RMSprop",
    "Rprop",
    "SignSGD",
    "Signum",
]
