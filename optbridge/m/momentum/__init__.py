"""Momentum modules: moving averages, Nesterov, cautious masks, windowed averages, MARS."""

from .averaging import Averaging, MedianAveraging, WeightedAveraging
from .cautious import Cautious, IntermoduleCautious
from .cosine import ScaleByGradCosineSimilarity, ScaleModulesByCosineSimilarity
from .ema import EMA, HeavyBall
from .mars import MARSCorrection
from .nag import NAG

__all__ = [
    "Averaging",
    "Cautious",
    "EMA",
    "HeavyBall",
    "IntermoduleCautious",
    "MARSCorrection",
    "MedianAveraging",
    "NAG",
    "ScaleByGradCosineSimilarity",
    "ScaleModulesByCosineSimilarity",
    "WeightedAveraging",
]
