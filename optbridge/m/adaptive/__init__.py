"""Adaptive (diagonally preconditioned and orthogonalizing) modules."""

from .adam import Adam

__all__ = ["Adam"]
