"""Base class of the nonlinear conjugate gradient modules."""

from __future__ import annotations

import torch

from ...core import checks
from ...core import foreach as fe
from ...core.module import Module
from ..quasi_newton.base import global_settings, interval_rule


def safe_ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """``num / den``, or 0 when :math:`|den|` is at most twice the smallest normal number (the
    usual fallback to steepest descent); no host synchronisation."""
    ok = den.abs() > torch.finfo(den.dtype).tiny * 2
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(num))


class ConjugateGradientBase(Module):
    """Nonlinear conjugate gradient: the direction (subtracted by the engine) is

    .. math::
        d_0 = g_0, \\qquad d_k = g_k + \\beta_k d_{k-1}

    where :math:`g` is the incoming update (the gradient when the module comes first) and the
    subclass gives :math:`\\beta_k` (:meth:`beta`). Written with the descent direction
    :math:`p = -d`, this is the textbook :math:`p_k = -g_k + \\beta_k p_{k-1}` with the textbook
    :math:`\\beta_k` (Nocedal & Wright, *Numerical Optimization*, section 5.2). The step length
    must come from a line search after it (``StrongWolfe(c2=0.1)``).

    Args:
        clip_beta: use :math:`\\max(\\beta_k, 0)` (for Polak-Ribiere this is PR+).
        restart_interval: restart every this many steps: a cycle is one steepest-descent step
            followed by ``restart_interval - 1`` conjugate steps. ``"auto"``: number of
            variables + 1; ``None``: never.

    State: ``g_prev`` and ``d_prev`` per parameter (``d_prev`` is handed out as the update,
    borrowed); ``global_state`` holds ``gg_prev`` (:math:`g_{k-1}^T g_{k-1}`), the position in
    the cycle ``k``, the last ``beta`` and a ``restarts`` count. All settings are global to the
    module and must agree across param groups.
    """

    def __init__(self, defaults: dict | None = None, rules: dict | None = None, *,
                 clip_beta: bool = False, restart_interval="auto"):
        d = dict(defaults or {})
        d.update(clip_beta=clip_beta, restart_interval=restart_interval)
        r = dict(rules or {})
        r.update(clip_beta=checks.boolean, restart_interval=interval_rule)
        super().__init__(d, r)

    def beta(self, g, g_prev, d_prev, gg, gg_prev) -> torch.Tensor:
        """:math:`\\beta_k` as a 0-dim tensor, from lists of tensors ``g`` (current), ``g_prev``,
        ``d_prev`` (previous direction, update sign) and the 0-dim ``gg`` = :math:`g^T g`,
        ``gg_prev`` = :math:`g_{k-1}^T g_{k-1}`."""
        raise NotImplementedError(f"{self.name} does not implement beta()")

    def step(self, ctx) -> None:
        if not ctx.params:
            return
        settings = global_settings(self, ctx)
        g = ctx.update
        states = self.param_states(ctx)
        gs = self.global_state
        k = gs.get("k", 0)
        gg = fe.dot(g, g)
        if k == 0 or "gg_prev" not in gs or any("d_prev" not in st for st in states):
            k = 0
            d_prev = [st.setdefault("d_prev", torch.empty_like(t)) for st, t in zip(states, g)]
            g_prev = [st.setdefault("g_prev", torch.empty_like(t)) for st, t in zip(states, g)]
            torch._foreach_copy_(d_prev, g)
            torch._foreach_copy_(g_prev, g)
        else:
            d_prev = [st["d_prev"] for st in states]
            g_prev = [st["g_prev"] for st in states]
            beta = self.beta(g, g_prev, d_prev, gg, gs["gg_prev"])
            if settings["clip_beta"]:
                beta = beta.clamp(min=0)
            gs["beta"] = beta
            torch._foreach_mul_(d_prev, beta)
            torch._foreach_add_(d_prev, g)
            torch._foreach_copy_(g_prev, g)
        gs["gg_prev"] = gg
        k += 1
        ctx.update = d_prev
        interval = settings["restart_interval"]
        if interval == "auto":
            interval = fe.numel(ctx.params) + 1
        if interval is not None and k >= interval:
            k = 0
            gs["restarts"] = gs.get("restarts", 0) + 1
        gs["k"] = k
