"""Barzilai-Borwein step size."""

from __future__ import annotations

import torch

from ...core import checks
from ...core import foreach as fe
from ...core.module import Module
from ._common import scale_by_tensor, squared_norm


class BarzilaiBorwein(Module):
    """Barzilai-Borwein two-point step size (Barzilai & Borwein, 1988, "Two-point step size
    gradient methods", IMA J. Numer. Anal. 8(1), https://doi.org/10.1093/imanum/8.1.141).

    .. math::
        s = x_t - x_{t-1},\\quad y = g_t - g_{t-1},\\qquad
        \\eta^{long} = \\frac{s^\\top s}{s^\\top y},\\quad
        \\eta^{short} = \\frac{s^\\top y}{y^\\top y},\\quad
        \\eta^{geom} = \\sqrt{\\eta^{long}\\eta^{short}}
            = \\frac{\\lVert s \\rVert}{\\lVert y \\rVert}

    and :math:`u_t \\leftarrow \\eta_t u_t`. Safeguards: the first step (no previous point, also
    after a reset) uses :math:`\\eta = \\alpha_0`; when :math:`s^\\top y \\le 0` (negative
    curvature, or no movement) or the ratio is not finite, :math:`\\eta` is ``fallback``.
    ``[BarzilaiBorwein()]`` alone is the BB gradient method; the step size stays a device tensor
    (no host sync).

    Args:
        type: ``"long"`` (BB1, :math:`s^\\top s / s^\\top y`), ``"short"`` (BB2,
            :math:`s^\\top y / y^\\top y`) or ``"geom"`` (their geometric mean).
        alpha_0: step size of the first step.
        fallback: step size when the curvature estimate :math:`s^\\top y` is not positive.
        use_grad: take :math:`y` from gradients (True) or from the incoming update (False).
        inner: optional sub-chain; its output is what the step size multiplies (:math:`s`
            and :math:`y` still come from the parameters and gradients).
    """

    def __init__(self, type: str = "geom", alpha_0: float = 1e-3, fallback: float = 1e-3,
                 use_grad: bool = True, inner=None):
        super().__init__(
            dict(type=type, alpha_0=alpha_0, fallback=fallback, use_grad=use_grad),
            rules=dict(type=checks.one_of("long", "short", "geom"), alpha_0=checks.positive,
                       fallback=checks.nonnegative, use_grad=checks.boolean),
        )
        self.set_child("inner", inner)

    def step(self, ctx) -> None:
        if not ctx.params:
            return
        kind = self.uniform_setting(ctx, "type")
        alpha_0 = self.uniform_setting(ctx, "alpha_0")
        fallback = self.uniform_setting(ctx, "fallback")
        g = ctx.grads if self.uniform_setting(ctx, "use_grad") else ctx.update
        states = self.param_states(ctx)
        if any("prev_p" not in s for s in states):
            for s, p, gi in zip(states, ctx.params, g):
                s["prev_p"] = p.clone()
                s["prev_g"] = gi.clone()
            eta = alpha_0
        else:
            prev_p = [s["prev_p"] for s in states]
            prev_g = [s["prev_g"] for s in states]
            # -s and -y, in the state buffers (products below are sign-invariant)
            torch._foreach_sub_(prev_p, ctx.params)
            torch._foreach_sub_(prev_g, g)
            sy = fe.dot(prev_p, prev_g)
            if kind == "long":
                eta = squared_norm(prev_p) / sy
            elif kind == "short":
                eta = sy / squared_norm(prev_g)
            else:
                eta = (squared_norm(prev_p) / squared_norm(prev_g)).sqrt()
            ok = (sy > torch.finfo(sy.dtype).tiny * 2) & eta.isfinite()
            eta = torch.where(ok, eta, fallback)
            torch._foreach_copy_(prev_p, ctx.params)
            torch._foreach_copy_(prev_g, g)
        if "inner" in self.children:
            sub = self.run_child(ctx, "inner")
            update = sub.update
            ctx.set_update(update, owned=sub.update_is_owned)
        if isinstance(eta, torch.Tensor):
            scale_by_tensor(ctx, eta)
        else:
            ctx.scale_update(eta)
