"""Step-size modules: learning rate, warmup, Polyak and Barzilai-Borwein step sizes."""

from .barzilai_borwein import BarzilaiBorwein
from .lr import LR, StepSize
from .polyak import PolyakStepSize
from .warmup import Warmup, WarmupNormClip

__all__ = ["BarzilaiBorwein", "LR", "PolyakStepSize", "StepSize", "Warmup", "WarmupNormClip"]
