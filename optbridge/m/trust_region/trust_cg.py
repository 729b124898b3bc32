"""Trust region with the Steihaug–Toint truncated conjugate gradient solver."""

from __future__ import annotations

import math

import torch

from ...core import checks
from .base import TrustRegion


def _to_boundary(d: torch.Tensor, p: torch.Tensor, radius: float) -> torch.Tensor:
    """``d + tau p`` with ``tau >= 0`` and ``||d + tau p|| = radius`` (``||d|| <= radius``)."""
    pp, dp, dd = float(p.dot(p)), float(d.dot(p)), float(d.dot(d))
    disc = max(dp * dp + pp * (radius * radius - dd), 0.0)
    return d + ((-dp + math.sqrt(disc)) / pp) * p


def steihaug_cg(matvec, g: torch.Tensor, radius: float, reg: float = 0.0,
                maxiter: int | None = None, rtol: float | None = None) -> torch.Tensor:
    """Approximate minimiser of ``-g^T d + 1/2 d^T (B + reg I) d`` subject to
    ``||d|| <= radius`` (Steihaug 1983, Toint 1981; Nocedal & Wright, Algorithm 7.2).

    CG from ``d = 0`` on ``(B + reg I) d = g``; it stops at the boundary when an iterate leaves
    the region or a direction of non-positive curvature appears, and inside when the residual
    drops below ``rtol * ||g||`` (default :math:`\\min(0.5, \\sqrt{\\lVert g \\rVert})`, the
    superlinear forcing sequence) or after ``maxiter`` (default ``2n``) iterations.
    """
    gnorm = float(g.norm())
    if rtol is None:
        rtol = min(0.5, math.sqrt(gnorm))
    tol = rtol * gnorm
    maxiter = 2 * g.numel() if maxiter is None else maxiter
    d = torch.zeros_like(g)
    r = g.clone()
    p = r.clone()
    rr = gnorm * gnorm
    for _ in range(maxiter):
        Bp = matvec(p)
        if reg:
            Bp = Bp + reg * p
        curv = float(p.dot(Bp))
        if curv <= 0:
            return _to_boundary(d, p, radius)
        alpha = rr / curv
        d_next = d + alpha * p
        if float(d_next.norm()) >= radius:
            return _to_boundary(d, p, radius)
        d = d_next
        r = r - alpha * Bp
        rr_next = float(r.dot(r))
        if math.sqrt(rr_next) <= tol:
            break
        p = r + (rr_next / rr) * p
        rr = rr_next
    return d


class TrustCG(TrustRegion):
    """Trust region solved by Steihaug–Toint truncated conjugate gradient.

    .. math::
        d \\approx \\arg\\min_{\\lVert d \\rVert \\le \\Delta}
        \\; -g^\\top d + \\tfrac12 d^\\top (B + \\lambda_{reg} I) d

    by CG from :math:`d = 0`, stopping on the boundary at negative curvature or when an iterate
    leaves the region (:func:`steihaug_cg`; T. Steihaug, "The conjugate gradient method and trust
    regions in large scale optimization", SIAM J. Numer. Anal. 20(3), 1983; Nocedal & Wright,
    *Numerical Optimization*, Algorithm 7.2). Only products :math:`Bv` are needed. The radius
    rules, trials and evaluation counts are those of :class:`TrustRegion`.

    Args:
        hess_module: None (exact Hessian) or a Hessian-approximation module.
        eta, nplus, nminus, rho_good, rho_bad, init, max_attempts, boundary_tol, update_freq,
            inner: see :class:`TrustRegion` (defaults 0, 3.5, 0.25, 0.99, 1e-4, 1, 10, 1e-6, 1).
        reg: :math:`\\lambda_{reg}` added to the model's curvature inside CG.
    """

    norm_bounded = True

    def __init__(self, hess_module=None, eta: float = 0.0, nplus: float = 3.5,
                 nminus: float = 0.25, rho_good: float = 0.99, rho_bad: float = 1e-4,
                 init: float = 1.0, update_freq: int = 1, reg: float = 0.0,
                 max_attempts: int = 10, boundary_tol: float | None = 1e-6, inner=None):
        super().__init__(dict(reg=reg), dict(reg=checks.nonnegative), hess_module, eta=eta,
                         nplus=nplus, nminus=nminus, rho_good=rho_good, rho_bad=rho_bad,
                         init=init, max_attempts=max_attempts, update_freq=update_freq,
                         boundary_tol=boundary_tol, inner=inner, declare_boundary_tol=True)

    def solve(self, g, model, radius, settings):
        return steihaug_cg(model.matvec, g, radius, settings["reg"])
