"""Arithmetic between the update and a second operand: a number, or a sub-chain run on the update.

With a module operand ``other``, the module (or list of modules) runs as a child on the current
update ``u`` and its output ``other(u)`` is the operand; the child keeps its own state. Names and
semantics follow torchzero's ``ops`` modules (https://github.com/inikishev/torchzero).
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
    current,
    finish,
    nonzero,
    power,
    smul,
)


def _neg(s):
    return fe.scalar_map(lambda a: -a, s)


class _Elementwise(Operation):
    """Base of the ops :math:`u \\leftarrow u \\circ o` with one operand (a number or a module's
    output), computed by :func:`apply_binary` with the torch ops in ``_ops``."""

    _operand = "other"
    _ops: tuple = ()  # (in-place op, out-of-place op)
    _commutative = False
    _rule = staticmethod(checks.number)  # rule of a number operand

    def __init__(self, other):
        super().__init__(operands={self._operand: (other, self._rule)})

    def step(self, ctx) -> None:
        if not ctx.params:
            return
        other = self.operand(ctx, self._operand)
        inplace, outplace = self._ops
        finish(ctx, apply_binary(current(ctx), other, inplace, outplace,
                                 commutative=self._commutative))


class Add(Operation):
    """Adds a number or a module's output to the update.

    .. math:: u \\leftarrow u + \\alpha\\, o, \\qquad o = \\text{other or other}(u)

    Args:
        other: a number, or a module / list of modules run on the update.
        alpha: multiplier of ``other``.
    """

    def __init__(self, other, alpha: float = 1.0):
        super().__init__(dict(alpha=alpha), dict(alpha=checks.number),
                         operands=dict(other=(other, checks.number)))

    def step(self, ctx) -> None:
        if not ctx.params:
            return
        other = self.operand(ctx, "other")
        alpha = self.settings(ctx, "alpha")
        u = current(ctx)
        if not isinstance(other, Operand):
            res = apply_binary(u, smul(other, alpha), torch._foreach_add_, torch._foreach_add)
        elif not fe.is_list(alpha) and alpha == 1:
            res = apply_binary(u, other, torch._foreach_add_, torch._foreach_add, commutative=True)
        else:
            res = apply_binary(u, other, lambda a, b: fe.add_scaled_(a, b, alpha),
                               lambda a, b: fe.add_scaled(a, b, alpha))
        finish(ctx, res)


class Sub(Operation):
    """Subtracts a number or a module's output from the update.

    .. math:: u \\leftarrow u - \\alpha\\, o, \\qquad o = \\text{other or other}(u)

    Args:
        other: a number, or a module / list of modules run on the update.
        alpha: multiplier of ``other``.
    """

    def __init__(self, other, alpha: float = 1.0):
        super().__init__(dict(alpha=alpha), dict(alpha=checks.number),
                         operands=dict(other=(other, checks.number)))

    def step(self, ctx) -> None:
        if not ctx.params:
            return
        other = self.operand(ctx, "other")
        neg_alpha = _neg(self.settings(ctx, "alpha"))
        u = current(ctx)
        if isinstance(other, Operand):
            res = apply_binary(u, other, lambda a, b: fe.add_scaled_(a, b, neg_alpha),
                               lambda a, b: fe.add_scaled(a, b, neg_alpha))
        else:
            res = apply_binary(u, smul(other, neg_alpha), torch._foreach_add_, torch._foreach_add)
        finish(ctx, res)


class RSub(_Elementwise):
    """Subtracts the update from a number or from a module's output.

    .. math:: u \\leftarrow o - u, \\qquad o = \\text{other or other}(u)

    Args:
        other: a number, or a module / list of modules run on the update.
    """

    def step(self, ctx) -> None:
        if not ctx.params:
            return
        other = self.operand(ctx, "other")
        u = current(ctx)
        if isinstance(other, Operand) and other.owned:
            torch._foreach_sub_(other.tensors, u.tensors)
            finish(ctx, other)
            return
        # o - u = -(u - o): the negation is a lazy factor
        finish(ctx, apply_binary(u, other, torch._foreach_sub_, torch._foreach_sub))
        ctx.scale_update(-1.0)


class Mul(_Elementwise):
    """Multiplies the update by a number or by a module's output (elementwise).

    .. math:: u \\leftarrow u \\odot o, \\qquad o = \\text{other or other}(u)

    A number is applied as a lazy factor (no pass over memory when nothing reads the update).

    Args:
        other: a number, or a module / list of modules run on the update.
    """

    def step(self, ctx) -> None:
        if not ctx.params:
            return
        other = self.operand(ctx, "other")
        if not isinstance(other, Operand):
            ctx.scale_update(other)
            return
        finish(ctx, apply_binary(current(ctx), other, torch._foreach_mul_, torch._foreach_mul,
                                 commutative=True))


class Div(_Elementwise):
    """Divides the update by a number or by a module's output (elementwise).

    .. math:: u \\leftarrow u / o, \\qquad o = \\text{other or other}(u)

    A number is applied as the lazy factor :math:`1/o`.

    Args:
        other: a nonzero number, or a module / list of modules run on the update.
    """

    _rule = staticmethod(nonzero)

    def step(self, ctx) -> None:
        if not ctx.params:
            return
        other = self.operand(ctx, "other")
        if not isinstance(other, Operand):
            ctx.scale_update(fe.scalar_map(lambda v: 1.0 / v, other))
            return
        finish(ctx, apply_binary(current(ctx), other, torch._foreach_div_, torch._foreach_div))


class RDiv(_Elementwise):
    """Divides a number or a module's output by the update (elementwise).

    .. math:: u \\leftarrow o / u, \\qquad o = \\text{other or other}(u)

    Args:
        other: a number, or a module / list of modules run on the update.
    """

    def step(self, ctx) -> None:
        if not ctx.params:
            return
        other = self.operand(ctx, "other")
        u = current(ctx)
        if isinstance(other, Operand):
            finish(ctx, apply_binary(other, u, torch._foreach_div_, torch._foreach_div))
            return
        finish(ctx, apply_unary(u, torch._foreach_reciprocal_, torch._foreach_reciprocal))
        ctx.scale_update(other)


class Pow(_Elementwise):
    """Raises the update to a power given by a number or by a module's output.

    .. math:: u \\leftarrow u^{e}, \\qquad e = \\text{exponent or exponent}(u)

    Args:
        exponent: a number, or a module / list of modules run on the update.
    """

    _operand = "exponent"
    _ops = (torch._foreach_pow_, torch._foreach_pow)

    def __init__(self, exponent):
        super().__init__(exponent)


class RPow(_Elementwise):
    """Raises a number or a module's output to the power of the update.

    .. math:: u \\leftarrow o^{u}, \\qquad o = \\text{other or other}(u)

    Args:
        other: the base: a number, or a module / list of modules run on the update.
    """

    def step(self, ctx) -> None:
        if not ctx.params:
            return
        power(ctx, self.operand(ctx, "other"), current(ctx))


class Maximum(_Elementwise):
    """Elementwise maximum of the update and a number or a module's output.

    .. math:: u \\leftarrow \\max(u, o), \\qquad o = \\text{other or other}(u)

    Args:
        other: a number, or a module / list of modules run on the update.
    """

    _ops = (torch._foreach_maximum_, torch._foreach_maximum)
    _commutative = True


class Minimum(_Elementwise):
    """Elementwise minimum of the update and a number or a module's output.

    .. math:: u \\leftarrow \\min(u, o), \\qquad o = \\text{other or other}(u)

    Args:
        other: a number, or a module / list of modules run on the update.
    """

    _ops = (torch._foreach_minimum_, torch._foreach_minimum)
    _commutative = True


class Clip(Operation):
    """Clips the update elementwise to ``[min, max]``; each bound is ``None``, a number or a
    module's output.

    .. math:: u \\leftarrow \\min(\\max(u, m), M), \\qquad m = \\text{min or min}(u),\\
        M = \\text{max or max}(u)

    Args:
        min: lower bound: ``None`` (none), a number, or a module / list of modules run on the
            update.
        max: upper bound: ``None`` (none), a number, or a module / list of modules run on the
            update.
    """

    def __init__(self, min=None, max=None):
        super().__init__(operands=dict(min=(min, checks.number), max=(max, checks.number)),
                         optional=("min", "max"))
        check_bounds(self.name, self.defaults.get("min"), self.defaults.get("max"))

    def step(self, ctx) -> None:
        if not ctx.params:
            return
        lo, hi = self.operands(ctx, "min", "max")
        finish(ctx, clip(current(ctx), lo, hi))


class Lerp(Operation):
    """Linear interpolation between the update and a module's output.

    .. math:: u \\leftarrow u + w\\,(\\text{end}(u) - u)

    Args:
        end: a module / list of modules run on the update.
        weight: interpolation weight :math:`w` (0 keeps the update, 1 gives ``end(u)``).
    """

    def __init__(self, end, weight: float):
        super().__init__(dict(weight=weight), dict(weight=checks.number),
                         operands=dict(end=(end, None)))

    def step(self, ctx) -> None:
        if not ctx.params:
            return
        end = self.operand(ctx, "end")
        w = self.settings(ctx, "weight")
        finish(ctx, apply_binary(current(ctx), end, lambda a, b: torch._foreach_lerp_(a, b, w),
                                 lambda a, b: torch._foreach_lerp(a, b, w)))
