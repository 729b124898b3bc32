"""Quasi-Newton methods: full-matrix (``BFGS``, ``SR1``, ``DFP`` …) and diagonal variants."""

from .base import HessianUpdateStrategy
from .bfgs import BFGS, DFP, SSVM
from .sr1 import SR1
from .broyden import BroydenBad, BroydenGood, Greenstadt1, Greenstadt2, ThomasOptimalMethod
from .psb import PSB
from .pearson import McCormick, Pearson, ProjectedNewtonRaphson
from .diagonal import DiagonalBFGS, DiagonalSR1
from .lbfgs import LBFGS
from .lsr1 import LSR1

__all__ = [
    "HessianUpdateStrategy",
    "BFGS",
    "DFP",
    "SSVM",
    "SR1",
    "BroydenGood",
    "BroydenBad",
    "Greenstadt1",
    "Greenstadt2",
    "ThomasOptimalMethod",
    "PSB",
    "Pearson",
    "McCormick",
    "ProjectedNewtonRaphson",
    "DiagonalBFGS",
    "DiagonalSR1",
    "LBFGS",
    "LSR1",
]
