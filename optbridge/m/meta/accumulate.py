"""Gradient accumulation: one real step every n steps."""

from __future__ import annotations

import torch

from ...core import checks
from ...core.module import Module
from ._common import run_inline


class GradientAccumulation(Module):
    """Accumulates the incoming update (the gradient, when first) over ``n`` steps and runs
    ``modules`` on the mean (or sum) every ``n``-th step.

    .. math::
        a = \\sum_{j=1}^{n} u_{t-n+j}\\ \\big(\\text{divided by } n \\text{ when mean}\\big),
        \\qquad \\text{on steps } t = n, 2n, \\dots:\\ \\text{output } d(a)

    This is a batch ``n`` times larger: ``GradientAccumulation([HeavyBall(), LR(lr)], n=3)``
    with a new mini-batch per step is ``torch.optim.SGD`` stepping every third step on the mean
    of the three gradients. On the other steps (with ``stop``) the parameters do not move
    (``skip_update``); modules after this one still run, so put the whole optimizer inside
    ``modules``. State: one accumulator per parameter and the step count; a parameter without
    a gradient on some steps accumulates the steps where it has one.

    Args:
        modules: the sub-chain run on the accumulated update.
        n: number of steps to accumulate, an int >= 1.
        mean: average the accumulated updates (``False``: sum them).
        stop: on the accumulating steps, keep the parameters still (``False``: the incoming
            update passes through unchanged and is applied).
    """

    def __init__(self, modules, n: int, mean: bool = True, stop: bool = True):
        super().__init__(dict(n=n, mean=mean, stop=stop),
                         rules=dict(n=checks.positive_int, mean=checks.boolean,
                                    stop=checks.boolean))
        if modules is None:
            raise TypeError(f"{self.name}: modules is required (the sub-chain that steps)")
        self.set_child("modules", modules)
        self.needs_grad = self.children["modules"].needs_grad

    def step(self, ctx) -> None:
        n = self.uniform_setting(ctx, "n") if ctx.spans else self.defaults["n"]
        t = self.global_state["step"] = self.global_state.get("step", 0) + 1
        if ctx.params:
            cycle = (t - 1) // n
            acc, fresh, fresh_u, old, old_u = [], [], [], [], []
            for s, p, u in zip(self.param_states(ctx), ctx.params, ctx.update):
                a = s.get("accumulator")
                if a is None:
                    a = s["accumulator"] = torch.zeros_like(p)
                acc.append(a)
                if s.get("cycle") == cycle:
                    old.append(a)
                    old_u.append(u)
                else:  # first contribution of this cycle (a parameter may miss some steps)
                    s["cycle"] = cycle
                    fresh.append(a)
                    fresh_u.append(u)
            if fresh:
                torch._foreach_copy_(fresh, fresh_u)
            if old:
                torch._foreach_add_(old, old_u)
        if t % n != 0:
            if self.uniform_setting(ctx, "stop") if ctx.spans else self.defaults["stop"]:
                ctx.skip_update = True
            return
        if ctx.params:
            if n > 1 and self.uniform_setting(ctx, "mean"):
                torch._foreach_div_(acc, n)
            ctx.update = acc
        run_inline(ctx, self.children["modules"])
