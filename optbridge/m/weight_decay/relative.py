"""Weight decay scaled by the size of the update, the gradient or the parameters."""

from __future__ import annotations

import math

import torch

from ...core import checks
from ...core import foreach as fe
from ...core.module import Module
from ._penalty import ORD_RULE, penalty_direction


def _metric_rule(v):
    """``"mad"``, ``"rms"`` or a norm order > 0 (``inf`` included)."""
    if isinstance(v, str):
        ok = v in ("mad", "rms")
    else:
        ok = checks.positive(v) is None or (isinstance(v, float) and v == math.inf)
    return None if ok else "'mad', 'rms' or a norm order > 0"


def _metric(tensors, metric) -> torch.Tensor:
    if metric == "mad":
        return torch.stack(torch._foreach_norm(tensors, 1)).sum() / fe.numel(tensors)
    if metric == "rms":
        return fe.global_norm(tensors, 2.0) / math.sqrt(fe.numel(tensors))
    return fe.global_norm(tensors, float(metric))


class RelativeWeightDecay(Module):
    """Weight decay whose strength is relative to a global size of the update, the gradient or
    the parameters (torchzero's ``RelativeWeightDecay``; decoupled weight decay: Loshchilov &
    Hutter, 2019, https://arxiv.org/abs/1711.05101).

    .. math::
        u \\leftarrow u + \\lambda\\, m(z)\\,\\operatorname{sign}(w)\\,|w|^{p-1},\\qquad
        z \\in \\{u, g, w\\}

    :math:`m` is over all parameters together: ``"mad"`` the mean absolute value
    :math:`\\frac{1}{n}\\sum_i |z_i|`, ``"rms"`` the root mean square, a number :math:`q` the
    :math:`\\ell_q` norm. The decay thus stays proportional to the update's size whatever its
    scale; place it before the optimizer (coupled) or after it, before ``LR`` (decoupled). The
    factor stays a device tensor (no host sync).

    Args:
        weight_decay: :math:`\\lambda`, relative to :math:`m(z)`.
        ord: :math:`p`, the order of the penalty (1: L1, 2: L2; any number >= 1).
        norm_input: :math:`z`: ``"update"`` (the incoming update), ``"grad"`` or ``"params"``.
        metric: :math:`m`: ``"mad"``, ``"rms"`` or a norm order.
    """

    def __init__(self, weight_decay: float = 0.1, ord: float = 2, norm_input: str = "update",
                 metric="mad"):
        super().__init__(
            dict(weight_decay=weight_decay, ord=ord, norm_input=norm_input, metric=metric),
            rules=dict(weight_decay=checks.nonnegative, ord=ORD_RULE,
                       norm_input=checks.one_of("update", "grad", "params"), metric=_metric_rule),
        )

    def step(self, ctx) -> None:
        if not ctx.params:
            return
        wd = self.settings(ctx, "weight_decay")
        if not fe.is_list(wd) and wd == 0:
            return
        ord = self.uniform_setting(ctx, "ord")
        norm_input = self.uniform_setting(ctx, "norm_input")
        metric = self.uniform_setting(ctx, "metric")
        update = ctx.update
        source = {"update": update, "grad": ctx.grads, "params": ctx.params}[norm_input]
        scale = _metric(source, metric)
        if ord == 2:
            term = torch._foreach_mul(ctx.params, scale if fe.is_list(wd) else scale * wd)
        else:
            term = penalty_direction(ctx.params, ord)
            torch._foreach_mul_(term, scale if fe.is_list(wd) else scale * wd)
        if fe.is_list(wd):
            torch._foreach_mul_(term, wd)
        if ctx.update_is_owned:
            torch._foreach_add_(update, term)
        else:
            torch._foreach_add_(term, update)
            ctx.set_update(term, owned=True)
