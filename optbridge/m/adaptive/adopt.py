"""ADOPT (Taniguchi et al., 2024, https://arxiv.org/abs/2411.02853)."""

from __future__ import annotations

import torch

from ...core import checks
from ...core import foreach as fe
from ...core.module import Borrowed, Transform


def default_clip(step):
    """ADOPT's default clipping threshold, ``step ** 0.25``."""
    return step**0.25


def _optional_callable(v):
    """None or a callable."""
    return None if v is None or callable(v) else "None or a callable step -> threshold"


class ADOPT(Transform):
    """ADOPT's direction, without the learning rate: the gradient is normalised by the second
    moment of the *previous* steps, clipped, then averaged.

    As the official code (iShohei220/adopt). The first step only seeds
    :math:`v_1 = g_1^2` (the update is zero). Afterwards, with :math:`k = t-1` the number of
    steps so far:

    .. math::
        \\hat g_t = \\operatorname{clip}\\Big(\\frac{g_t}{\\max(\\sqrt{v_{t-1}}, \\epsilon)},
                    \\pm c(k)\\Big),\\qquad
        m_t = \\beta_1 m_{t-1} + (1-\\beta_1) \\hat g_t,\\qquad u_t = m_t

        v_t = \\beta_2 v_{t-1} + (1-\\beta_2) g_t^2

    Weight decay follows the official arguments, because the official decoupled decay skips the
    seeding step, which a separate module cannot see:

    - ``decouple=False``: L2, :math:`g_t \\leftarrow g_t + wd\\,p` before everything (the same as
      ``WeightDecay(wd)`` placed before ``ADOPT``).
    - ``decouple=True``: the official ``p *= 1 - lr*wd`` before the step becomes
      :math:`u_t = m_t + wd\\,p` on every step but the first, so the chain's ``LR(lr)`` multiplies
      it into ``lr*wd*p`` exactly as the official code.

    Args:
        beta1: momentum decay (default 0.9).
        beta2: second-moment decay (default 0.9999).
        eps: lower bound of :math:`\\sqrt{v}` (default 1e-6).
        clip_lambda: ``step -> threshold`` with ``step`` the number of steps so far (1 on the first
            update), or ``None`` for no clipping (default ``step ** 0.25``).
        weight_decay: decay coefficient (default 0).
        decouple: decoupled (True) or L2 (False) weight decay (default False).
    """

    inplace = False

    def __init__(self, beta1: float = 0.9, beta2: float = 0.9999, eps: float = 1e-6,
                 clip_lambda=default_clip, weight_decay: float = 0.0, decouple: bool = False):
        super().__init__(
            dict(beta1=beta1, beta2=beta2, eps=eps, clip_lambda=clip_lambda,
                 weight_decay=weight_decay, decouple=decouple),
            rules=dict(beta1=checks.unit_interval, beta2=checks.unit_interval, eps=checks.positive,
                       clip_lambda=_optional_callable, weight_decay=checks.nonnegative,
                       decouple=checks.boolean),
        )

    def transform(self, update, part):
        s = part.settings
        beta1, beta2, eps, clip = s["beta1"], s["beta2"], s["eps"], s["clip_lambda"]
        wd, decouple = s["weight_decay"], s["decouple"]
        g = update
        if wd != 0 and not decouple:
            g = fe.add_scaled(g, part.params, wd)
        exp_avg = part.buffers("exp_avg")
        exp_avg_sq = part.buffers("exp_avg_sq")
        step = part.next_step()
        n = len(g)
        if fe.is_list(step):
            seed = [i for i in range(n) if step[i] == 1]
            run = [i for i in range(n) if step[i] > 1]
            run_steps = fe.uniform([step[i] for i in run]) if run else 0
        else:
            seed, run = (range(n), []) if step == 1 else ([], range(n))
            run_steps = step

        if seed:
            gs = [g[i] for i in seed]
            torch._foreach_addcmul_([exp_avg_sq[i] for i in seed], gs, gs)
        if run:
            g_r, m_r, v_r = ([x[i] for i in run] for x in (g, exp_avg, exp_avg_sq))
            normed = torch._foreach_sqrt(v_r)
            torch._foreach_clamp_min_(normed, eps)
            torch._foreach_reciprocal_(normed)
            torch._foreach_mul_(normed, g_r)
            if clip is not None:
                c = fe.scalar_map(lambda t: clip(t - 1), run_steps)
                torch._foreach_clamp_min_(normed, fe.scalar_map(lambda x: -x, c))
                torch._foreach_clamp_max_(normed, c)
            fe.ema_(m_r, normed, beta1)
            fe.ema_sq_(v_r, g_r, beta2)

        if wd != 0 and decouple and run:
            out = list(exp_avg)
            decayed = fe.add_scaled([exp_avg[i] for i in run], [part.params[i] for i in run], wd)
            for i, d in zip(run, decayed):
                out[i] = d
            for i in seed:
                out[i] = torch.zeros_like(exp_avg[i])
            return out
        return Borrowed(exp_avg)
