"""Strong-Wolfe line search with bracketing and zoom (cubic interpolation by default)."""

from __future__ import annotations

import math

from ...core import checks
from .base import ACCEPTED, NO_STEP, NOT_DESCENT, Line, LineSearch

_A_INIT = ("fixed", "first-order", "quadratic", "quadratic-clip", "previous")
_INTERP = ("cubic", "quadratic", "bisection")


def _finite(*values) -> bool:
    return all(math.isfinite(v) for v in values)


def cubic_interpolate(x1, f1, g1, x2, f2, g2, bounds=None) -> float:
    """Minimiser of the cubic through :math:`(x_i, f_i, f'_i)`, clipped to ``bounds`` (default
    the interval between the points); the midpoint when the cubic has no minimiser.

    Same arithmetic as torch.optim.lbfgs's ``_cubic_interpolate`` (minFunc's ``polyinterp``);
    non-finite inputs give the midpoint instead of NaN."""
    lo, hi = bounds if bounds is not None else ((x1, x2) if x1 <= x2 else (x2, x1))
    if not _finite(f1, g1, f2, g2):
        return (lo + hi) / 2.0
    d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
    d2_square = d1**2 - g1 * g2
    if d2_square >= 0:
        d2 = math.sqrt(d2_square)
        if x1 <= x2:
            pos = x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2))
        else:
            pos = x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2))
        if not math.isfinite(pos):
            return (lo + hi) / 2.0
        return min(max(pos, lo), hi)
    return (lo + hi) / 2.0


def quadratic_interpolate(x1, f1, g1, x2, f2, g2, bounds=None) -> float:
    """Minimiser of the quadratic through :math:`f_1, f'_1` at :math:`x_1` and :math:`f_2` at
    :math:`x_2`, clipped to ``bounds``; the midpoint when it has no minimiser."""
    lo, hi = bounds if bounds is not None else ((x1, x2) if x1 <= x2 else (x2, x1))
    if not _finite(f1, g1, f2):
        return (lo + hi) / 2.0
    h = x2 - x1
    curv = f2 - f1 - g1 * h
    if curv <= 0:
        return (lo + hi) / 2.0
    pos = x1 - g1 * h * h / (2 * curv)
    if not math.isfinite(pos):
        return (lo + hi) / 2.0
    return min(max(pos, lo), hi)


def bisect(x1, f1, g1, x2, f2, g2, bounds=None) -> float:
    """Midpoint of ``bounds`` (in extrapolation: the far bound) or of the two points."""
    if bounds is not None:
        return bounds[1]
    return (x1 + x2) / 2.0


_INTERPOLATORS = {
    "cubic": cubic_interpolate, "quadratic": quadratic_interpolate, "bisection": bisect,
}


class StrongWolfe(LineSearch):
    """Line search for the strong Wolfe conditions (Nocedal & Wright, Numerical Optimization,
    2nd ed., Algorithms 3.5 and 3.6; bracketing/zoom as in minFunc and torch.optim.LBFGS).

    On :math:`\\phi(t) = f(x_0 - t d)`, :math:`\\phi'(t) = -\\langle\\nabla f(x(t)), d\\rangle`,
    it looks for :math:`t` with

    .. math::
        \\phi(t) \\le \\phi(0) + c_1 t \\phi'(0), \\qquad |\\phi'(t)| \\le c_2 |\\phi'(0)| .

    Bracketing phase: from the initial step, extrapolate by interpolation within
    :math:`[t + 0.01 (t - t_{prev}),\\ 10 t]` until a bracket or a Wolfe point is found. Zoom
    phase: interpolate inside the bracket (moved 10 % away from its ends when progress
    stalls) until a Wolfe point, or until the bracket is shorter than ``tol_change`` (measured
    as :math:`|t_1 - t_2|\\,\\lVert d\\rVert_\\infty`). Every trial evaluates ``closure(True)``;
    :math:`\\phi(0), \\phi'(0)` come from the step's start. When :math:`\\phi'(0) > -`
    ``tol_change`` no step is taken (not a descent direction). NaN/inf trials count as failed
    (treated as too long a step; the bracket is then bisected).

    Reproducing ``torch.optim.LBFGS(line_search_fn="strong_wolfe", max_iter=1, max_eval=E,
    lr=lr, history_size=H)``: ``[LBFGS(history_size=H, sy_tol=1e-10, tol_grad=1e-7),
    StrongWolfe(maxiter=E, init_value=lr, fallback=True, adaptive=False, maxzoom=None)]``
    (torch's default ``max_eval`` with ``max_iter=1`` is 1); same iterates up to rounding and
    the same number of closure evaluations per step. The defaults here are torchzero's.

    Args:
        c1: sufficient-decrease constant, 0 < c1 < c2.
        c2: curvature constant, c1 < c2 < 1 (0.9 for quasi-Newton, 0.1 for conjugate gradient).
        a_init: initial step: ``"fixed"`` (``init_value``), ``"first-order"``
            (:math:`t_{k-1}\\phi'_{k-1}(0)/\\phi'_k(0)`), ``"quadratic"``
            (:math:`2(f_k - f_{k-1})/\\phi'_k(0)`), ``"quadratic-clip"`` (that, clipped to
            :math:`\\min(1, 1.01\\,t)`), ``"previous"`` (the last accepted step). Each falls
            back to ``init_value`` without history or on a non-positive value.
        a_max: upper bound on every trial step; a step at the bound that satisfies sufficient
            decrease is accepted when the search would extrapolate past it.
        init_value: the fixed initial step (and fallback of the other strategies).
        maxiter: maximum number of evaluations per step (torch's ``max_eval``).
        maxzoom: maximum number of zoom evaluations (None: only ``maxiter`` limits them).
        tol_change: bracket-length and descent tolerance (torch's ``tolerance_change``).
        interpolation: ``"cubic"``, ``"quadratic"`` or ``"bisection"``.
        adaptive: after a search that found no point, the next initial step is halved (again
            after each failure); a success resets the factor to 1.
        fallback: when no point satisfies the strong Wolfe conditions, take the lowest point
            of the final bracket (torch.optim.LBFGS's behaviour) instead of no step.
    """

    def __init__(self, c1: float = 1e-4, c2: float = 0.9, a_init: str = "fixed",
                 a_max: float = 1e12, init_value: float = 1.0, maxiter: int = 25,
                 maxzoom: int | None = 10, tol_change: float = 1e-9, interpolation: str = "cubic",
                 adaptive: bool = True, fallback: bool = False):
        unit = checks.interval(0, 1, low_open=True, high_open=True)
        super().__init__(
            dict(c1=c1, c2=c2, a_init=a_init, a_max=a_max, init_value=init_value, maxiter=maxiter,
                 maxzoom=maxzoom, tol_change=tol_change, interpolation=interpolation,
                 adaptive=adaptive, fallback=fallback),
            rules=dict(c1=unit, c2=unit, a_init=checks.one_of(*_A_INIT), a_max=checks.positive,
                       init_value=checks.positive, maxiter=checks.positive_int,
                       maxzoom=checks.optional(checks.positive_int),
                       tol_change=checks.nonnegative, interpolation=checks.one_of(*_INTERP),
                       adaptive=checks.boolean, fallback=checks.boolean),
        )
        self._check_c(c1, c2)

    def _check_c(self, c1, c2) -> None:
        if not c1 < c2:
            raise ValueError(f"{self.name}: invalid c2={c2!r}; expected c1 < c2 < 1 (c1={c1!r})")

    def validate(self, ctx) -> None:
        self._check_c(*self.uniform(ctx, "c1", "c2"))

    def _initial(self, a_init, init_value, f0, dphi0) -> float:
        gs = self.global_state
        t = None
        if a_init == "previous":
            t = gs.get("prev_t")
        elif a_init == "first-order":
            if "prev_t" in gs and "prev_dphi0" in gs:
                t = gs["prev_t"] * gs["prev_dphi0"] / dphi0
        elif a_init in ("quadratic", "quadratic-clip") and "prev_f0" in gs:
            t = 2 * (f0 - gs["prev_f0"]) / dphi0
            if a_init == "quadratic-clip" and t is not None:
                t = min(1.0, 1.01 * t)
        if t is None or not math.isfinite(t) or t <= 0:
            t = init_value
        return t

    def search(self, line: Line, ctx):
        (c1, c2, a_init, a_max, init_value, maxiter, maxzoom, tol, interpolation, adaptive,
         fallback) = self.uniform(ctx, "c1", "c2", "a_init", "a_max", "init_value", "maxiter",
                                  "maxzoom", "tol_change", "interpolation", "adaptive", "fallback")
        interp = _INTERPOLATORS[interpolation]
        f, gtd = line.f0, line.dphi0
        gs = self.global_state
        if not gtd <= -tol:  # also catches NaN
            return 0.0, NOT_DESCENT
        t = self._initial(a_init, init_value, f, gtd)
        if adaptive:
            t = t * gs.get("fail_scale", 1.0)
        t = min(t, a_max)
        gs["prev_f0"], gs["prev_dphi0"] = f, gtd

        max_ls = maxiter - 1
        d_norm = line.d_inf_norm
        f_new, gtd_new = line.f_d(t)
        t_prev, f_prev, gtd_prev = 0.0, f, gtd
        done = False
        ls_iter = 0
        bracket = bracket_f = bracket_gtd = None
        while ls_iter < max_ls:
            if f_new > f + c1 * t * gtd or (ls_iter > 1 and f_new >= f_prev):
                bracket, bracket_f, bracket_gtd = [t_prev, t], [f_prev, f_new], [gtd_prev, gtd_new]
                break
            if abs(gtd_new) <= -c2 * gtd:
                bracket, bracket_f, bracket_gtd = [t], [f_new], [gtd_new]
                done = True
                break
            if gtd_new >= 0:
                bracket, bracket_f, bracket_gtd = [t_prev, t], [f_prev, f_new], [gtd_prev, gtd_new]
                break
            min_step = t + 0.01 * (t - t_prev)
            max_step = min(t * 10, a_max)
            if max_step <= t:  # at a_max: keep this sufficient-decrease step
                bracket, bracket_f, bracket_gtd = [t], [f_new], [gtd_new]
                done = True
                break
            tmp = t
            t = interp(t_prev, f_prev, gtd_prev, t, f_new, gtd_new, bounds=(min_step, max_step))
            t_prev, f_prev, gtd_prev = tmp, f_new, gtd_new
            f_new, gtd_new = line.f_d(t)
            ls_iter += 1

        if bracket is None:  # evaluation budget (or a_max) reached while extrapolating
            bracket, bracket_f, bracket_gtd = [0.0, t], [f, f_new], [gtd, gtd_new]

        insuf_progress = False
        low, high = (0, 1) if bracket_f[0] <= bracket_f[-1] else (1, 0)
        zooms = 0
        while not done and ls_iter < max_ls and (maxzoom is None or zooms < maxzoom):
            if abs(bracket[1] - bracket[0]) * d_norm < tol:
                break
            t = interp(bracket[0], bracket_f[0], bracket_gtd[0], bracket[1], bracket_f[1],
                       bracket_gtd[1])
            b_max, b_min = max(bracket), min(bracket)
            eps = 0.1 * (b_max - b_min)
            if min(b_max - t, t - b_min) < eps:
                if insuf_progress or t >= b_max or t <= b_min:
                    t = b_max - eps if abs(t - b_max) < abs(t - b_min) else b_min + eps
                    insuf_progress = False
                else:
                    insuf_progress = True
            else:
                insuf_progress = False
            f_new, gtd_new = line.f_d(t)
            ls_iter += 1
            zooms += 1
            if f_new > f + c1 * t * gtd or f_new >= bracket_f[low]:
                bracket[high], bracket_f[high], bracket_gtd[high] = t, f_new, gtd_new
                low, high = (0, 1) if bracket_f[0] <= bracket_f[1] else (1, 0)
            else:
                if abs(gtd_new) <= -c2 * gtd:
                    done = True
                elif gtd_new * (bracket[high] - bracket[low]) >= 0:
                    bracket[high], bracket_f[high], bracket_gtd[high] = (
                        bracket[low], bracket_f[low], bracket_gtd[low])
                bracket[low], bracket_f[low], bracket_gtd[low] = t, f_new, gtd_new

        t_best, f_best = bracket[low], bracket_f[low]
        ok = math.isfinite(f_best) and t_best != 0.0 and (done or fallback)
        if not ok:
            if adaptive:
                gs["fail_scale"] = gs.get("fail_scale", 1.0) * 0.5
            return 0.0, NO_STEP
        gs["fail_scale"] = 1.0
        gs["prev_t"] = t_best
        return t_best, ACCEPTED
