"""Sharpness-aware minimization by closure rewriting: SAM and ASAM."""

from __future__ import annotations

import math

import torch

from ...core import checks
from ...core import foreach as fe
from ...core.module import Module
from ._closure import MovedClosure, at_point, norm_p


def perturbation(params, grads, rho, p: float, eps: float, adaptive: bool) -> list[torch.Tensor]:
    """SAM's (or ASAM's) first-order worst-case perturbation, freshly allocated.

    With :math:`1/p + 1/q = 1` and :math:`t = T g` (:math:`T = |w|` for ASAM, the identity for
    SAM): :math:`e = \\rho\\, T\\, \\mathrm{sign}(t)\\,|t|^{q-1} / \\lVert t\\rVert_q^{q-1}`.
    For :math:`p = 2` this is :math:`\\rho T^2 g / \\lVert T g \\rVert_2`.
    """
    if p == 2:
        e = torch._foreach_mul(grads, params) if adaptive else torch._foreach_mul(grads, 1.0)
        norm = fe.global_norm(e, 2.0).clamp_min(eps)
        if adaptive:
            torch._foreach_mul_(e, params)
        torch._foreach_div_(e, norm)
    else:
        q = 1.0 if p == math.inf else p / (p - 1)
        t = torch._foreach_mul(grads, params) if adaptive else grads
        e = torch._foreach_abs(t)
        if q == 1.0:
            torch._foreach_sign_(e)
            torch._foreach_mul_(e, torch._foreach_sign(grads))
        else:
            norm = fe.global_norm(e, q).pow(q - 1).clamp_min(eps)
            torch._foreach_pow_(e, q - 1)
            torch._foreach_mul_(e, torch._foreach_sign(grads))
            torch._foreach_div_(e, norm)
        if adaptive:
            torch._foreach_mul_(e, torch._foreach_abs(params))
    torch._foreach_mul_(e, rho)
    return e


class SAM(Module):
    """Sharpness-Aware Minimization (Foret et al., 2021, https://arxiv.org/abs/2010.01412):
    the gradient of the SAM objective :math:`f(x + e(x))`.

    .. math::
        e(x) = \\rho\\, \\frac{\\mathrm{sign}(g)\\,|g|^{q-1}}{\\lVert g \\rVert_q^{q-1}},
        \\quad g = \\nabla f(x),\\quad \\tfrac1p + \\tfrac1q = 1
        \\qquad\\Big(p = 2:\\ e = \\rho\\, g / \\lVert g \\rVert_2\\Big)

        u = \\nabla f(y)\\big|_{y = x + e(x)}

    ``[SAM(rho), LR(lr)]`` is SAM-SGD; ``[SAM(), Adam(), LR(lr)]`` SAM-Adam. Put it first: it
    replaces the gradient and the update with the SAM gradient, and the closure seen by the
    modules after it with the SAM objective, so a later line search searches
    :math:`f(y + e)`. Each step costs two gradient evaluations (the engine's at :math:`x`, and
    one at :math:`x + e`); ``step()`` returns :math:`f(x + e(x))`.

    The rewritten closure, called at some point :math:`y` by a later module:

    - ``closure(True)`` evaluates :math:`\\nabla f(y)`, then :math:`f` and :math:`\\nabla f` at
      :math:`y + e(y)` (two gradient evaluations) and leaves the latter in ``.grad``;
    - ``closure(False)`` evaluates :math:`f(y + e(x))` with the perturbation computed at the
      step's start point :math:`x` (one loss-only evaluation, no backward pass); with a
      zero-argument closure it raises ``ClosureError`` naming SAM.

    The parameters are restored exactly after every evaluation.

    Args:
        rho: :math:`\\rho \\ge 0`, radius of the neighborhood.
        p: order of the norm ball, :math:`p > 1` (``2`` in the paper, ``inf`` allowed).
        eps: lower bound on the denominator (a zero gradient gives :math:`e = 0`).
        asam: scale the neighborhood by :math:`|w|` (see :class:`ASAM`).
    """

    def __init__(self, rho: float = 0.05, p: float = 2, eps: float = 1e-10, asam: bool = False):
        super().__init__(
            dict(rho=rho, p=p, eps=eps, asam=asam),
            rules=dict(rho=checks.nonnegative, p=norm_p, eps=checks.positive, asam=checks.boolean),
        )

    def step(self, ctx) -> None:
        if not ctx.params:
            return
        ctx.require_closure(f"{self.name} evaluates the gradient at a perturbed point")
        rho = self.settings(ctx, "rho")
        p = self.uniform_setting(ctx, "p")
        eps = self.uniform_setting(ctx, "eps")
        adaptive = self.uniform_setting(ctx, "asam")
        params, closure = ctx.params, ctx.closure

        def perturb(grads):
            return perturbation(params, grads, rho, p, eps, adaptive)

        e0 = perturb(ctx.grads)

        def move(ps, backward):
            if backward:
                probe = at_point(ctx, closure)
                probe.evaluate(backward=True)
                torch._foreach_add_(ps, perturb(probe.grads))
            else:
                torch._foreach_add_(ps, e0)

        sam_closure = MovedClosure(self.name, ctx, closure, move)
        backup = sam_closure._save(params)
        torch._foreach_add_(params, e0)
        try:
            ctx.loss = ctx.evaluate(backward=True)
        finally:
            torch._foreach_copy_(params, backup)
        ctx.update = ctx.grads
        ctx.closure = sam_closure


class ASAM(SAM):
    """Adaptive SAM (Kwon et al., 2021, https://arxiv.org/abs/2102.11600): SAM in the
    neighborhood :math:`\\lVert T_w^{-1} e \\rVert_p \\le \\rho` scaled by :math:`T_w = |w|`.

    .. math::
        e(w) = \\rho\\, T_w\\, \\frac{\\mathrm{sign}(t)\\,|t|^{q-1}}{\\lVert t \\rVert_q^{q-1}},
        \\quad t = T_w \\nabla f(w)
        \\qquad\\Big(p = 2:\\ e = \\rho\\, w^2 \\odot g / \\lVert w \\odot g \\rVert_2\\Big)

    and :math:`u = \\nabla f(w + e(w))`. Same closure rewriting, costs and placement as
    :class:`SAM` (``SAM(asam=True)`` with ASAM's larger default radius).

    Args:
        rho: :math:`\\rho \\ge 0`; ASAM's neighborhoods are relative, hence the larger default.
        p: order of the norm ball, :math:`p > 1`.
        eps: lower bound on the denominator.
    """

    def __init__(self, rho: float = 0.5, p: float = 2, eps: float = 1e-10):
        super().__init__(rho=rho, p=p, eps=eps, asam=True)
