"""The best point seen so far. NaN and infinite values count as evaluations but never become
the best point."""

from __future__ import annotations

import math

import numpy as np


class BestSeen:
    __slots__ = ("x", "f")

    def __init__(self, x=None, f: float = math.inf):
        self.x = None if x is None else np.array(x, dtype=np.float64, copy=True)
        self.f = float(f)

    def update(self, x, f: float) -> bool:
        """Record ``(x, f)``; returns whether it is the new best (a finite, strictly lower f)."""
        f = float(f)
        if not math.isfinite(f):
            return False
        if self.x is not None and not f < self.f:
            return False
        self.x = np.array(x, dtype=np.float64, copy=True)
        self.f = f
        return True
