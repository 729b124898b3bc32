"""Averages over a window of past updates, kept as a ring of ``history_size`` slots per parameter
(one stacked tensor in the parameter's state, so it is checkpointed with the optimizer)."""

from __future__ import annotations

import torch

from ...core import checks
from ...core import foreach as fe
from ...core.module import Borrowed, Transform
from ._common import as_list, scatter, subset


def _ring(part, n: int):
    """Advance the step count and return ``(rings, step, steps)``: each parameter's ``(n, *shape)``
    history (the update of step ``t`` lives in slot ``(t-1) % n``), the step as a number or a
    per-parameter list, and the per-parameter list."""
    for s in part.states:
        h = s.get("history")
        if h is not None and h.shape[0] != n:  # history_size changed: start a new window
            s.clear()
    rings = part.buffers("history", init=lambda p: p.new_zeros((n, *p.shape)))
    step = part.next_step()
    return rings, step, as_list(step, len(rings))


def _store(rings, steps, update, n: int) -> list[torch.Tensor]:
    slots = [h[(t - 1) % n] for h, t in zip(rings, steps)]
    torch._foreach_copy_(slots, update)
    return slots


class Averaging(Transform):
    """Mean of the last ``history_size`` updates (of all of them during the first steps).

    .. math::
        \\text{output } \\frac{1}{k} \\sum_{i=0}^{k-1} u_{t-i},\\qquad k = \\min(t, n)

    A running sum keeps the cost of a step independent of :math:`n`; it is recomputed from the
    window every :math:`n` steps so rounding errors cannot build up.

    Args:
        history_size: :math:`n`, the window length.
    """

    inplace = False

    def __init__(self, history_size: int):
        super().__init__(dict(history_size=history_size), rules=dict(history_size=checks.positive_int))

    def transform(self, update, part):
        n = part.settings["history_size"]
        rings, step, steps = _ring(part, n)
        sums = part.buffers("sum")
        slots = [h[(t - 1) % n] for h, t in zip(rings, steps)]
        torch._foreach_sub_(sums, slots)
        torch._foreach_add_(sums, update)
        torch._foreach_copy_(slots, update)
        for h, s, t in zip(rings, sums, steps):
            if t % n == 0:
                torch.sum(h, dim=0, out=s)
        part.scale_output(fe.scalar_map(lambda t: 1 / min(t, n), step))
        return Borrowed(sums)


class MedianAveraging(Transform):
    """Elementwise median of the last ``history_size`` updates (of all of them during the first
    steps); with an even count, the mean of the two middle values.

    .. math::
        \\text{output } \\operatorname{median}(u_{t-k+1}, \\dots, u_t),\\qquad k = \\min(t, n)

    Args:
        history_size: :math:`n`, the window length.
    """

    inplace = False

    def __init__(self, history_size: int):
        super().__init__(dict(history_size=history_size), rules=dict(history_size=checks.positive_int))

    def transform(self, update, part):
        n = part.settings["history_size"]
        rings, _, steps = _ring(part, n)
        _store(rings, steps, update, n)
        out = []
        for h, t in zip(rings, steps):
            k = min(t, n)
            window = h[:k]
            med = torch.kthvalue(window, (k + 1) // 2, dim=0).values
            if k % 2 == 0:
                med.add_(torch.kthvalue(window, k // 2 + 1, dim=0).values).mul_(0.5)
            out.append(med)
        return out


def _weights_rule(v):
    ok = isinstance(v, (list, tuple)) and len(v) > 0 and all(checks.number(x) is None for x in v)
    return None if ok else "a non-empty sequence of finite numbers"


class WeightedAveraging(Transform):
    """Weighted average of the last ``len(weights)`` updates, weights listed oldest to newest.

    .. math::
        \\text{output } \\frac{1}{k} \\sum_{i=0}^{k-1} w_{L-1-i}\\, u_{t-i},\\qquad
        k = \\min(t, L)

    During the first :math:`L-1` steps only the newest :math:`k` weights are used. The sum is
    divided by the number of updates :math:`k` (not by the sum of the weights), as in torchzero,
    so all-ones weights give :class:`Averaging`.

    Args:
        weights: :math:`w_0, \\dots, w_{L-1}`, from the oldest update to the newest.
    """

    inplace = False

    def __init__(self, weights):
        if hasattr(weights, "tolist"):  # a tensor or an array
            weights = weights.tolist()
        if isinstance(weights, list):
            weights = tuple(weights)
        super().__init__(dict(weights=weights), rules=dict(weights=_weights_rule))

    def transform(self, update, part):
        w = part.settings["weights"]
        n = len(w)
        rings, _, steps = _ring(part, n)
        _store(rings, steps, update, n)
        by_step: dict[int, list[int]] = {}
        for i, t in enumerate(steps):
            by_step.setdefault(t, []).append(i)
        pieces = []
        for t, idx in by_step.items():
            hs = subset(rings, idx) if len(by_step) > 1 else rings
            k = min(t, n)
            out = None
            for j in range(k):  # the j-th most recent update
                wj = w[n - 1 - j] / k
                views = [h[(t - 1 - j) % n] for h in hs]
                if out is None:
                    out = torch._foreach_mul(views, wj)
                elif wj != 0:
                    torch._foreach_add_(out, views, alpha=wj)
            pieces.append((idx, out))
        return pieces[0][1] if len(pieces) == 1 else scatter(len(rings), pieces)
