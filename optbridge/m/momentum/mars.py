"""MARS variance-reduction correction (Yuan et al., 2024)."""

from __future__ import annotations

import torch

from ...core import checks
from ...core.module import Transform
from ._common import state_from_update


class MARSCorrection(Transform):
    """MARS gradient correction (Yuan et al., 2024, "MARS: Unleashing the Power of Variance
    Reduction for Training Large Models", https://arxiv.org/abs/2411.10438). Put a momentum-based
    module after it (e.g. ``Adam(beta1=beta)``) with the same :math:`\\beta`.

    .. math::
        c_t = u_t + \\gamma\\,\\frac{\\beta}{1-\\beta}\\,(u_t - u_{t-1}),\\qquad
        \\text{output } c_t \\cdot \\min\\!\\Big(1, \\frac{\\text{max\\_norm}}{\\|c_t\\|}\\Big)

    :math:`u_0 = u_1` (no correction on the first step). The norm is taken per parameter tensor,
    as in the paper's reference implementation (which clips to 1).

    Args:
        beta: :math:`\\beta`, the momentum of the module that follows, in [0, 1).
        scaling: :math:`\\gamma`, the strength of the correction.
        max_norm: clip each tensor of :math:`c_t` to this norm; ``None`` disables clipping.
    """

    inplace = False

    def __init__(self, beta: float = 0.9, scaling: float = 0.025, max_norm: float | None = 1.0):
        super().__init__(
            dict(beta=beta, scaling=scaling, max_norm=max_norm),
            rules=dict(beta=checks.unit_interval, scaling=checks.number,
                       max_norm=checks.optional(checks.positive)),
        )

    def transform(self, update, part):
        s = part.settings
        beta, max_norm = s["beta"], s["max_norm"]
        prev, _ = state_from_update(part, "prev_update", update)
        c = torch._foreach_lerp(prev, update, 1 + s["scaling"] * beta / (1 - beta))
        torch._foreach_copy_(prev, update)
        if max_norm is not None:
            factor = torch._foreach_norm(c)
            torch._foreach_clamp_min_(factor, max_norm)
            torch._foreach_reciprocal_(factor)
            torch._foreach_mul_(factor, max_norm)
            torch._foreach_mul_(c, factor)
        return c
