"""Termination criteria: budgets (steps, evaluations, seconds) and convergence tests (gradient
norm, parameter change, loss progress, target loss)."""

from __future__ import annotations

import time

import torch

from ...core import checks
from ...core import foreach as fe
from .base import TerminationCriteriaBase, norm_order


class TerminateAfterNSteps(TerminationCriteriaBase):
    """Terminates after ``steps`` steps: the ``steps``-th call fires (its update is still
    applied), so exactly ``steps`` steps move the parameters.

    .. math:: \\text{stop when } t \\ge N,\\quad t = \\text{this module's calls so far}

    Args:
        steps: :math:`N \\ge 1`.
    """

    def __init__(self, steps: int):
        super().__init__(dict(steps=steps), rules=dict(steps=checks.positive_int))

    def criterion(self, ctx) -> bool:
        t = self.global_state["step"] = self.global_state.get("step", 0) + 1
        return t >= self.setting(ctx, "steps")

    def describe(self, ctx) -> str:
        return f"{self.name}: {self.global_state['step']} steps"


class TerminateAfterNEvaluations(TerminationCriteriaBase):
    """Terminates once the closure has been evaluated ``maxevals`` times
    (``optimizer.evals.total``, loss-only and loss+gradient evaluations alike, counted when
    this module runs; evaluations later in the step still happen).

    .. math:: \\text{stop when } \\#\\text{evals} \\ge N

    Args:
        maxevals: :math:`N \\ge 1`.
    """

    def __init__(self, maxevals: int):
        super().__init__(dict(maxevals=maxevals), rules=dict(maxevals=checks.positive_int))

    def criterion(self, ctx) -> bool:
        return ctx.optimizer.evals.total >= self.setting(ctx, "maxevals")

    def describe(self, ctx) -> str:
        return f"{self.name}: {ctx.optimizer.evals.total} evaluations"


class TerminateAfterNSeconds(TerminationCriteriaBase):
    """Terminates when ``seconds`` have passed since this module's first step.

    .. math:: \\text{stop when } \\mathrm{clock}() - \\mathrm{clock}(t_1) \\ge T

    The start time is module state (checkpointed): with the default wall clock, time spent
    between saving and loading counts.

    Args:
        seconds: :math:`T > 0`.
        sec_fn: the clock, a function returning seconds (``time.time``; not checkpointed).
    """

    def __init__(self, seconds: float, sec_fn=time.time):
        super().__init__(dict(seconds=seconds), rules=dict(seconds=checks.positive))
        if not callable(sec_fn):
            raise TypeError(f"{self.name}: sec_fn must be callable, got {type(sec_fn).__name__}")
        self.sec_fn = sec_fn

    def criterion(self, ctx) -> bool:
        now = float(self.sec_fn())
        start = self.global_state.setdefault("start", now)
        return now - start >= self.setting(ctx, "seconds")

    def describe(self, ctx) -> str:
        return f"{self.name}: {self.setting(ctx, 'seconds')} seconds"


class TerminateByGradientNorm(TerminationCriteriaBase):
    """Terminates when the gradient norm at the starting point is at most ``tol`` on ``n``
    consecutive steps.

    .. math:: \\text{stop when } \\lVert \\nabla f(x_t) \\rVert_{ord} \\le tol

    Args:
        tol: :math:`tol \\ge 0`.
        n: number of consecutive steps.
        ord: order of the norm over all parameters (> 0 or ``inf``).
    """

    def __init__(self, tol: float = 1e-8, n: int = 3, ord: float = 2):
        super().__init__(dict(tol=tol, n=n, ord=ord),
                         rules=dict(tol=checks.nonnegative, n=checks.positive_int, ord=norm_order))

    def criterion(self, ctx) -> bool:
        if not ctx.params:
            return False
        norm = fe.global_norm(ctx.grads, float(self.setting(ctx, "ord")))
        return bool(norm <= self.setting(ctx, "tol"))

    def describe(self, ctx) -> str:
        return f"{self.name}: gradient norm <= {self.setting(ctx, 'tol')}"


class TerminateByUpdateNorm(TerminationCriteriaBase):
    """Terminates when the parameters moved by at most ``tol`` between consecutive steps, on
    ``n`` consecutive steps (the update is measured as the parameter difference, so it
    includes line searches and everything the chain did).

    .. math:: \\text{stop when } \\lVert x_t - x_{t-1} \\rVert_{ord} \\le tol

    State: the previous parameters (one buffer per parameter).

    Args:
        tol: :math:`tol \\ge 0`.
        n: number of consecutive steps.
        ord: order of the norm over all parameters (> 0 or ``inf``).
    """

    def __init__(self, tol: float = 1e-8, n: int = 3, ord: float = 2):
        super().__init__(dict(tol=tol, n=n, ord=ord),
                         rules=dict(tol=checks.nonnegative, n=checks.positive_int, ord=norm_order))

    def criterion(self, ctx) -> bool:
        if not ctx.params:
            return False
        prev = fe.previous_params(self.param_states(ctx), ctx.params)
        if prev is None:
            return False
        norm = fe.change_norm_(prev, ctx.params, float(self.setting(ctx, "ord")))
        return bool(norm <= self.setting(ctx, "tol"))

    def describe(self, ctx) -> str:
        return f"{self.name}: parameter change <= {self.setting(ctx, 'tol')}"


class TerminateOnNoImprovement(TerminationCriteriaBase):
    """Terminates when the loss at the starting point did not improve on the best loss so far
    by more than ``tol`` on ``n`` consecutive steps.

    .. math::
        \\text{a step fails when } f_{min} - f(x_t) \\le tol,\\qquad
        f_{min} \\leftarrow \\min(f_{min}, f(x_t))

    The first step only records :math:`f_{min}`. Needs the loss (a closure).

    Args:
        tol: :math:`tol \\ge 0`, or ``None`` for twice the smallest positive normal number of the
            parameters' dtype.
        n: number of consecutive failed steps.
    """

    def __init__(self, tol: float | None = None, n: int = 10):
        super().__init__(dict(tol=tol, n=n),
                         rules=dict(tol=checks.optional(checks.nonnegative), n=checks.positive_int))

    def criterion(self, ctx) -> bool:
        f = float(ctx.get_loss())
        tol = self.setting(ctx, "tol")
        if tol is None:
            dtype = ctx.params[0].dtype if ctx.params else torch.get_default_dtype()
            tol = torch.finfo(dtype).tiny * 2
        f_min = self.global_state.get("f_min")
        if f_min is None:
            self.global_state["f_min"] = f
            return False
        self.global_state["f_min"] = min(f, f_min)
        return f_min - f <= tol

    def describe(self, ctx) -> str:
        return f"{self.name}: no improvement on {self.setting(ctx, 'n')} consecutive steps"


class TerminateOnLossReached(TerminationCriteriaBase):
    """Terminates when the loss at the starting point is at most ``value``. Needs the loss (a
    closure).

    .. math:: \\text{stop when } f(x_t) \\le value

    Args:
        value: the target loss.
    """

    def __init__(self, value: float):
        super().__init__(dict(value=value), rules=dict(value=checks.number))

    def criterion(self, ctx) -> bool:
        return float(ctx.get_loss()) <= self.setting(ctx, "value")

    def describe(self, ctx) -> str:
        return f"{self.name}: loss <= {self.setting(ctx, 'value')}"
