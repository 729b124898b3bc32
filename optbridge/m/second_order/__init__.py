"""Second-order modules: Newton's method and its matrix-free, sketched and least-squares
variants, and Hutchinson Hessian-diagonal preconditioners (AdaHessian, SophiaH).

They need a closure whose loss is twice differentiable (``derivatives`` holds the shared
Hessian-vector-product and Hessian helpers, and :class:`DerivativeError`, raised when it is not).
"""

from .adahessian import AdaHessian
from .derivatives import DerivativeError  # noqa: F401  (not a module; kept out of __all__)
from .gauss_newton import GaussNewton
from .newton import Newton
from .newton_cg import NewtonCG
from .nystrom import NystromPCG, NystromSketchAndSolve
from .sophia import SophiaH
from .subspace import SubspaceNewton

__all__ = [
    "AdaHessian",
    "GaussNewton",
    "Newton",
    "NewtonCG",
    "NystromPCG",
    "NystromSketchAndSolve",
    "SophiaH",
    "SubspaceNewton",
]
