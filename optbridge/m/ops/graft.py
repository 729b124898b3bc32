"""Grafting: the direction of one update with the norm of another.

Agarwal, Anil, Hazan, Koren & Zhang, "Disentangling Adaptive Gradient Methods from Learning
Rates" (2020), https://arxiv.org/abs/2002.11803. Names and defaults follow torchzero
(https://github.com/inikishev/torchzero).

All grafts compute, per tensor (``tensorwise=True``) or over all tensors at once,

.. math::
    \\operatorname{graft}(d, m)
    = d \\cdot \\frac{\\lVert m \\rVert_p}{\\max(\\lVert d \\rVert_p, \\epsilon)}

with :math:`p` = ``ord`` (``inf`` for the max-norm). Norms stay 0-dim tensors (no host sync).
"""

from __future__ import annotations

import torch

from ...core import checks
from ...core import foreach as fe
from ...core.module import Module
from ._base import Operand, Operation, apply_binary, as_list, current, finish, norm_order
from .multi import MultiOperation

Norms = torch.Tensor | list  # one 0-dim tensor, or one per parameter


def norms(tensors: list, tensorwise, ord) -> Norms:
    """Norm of each tensor (``tensorwise``) or of all tensors together: a list of 0-dim tensors
    with one per tensor, or a single 0-dim tensor when every tensor shares one global norm.
    ``tensorwise`` and ``ord`` may be per-parameter lists (groups that disagree)."""
    if not fe.is_list(tensorwise) and not fe.is_list(ord):
        return list(torch._foreach_norm(tensors, ord)) if tensorwise else fe.global_norm(tensors, ord)
    n = len(tensors)
    out: list = [None] * n
    buckets: dict = {}
    for i, key in enumerate(zip(as_list(tensorwise, n), as_list(ord, n))):
        buckets.setdefault(key, []).append(i)
    for (tw, o), idx in buckets.items():
        sub = [tensors[i] for i in idx]
        values = torch._foreach_norm(sub, o) if tw else [fe.global_norm(sub, o)] * len(idx)
        for i, v in zip(idx, values):
            out[i] = v
    return out


def _single(*xs) -> bool:
    return all(not fe.is_list(x) for x in xs)


def _tensors(x, n: int) -> list:
    return x if fe.is_list(x) else [x] * n


def lerp(a: Norms, b: Norms, weight) -> Norms:
    """``a + weight * (b - a)`` (new tensors)."""
    if _single(a, b, weight):
        return torch.lerp(a, b, weight)
    n = len(next(x for x in (a, b, weight) if fe.is_list(x)))
    return torch._foreach_lerp(_tensors(a, n), _tensors(b, n), weight)


def ratio(num: Norms, den: Norms, den_min) -> Norms:
    """``num / max(den, den_min)`` (new tensors)."""
    if _single(num, den, den_min):
        return num / den.clamp_min(den_min)
    n = len(next(x for x in (num, den, den_min) if fe.is_list(x)))
    return torch._foreach_div(_tensors(num, n), torch._foreach_clamp_min(_tensors(den, n), den_min))


def graft(direction: Operand, magnitude: list, tensorwise, ord, eps, strength=1.0) -> Operand:
    """``direction`` rescaled to the norm of ``magnitude``; with ``strength`` :math:`s` the target
    norm is :math:`s\\lVert m\\rVert + (1-s)\\lVert d\\rVert`."""
    nd = norms(direction.tensors, tensorwise, ord)
    nm = norms(magnitude, tensorwise, ord)
    if fe.is_list(strength) or strength != 1:
        nm = lerp(nm, nd, fe.scalar_map(lambda s: 1 - s, strength))
    return apply_binary(direction, ratio(nm, nd, eps), torch._foreach_mul_, torch._foreach_mul)


_RULES = dict(tensorwise=checks.boolean, ord=norm_order, eps=checks.positive)


class Graft(MultiOperation):
    """One module's output rescaled to the norm of another's.

    .. math:: u \\leftarrow d \\cdot \\frac{s\\lVert m \\rVert_p + (1-s)\\lVert d \\rVert_p}
        {\\max(\\lVert d \\rVert_p, \\epsilon)},
        \\qquad d = \\text{direction}(u),\\ m = \\text{magnitude}(u)

    e.g. ``Graft(Shampoo(), Adam())`` takes Shampoo's direction with Adam's per-layer step size.

    Args:
        direction: a module / list of modules run on the update; gives the direction.
        magnitude: a module / list of modules run on the update; gives the norm.
        tensorwise: norms per tensor (True) or over all parameters (False).
        ord: norm order :math:`p` (``inf``: max-norm).
        eps: lower bound of the direction's norm in the denominator.
        strength: :math:`s`; 1 takes the magnitude's norm, 0 keeps the direction's.
    """

    def __init__(self, direction, magnitude, tensorwise: bool = True, ord: float = 2,
                 eps: float = 1e-6, strength: float = 1.0):
        super().__init__(dict(tensorwise=tensorwise, ord=ord, eps=eps, strength=strength),
                         dict(_RULES, strength=checks.number),
                         operands=dict(direction=(direction, None), magnitude=(magnitude, None)))

    def step(self, ctx) -> None:
        if not ctx.params:
            return
        d, m = self.operands(ctx, "direction", "magnitude")
        tw, ord, eps, s = self.settings(ctx, "tensorwise", "ord", "eps", "strength")
        finish(ctx, graft(d, m.tensors, tw, ord, eps, s))


class GraftInputToOutput(Operation):
    """The update rescaled to the norm of a module's output.

    .. math:: u \\leftarrow u \\cdot
        \\frac{\\lVert m \\rVert_p}{\\max(\\lVert u \\rVert_p, \\epsilon)},
        \\qquad m = \\text{magnitude}(u)

    Args:
        magnitude: a module / list of modules run on the update; gives the norm.
        tensorwise: norms per tensor (True) or over all parameters (False).
        ord: norm order :math:`p` (``inf``: max-norm).
        eps: lower bound of the update's norm in the denominator.
    """

    def __init__(self, magnitude, tensorwise: bool = True, ord: float = 2, eps: float = 1e-6):
        super().__init__(dict(tensorwise=tensorwise, ord=ord, eps=eps), dict(_RULES),
                         operands=dict(magnitude=(magnitude, None)))

    def step(self, ctx) -> None:
        if not ctx.params:
            return
        m = self.operand(ctx, "magnitude")
        tw, ord, eps = self.settings(ctx, "tensorwise", "ord", "eps")
        finish(ctx, graft(current(ctx), m.tensors, tw, ord, eps))


class GraftOutputToInput(Operation):
    """A module's output rescaled to the norm of the update.

    .. math:: u \\leftarrow d \\cdot
        \\frac{\\lVert u \\rVert_p}{\\max(\\lVert d \\rVert_p, \\epsilon)},
        \\qquad d = \\text{direction}(u)

    Args:
        direction: a module / list of modules run on the update; gives the direction.
        tensorwise: norms per tensor (True) or over all parameters (False).
        ord: norm order :math:`p` (``inf``: max-norm).
        eps: lower bound of the direction's norm in the denominator.
    """

    def __init__(self, direction, tensorwise: bool = True, ord: float = 2, eps: float = 1e-6):
        super().__init__(dict(tensorwise=tensorwise, ord=ord, eps=eps), dict(_RULES),
                         operands=dict(direction=(direction, None)))

    def step(self, ctx) -> None:
        if not ctx.params:
            return
        d = self.operand(ctx, "direction")
        tw, ord, eps = self.settings(ctx, "tensorwise", "ord", "eps")
        finish(ctx, graft(d, current(ctx).tensors, tw, ord, eps))


class _GraftSetting(Module):
    def __init__(self, tensorwise: bool, ord: float, eps: float):
        super().__init__(dict(tensorwise=tensorwise, ord=ord, eps=eps), dict(_RULES))


class GraftToGrad(_GraftSetting):
    """The update rescaled to the norm of the gradient.

    .. math:: u \\leftarrow u \\cdot
        \\frac{\\lVert g \\rVert_p}{\\max(\\lVert u \\rVert_p, \\epsilon)}

    Args:
        tensorwise: norms per tensor (True) or over all parameters (False, the default).
        ord: norm order :math:`p` (``inf``: max-norm).
        eps: lower bound of the update's norm in the denominator.
    """

    def __init__(self, tensorwise: bool = False, ord: float = 2, eps: float = 1e-6):
        super().__init__(tensorwise, ord, eps)

    def step(self, ctx) -> None:
        if not ctx.params:
            return
        tw, ord, eps = self.settings(ctx, "tensorwise", "ord", "eps")
        grads = ctx.grads
        finish(ctx, graft(current(ctx), grads, tw, ord, eps))


class GraftGradToUpdate(_GraftSetting):
    """The gradient rescaled to the norm of the update.

    .. math:: u \\leftarrow g \\cdot
        \\frac{\\lVert u \\rVert_p}{\\max(\\lVert g \\rVert_p, \\epsilon)}

    Args:
        tensorwise: norms per tensor (True) or over all parameters (False, the default).
        ord: norm order :math:`p` (``inf``: max-norm).
        eps: lower bound of the gradient's norm in the denominator.
    """

    def __init__(self, tensorwise: bool = False, ord: float = 2, eps: float = 1e-6):
        super().__init__(tensorwise, ord, eps)

    def step(self, ctx) -> None:
        if not ctx.params:
            return
        tw, ord, eps = self.settings(ctx, "tensorwise", "ord", "eps")
        grads = ctx.grads
        u = current(ctx)
        # the gradient is borrowed: the result goes to new tensors
        finish(ctx, graft(Operand(grads, False), u.tensors, tw, ord, eps))


class GraftToParams(_GraftSetting):
    """The update rescaled to the norm of the parameters, that norm taken no smaller than ``eps``.

    .. math:: u \\leftarrow u \\cdot
        \\frac{\\max(\\lVert x \\rVert_p, \\epsilon)}{\\lVert u \\rVert_p}

    (a zero update stays zero).

    Args:
        tensorwise: norms per tensor (True) or over all parameters (False, the default).
        ord: norm order :math:`p` (``inf``: max-norm).
        eps: lower bound of the parameters' norm, so parameters at 0 still move.
    """

    def __init__(self, tensorwise: bool = False, ord: float = 2, eps: float = 1e-4):
        super().__init__(tensorwise, ord, eps)

    def step(self, ctx) -> None:
        if not ctx.params:
            return
        tw, ord, eps = self.settings(ctx, "tensorwise", "ord", "eps")
        u = current(ctx)
        nu = norms(u.tensors, tw, ord)
        target = _clamp_min(norms(ctx.params, tw, ord), eps)
        tiny = torch.finfo(u.tensors[0].dtype).tiny
        factor = ratio(target, nu, tiny)
        finish(ctx, apply_binary(u, factor, torch._foreach_mul_, torch._foreach_mul))


def _clamp_min(x: Norms, v) -> Norms:
    if _single(x, v):
        return x.clamp_min(v)
    n = len(next(y for y in (x, v) if fe.is_list(y)))
    return torch._foreach_clamp_min(_tensors(x, n), v)
