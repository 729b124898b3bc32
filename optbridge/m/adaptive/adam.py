"""Adam (Kingma & Ba, 2015, https://arxiv.org/abs/1412.6980)."""

from __future__ import annotations

import torch

from ...core import checks
from ...core import foreach as fe
from ...core.module import Ratio, Transform
from ._fused_adam import fused_adam_step


class Adam(Transform):
    """Adam's preconditioned direction, without the learning rate (chain an ``LR``).

    .. math::
        m_t = \\beta_1 m_{t-1} + (1-\\beta_1) g_t,\\quad
        v_t = \\beta_2 v_{t-1} + (1-\\beta_2) g_t^2

        u_t = \\frac{m_t / (1-\\beta_1^t)}{\\sqrt{v_t} / \\sqrt{1-\\beta_2^t} + \\epsilon}

    ``amsgrad`` uses :math:`\\max_{s\\le t} v_s` in the denominator; ``maximize`` ascends.
    ``[Adam(), LR(lr)]`` follows ``torch.optim.Adam(lr=lr)``; put ``WeightDecay`` before it for
    torch's L2 ``weight_decay`` or after it for AdamW's decoupled decay. ``debias=False`` drops
    both bias corrections.

    On the CPU with fp32 parameters the whole step is one fused C pass when the compiled
    kernels are available (:mod:`optbridge.m.adaptive._fused_adam`); results agree with the
    eager formula to rounding.
    """

    inplace = False

    def __init__(self, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
                 amsgrad: bool = False, maximize: bool = False, debias: bool = True):
        super().__init__(
            dict(beta1=beta1, beta2=beta2, eps=eps, amsgrad=amsgrad, maximize=maximize, debias=debias),
            rules=dict(beta1=checks.unit_interval, beta2=checks.unit_interval, eps=checks.positive,
                       amsgrad=checks.boolean, maximize=checks.boolean, debias=checks.boolean),
        )

    def step(self, ctx):
        # one fused C pass on the CPU when the step allows it (see _fused_adam), else eager
        if not (ctx.params and fused_adam_step(self, ctx)):
            super().step(ctx)

    def transform(self, update, part):
        s = part.settings
        beta1, beta2, eps = s["beta1"], s["beta2"], s["eps"]
        g = torch._foreach_neg(update) if s["maximize"] else update
        exp_avg = part.buffers("exp_avg")
        exp_avg_sq = part.buffers("exp_avg_sq")
        step = part.next_step()
        fe.ema_(exp_avg, g, beta1)
        fe.ema_sq_(exp_avg_sq, g, beta2)
        second = exp_avg_sq
        if s["amsgrad"]:
            second = part.buffers("max_exp_avg_sq")
            torch._foreach_maximum_(second, exp_avg_sq)
        if part.update_owned and not s["maximize"]:
            # the incoming update is this step's private buffer and is no longer needed
            denom = update
            for d, v in zip(denom, second):
                torch.sqrt(v, out=d)
        else:
            denom = torch._foreach_sqrt(second)
        if s["debias"]:
            # m/bc1 / (sqrt(v)/c + eps) = (c/bc1) * m / (sqrt(v) + eps*c), c = sqrt(1 - beta2^t):
            # one pass fewer than dividing the denominator by c
            c = fe.scalar_map(lambda t: (1 - beta2**t) ** 0.5, step)
            fe.add_scalar_(denom, fe.scalar_map(lambda ci: eps * ci, c))
            part.scale_output(fe.scalar_map(lambda t: (1 - beta2**t) ** 0.5 / (1 - beta1**t), step))
        else:
            fe.add_scalar_(denom, eps)
        return Ratio(exp_avg, denom)
