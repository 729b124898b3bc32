"""AdEMAMix (Pagliardini, Ablin & Grangier, 2024, https://arxiv.org/abs/2409.03137)."""

from __future__ import annotations

import math

import torch

from ...core import checks
from ...core import foreach as fe
from ...core.module import Ratio, Transform


def ademamix_alpha(step: int, alpha: float, T: int | None) -> float:
    """Linear warmup of the mixing coefficient: :math:`\\min(t\\alpha/T, \\alpha)`."""
    return alpha if T is None else min(step * alpha / T, alpha)


def ademamix_beta3(step: int, beta1: float, beta3: float, T: int | None) -> float:
    """Warmup of the slow decay, linear in half-life from ``beta1`` to ``beta3`` over ``T`` steps:

    .. math::
        \\beta_3(t) = \\min\\Big(\\exp\\Big(\\frac{\\ln\\beta_1 \\ln\\beta_3}
            {(1-t/T)\\ln\\beta_3 + (t/T)\\ln\\beta_1}\\Big), \\beta_3\\Big)
    """
    if T is None or step >= T or beta3 <= 0:
        return beta3
    a = step / T
    if beta1 <= 0:  # the limit beta1 -> 0
        return beta3 ** (1 / a)
    lb1, lb3 = math.log(beta1), math.log(beta3)
    return min(math.exp(lb1 * lb3 / ((1 - a) * lb3 + a * lb1)), beta3)


class AdEMAMix(Transform):
    """AdEMAMix's direction (a mixture of a fast and a slow gradient average), without the
    learning rate.

    .. math::
        m^{(1)}_t = \\beta_1 m^{(1)}_{t-1} + (1-\\beta_1) g_t,\\quad
        m^{(2)}_t = \\beta_3(t) m^{(2)}_{t-1} + (1-\\beta_3(t)) g_t,\\quad
        \\nu_t = \\beta_2 \\nu_{t-1} + (1-\\beta_2) g_t^2

        u_t = \\frac{m^{(1)}_t / (1-\\beta_1^t) + \\alpha(t)\\, m^{(2)}_t}
                   {\\sqrt{\\nu_t} / \\sqrt{1-\\beta_2^t} + \\epsilon}

    As the official code (apple/ml-ademamix). Without ``T_alpha_beta3``,
    :math:`\\alpha(t)=\\alpha` and :math:`\\beta_3(t)=\\beta_3`; with it, both warm up over
    ``T_alpha_beta3`` steps (:func:`ademamix_alpha`, :func:`ademamix_beta3`; the step count
    starts at 1 as in the official PyTorch code, whose half-life formula is the same schedule
    up to a 1e-8 it adds inside the logarithm). The official decoupled decay
    (``update += wd*p`` before ``lr``) is ``[AdEMAMix(), WeightDecay(wd), LR(lr)]``.

    Args:
        beta1: decay of the fast average (default 0.9).
        beta2: decay of the second moment (default 0.999).
        beta3: decay of the slow average (default 0.9999).
        alpha: weight of the slow average (default 2.0).
        T_alpha_beta3: warmup length of ``alpha`` and ``beta3`` in steps, or None (default).
        eps: added to the denominator (default 1e-8).
    """

    inplace = False

    def __init__(self, beta1: float = 0.9, beta2: float = 0.999, beta3: float = 0.9999,
                 alpha: float = 2.0, T_alpha_beta3: int | None = None, eps: float = 1e-8):
        super().__init__(
            dict(beta1=beta1, beta2=beta2, beta3=beta3, alpha=alpha, T_alpha_beta3=T_alpha_beta3,
                 eps=eps),
            rules=dict(beta1=checks.unit_interval, beta2=checks.unit_interval,
                       beta3=checks.unit_interval, alpha=checks.nonnegative,
                       T_alpha_beta3=checks.optional(checks.positive_int), eps=checks.positive),
        )

    def transform(self, update, part):
        s = part.settings
        beta1, beta2, beta3, eps = s["beta1"], s["beta2"], s["beta3"], s["eps"]
        alpha, T = s["alpha"], s["T_alpha_beta3"]
        g = update
        fast = part.buffers("exp_avg_fast")
        slow = part.buffers("exp_avg_slow")
        exp_avg_sq = part.buffers("exp_avg_sq")
        step = part.next_step()
        fe.ema_(fast, g, beta1)
        fe.ema_(slow, g, fe.scalar_map(lambda t: ademamix_beta3(t, beta1, beta3, T), step))
        fe.ema_sq_(exp_avg_sq, g, beta2)

        # u = sqrt(bc2)/bc1 * (m1 + alpha_t*bc1 * m2) / (sqrt(nu) + eps*sqrt(bc2))
        mix = fe.scalar_map(lambda t: ademamix_alpha(t, alpha, T) * (1 - beta1**t), step)
        numerator = fe.add_scaled(fast, slow, mix)
        denominator = torch._foreach_sqrt(exp_avg_sq)
        torch._foreach_add_(denominator,
                            fe.scalar_map(lambda t: eps * math.sqrt(1 - beta2**t), step))
        part.scale_output(fe.scalar_map(lambda t: math.sqrt(1 - beta2**t) / (1 - beta1**t), step))
        return Ratio(numerator, denominator)
