"""Sign-based directions: signSGD and Signum (Bernstein et al., 2018,
https://arxiv.org/abs/1802.04434)."""

from __future__ import annotations

import torch

from ...core import checks
from ...core import foreach as fe
from ...core.module import Transform


class SignSGD(Transform):
    """signSGD's direction: :math:`u_t = \\operatorname{sign}(g_t)` (elementwise; 0 stays 0).

    Applied to the incoming update, so ``[SignSGD(), LR(lr)]`` is signSGD and any module before
    it (momentum, clipping) is "signed". No hyperparameters, no state.
    """

    def __init__(self):
        super().__init__()

    def transform(self, update, part):
        torch._foreach_sign_(update)
        return update


class Signum(Transform):
    """Signum (sign of momentum), without the learning rate.

    .. math::
        m_t = \\beta m_{t-1} + (1-\\beta) g_t,\\qquad u_t = \\operatorname{sign}(m_t)

    The paper's momentum form (with the :math:`1-\\beta` dampening; the sign makes the scale of
    :math:`m` irrelevant). Its weight decay is L2 on the gradient: put ``WeightDecay`` before.

    Args:
        beta: momentum decay (default 0.9); ``beta=0`` is signSGD.
    """

    inplace = False

    def __init__(self, beta: float = 0.9):
        super().__init__(dict(beta=beta), rules=dict(beta=checks.unit_interval))

    def transform(self, update, part):
        exp_avg = part.buffers("momentum_buffer")
        fe.ema_(exp_avg, update, part.settings["beta"])
        return torch._foreach_sign(exp_avg)
