"""Shared machinery of the ops family.

An *operand* of an op is either a number or a sub-chain:

- a number is a declared hyperparameter (validated, overridable per param group by its name);
- a module, or a list of modules, becomes a child (``set_child``) that runs on the op's input
  update; its output is the operand. A child keeps its own state and is checkpointed under its
  path like any module.

Evaluated tensor operands are :class:`Operand` objects that remember whether the tensors are
owned (allocated for this step, safe to write into) or borrowed (a state buffer or the input
update), so ops write in place only where that cannot corrupt anyone's state.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import torch

from ...core import checks
from ...core import foreach as fe
from ...core.module import Module


class Operand:
    """Tensors of an operand and whether they are owned (writable in place)."""

    __slots__ = ("tensors", "owned")

    def __init__(self, tensors, owned: bool):
        self.tensors: list[torch.Tensor] = tensors if isinstance(tensors, list) else list(tensors)
        self.owned = owned


def current(ctx) -> Operand:
    """The context's update as an operand (pending lazy factors are applied first)."""
    u = ctx.update
    return Operand(u, ctx.update_is_owned)


def finish(ctx, result: Operand) -> None:
    """Make ``result`` the context's update with its ownership."""
    if result.owned:
        ctx.set_update(result.tensors, owned=True)
    else:
        ctx.update = result.tensors


def shares(a: list, b: list) -> bool:
    """Whether two tensor lists share storage (a child that returned its input unchanged)."""
    return any(x is y or x.data_ptr() == y.data_ptr() for x, y in zip(a, b))


def is_number(v) -> bool:
    return isinstance(v, (numbers.Number, bool))


def smul(a, b):
    """Product of two scalars, each a number or a per-parameter list."""
    if fe.is_list(a) or fe.is_list(b):
        n = len(a) if fe.is_list(a) else len(b)
        return [x * y for x, y in zip(as_list(a, n), as_list(b, n))]
    return a * b


def sadd(a, b):
    """Sum of two scalars, each a number or a per-parameter list."""
    if fe.is_list(a) or fe.is_list(b):
        n = len(a) if fe.is_list(a) else len(b)
        return [x + y for x, y in zip(as_list(a, n), as_list(b, n))]
    return a + b


def as_list(s, n: int) -> list:
    return list(s) if fe.is_list(s) else [s] * n


# ------------------------------------------------------------------------------------ rules
def norm_order(v):
    """A norm order: a number > 0, or ``inf``."""
    ok = (isinstance(v, numbers.Real) and not isinstance(v, bool)
          and (v == math.inf or (math.isfinite(v) and v > 0)))
    return None if ok else "a number > 0 or inf"


def nonzero(v):
    """A finite number other than 0."""
    return None if checks.number(v) is None and v != 0 else "a finite nonzero number"


# --------------------------------------------------------------------------------- base class
class Operation(Module):
    """Base of the ops whose operands are numbers or modules.

    ``operands``: name -> ``(value, rule)``. A number is declared as a setting checked by
    ``rule``; ``rule=None`` means the operand must be a module. ``None`` values are allowed for
    names listed in ``optional`` (the operand is then absent).
    """

    def __init__(self, defaults: dict | None = None, rules: dict | None = None,
                 operands: dict | None = None, optional: tuple = ()):
        defaults = dict(defaults or {})
        rules = dict(rules or {})
        modules = {}
        self._operand_names = tuple((operands or {}).keys())
        for name, (value, rule) in (operands or {}).items():
            if value is None and name in optional:
                continue
            if is_number(value):
                if rule is None:
                    raise TypeError(f"{type(self).__name__}: {name} must be a module or a list of "
                                    f"modules, got the number {value!r}")
                defaults[name], rules[name] = value, rule
            elif isinstance(value, (Module, list, tuple)) or (
                isinstance(value, type) and issubclass(value, Module)
            ):
                modules[name] = value
            else:
                what = "a module or a list of modules"
                if rule is not None:
                    what = "a number, " + what.replace(" or ", ", or ", 1)
                raise TypeError(
                    f"{type(self).__name__}: {name} must be {what}, got {type(value).__name__}"
                )
        super().__init__(defaults, rules)
        for name, value in modules.items():
            self.set_child(name, value)

    def __repr__(self) -> str:
        parts = []
        for name in self._operand_names:
            if name in self.children:
                parts.append(f"{name}={self.children[name]!r}")
            elif name in self.defaults:
                parts.append(f"{name}={self.defaults[name]!r}")
        parts += [f"{k}={v!r}" for k, v in self.defaults.items() if k not in self._operand_names]
        return f"{self.name}({', '.join(parts)})"

    def operand(self, ctx, name: str):
        """The value of operand ``name`` for this step: an :class:`Operand` when it is a module
        (run on the current update), a number or per-parameter list when it is a number, or
        ``None`` when absent."""
        if name in self.children:
            sub = self.run_child(ctx, name)
            u = sub.update
            return Operand(u, sub.update_is_owned)
        if name in self.defaults:
            return self.settings(ctx, name)
        return None

    def operands(self, ctx, *names: str, order: tuple | None = None) -> tuple:
        """Several operands, children run in ``order`` (default: as listed)."""
        values = {n: self.operand(ctx, n) for n in (order or names)}
        return tuple(values[n] for n in names)


def apply_binary(first: Operand, second, inplace: Callable, outplace: Callable,
                 commutative: bool = False) -> Operand:
    """``first op second`` written into whichever operand is owned, else into new tensors.

    ``second`` is an :class:`Operand` or a scalar (number or per-parameter list).
    ``inplace(a, b)`` modifies ``a``; ``outplace(a, b)`` returns new tensors.
    """
    other = second.tensors if isinstance(second, Operand) else second
    if first.owned:
        inplace(first.tensors, other)
        return first
    if commutative and isinstance(second, Operand) and second.owned:
        inplace(second.tensors, first.tensors)
        return second
    return Operand(outplace(first.tensors, other), True)


def apply_unary(x: Operand, inplace: Callable, outplace: Callable) -> Operand:
    """``f(x)`` in place when ``x`` is owned, else into new tensors."""
    if x.owned:
        inplace(x.tensors)
        return x
    return Operand(outplace(x.tensors), True)


def power(ctx, base, exponent) -> None:
    """Make ``base ** exponent`` the context's update. ``base`` is an :class:`Operand` (then
    ``exponent`` may also be a scalar) or a scalar (number or per-parameter list; then
    ``exponent`` is an :class:`Operand`)."""
    if isinstance(base, Operand):
        finish(ctx, apply_binary(base, exponent, torch._foreach_pow_, torch._foreach_pow))
    elif fe.is_list(base):
        ctx.set_update([torch.pow(b, t) for b, t in zip(base, exponent.tensors)])
    else:
        ctx.set_update(torch._foreach_pow(base, exponent.tensors))


def clip(x: Operand, lo, hi) -> Operand:
    """``min(max(x, lo), hi)`` where each bound is ``None``, a scalar or an :class:`Operand`."""
    if lo is not None and x.owned and isinstance(hi, Operand) and shares(x.tensors, hi.tensors):
        x = Operand(x.tensors, False)  # hi is the input itself: keep it intact until it is used
    if lo is not None:
        x = apply_binary(x, lo, torch._foreach_maximum_, torch._foreach_maximum, commutative=True)
    if hi is not None:
        x = apply_binary(x, hi, torch._foreach_minimum_, torch._foreach_minimum, commutative=True)
    return x


def check_bounds(owner: str, lo, hi) -> None:
    """Raise ``ValueError`` when both bounds are numbers and ``lo > hi``."""
    if isinstance(lo, (int, float)) and isinstance(hi, (int, float)):
        if lo > hi:
            raise ValueError(f"{owner}: invalid min={lo!r}, max={hi!r}; expected min <= max")
