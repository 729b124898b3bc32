"""Clipping and normalization of the update: by value, by norm (global, per tensor, per slice),
centralization, and bounds relative to an EMA of past updates or to the previous step."""

from .centralize import Centralize
from .ema import ClipNormByEMA, ClipValueByEMA, NormalizeByEMA
from .growth import ClipNormGrowth, ClipValueGrowth
from .norm import ClipNorm, Normalize
from .value import ClipValue

__all__ = [
    "Centralize",
    "ClipNorm",
    "ClipNormByEMA",
    "ClipNormGrowth",
    "ClipValue",
    "ClipValueByEMA",
    "ClipValueGrowth",
    "Normalize",
    "NormalizeByEMA",
]
