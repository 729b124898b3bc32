"""Elementwise functions of the update (torchzero's unary ``ops``,
https://github.com/inikishev/torchzero).

Each writes into the update in place when the chain owns it and into new tensors otherwise, so a
state buffer handed out by an earlier module is never modified.
"""

from __future__ import annotations

import torch

from ...core import checks
from ...core import foreach as fe
from ...core.module import Module
from ._base import apply_unary, as_list, current, finish


class _Unary(Module):
    """An elementwise function with a ``torch._foreach_*`` kernel pair."""

    _inplace = _outplace = None  # set by subclasses

    def __init__(self):
        super().__init__()

    def step(self, ctx) -> None:
        if ctx.params:
            finish(ctx, apply_unary(current(ctx), type(self)._inplace, type(self)._outplace))


class Abs(_Unary):
    """Absolute value of the update: :math:`u \\leftarrow |u|`."""

    _inplace = staticmethod(torch._foreach_abs_)
    _outplace = staticmethod(torch._foreach_abs)


class Sign(_Unary):
    """Sign of the update: :math:`u \\leftarrow \\operatorname{sign}(u)` (0 where :math:`u = 0`).
    ``[Sign(), LR(lr)]`` is signSGD (Bernstein et al., 2018, https://arxiv.org/abs/1802.04434)."""

    _inplace = staticmethod(torch._foreach_sign_)
    _outplace = staticmethod(torch._foreach_sign)


class Sqrt(_Unary):
    """Square root of the update: :math:`u \\leftarrow \\sqrt{u}` (NaN where :math:`u < 0`)."""

    _inplace = staticmethod(torch._foreach_sqrt_)
    _outplace = staticmethod(torch._foreach_sqrt)


class Exp(_Unary):
    """Exponential of the update: :math:`u \\leftarrow e^{u}`."""

    _inplace = staticmethod(torch._foreach_exp_)
    _outplace = staticmethod(torch._foreach_exp)


class Negate(Module):
    """Negates the update: :math:`u \\leftarrow -u` (a lazy factor, no pass over memory)."""

    def __init__(self):
        super().__init__()

    def step(self, ctx) -> None:
        if ctx.params:
            ctx.scale_update(-1.0)


class Reciprocal(Module):
    """Reciprocal of the update: :math:`u \\leftarrow 1 / (u + \\epsilon)`.

    Args:
        eps: added to the update before inverting (0: plain reciprocal).
    """

    def __init__(self, eps: float = 0.0):
        super().__init__(dict(eps=eps), rules=dict(eps=checks.number))

    def step(self, ctx) -> None:
        if not ctx.params:
            return
        eps = self.settings(ctx, "eps")
        u = current(ctx)
        if fe.is_list(eps) or eps != 0:
            u = apply_unary(u, lambda ts: torch._foreach_add_(ts, eps),
                            lambda ts: torch._foreach_add(ts, eps))
        finish(ctx, apply_unary(u, torch._foreach_reciprocal_, torch._foreach_reciprocal))


class NanToNum(Module):
    """Replaces NaN and infinite entries of the update by numbers (``torch.nan_to_num``).

    .. math:: u_i \\leftarrow \\text{nan if } u_i \\text{ is NaN},\\ \\text{posinf if }
        u_i = +\\infty,\\ \\text{neginf if } u_i = -\\infty,\\ u_i \\text{ otherwise}

    Args:
        nan: value for NaN entries (``None``: 0).
        posinf: value for :math:`+\\infty` (``None``: the largest finite value of the dtype).
        neginf: value for :math:`-\\infty` (``None``: the lowest finite value of the dtype).
    """

    def __init__(self, nan: float | None = None, posinf: float | None = None,
                 neginf: float | None = None):
        rule = checks.optional(checks.number)
        super().__init__(dict(nan=nan, posinf=posinf, neginf=neginf),
                         rules=dict(nan=rule, posinf=rule, neginf=rule))

    def step(self, ctx) -> None:
        if not ctx.params:
            return
        n = len(ctx.params)
        nan, posinf, neginf = (as_list(s, n) for s in self.settings(ctx, "nan", "posinf", "neginf"))
        u = current(ctx)
        # no foreach kernel exists for nan_to_num
        if u.owned:
            for t, a, b, c in zip(u.tensors, nan, posinf, neginf):
                t.nan_to_num_(a, b, c)
            return
        ctx.set_update([torch.nan_to_num(t, a, b, c)
                        for t, a, b, c in zip(u.tensors, nan, posinf, neginf)])


#: Tensor methods that have a ``torch._foreach_<name>`` / ``_foreach_<name>_`` pair
_FOREACH_UNARY = frozenset(
    name for name in (
        "abs", "acos", "asin", "atan", "ceil", "cos", "cosh", "erf", "erfc", "exp", "expm1",
        "floor", "frac", "lgamma", "log", "log10", "log1p", "log2", "neg", "reciprocal", "round",
        "sigmoid", "sign", "sin", "sinh", "sqrt", "tan", "tanh", "trunc",
    )
    if hasattr(torch, f"_foreach_{name}") and hasattr(torch, f"_foreach_{name}_")
)


def tensor_method(v):
    """The name of a public ``torch.Tensor`` method."""
    ok = isinstance(v, str) and not v.startswith("_") and callable(getattr(torch.Tensor, v, None))
    return None if ok else "the name of a torch.Tensor method"


class CustomUnaryOperation(Module):
    """Applies a ``torch.Tensor`` method, called without arguments, to each tensor of the update.

    .. math:: u \\leftarrow u.\\text{name}()

    An in-place method (name ending in ``_``) runs on an owned copy of the update; methods with a
    ``torch._foreach_*`` kernel (``abs``, ``log``, ``tanh`` …) use it. The method must return a
    tensor of the input's shape.

    Args:
        name: the method name, e.g. ``"tanh"``, ``"log1p"`` or ``"square"``.
    """

    def __init__(self, name: str):
        super().__init__(dict(name=name), rules=dict(name=tensor_method))

    def step(self, ctx) -> None:
        if not ctx.params:
            return
        names = self.settings(ctx, "name")
        if not fe.is_list(names) and names in _FOREACH_UNARY:
            inplace = getattr(torch, f"_foreach_{names}_")
            outplace = getattr(torch, f"_foreach_{names}")
            finish(ctx, apply_unary(current(ctx), inplace, outplace))
            return
        names = as_list(names, len(ctx.params))
        if any(nm.endswith("_") for nm in names):
            tensors = ctx.mutable_update()
        else:
            tensors = ctx.update
        out = []
        for t, nm in zip(tensors, names):
            r = getattr(t, nm)()
            if not isinstance(r, torch.Tensor) or r.shape != t.shape:
                got = tuple(r.shape) if isinstance(r, torch.Tensor) else type(r).__name__
                raise ValueError(f"{self.name}: Tensor.{nm}() must return a tensor of shape "
                                 f"{tuple(t.shape)}, got {got}")
            out.append(r)
        ctx.set_update(out, owned=True)


class UnaryLambda(Module):
    """Applies a function to the whole update: :math:`u \\leftarrow f(u)`.

    ``fn`` receives the list of update tensors (an owned copy, so it may work in place) and
    returns a list of tensors of the same shapes, which become the update; it must not keep them.

    Args:
        fn: callable ``list[Tensor] -> list[Tensor]``.
    """

    def __init__(self, fn):
        super().__init__(dict(fn=fn), rules=dict(fn=_callable))

    def step(self, ctx) -> None:
        if not ctx.params:
            return
        fn = self.settings(ctx, "fn")
        if fe.is_list(fn):
            raise ValueError(f"{self.name}: param groups must agree on fn")
        u = ctx.mutable_update()
        ctx.set_update(_checked(self.name, u, list(fn(u))), owned=True)


class UnaryParameterwiseLambda(Module):
    """Applies a function to each tensor of the update: :math:`u_i \\leftarrow f(u_i)`.

    ``fn`` receives one update tensor (owned, so it may work in place) and returns a tensor of the
    same shape; it must not keep it.

    Args:
        fn: callable ``Tensor -> Tensor``.
    """

    def __init__(self, fn):
        super().__init__(dict(fn=fn), rules=dict(fn=_callable))

    def step(self, ctx) -> None:
        if not ctx.params:
            return
        fns = as_list(self.settings(ctx, "fn"), len(ctx.params))
        u = ctx.mutable_update()
        ctx.set_update(_checked(self.name, u, [f(t) for f, t in zip(fns, u)]), owned=True)


def _callable(v):
    """A callable."""
    return None if callable(v) else "a callable"


def _checked(owner: str, inputs: list, outputs: list) -> list:
    if len(outputs) != len(inputs):
        raise ValueError(
            f"{owner}: fn returned {len(outputs)} tensors for {len(inputs)} parameters"
        )
    for t, r in zip(inputs, outputs):
        if not isinstance(r, torch.Tensor) or r.shape != t.shape:
            got = tuple(r.shape) if isinstance(r, torch.Tensor) else type(r).__name__
            raise ValueError(f"{owner}: fn must return tensors of the update's shapes; expected "
                             f"{tuple(t.shape)}, got {got}")
    return outputs


