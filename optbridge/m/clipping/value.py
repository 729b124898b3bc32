"""Elementwise value clipping of the update."""

from __future__ import annotations

import torch

from ...core import checks
from ._common import OwnershipTransform


class ClipValue(OwnershipTransform):
    """Clamps every entry of the update to :math:`[-c, c]`, like
    ``torch.nn.utils.clip_grad_value_`` (gradient value clipping, e.g. Mikolov, 2012,
    "Statistical language models based on neural networks", and
    https://pytorch.org/docs/stable/generated/torch.nn.utils.clip_grad_value_.html).

    .. math::
        u_i \\leftarrow \\min(\\max(u_i, -c),\\ c)

    Args:
        value: :math:`c`, the largest magnitude allowed.
    """

    def __init__(self, value: float):
        super().__init__(dict(value=value), rules=dict(value=checks.nonnegative))

    def transform(self, update, part):
        c = part.settings["value"]
        if self.owned(part):
            torch._foreach_clamp_min_(update, -c)
        else:
            update = torch._foreach_clamp_min(update, -c)
        torch._foreach_clamp_max_(update, c)
        return update
