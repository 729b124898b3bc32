"""Trust-region methods: the step comes from a model of the loss trusted within a radius."""

from .base import TrustRegion, TrustRegionBase
from .cubic import CubicRegularization
from .dogleg import Dogleg
from .levenberg_marquardt import LevenbergMarquardt
from .trust_cg import TrustCG

__all__ = [
    "CubicRegularization",
    "Dogleg",
    "LevenbergMarquardt",
    "TrustCG",
    "TrustRegion",
    "TrustRegionBase",
]
