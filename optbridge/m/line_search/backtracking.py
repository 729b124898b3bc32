"""Backtracking line searches: Armijo (sufficient decrease) or plain decrease."""

from __future__ import annotations

import math

from ...core import checks
from .base import ACCEPTED, NO_STEP, NOT_DESCENT, Line, LineSearch

_CONDITIONS = ("armijo", "decrease")
_BETA = checks.interval(0, 1, low_open=True, high_open=True)
_C = checks.interval(0, 1, high_open=True)


def _backtrack(line: Line, t: float, beta: float, c: float, condition: str, maxiter: int,
               dphi0: float) -> tuple[float | None, int, float]:
    """Try ``t, beta t, beta^2 t, ...``; returns (accepted step or None, failed trials before
    it, last step tried)."""
    f0 = line.f0
    for i in range(maxiter):
        f = line.f(t)
        if condition == "armijo":
            ok = f <= f0 + c * t * dphi0
        else:
            ok = f < f0
        if ok:
            return t, i, t
        if i + 1 < maxiter:
            t = t * beta
    return None, maxiter, t


def _slope(line: Line, condition: str) -> float:
    """:math:`\\phi'(0)` for Armijo (reads the starting gradient); 0.0 for plain decrease."""
    return line.dphi0 if condition == "armijo" else 0.0


class Backtracking(LineSearch):
    """Backtracking line search (Armijo, 1966, "Minimization of functions having Lipschitz
    continuous first partial derivatives", Pacific J. Math. 16(1); Nocedal & Wright, Numerical
    Optimization, 2nd ed., Algorithm 3.1).

    Tries :math:`t = a, \\beta a, \\beta^2 a, \\dots` (at most ``maxiter`` evaluations, loss
    only) along :math:`x(t) = x_0 - t d` and accepts the first :math:`t` with

    .. math::
        \\phi(t) \\le \\phi(0) + c\\, t\\, \\phi'(0)
        \\quad\\text{("armijo")}, \\qquad \\phi(t) < \\phi(0) \\quad\\text{("decrease")},

    :math:`\\phi'(0) = -\\langle g_0, d\\rangle`. Nothing accepted: no step (parameters restored
    exactly). See :class:`~optbridge.m.line_search.LineSearch` for the protocol.

    Args:
        init: first trial step :math:`a`.
        beta: factor in (0, 1) applied to the step after each rejected trial.
        c: sufficient-decrease constant in [0, 1) of the Armijo condition.
        condition: ``"armijo"`` or ``"decrease"`` (any decrease of the loss).
        maxiter: maximum number of evaluations per step.
        adaptive: after a failed search the next one starts where this one stopped
            (:math:`a \\beta^{maxiter}`), instead of from ``init``; a success resets it.
        try_negative: search along :math:`+d` too: with "armijo" when
            :math:`\\phi'(0) > 0` (the update is an ascent direction) the search runs on
            :math:`t < 0`; with "decrease" a failed search is repeated on :math:`t < 0`.
    """

    def __init__(self, init: float = 1.0, beta: float = 0.5, c: float = 1e-4,
                 condition: str = "armijo", maxiter: int = 10, adaptive: bool = True,
                 try_negative: bool = False):
        super().__init__(
            dict(init=init, beta=beta, c=c, condition=condition, maxiter=maxiter,
                 adaptive=adaptive, try_negative=try_negative),
            rules=dict(init=checks.positive, beta=_BETA, c=_C,
                       condition=checks.one_of(*_CONDITIONS),
                       maxiter=checks.positive_int, adaptive=checks.boolean,
                       try_negative=checks.boolean),
        )

    def search(self, line, ctx):
        init, beta, c, condition, maxiter, adaptive, try_negative = self.uniform(
            ctx, "init", "beta", "c", "condition", "maxiter", "adaptive", "try_negative")
        dphi0 = _slope(line, condition)
        gs = self.global_state
        a = init * (gs.get("init_scale", 1.0) if adaptive else 1.0)
        signs = [1.0]
        if condition == "armijo" and not dphi0 < 0:
            if not (try_negative and dphi0 > 0):
                return 0.0, NOT_DESCENT
            signs = [-1.0]
        elif try_negative and condition == "decrease":
            signs = [1.0, -1.0]
        t = None
        for sign in signs:
            t, _, _ = _backtrack(line, sign * a, beta, c, condition, maxiter, dphi0)
            if t is not None:
                break
        if t is None:
            scale = gs.get("init_scale", 1.0) * beta ** maxiter
            gs["init_scale"] = scale if scale > 0 else 1.0
            return 0.0, NO_STEP
        gs["init_scale"] = 1.0
        return t, ACCEPTED


class AdaptiveBacktracking(LineSearch):
    """Backtracking line search whose first trial adapts to the previous accepted step.

    Each search backtracks as :class:`Backtracking` (:math:`t = a, \\beta a, \\dots`; Armijo
    :math:`\\phi(t) \\le \\phi(0) + c t \\phi'(0)` or plain decrease). Then the next first trial
    is set so that the step just accepted, :math:`t^*`, would be reached after ``target_iters``
    backtracks:

    .. math::
        a_{new} = t^* / \\beta^{\\,target\\_iters} \\ \\text{(some backtracking happened)},\\qquad
        a_{new} = n_+\\, t^* \\ \\text{(the first trial was accepted)},

    smoothed as :math:`a \\leftarrow s\\,a + (1-s)\\,a_{new}` with ``scale_beta`` :math:`s`.
    After a failed search (no step, parameters restored) the next search starts one backtrack
    below the last trial. Inspired by torchzero's AdaptiveBacktracking; Armijo as in
    Nocedal & Wright, Numerical Optimization, 2nd ed., Algorithm 3.1.

    Args:
        init: first trial step of the first search.
        beta: backtracking factor in (0, 1).
        c: Armijo constant in [0, 1).
        condition: ``"armijo"`` or ``"decrease"``.
        maxiter: maximum evaluations per step.
        target_iters: backtracks the next search should need.
        nplus: growth factor when the first trial was accepted.
        scale_beta: momentum in [0, 1) of the first-trial step (0: none).
    """

    def __init__(self, init: float = 1.0, beta: float = 0.5, c: float = 1e-4,
                 condition: str = "armijo", maxiter: int = 20, target_iters: int = 1,
                 nplus: float = 2.0, scale_beta: float = 0.0):
        super().__init__(
            dict(init=init, beta=beta, c=c, condition=condition, maxiter=maxiter,
                 target_iters=target_iters, nplus=nplus, scale_beta=scale_beta),
            rules=dict(init=checks.positive, beta=_BETA, c=_C,
                       condition=checks.one_of(*_CONDITIONS),
                       maxiter=checks.positive_int, target_iters=checks.nonnegative_int,
                       nplus=checks.positive, scale_beta=checks.unit_interval),
        )

    def search(self, line, ctx):
        init, beta, c, condition, maxiter, target_iters, nplus, scale_beta = self.uniform(
            ctx, "init", "beta", "c", "condition", "maxiter", "target_iters", "nplus", "scale_beta")
        dphi0 = _slope(line, condition)
        if condition == "armijo" and not dphi0 < 0:
            return 0.0, NOT_DESCENT
        gs = self.global_state
        a = gs.get("a", init)
        t, fails, last = _backtrack(line, a, beta, c, condition, maxiter, dphi0)
        if t is None:
            nxt = last * beta
            gs["a"] = nxt if nxt > 0 else init
            return 0.0, NO_STEP
        new = t * nplus if fails == 0 else t / beta ** target_iters
        new = scale_beta * a + (1 - scale_beta) * new
        gs["a"] = new if math.isfinite(new) and new > 0 else init
        return t, ACCEPTED
