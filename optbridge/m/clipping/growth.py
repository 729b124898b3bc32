"""Limits on how fast the update may grow from one step to the next."""

from __future__ import annotations

import torch

from ...core import checks
from ._common import (
    OwnershipTransform,
    at_least_one,
    complex_flags,
    complex_views,
    global_norm,
    global_state_key,
    norm_order,
    previous_norms,
    scale,
    tensor_norms,
)

_RULES = dict(
    add=checks.optional(checks.nonnegative),
    mul=checks.optional(at_least_one),
    min_value=checks.optional(checks.nonnegative),
    max_decay=checks.optional(at_least_one),
)


def _allowed(prev: torch.Tensor, add, mul, min_value) -> torch.Tensor:
    """Largest norm allowed after a tracked norm ``prev``."""
    bound = None
    if mul is not None:
        bound = (prev if min_value is None else prev.clamp_min(min_value)) * mul
    if add is not None:
        bound = prev + add if bound is None else torch.minimum(bound, prev + add)
    return bound


class ClipNormGrowth(OwnershipTransform):
    """Limits the growth of the update's norm relative to the previous step (torchzero's
    ``ClipNormGrowth``, https://github.com/inikishev/torchzero).

    .. math::
        n_t = \\lVert u_t \\rVert,\\quad
        A_t = \\min\\big(r_{t-1} + a,\\ \\max(r_{t-1}, v_{\\min})\\,k\\big),\\quad
        u_t \\leftarrow u_t \\cdot \\min(1, A_t / n_t)

        r_t = \\max\\big(\\lVert u_t \\rVert,\\ r_{t-1} / d\\big)

    :math:`r` tracks the norm of the (clipped) update; ``max_decay`` :math:`d` lets it fall by at
    most a factor :math:`d` per step, so one tiny update does not shrink the next allowed norm to
    almost nothing. On the first step :math:`r_0 = n_1` (nothing is clipped). A bound whose
    argument is None is not applied; with ``add`` and ``mul`` both None the module does nothing.

    Args:
        add: :math:`a`, additive bound (next norm at most the previous one plus ``add``).
        mul: :math:`k \\ge 1`, multiplicative bound (next norm at most ``mul`` times the previous).
        min_value: :math:`v_{\\min}`, floor of the tracked norm in the multiplicative bound.
        max_decay: :math:`d \\ge 1`, the largest factor by which the tracked norm may decay per
            step (None: it follows the clipped norm exactly).
        ord: the norm order.
        tensorwise: one norm per parameter tensor (True) or one over all parameters (False; the
            tracked norm is then module state, ``global_state["prev_norm"]``; param groups that
            set other values for this module's settings form separate wholes).
    """

    def __init__(self, add: float | None = None, mul: float | None = 1.5,
                 min_value: float | None = 1e-4, max_decay: float | None = 2, ord: float = 2,
                 tensorwise: bool = True):
        super().__init__(
            dict(add=add, mul=mul, min_value=min_value, max_decay=max_decay, ord=ord,
                 tensorwise=tensorwise),
            rules=dict(_RULES, ord=norm_order, tensorwise=checks.boolean),
        )

    def transform(self, update, part):
        s = part.settings
        if s["add"] is None and s["mul"] is None:
            return self.unchanged(update, part)
        views = complex_views(update, complex_flags(part))
        if s["tensorwise"]:
            norm = tensor_norms(views, s["ord"])
            prev_list = previous_norms(part.states, "prev_norm", norm)
            prev = torch.stack(prev_list)
        else:
            key = global_state_key(part, "prev_norm")
            norm = global_norm(views, s["ord"])
            prev = self.global_state.get(key, norm)
        allowed = _allowed(prev, s["add"], s["mul"], s["min_value"])
        coef = torch.where(norm > allowed, allowed / norm, 1.0)
        new_prev = norm * coef
        if s["max_decay"] is not None:
            new_prev = torch.maximum(new_prev, prev / s["max_decay"])
        if s["tensorwise"]:
            torch._foreach_copy_(prev_list, list(new_prev.unbind(0)))
            return scale(update, list(coef.unbind(0)), self.owned(part))
        self.global_state[key] = new_prev
        return scale(update, coef, self.owned(part))


class ClipValueGrowth(OwnershipTransform):
    """Limits the growth of each entry's magnitude relative to the previous step (torchzero's
    ``ClipValueGrowth``, https://github.com/inikishev/torchzero).

    .. math::
        B_t = \\min\\big(r_{t-1} + a,\\ \\max(r_{t-1}, v_{\\min})\\,k\\big),\\quad
        u_t \\leftarrow \\min(\\max(u_t, -B_t),\\ B_t)

        r_t = \\max\\big(|u_t|,\\ r_{t-1} / d\\big)

    elementwise, where :math:`r` tracks the magnitudes of the (clipped) update and ``max_decay``
    :math:`d` lets each fall by at most a factor :math:`d` per step. On the first step
    :math:`r_0 = |u_1|` (nothing is clipped). With ``add`` and ``mul`` both None the module does
    nothing.

    Args:
        add: :math:`a`, additive bound (next magnitude at most the previous one plus ``add``).
        mul: :math:`k \\ge 1`, multiplicative bound.
        min_value: :math:`v_{\\min}`, floor of the tracked magnitude in the multiplicative bound.
        max_decay: :math:`d \\ge 1`, the largest factor by which a tracked magnitude may decay per
            step (None: it follows the clipped magnitude exactly).
    """

    def __init__(self, add: float | None = None, mul: float | None = 1.5,
                 min_value: float | None = 1e-4, max_decay: float | None = 2):
        super().__init__(dict(add=add, mul=mul, min_value=min_value, max_decay=max_decay),
                         rules=_RULES)

    def transform(self, update, part):
        s = part.settings
        add, mul, min_value, max_decay = s["add"], s["mul"], s["min_value"], s["max_decay"]
        if add is None and mul is None:
            return self.unchanged(update, part)
        prev = []
        for st, u in zip(part.states, update):
            r = st.get("prev")
            if r is None:
                r = st["prev"] = u.abs()
            prev.append(r)
        # bound = min(prev + add, max(prev, min_value) * mul), built in one new buffer
        if mul is not None:
            bound = torch._foreach_clamp_min(prev, min_value) if min_value is not None else \
                torch._foreach_mul(prev, 1.0)
            torch._foreach_mul_(bound, mul)
            if add is not None:
                torch._foreach_sub_(bound, add)
                torch._foreach_minimum_(bound, prev)
                torch._foreach_add_(bound, add)
        else:
            bound = torch._foreach_add(prev, add)
        if self.owned(part):
            out = update
            torch._foreach_minimum_(out, bound)
        else:
            out = torch._foreach_minimum(update, bound)
        torch._foreach_neg_(bound)
        torch._foreach_maximum_(out, bound)
        # prev <- max(|out|, prev / max_decay), with bound as scratch space for |out|
        if max_decay is not None:
            torch._foreach_div_(prev, max_decay)
        else:
            torch._foreach_zero_(prev)
        torch._foreach_copy_(bound, out)
        torch._foreach_abs_(bound)
        torch._foreach_maximum_(prev, bound)
        return out
