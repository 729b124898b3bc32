"""Arithmetic between named operands, each a number or a sub-chain run on the same input update
(torchzero's ``*Modules`` ops, https://github.com/inikishev/torchzero).

Every module operand runs as a child on a borrowed view of the incoming update, so the children
see the same input and cannot disturb one another; at least one operand must be a module.
"""

from __future__ import annotations

import torch

from ...core import checks
from ...core import foreach as fe
from ._base import (
    Operand,
    Operation,
    apply_binary,
    apply_unary,
    check_bounds,
    clip,
    finish,
    nonzero,
    power,
    smul,
)


class MultiOperation(Operation):
    """An :class:`Operation` with at least one module operand."""

    def __init__(self, defaults=None, rules=None, operands=None, optional=()):
        super().__init__(defaults, rules, operands, optional)
        if not self.children:
            raise ValueError(f"{self.name}: at least one operand must be a module")


class SubModules(MultiOperation):
    """Difference of two operands.

    .. math:: u \\leftarrow a - \\alpha\\, b, \\qquad a = \\text{input}(u),\\ b = \\text{other}(u)

    Args:
        input: a number or a module / list of modules run on the update.
        other: a number or a module / list of modules run on the update.
        alpha: multiplier of ``other``.
    """

    def __init__(self, input, other, alpha: float = 1.0):
        super().__init__(dict(alpha=alpha), dict(alpha=checks.number),
                         operands=dict(input=(input, checks.number), other=(other, checks.number)))

    def step(self, ctx) -> None:
        if not ctx.params:
            return
        a, b = self.operands(ctx, "input", "other")
        alpha = self.settings(ctx, "alpha")
        neg_alpha = fe.scalar_map(lambda x: -x, alpha)
        if isinstance(a, Operand) and isinstance(b, Operand):
            finish(ctx, apply_binary(a, b, lambda x, y: fe.add_scaled_(x, y, neg_alpha),
                                     lambda x, y: fe.add_scaled(x, y, neg_alpha)))
        elif isinstance(a, Operand):
            c = smul(b, neg_alpha)
            finish(ctx, apply_binary(a, c, torch._foreach_add_, torch._foreach_add))
        else:
            # a - alpha*b = -(alpha*b - a): the negation is a lazy factor
            if fe.is_list(alpha) or alpha != 1:
                b = apply_unary(b, lambda ts: torch._foreach_mul_(ts, alpha),
                                lambda ts: torch._foreach_mul(ts, alpha))
            finish(ctx, apply_binary(b, a, torch._foreach_sub_, torch._foreach_sub))
            ctx.scale_update(-1.0)


class DivModules(MultiOperation):
    """Quotient of two operands.

    .. math:: u \\leftarrow a / b, \\qquad a = \\text{input}(u),\\ b = \\text{other}(u)

    Args:
        input: a number or a module / list of modules run on the update.
        other: a nonzero number or a module / list of modules run on the update.
        other_first: run ``other`` before ``input`` (matters only when both have side effects,
            such as closure evaluations or random draws).
    """

    def __init__(self, input, other, other_first: bool = False):
        super().__init__(operands=dict(input=(input, checks.number), other=(other, nonzero)))
        checks.check_value(self.name, "other_first", other_first, checks.boolean)
        self.other_first = other_first

    def step(self, ctx) -> None:
        if not ctx.params:
            return
        order = ("other", "input") if self.other_first else ("input", "other")
        a, b = self.operands(ctx, "input", "other", order=order)
        if isinstance(a, Operand) and isinstance(b, Operand):
            finish(ctx, apply_binary(a, b, torch._foreach_div_, torch._foreach_div))
        elif isinstance(a, Operand):
            finish(ctx, a)
            ctx.scale_update(fe.scalar_map(lambda v: 1.0 / v, b))
        else:
            finish(ctx, apply_unary(b, torch._foreach_reciprocal_, torch._foreach_reciprocal))
            ctx.scale_update(a)


class PowModules(MultiOperation):
    """One operand raised to the power of another.

    .. math:: u \\leftarrow a^{e}, \\qquad a = \\text{input}(u),\\ e = \\text{exponent}(u)

    Args:
        input: the base: a number or a module / list of modules run on the update.
        exponent: a number or a module / list of modules run on the update.
    """

    def __init__(self, input, exponent):
        super().__init__(
            operands=dict(input=(input, checks.number), exponent=(exponent, checks.number))
        )

    def step(self, ctx) -> None:
        if not ctx.params:
            return
        a, e = self.operands(ctx, "input", "exponent")
        power(ctx, a, e)


class LerpModules(MultiOperation):
    """Linear interpolation between two modules' outputs.

    .. math:: u \\leftarrow a + w\\,(b - a), \\qquad a = \\text{input}(u),\\ b = \\text{end}(u)

    Args:
        input: a module / list of modules run on the update (the start, ``w = 0``).
        end: a module / list of modules run on the update (the end, ``w = 1``).
        weight: interpolation weight :math:`w`.
    """

    def __init__(self, input, end, weight: float):
        super().__init__(dict(weight=weight), dict(weight=checks.number),
                         operands=dict(input=(input, None), end=(end, None)))

    def step(self, ctx) -> None:
        if not ctx.params:
            return
        a, b = self.operands(ctx, "input", "end")
        w = self.settings(ctx, "weight")
        finish(ctx, apply_binary(a, b, lambda x, y: torch._foreach_lerp_(x, y, w),
                                 lambda x, y: torch._foreach_lerp(x, y, w)))


class ClipModules(MultiOperation):
    """A module's output clipped elementwise to ``[min, max]``, each bound ``None``, a number or
    a module's output.

    .. math:: u \\leftarrow \\min(\\max(a, m), M), \\qquad a = \\text{input}(u),\\
        m = \\text{min or min}(u),\\ M = \\text{max or max}(u)

    Args:
        input: a module / list of modules run on the update.
        min: lower bound: ``None``, a number, or a module / list of modules run on the update.
        max: upper bound: ``None``, a number, or a module / list of modules run on the update.
    """

    def __init__(self, input, min=None, max=None):
        super().__init__(
            operands=dict(input=(input, None), min=(min, checks.number), max=(max, checks.number)),
            optional=("min", "max"),
        )
        check_bounds(self.name, self.defaults.get("min"), self.defaults.get("max"))

    def step(self, ctx) -> None:
        if not ctx.params:
            return
        a, lo, hi = self.operands(ctx, "input", "min", "max")
        finish(ctx, clip(a, lo, hi))
