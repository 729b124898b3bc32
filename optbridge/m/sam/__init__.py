"""Sharpness-aware minimization and evaluation at changed weights: SAM, ASAM, MSAM,
WeightDropout, PerturbWeights. SAM, ASAM, WeightDropout and PerturbWeights rewrite the closure
seen by the modules after them."""

from .msam import MSAM
from .random_points import PerturbWeights, WeightDropout
from .sam import ASAM, SAM

__all__ = ["ASAM", "MSAM", "PerturbWeights", "SAM", "WeightDropout"]
