"""Cubic regularization of Newton's method (adaptive, as a trust region)."""

from __future__ import annotations

import math

import torch

from ...core import checks
from .base import TrustRegion


def cubic_step(vals: torch.Tensor, vecs: torch.Tensor, g: torch.Tensor, M: float,
               maxiter: int = 100, eps: float = 1e-8) -> torch.Tensor:
    """Global minimiser ``d`` (subtracted) of the cubic model
    ``-g^T d + 1/2 d^T B d + M/6 ||d||^3`` given ``B = vecs diag(vals) vecs^T`` (ascending).

    The minimiser solves ``(B + sigma I) d = g`` with ``sigma = M ||d|| / 2`` and
    ``B + sigma I`` positive semidefinite (Nesterov & Polyak 2006, §5). In the eigenbasis,
    ``h(sigma) = 1/||d(sigma)|| - M/(2 sigma)`` increases on ``sigma > sigma_0 =
    max(0, -lambda_min)`` and is non-negative at ``sigma_0 + sqrt(M ||g|| / 2)``; its root is
    found by Newton's method safeguarded by bisection on that bracket (at most ``maxiter``
    iterations, until ``| ||d|| - 2 sigma / M | <= eps * 2 sigma / M``). In the "hard case"
    (``g`` orthogonal to the lowest eigenvectors and ``||d(sigma_0)|| <= 2 sigma_0 / M``)
    ``sigma = sigma_0`` and the step is completed along the lowest eigenvector to that norm.
    """
    gh = vecs.mT @ g
    w = gh * gh
    lo = max(0.0, -float(vals[0]))
    tiny = torch.finfo(vals.dtype).tiny
    if lo > 0:
        flat = (vals + lo) <= torch.finfo(vals.dtype).eps * 64 * float(vals.abs().max())
        if float(w[flat].sum()) <= (torch.finfo(vals.dtype).eps * float(g.norm())) ** 2 * len(w):
            c = torch.where(flat, 0.0, gh / (vals + lo).clamp(min=tiny))
            dn, r = float(c.norm()), 2.0 * lo / M
            if dn <= r:  # hard case: the root sits at sigma_0
                c[0] = math.sqrt(r * r - dn * dn)
                return vecs @ c
    hi = lo + math.sqrt(0.5 * M * float(g.norm()))

    def norms(sigma):
        den = (vals + sigma).clamp(min=tiny)
        q = w / (den * den)
        return math.sqrt(float(q.sum())), float((q / den).sum())

    sigma = hi
    for _ in range(maxiter):
        dn, dn3 = norms(sigma)
        target = 2.0 * sigma / M
        if abs(dn - target) <= eps * target:
            break
        h = (1.0 / dn if dn > 0 else math.inf) - 1.0 / target
        if h < 0:
            lo = sigma
        else:
            hi = sigma
        if not hi - lo > 1e-15 * hi:
            break
        slope = dn3 / dn**3 + 0.5 * M / (sigma * sigma) if dn > 0 else 0.0
        nxt = sigma - h / slope if slope > 0 and math.isfinite(h) else math.nan
        sigma = nxt if lo < nxt < hi else 0.5 * (lo + hi)
    return vecs @ (gh / (vals + sigma).clamp(min=tiny))

class CubicRegularization(TrustRegion):
    """Cubic-regularized Newton steps with an adaptive regularization (Nesterov & Polyak,
    "Cubic regularization of Newton method and its global performance", Math. Program. 108,
    2006; adaptive :math:`M` as in Cartis, Gould & Toint's ARC, 2011).

    .. math::
        d = \\arg\\min_d\\; -g^\\top d + \\tfrac12 d^\\top B d + \\tfrac{M}{6}\\lVert d \\rVert^3,
        \\qquad M = 1/\\Delta

    solved exactly from one eigendecomposition of :math:`B` per step (:func:`cubic_step`:
    safeguarded Newton/bisection on the step norm, ``maxiter``, ``eps``), valid for indefinite
    :math:`B`. The ratio
    :math:`\\rho` uses the quadratic part of the model; :math:`\\Delta` is a regularization
    parameter, so the radius rules of :class:`TrustRegion` use :math:`r = \\Delta` (a rejection
    multiplies :math:`M` by :math:`1/\\eta_-`, a very good step divides it by :math:`\\eta_+`).

    Args:
        hess_module: None (exact Hessian) or a Hessian-approximation module.
        eta, nplus, nminus, rho_good, rho_bad, init, max_attempts, update_freq, inner: see
            :class:`TrustRegion` (defaults 0, 3.5, 0.25, 0.99, 1e-4, 1, 10, 1).
        maxiter: iterations of the subproblem solver.
        eps: relative tolerance of the solver on the step norm.
        fallback: when ``hess_module`` only offers an inverse approximation, invert it (else
            ``RuntimeError``).
    """

    norm_bounded = False
    accepts_inverse = True

    def __init__(self, hess_module=None, eta: float = 0.0, nplus: float = 3.5,
                 nminus: float = 0.25, rho_good: float = 0.99, rho_bad: float = 1e-4,
                 init: float = 1.0, maxiter: int = 100, eps: float = 1e-8, update_freq: int = 1,
                 max_attempts: int = 10, fallback: bool = False, inner=None):
        super().__init__(dict(maxiter=maxiter, eps=eps, fallback=fallback),
                         dict(maxiter=checks.positive_int, eps=checks.positive,
                              fallback=checks.boolean),
                         hess_module, eta=eta, nplus=nplus, nminus=nminus, rho_good=rho_good,
                         rho_bad=rho_bad, init=init, max_attempts=max_attempts,
                         update_freq=update_freq, inner=inner)

    def solve(self, g, model, radius, settings):
        eig = model.cached("eigh", lambda: torch.linalg.eigh(model.dense))
        if not bool(torch.isfinite(eig[0]).all()):
            return None
        return cubic_step(eig[0], eig[1], g, 1.0 / radius, settings["maxiter"], settings["eps"])
