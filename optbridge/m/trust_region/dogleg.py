"""Dogleg trust region."""

from __future__ import annotations

import math

import torch

from .base import TrustRegion


def newton_step(model, g: torch.Tensor):
    """``B^{-1} g`` from the eigendecomposition of ``B``, or None when ``B`` is not positive
    definite (cached per step)."""

    def compute():
        vals, vecs = torch.linalg.eigh(model.dense)
        if not bool(vals[0] > 0):
            return None
        return vecs @ ((vecs.mT @ g) / vals)

    return model.cached("newton", compute)


class Dogleg(TrustRegion):
    """Dogleg trust region (Powell, 1970; Nocedal & Wright, *Numerical Optimization*, §4.1).

    With the Cauchy step :math:`d_U = \\frac{g^\\top g}{g^\\top B g} g` and the Newton step
    :math:`d_B = B^{-1} g` (symmetric eigendecomposition):

    .. math::
        d = \\begin{cases}
        d_B & \\lVert d_B \\rVert \\le \\Delta \\\\
        \\Delta\\, g / \\lVert g \\rVert & \\lVert d_U \\rVert \\ge \\Delta \\\\
        d_U + \\tau (d_B - d_U),\\ \\lVert d \\rVert = \\Delta,\\ \\tau \\in [0, 1]
        & \\text{otherwise}
        \\end{cases}

    When :math:`g^\\top B g \\le 0` the step is :math:`\\Delta g / \\lVert g \\rVert`; when
    :math:`B` is not positive definite (or :math:`d_B` is not a descent direction) the Cauchy
    step, cut at the boundary. The radius rules, trials and evaluation counts are those of
    :class:`TrustRegion`.

    Args:
        hess_module: None (exact Hessian) or a Hessian-approximation module.
        eta, nplus, nminus, rho_good, rho_bad, init, max_attempts, update_freq, inner: see
            :class:`TrustRegion` (defaults 0, 2, 0.25, 0.75, 0.25, 1, 10, 1).
    """

    norm_bounded = True

    def __init__(self, hess_module=None, eta: float = 0.0, nplus: float = 2.0,
                 nminus: float = 0.25, rho_good: float = 0.75, rho_bad: float = 0.25,
                 init: float = 1.0, update_freq: int = 1, max_attempts: int = 10, inner=None):
        super().__init__({}, {}, hess_module, eta=eta, nplus=nplus, nminus=nminus,
                         rho_good=rho_good, rho_bad=rho_bad, init=init,
                         max_attempts=max_attempts, update_freq=update_freq, inner=inner)

    def solve(self, g, model, radius, settings):
        gnorm = float(g.norm())
        gBg = model.cached("gBg", lambda: float(g.dot(model.matvec(g))))
        if gBg <= 0:
            return g * (radius / gnorm)
        cauchy = g * (gnorm * gnorm / gBg)
        cnorm = float(cauchy.norm())
        newton = newton_step(model, g)
        if newton is None or float(g.dot(newton)) <= 0:
            return cauchy if cnorm <= radius else g * (radius / gnorm)
        if float(newton.norm()) <= radius:
            return newton
        if cnorm >= radius:
            return g * (radius / gnorm)
        a = newton - cauchy
        aa, ab = float(a.dot(a)), float(a.dot(cauchy))
        tau = (-ab + math.sqrt(max(ab * ab - aa * (cnorm * cnorm - radius * radius), 0.0))) / aa
        return cauchy + tau * a
