"""Step-size modules: learning rate, warmup, Polyak and Barzilai-Borwein step sizes."""

from .lr import LR, StepSize

__all__ = ["LR", "StepSize"]
