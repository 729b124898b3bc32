"""Gradient approximators: any chain becomes zeroth-order. ``[m.SPSA(), m.Adam(), m.LR(1e-2)]``
minimises from loss values only (torchzero's ``grad_approximation`` modules)."""

from ._base import GradApproximator
from .fdm import FDM
from .forward_gradient import ForwardGradient
from .mezo import MeZO
from .rfdm import RDSA, SPSA, GaussianSmoothing, RandomizedFDM

__all__ = ["FDM", "ForwardGradient", "GaussianSmoothing", "GradApproximator", "MeZO", "RDSA",
           "RandomizedFDM", "SPSA"]
