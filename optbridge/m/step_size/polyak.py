"""Polyak's step size."""

from __future__ import annotations

import torch

from ...core import checks
from ...core import foreach as fe
from ...core.module import Module
from ._common import scale_by_tensor, squared_norm


class PolyakStepSize(Module):
    """Polyak's step size (B. T. Polyak, *Introduction to Optimization*, 1987, §5.3; see
    Hazan & Kakade, 2019, https://arxiv.org/abs/1905.00313).

    .. math::
        \\eta_t = \\alpha\\,\\mathrm{clip}_{[0,\\ \\eta_{max}]}
            \\frac{f(x_t) - f^*}{\\langle u_t, g_t \\rangle},\\qquad u_t \\leftarrow \\eta_t u_t

    With ``use_grad=False`` the denominator is :math:`\\langle u_t, u_t \\rangle`. When the
    denominator is not positive (converged, or not a descent direction) the step is 0. With
    ``f_star=None`` the target level is :math:`f^*_t = \\min_{s \\le t} f(x_s) - \\gamma_t`
    with :math:`\\gamma_0 = y`, :math:`\\gamma_{t+1} = (1 - y_{decay})\\gamma_t`
    (Polyak's method with an unknown optimal value, Boyd's subgradient notes,
    https://web.stanford.edu/class/ee392o/subgrad_method.pdf).

    Needs the loss at the current point: ``step(closure)`` must be given a closure (it is
    evaluated loss-only if nothing evaluated it yet). The step size stays a device tensor (no
    host sync). ``[PolyakStepSize()]`` alone is Polyak's gradient method.

    Args:
        f_star: :math:`f^*`, the optimal (lowest reachable) loss; ``None`` when unknown.
        y: initial distance :math:`\\gamma_0` of the target level below the best loss seen
            (only with ``f_star=None``).
        y_decay: the distance shrinks by the factor :math:`1 - y_{decay}` each step.
        max: :math:`\\eta_{max}`, the largest step size allowed (``None``: no cap).
        use_grad: use :math:`\\langle u_t, g_t \\rangle` (True) or :math:`\\lVert u_t \\rVert^2`
            (False) as the denominator.
        alpha: :math:`\\alpha`, a multiplier of the step size.
    """

    def __init__(self, f_star: float | None = 0.0, y: float = 1.0, y_decay: float = 1e-3,
                 max: float | None = None, use_grad: bool = True, alpha: float = 1.0):
        super().__init__(
            dict(f_star=f_star, y=y, y_decay=y_decay, max=max, use_grad=use_grad, alpha=alpha),
            rules=dict(f_star=checks.optional(checks.number), y=checks.positive,
                       y_decay=checks.unit_interval, max=checks.optional(checks.positive),
                       use_grad=checks.boolean, alpha=checks.nonnegative),
        )

    def step(self, ctx) -> None:
        if not ctx.params:
            return
        f_star = self.uniform_setting(ctx, "f_star")
        max_step = self.uniform_setting(ctx, "max")
        use_grad = self.uniform_setting(ctx, "use_grad")
        alpha = self.settings(ctx, "alpha")
        if ctx.loss is None:
            ctx.require_closure("the Polyak step size needs the loss value")
        loss = ctx.get_loss()
        update = ctx.update
        denom = fe.dot(update, ctx.grads) if use_grad else squared_norm(update)
        loss = loss.detach().to(dtype=denom.dtype, device=denom.device)
        if f_star is None:
            y, y_decay = self.uniform_setting(ctx, "y"), self.uniform_setting(ctx, "y_decay")
            best = self.global_state.get("f_best")
            best = loss.clone() if best is None else torch.minimum(best.to(loss), loss)
            gap = self.global_state.get("y_val", y)
            self.global_state["f_best"] = best
            self.global_state["y_val"] = gap * (1 - y_decay)
            f_star = best - gap
        tiny = torch.finfo(denom.dtype).tiny * 2
        eta = torch.where(denom > tiny, (loss - f_star) / denom, 0.0).clamp_(min=0.0, max=max_step)
        scale_by_tensor(ctx, eta)
        if fe.is_list(alpha) or alpha != 1:
            ctx.scale_update(alpha)
