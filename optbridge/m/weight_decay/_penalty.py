"""The gradient of the weight-decay penalty and how it is added to an update."""

from __future__ import annotations

import math

import torch

from ...core import checks

#: ``ord`` of a penalty: a number >= 1 (1: L1, 2: L2)
ORD_RULE = checks.interval(1, math.inf)


def penalty_direction(params, ord: float) -> list[torch.Tensor]:
    """:math:`\\operatorname{sign}(w)\\,|w|^{p-1}` (new tensors), the gradient of
    :math:`|w|^p / p`; for ``ord == 2`` that is ``params`` itself, which callers use directly."""
    if ord == 1:
        return torch._foreach_sign(params)
    out = torch._foreach_abs(params)
    if ord >= 2:
        torch._foreach_pow_(out, ord - 2)
        torch._foreach_mul_(out, params)
        return out
    torch._foreach_pow_(out, ord - 1)
    for o, p in zip(out, params):  # no foreach copysign
        o.copysign_(p)
    return out


def add_to(update, term, alpha, owned: bool):
    """``update + alpha * term`` where ``term`` was allocated by the caller (it is reused): in
    place in ``update`` when it is owned, else in ``term``. Returns the result."""
    if owned:
        torch._foreach_add_(update, term, alpha=alpha)
        return update
    torch._foreach_mul_(term, alpha)
    torch._foreach_add_(term, update)
    return term
