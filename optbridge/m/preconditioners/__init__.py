"""Kronecker-factored (matrix) preconditioners: Shampoo and SOAP."""

from .shampoo import Shampoo
from .soap import SOAP

__all__ = ["SOAP", "Shampoo"]
