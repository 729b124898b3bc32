"""Levenberg–Marquardt trust region."""

from __future__ import annotations

import torch

from ...core import checks
from .base import TrustRegion


class LevenbergMarquardt(TrustRegion):
    """Levenberg–Marquardt: damped Newton (or Gauss–Newton) steps whose damping is driven by the
    trust-region ratio (Levenberg 1944, Marquardt 1963; Nocedal & Wright §10.3).

    .. math::
        (B + \\lambda D)\\, d = g,\\qquad \\lambda = 1/\\Delta
        \\ (\\times \\sqrt{\\lVert g \\rVert} \\text{ when adaptive}),\\qquad
        D = y\\, \\mathrm{diag}(B) + (1 - y) I

    (``y = 0``: Levenberg's identity damping; ``y = 1``: Marquardt's diagonal scaling, meant for
    Gauss–Newton models; diagonal entries below twice the smallest normal number count as 1).
    Solved from one eigendecomposition of :math:`D^{-1/2} B D^{-1/2}` per step (each attempt's
    :math:`\\lambda` then costs :math:`O(n^2)`); when :math:`B + \\lambda D` is not positive
    definite the attempt is rejected without evaluating the loss and :math:`\\Delta` shrinks (the
    damping grows).
    :math:`\\Delta` is a damping parameter here, so the radius rules of :class:`TrustRegion` use
    :math:`r = \\Delta`: a rejection multiplies :math:`\\lambda` by :math:`1/\\eta_-`, a very good
    step divides it by :math:`\\eta_+`.

    Args:
        hess_module: None (exact Hessian) or a Hessian-approximation module.
        y: interpolation between identity (0) and diagonal (1) damping.
        eta, nplus, nminus, rho_good, rho_bad, init, max_attempts, update_freq, inner: see
            :class:`TrustRegion` (defaults 0, 3.5, 0.25, 0.99, 1e-4, 1, 10, 1).
        adaptive: multiply :math:`\\lambda` by :math:`\\sqrt{\\lVert g \\rVert}`.
        fallback: when ``hess_module`` only offers an inverse approximation, invert it (else
            ``RuntimeError``).
    """

    norm_bounded = False
    accepts_inverse = True

    def __init__(self, hess_module=None, y: float = 0.0, eta: float = 0.0, nplus: float = 3.5,
                 nminus: float = 0.25, rho_good: float = 0.99, rho_bad: float = 1e-4,
                 init: float = 1.0, update_freq: int = 1, max_attempts: int = 10,
                 adaptive: bool = False, fallback: bool = False, inner=None):
        super().__init__(dict(y=y, adaptive=adaptive, fallback=fallback),
                         dict(y=checks.closed_unit_interval, adaptive=checks.boolean,
                              fallback=checks.boolean),
                         hess_module, eta=eta, nplus=nplus, nminus=nminus, rho_good=rho_good,
                         rho_bad=rho_bad, init=init, max_attempts=max_attempts,
                         update_freq=update_freq, inner=inner)

    def solve(self, g, model, radius, settings):
        lam = 1.0 / radius
        if settings["adaptive"]:
            lam *= float(g.norm()) ** 0.5
        vals, vecs, scale = model.cached(("lm", settings["y"]), lambda: _scaled_eigh(model.dense,
                                                                                    settings["y"]))
        den = vals + lam
        if not bool((den > 0).all()):
            return None
        rhs = g if scale is None else g * scale
        d = vecs @ ((vecs.mT @ rhs) / den)
        return d if scale is None else d * scale


def _scaled_eigh(B: torch.Tensor, y: float):
    """Eigendecomposition of ``S B S`` with ``S = D^{-1/2}`` (``S = None`` for ``y = 0``), so
    that ``(B + lam D)^{-1} g = S V (Lambda + lam)^{-1} V^T S g`` for every ``lam`` at O(n^2)."""
    if y == 0:
        vals, vecs = torch.linalg.eigh(B)
        return vals, vecs, None
    diag = B.diagonal()
    diag = torch.where(diag < torch.finfo(diag.dtype).tiny * 2, 1.0, diag)
    scale = (diag * y + (1 - y)).rsqrt()
    vals, vecs = torch.linalg.eigh(B * scale.unsqueeze(0) * scale.unsqueeze(1))
    return vals, vecs, scale
