"""Ops that combine the magnitude of one tensor with the sign of another
(torchzero's ``CopySign`` family, https://github.com/inikishev/torchzero).

``copysign(a, b)`` is :math:`|a| \\cdot \\operatorname{sign}(b)` with the sign of ``b`` taken
from its sign bit, so a zero ``b`` still gives :math:`\\pm|a|` (``torch.copysign``).
"""

from __future__ import annotations

import torch

from ...core.module import Module
from ._base import Operand, Operation, current, finish


def copysign(mag: Operand, sign: Operand) -> Operand:
    """``copysign(mag, sign)`` written into whichever operand is owned, else into new tensors."""
    # no foreach kernel exists for copysign
    if mag.owned:
        for a, b in zip(mag.tensors, sign.tensors):
            a.copysign_(b)
        return mag
    if sign.owned:
        for a, b in zip(mag.tensors, sign.tensors):
            torch.copysign(a, b, out=b)
        return sign
    return Operand([torch.copysign(a, b) for a, b in zip(mag.tensors, sign.tensors)], True)


class CopySign(Operation):
    """The update's magnitudes with the signs of a module's output.

    .. math:: u \\leftarrow |u| \\cdot \\operatorname{sign}(\\text{other}(u))

    Args:
        other: a module / list of modules run on the update; gives the signs.
    """

    def __init__(self, other):
        super().__init__(operands=dict(other=(other, None)))

    def step(self, ctx) -> None:
        if ctx.params:
            other = self.operand(ctx, "other")
            finish(ctx, copysign(current(ctx), other))


class RCopySign(Operation):
    """A module's output with the signs of the update.

    .. math:: u \\leftarrow |\\text{other}(u)| \\cdot \\operatorname{sign}(u)

    Args:
        other: a module / list of modules run on the update; gives the magnitudes.
    """

    def __init__(self, other):
        super().__init__(operands=dict(other=(other, None)))

    def step(self, ctx) -> None:
        if ctx.params:
            other = self.operand(ctx, "other")
            finish(ctx, copysign(other, current(ctx)))


class CopyMagnitude(RCopySign):
    """The magnitudes of a module's output on the update's signs (same as :class:`RCopySign`).

    .. math:: u \\leftarrow |\\text{other}(u)| \\cdot \\operatorname{sign}(u)

    Args:
        other: a module / list of modules run on the update; gives the magnitudes.
    """


class GradSign(Module):
    """Copies the gradient's signs onto the update.

    .. math:: u \\leftarrow |u| \\cdot \\operatorname{sign}(g)
    """

    def __init__(self):
        super().__init__()

    def step(self, ctx) -> None:
        if ctx.params:
            grads = ctx.grads
            finish(ctx, copysign(current(ctx), Operand(grads, False)))


class UpdateSign(Module):
    """The gradient's magnitudes with the update's signs.

    .. math:: u \\leftarrow |g| \\cdot \\operatorname{sign}(u)
    """

    def __init__(self):
        super().__init__()

    def step(self, ctx) -> None:
        if ctx.params:
            grads = ctx.grads
            finish(ctx, copysign(Operand(grads, False), current(ctx)))
