"""Reductions over any number of operands, each a number or a sub-chain run on the same input
update (torchzero's ``reduce`` ops, https://github.com/inikishev/torchzero).

Numbers among the inputs are constants; at least one input must be a module. A list among the
inputs is one sub-chain (its modules run in sequence), not several inputs.
"""

from __future__ import annotations

import torch

from ...core import checks
from ...core import foreach as fe
from ...core.module import Module
from ._base import Operand, apply_binary, apply_unary, finish, is_number, sadd, smul


class Reduce(Module):
    """Base of the reductions: ``inputs`` are numbers (constants) or modules (children
    ``input_<i>``)."""

    def __init__(self, inputs: tuple, defaults: dict | None = None, rules: dict | None = None):
        super().__init__(defaults, rules)
        if not inputs:
            raise ValueError(f"{self.name}: needs at least one input")
        self.constants: dict[int, float] = {}
        self.n_inputs = len(inputs)
        for i, v in enumerate(inputs):
            if is_number(v):
                checks.check_value(self.name, f"inputs[{i}]", v, checks.number)
                self.constants[i] = v
            elif isinstance(v, (Module, list, tuple, type)):
                self.set_child(f"input_{i}", v)
            else:
                raise TypeError(f"{self.name}: inputs[{i}] must be a number, a module or a list of "
                                f"modules, got {type(v).__name__}")
        if not self.children:
            raise ValueError(f"{self.name}: at least one input must be a module")

    def __repr__(self) -> str:
        parts = [
            repr(self.constants[i]) if i in self.constants else repr(self.children[f"input_{i}"])
            for i in range(self.n_inputs)
        ]
        parts += [f"{k}={v!r}" for k, v in self.defaults.items()]
        return f"{self.name}({', '.join(parts)})"

    def evaluate(self, ctx) -> list[tuple[int, Operand]]:
        """``(index, output)`` of every module input, each run on the current update, owned
        outputs first (they can take the result in place)."""
        outs = []
        for i in range(self.n_inputs):
            if i not in self.constants:
                sub = self.run_child(ctx, f"input_{i}")
                u = sub.update
                outs.append((i, Operand(u, sub.update_is_owned)))
        outs.sort(key=lambda io: not io[1].owned)
        return outs


def fold(outs: list[tuple[int, Operand]], inplace, outplace) -> Operand:
    """Combine operands pairwise with a commutative op, writing into owned ones."""
    acc = outs[0][1]
    for _, o in outs[1:]:
        acc = apply_binary(acc, o, inplace, outplace, commutative=True)
    return acc


class _FoldReduce(Reduce):
    """Base of the reductions by a commutative elementwise op (torch ops in ``_ops``): the module
    inputs are folded, then the constants' combination (``_constant``; ``None``: nothing to
    apply) is applied."""

    _ops: tuple = ()  # (in-place op, out-of-place op)

    def __init__(self, *inputs):
        super().__init__(inputs)

    def _constant(self):
        raise NotImplementedError

    def step(self, ctx) -> None:
        if not ctx.params:
            return
        inplace, outplace = self._ops
        acc = fold(self.evaluate(ctx), inplace, outplace)
        c = self._constant()
        if c is not None:
            acc = apply_binary(acc, c, inplace, outplace)
        finish(ctx, acc)


class Sum(_FoldReduce):
    """Sum of the inputs.

    .. math:: u \\leftarrow \\sum_k a_k, \\qquad a_k = \\text{inputs}_k(u) \\text{ or a constant}

    Args:
        *inputs: numbers or modules / lists of modules run on the update.
    """

    _ops = (torch._foreach_add_, torch._foreach_add)

    def _constant(self):
        c = sum(self.constants.values())
        return c if c != 0 else None


class Mean(Sum):
    """Mean of the inputs.

    .. math:: u \\leftarrow \\frac{1}{n} \\sum_{k=1}^{n} a_k, \\qquad a_k = \\text{inputs}_k(u)
        \\text{ or a constant}

    Args:
        *inputs: numbers or modules / lists of modules run on the update.
    """

    def step(self, ctx) -> None:
        if ctx.params:
            super().step(ctx)
            ctx.scale_update(1.0 / self.n_inputs)


def _weights(n: int, nonzero_sum: bool):
    def check(v):
        what = f"a sequence of {n} finite numbers (one per input)"
        if (not isinstance(v, (list, tuple)) or len(v) != n
                or any(checks.number(x) is not None for x in v)):
            return what + (" with a nonzero sum" if nonzero_sum else "")
        if nonzero_sum and sum(v) == 0:
            return what + " with a nonzero sum"
        return None

    check.__doc__ = f"{n} finite numbers"
    return check


class WeightedSum(Reduce):
    """Weighted sum of the inputs.

    .. math:: u \\leftarrow \\sum_k w_k a_k,
        \\qquad a_k = \\text{inputs}_k(u) \\text{ or a constant}

    Args:
        *inputs: numbers or modules / lists of modules run on the update.
        weights: one weight :math:`w_k` per input (keyword only).
    """

    _nonzero_sum = False

    def __init__(self, *inputs, weights):
        weights = list(weights) if isinstance(weights, (list, tuple)) else weights
        super().__init__(inputs, dict(weights=weights),
                         dict(weights=_weights(len(inputs), self._nonzero_sum)))

    def _coefficients(self, ctx):
        """Weight of input ``k``: a number, or a per-parameter list when groups disagree."""
        w = self.settings(ctx, "weights")
        if fe.is_list(w[0]):
            return lambda k: [wp[k] for wp in w], w
        return lambda k: w[k], w

    def step(self, ctx) -> None:
        if not ctx.params:
            return
        coef, _ = self._coefficients(ctx)
        outs = self.evaluate(ctx)
        k0, acc = outs[0]
        if len(outs) == 1 and not self.constants:
            finish(ctx, acc)
            ctx.scale_update(coef(k0))
            return
        w0 = coef(k0)
        acc = apply_unary(acc, lambda ts: torch._foreach_mul_(ts, w0),
                          lambda ts: torch._foreach_mul(ts, w0))
        for k, o in outs[1:]:
            fe.add_scaled_(acc.tensors, o.tensors, coef(k))
        if self.constants:
            c = 0.0
            for k, v in self.constants.items():
                c = sadd(c, smul(coef(k), v))
            torch._foreach_add_(acc.tensors, c)
        finish(ctx, acc)


class WeightedMean(WeightedSum):
    """Weighted mean of the inputs (weights normalised by their sum).

    .. math:: u \\leftarrow \\frac{\\sum_k w_k a_k}{\\sum_k w_k}, \\qquad
        a_k = \\text{inputs}_k(u) \\text{ or a constant}

    Args:
        *inputs: numbers or modules / lists of modules run on the update.
        weights: one weight :math:`w_k` per input (keyword only); their sum must not be 0.
    """

    _nonzero_sum = True

    def step(self, ctx) -> None:
        if not ctx.params:
            return
        _, w = self._coefficients(ctx)
        super().step(ctx)
        if fe.is_list(w[0]):
            ctx.scale_update([1.0 / sum(wp) for wp in w])
        else:
            ctx.scale_update(1.0 / sum(w))


class Prod(Reduce):
    """Elementwise product of the inputs.

    .. math:: u \\leftarrow \\prod_k a_k, \\qquad a_k = \\text{inputs}_k(u) \\text{ or a constant}

    Constants are applied as one lazy factor.

    Args:
        *inputs: numbers or modules / lists of modules run on the update.
    """

    def __init__(self, *inputs):
        super().__init__(inputs)

    def step(self, ctx) -> None:
        if not ctx.params:
            return
        finish(ctx, fold(self.evaluate(ctx), torch._foreach_mul_, torch._foreach_mul))
        c = 1.0
        for v in self.constants.values():
            c *= v
        if c != 1:
            ctx.scale_update(c)


class MaximumModules(_FoldReduce):
    """Elementwise maximum of the inputs.

    .. math:: u \\leftarrow \\max_k a_k, \\qquad a_k = \\text{inputs}_k(u) \\text{ or a constant}

    Args:
        *inputs: numbers or modules / lists of modules run on the update.
    """

    _ops = (torch._foreach_maximum_, torch._foreach_maximum)

    def _constant(self):
        return max(self.constants.values()) if self.constants else None


class MinimumModules(_FoldReduce):
    """Elementwise minimum of the inputs.

    .. math:: u \\leftarrow \\min_k a_k, \\qquad a_k = \\text{inputs}_k(u) \\text{ or a constant}

    Args:
        *inputs: numbers or modules / lists of modules run on the update.
    """

    _ops = (torch._foreach_minimum_, torch._foreach_minimum)

    def _constant(self):
        return min(self.constants.values()) if self.constants else None
