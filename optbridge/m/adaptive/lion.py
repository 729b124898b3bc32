"""Lion (Chen et al., 2023, https://arxiv.org/abs/2302.06675)."""

from __future__ import annotations

import torch

from ...core import checks
from ...core import foreach as fe
from ...core.module import Transform


class Lion(Transform):
    """Lion's sign direction (EvoLved Sign Momentum), without the learning rate.

    .. math::
        u_t = \\operatorname{sign}(\\beta_1 m_{t-1} + (1-\\beta_1) g_t),\\qquad
        m_t = \\beta_2 m_{t-1} + (1-\\beta_2) g_t

    As the official code (google/automl ``lion_pytorch.py``); its decoupled weight decay
    ``p *= 1 - lr*wd`` is a separate module: ``[Lion(), WeightDecay(wd), LR(lr)]``.

    Args:
        beta1: interpolation between momentum and gradient for the update (default 0.9).
        beta2: decay of the momentum buffer (default 0.99).
    """

    inplace = False

    def __init__(self, beta1: float = 0.9, beta2: float = 0.99):
        super().__init__(
            dict(beta1=beta1, beta2=beta2),
            rules=dict(beta1=checks.unit_interval, beta2=checks.unit_interval),
        )

    def transform(self, update, part):
        beta1, beta2 = part.settings["beta1"], part.settings["beta2"]
        exp_avg = part.buffers("exp_avg")
        out = torch._foreach_lerp(exp_avg, update, 1 - beta1)
        torch._foreach_sign_(out)
        fe.ema_(exp_avg, update, beta2)
        return out
