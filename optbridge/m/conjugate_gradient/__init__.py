"""Nonlinear conjugate gradient methods and their restart criteria."""

from .base import ConjugateGradientBase
from .cg import (
    DYHS,
    ConjugateDescent,
    DaiYuan,
    FletcherReeves,
    HagerZhang,
    HestenesStiefel,
    HybridHS_DY,
    LiuStorey,
    PolakRibiere,
)
from .projected_gradient import ProjectedGradientMethod
from .restarts import BirginMartinezRestart, PowellRestart

__all__ = [
    "ConjugateGradientBase",
    "PolakRibiere",
    "FletcherReeves",
    "HestenesStiefel",
    "DaiYuan",
    "LiuStorey",
    "ConjugateDescent",
    "HagerZhang",
    "DYHS",
    "HybridHS_DY",
    "ProjectedGradientMethod",
    "PowellRestart",
    "BirginMartinezRestart",
]
