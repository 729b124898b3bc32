"""Cautious weight decay."""

from __future__ import annotations

import torch

from ...core import checks
from ...core.module import Borrowed, Transform
from ._penalty import ORD_RULE, add_to, penalty_direction


class CautiousWeightDecay(Transform):
    """Cautious weight decay (Chen et al., 2025, https://arxiv.org/abs/2510.12402): weight decay
    only on the coordinates where the update and the parameter have the same sign, so the decay
    never works against the optimizer's step.

    .. math::
        u \\leftarrow u + \\lambda\\,\\mathbb{1}[u \\odot w \\ge 0] \\odot
            \\operatorname{sign}(w)\\,|w|^{p-1}

    (:math:`p = 2`: the paper's :math:`u + \\lambda\\,\\mathbb{1}[u \\odot w \\ge 0] \\odot w`.)
    As in the paper, place it after the optimizer and before ``LR``:
    ``[Adam(), CautiousWeightDecay(wd), LR(lr)]`` is cautious AdamW. Placed before the
    optimizer it masks a coupled penalty instead; after ``LR`` the decay ignores the learning
    rate.

    Args:
        weight_decay: :math:`\\lambda`.
        ord: :math:`p`, the order of the penalty (1: L1, 2: L2; any number >= 1).
    """

    # the update is written in place only when the context owns it (this step's private
    # buffer); a borrowed one costs one new buffer instead of a copy plus an add
    inplace = False

    def __init__(self, weight_decay: float, ord: float = 2):
        super().__init__(
            dict(weight_decay=weight_decay, ord=ord),
            rules=dict(weight_decay=checks.nonnegative, ord=ORD_RULE),
        )

    def transform(self, update, part):
        wd, ord = part.settings["weight_decay"], part.settings["ord"]
        owned = part.ctx.update_is_owned
        if wd == 0:
            return update if owned else Borrowed(update)
        params = part.params
        # mask = 1 where u * w >= 0, else 0: clamp(sign(u * w) + 1, max=1)
        term = torch._foreach_mul(update, params)
        torch._foreach_sign_(term)
        torch._foreach_add_(term, 1.0)
        torch._foreach_clamp_max_(term, 1.0)
        torch._foreach_mul_(term, params if ord == 2 else penalty_direction(params, ord))
        return add_to(update, term, wd, owned)
