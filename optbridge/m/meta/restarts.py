"""Restart strategies: clear modules' state every n steps or when progress stalls."""

from __future__ import annotations

import torch

from ...core import checks
from ...core import foreach as fe
from ...core.module import Module
from ._common import run_inline


class _Restart(Module):
    """Checks a reset condition at the start of each step; when it holds, clears the state of
    ``modules`` (with :meth:`Module.reset`) before running them on the step's context. With
    ``modules=None`` it clears every other module of the optimizer instead (except the modules
    that contain this one), at the moment it runs: put it first for the step to run with fresh
    state, or last for a reset after the step."""

    def __init__(self, defaults: dict, rules: dict, modules):
        super().__init__(defaults, rules)
        self.set_child("modules", modules)
        if modules is not None:
            self.needs_grad = self.children["modules"].needs_grad

    def should_reset(self, ctx) -> bool:
        raise NotImplementedError

    def step(self, ctx) -> None:
        wrapped = self.children.get("modules")
        if self.should_reset(ctx):
            if wrapped is not None:
                wrapped.reset()
            else:
                self._reset_others(ctx.optimizer.chain)
        if wrapped is not None:
            run_inline(ctx, wrapped)

    def _reset_others(self, node: Module) -> None:
        for child in node.children.values():
            if child is self:
                continue
            if any(m is self for m in child.walk()):
                self._reset_others(child)
            else:
                child.reset()


class RestartEvery(_Restart):
    """Clears the state of ``modules`` every ``steps`` steps, so each state lives exactly
    ``steps`` steps (steps :math:`1..n`, :math:`n+1..2n`, ... of this module).

    .. math:: \\text{reset before step } t \\text{ when } t > 1 \\text{ and } (t - 1) \\bmod n = 0

    ``RestartEvery([Adam(), LR(lr)], 10)`` is a new ``torch.optim.Adam`` every 10 steps.

    Args:
        modules: the sub-chain to run and restart, or ``None`` for all other modules.
        steps: :math:`n`, an int >= 1, or ``"ndim"`` for the number of (real) parameter entries.
    """

    def __init__(self, modules, steps):
        super().__init__(dict(steps=steps), dict(steps=_steps_rule), modules)

    def should_reset(self, ctx) -> bool:
        t = self.global_state["step"] = self.global_state.get("step", 0) + 1
        n = self.uniform_setting(ctx, "steps") if ctx.spans else self.defaults["steps"]
        if n == "ndim":
            n = max(1, sum(p.numel() for p in ctx.params))
        return t > 1 and (t - 1) % n == 0


class RestartOnStuck(_Restart):
    """Clears the state of ``modules`` when the parameters stopped moving: the largest
    absolute change between consecutive steps stayed at most ``tol`` for ``n_tol`` steps in a
    row.

    .. math::
        \\text{a step fails when } \\max_i |x_{t,i} - x_{t-1,i}| \\le tol;\\quad
        \\text{reset after } n_{tol} \\text{ consecutive failures (then count again from 0)}

    State: the previous parameters (one buffer per parameter); the check synchronizes with the
    host once per step.

    Args:
        modules: the sub-chain to run and restart, or ``None`` for all other modules.
        tol: :math:`tol \\ge 0`, or ``None`` for twice the smallest positive normal number of the
            parameters' dtype.
        n_tol: :math:`n_{tol}`, an int >= 1.
    """

    def __init__(self, modules, tol: float | None = None, n_tol: int = 10):
        super().__init__(dict(tol=tol, n_tol=n_tol),
                         dict(tol=checks.optional(checks.nonnegative), n_tol=checks.positive_int),
                         modules)

    def should_reset(self, ctx) -> bool:
        if not ctx.params:
            return False
        prev = fe.previous_params(self.param_states(ctx), ctx.params)
        if prev is None:
            return False
        tol = self.uniform_setting(ctx, "tol")
        if tol is None:
            tol = torch.finfo(ctx.params[0].dtype).tiny * 2
        change = fe.change_norm_(prev, ctx.params, float("inf"))
        fails = self.global_state.get("n_bad", 0) + 1 if bool(change <= tol) else 0
        reset = fails >= self.uniform_setting(ctx, "n_tol")
        self.global_state["n_bad"] = 0 if reset else fails
        return reset


def _steps_rule(v):
    """An int >= 1 or ``"ndim"``."""
    return None if v == "ndim" or checks.positive_int(v) is None else "an int >= 1 or 'ndim'"
