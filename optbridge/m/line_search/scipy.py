"""Line search by ``scipy.optimize.minimize_scalar`` (Brent, golden section, bounded Brent)."""

from __future__ import annotations

import math

from ...core import checks
from .base import ACCEPTED, NO_STEP, LineSearch

_METHODS = ("brent", "golden", "bounded")


class _Budget(Exception):
    """Raised inside the objective when ``maxiter`` evaluations are spent."""


def _numbers(v, sizes) -> bool:
    return (isinstance(v, (tuple, list)) and len(v) in sizes
            and all(checks.number(x) is None for x in v))


def _bracket_rule(v):
    """None, a pair (xa, xb) or a triple (xa, xb, xc) of finite numbers."""
    return None if v is None or _numbers(v, (2, 3)) else "None or a pair/triple of finite numbers"


def _bounds_rule(v):
    """None or a pair (low, high) of finite numbers with low < high."""
    if v is None or (_numbers(v, (2,)) and v[0] < v[1]):
        return None
    return "None or a pair (low, high) of finite numbers with low < high"


def _dict_rule(v):
    """None or a dict."""
    return None if v is None or isinstance(v, dict) else "None or a dict"


class ScipyMinimizeScalar(LineSearch):
    """Line search minimising :math:`\\phi(t) = f(x_0 - t d)` with
    ``scipy.optimize.minimize_scalar`` (Brent, 1973, "Algorithms for Minimization without
    Derivatives"; scipy's ``minimize_scalar``:
    https://docs.scipy.org/doc/scipy/reference/generated/scipy.optimize.minimize_scalar.html).

    .. math::
        t^* = \\arg\\min_t \\phi(t) \\quad\\text{(approximately, loss-only evaluations)}

    The evaluated point with the lowest finite loss is accepted when it is below
    :math:`\\phi(0)`; otherwise no step (parameters restored exactly). Non-finite losses are
    passed to scipy as ``inf``. Requires scipy (``pip install optbridge[scipy]``).

    Args:
        method: ``"brent"``, ``"golden"``, ``"bounded"`` or None (scipy's choice: Brent, or
            bounded Brent when ``bounds`` is given).
        maxiter: maximum number of evaluations per step (None: scipy's own stopping rules).
        bracket: ``(xa, xb)`` or ``(xa, xb, xc)`` starting bracket for brent/golden.
        bounds: ``(low, high)``, required by ``"bounded"``.
        tol: scipy's termination tolerance.
        prev_init: use ``(0, previous accepted step)`` as the bracket when ``bracket`` is None.
        options: extra solver options passed to scipy.
    """

    def __init__(self, method: str | None = None, maxiter: int | None = None,
                 bracket=None, bounds=None, tol: float | None = None, prev_init: bool = False,
                 options: dict | None = None):
        try:
            import numpy as np
            import scipy.optimize as scopt
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError(
                "ScipyMinimizeScalar needs scipy; install the extra: pip install optbridge[scipy]"
            ) from e
        self._scopt, self._np = scopt, np
        super().__init__(
            dict(method=method, maxiter=maxiter, bracket=bracket, bounds=bounds, tol=tol,
                 prev_init=prev_init, options=options),
            rules=dict(method=checks.optional(checks.one_of(*_METHODS)),
                       maxiter=checks.optional(checks.positive_int), bracket=_bracket_rule,
                       bounds=_bounds_rule, tol=checks.optional(checks.positive),
                       prev_init=checks.boolean, options=_dict_rule),
        )
        self._check_method(method, bounds)

    def _check_method(self, method, bounds) -> None:
        if method == "bounded" and bounds is None:
            raise ValueError(
                f"{self.name}: invalid bounds=None; method='bounded' needs (low, high)")
        if method in ("brent", "golden") and bounds is not None:
            raise ValueError(f"{self.name}: invalid bounds={bounds!r}; method={method!r} takes no "
                             "bounds (use method='bounded')")

    def validate(self, ctx) -> None:
        self._check_method(*self.uniform(ctx, "method", "bounds"))

    def search(self, line, ctx):
        method, maxiter, bracket, bounds, tol, prev_init, options = self.uniform(
            ctx, "method", "maxiter", "bracket", "bounds", "tol", "prev_init", "options")
        gs = self.global_state
        if bracket is None and prev_init and gs.get("prev_t"):
            bracket = (0.0, gs["prev_t"])
        best = [0.0, line.f0]

        def objective(t):
            if maxiter is not None and line.evals >= maxiter:
                raise _Budget
            t = float(t)
            f = line.f(t)
            if f < best[1]:
                best[0], best[1] = t, f
            return f

        kw = {}
        if method is not None:
            kw["method"] = method
        if bracket is not None and method != "bounded":
            kw["bracket"] = tuple(bracket)
        if bounds is not None:
            kw["bounds"] = tuple(bounds)
        if tol is not None:
            kw["tol"] = tol
        if options:
            kw["options"] = dict(options)
        try:
            with self._np.errstate(all="ignore"):  # inf trial values make scipy's arithmetic warn
                self._scopt.minimize_scalar(objective, **kw)
        except _Budget:
            pass
        t, f = best
        if t == 0.0 or not math.isfinite(f) or not f < line.f0:
            return 0.0, NO_STEP
        gs["prev_t"] = t
        return t, ACCEPTED
