"""The best point seen so far. NaN and infinite values count as evaluations but never become
the best point.

With constraints, each point also carries its largest constraint violation ``v`` (0 when
feasible): a point within ``tol`` of feasible always beats one that is not; among feasible
points the lower value wins, among infeasible ones the smaller violation.
"""

from __future__ import annotations

import math

import numpy as np


class BestSeen:
    """``x`` is this object's own float64 buffer, overwritten in place by each improvement
    (checkpoints share it through a tensor view, as torch optimizers' state tensors are
    updated in place)."""

    __slots__ = ("x", "f", "v", "tol")

    def __init__(self, x=None, f: float = math.inf, v: float = 0.0, tol: float = 0.0):
        self.x = None if x is None else np.array(x, dtype=np.float64, copy=True)
        self.f = float(f) if x is not None else math.inf  # no point: nothing to beat
        self.v = float(v) if x is not None else 0.0
        self.tol = float(tol)

    def update(self, x, f: float, v: float = 0.0) -> bool:
        """Record ``(x, f)`` with violation ``v``; returns whether it is the new best (a finite
        f, strictly better by the order above)."""
        f = float(f)
        if not math.isfinite(f) or math.isnan(v):
            return False
        if self.x is not None:  # feasible (v <= tol) before infeasible, then lower f / lower v
            tol = self.tol
            if v <= tol:
                if self.v <= tol and not f < self.f:
                    return False
            elif self.v <= tol or not v < self.v:
                return False
        self.store(x)
        self.f = f
        self.v = float(v)
        return True

    def store(self, x) -> None:
        """Copy ``x`` into the best-point buffer (kept, and updated in place, once it exists:
        no allocation per improvement)."""
        bx = self.x
        if bx is not None and bx.shape == getattr(x, "shape", None):
            bx[...] = x
        else:
            self.x = np.array(x, dtype=np.float64, copy=True)
