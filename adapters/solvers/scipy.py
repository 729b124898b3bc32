"""``Scipy``: a ``scipy.optimize.minimize`` method as a chain module, one evaluation per step.

References: P. Virtanen et al., SciPy 1.0: fundamental algorithms for scientific computing in
Python, Nature Methods 17 (2020); https://docs.scipy.org/doc/scipy/reference/generated/scipy.optimize.minimize.html
"""

from __future__ import annotations

import numpy as np

from .base import SolverModule
from .constraints import to_scipy

#: methods that use the gradient (called with ``jac=True``) and those that don't
GRADIENT_METHODS = ("cg", "bfgs", "newton-cg", "l-bfgs-b", "tnc", "slsqp", "trust-constr")
FREE_METHODS = ("nelder-mead", "powell", "cobyla", "cobyqa")
#: the option each method reads as its limit on function evaluations
#: methods that accept ``constraints``
CONSTRAINT_METHODS = ("cobyla", "cobyqa", "slsqp", "trust-constr")
BUDGET_OPTION = {"nelder-mead": "maxfev", "powell": "maxfev", "l-bfgs-b": "maxfun",
                 "tnc": "maxfun", "cobyla": "maxiter", "cobyqa": "maxfev"}


class _Stop(Exception):
    """Raised inside the objective to stop ``minimize`` (budget exhausted, module closed)."""


def _import_scipy_optimize():
    try:
        import scipy.optimize as so
    except ImportError:
        raise ImportError("Scipy: needs scipy; pip install optbridge[scipy]") from None
    return so


class Scipy(SolverModule):
    """Minimizes the chain's closure with ``scipy.optimize.minimize(method=...)``.

    Same mechanism as :class:`~.nlopt.NLopt` (read its docstring for modes, best point, the
    greenlet hand-off, lifecycle and checkpoints): ``Modular(params, Scipy("Nelder-Mead",
    budget=200))``; each ``step(closure)`` is one objective evaluation (``mode="evaluation"``)
    or the whole solve (``mode="solve"``); parameters are left at the best point seen.
    Derivative-free methods (Nelder-Mead, Powell, COBYLA, COBYQA) evaluate ``closure(False)``;
    gradient methods (CG, BFGS, Newton-CG, L-BFGS-B, TNC, SLSQP, trust-constr) evaluate
    ``closure(True)`` and are called with ``jac=True``. The points SciPy evaluates are
    bit-identical to calling ``minimize`` directly with the same method, x0, bounds, options
    (plus the budget option below) and ``tol``.

    Args:
        method: a ``minimize`` method name (case-insensitive), not a callable.
        budget: exactly this many evaluations: passed as the method's own limit where it has one
            (``maxfev`` for Nelder-Mead/Powell/COBYQA, ``maxfun`` for L-BFGS-B/TNC, ``maxiter``
            for COBYLA) and enforced by stopping ``minimize`` from the objective when it asks
            for more (L-BFGS-B's line search may overshoot ``maxfun``).
        bounds: as for :class:`~.nlopt.NLopt`; passed as ``scipy.optimize.Bounds`` (an unbounded
            side as ``-inf``/``inf``, so one-sided bounds work).
        mode: ``"evaluation"`` or ``"solve"``.
        tol: ``minimize``'s ``tol``.
        constraints: for COBYLA, COBYQA, SLSQP and trust-constr: SciPy constraint dicts
            (``{"type": "ineq"|"eq", "fun": c, "jac": J}``, ineq meaning ``c(x) >= 0``),
            ``NonlinearConstraint`` or ``LinearConstraint`` objects (or a list of them), where
            ``c`` takes ONE flat float64 torch tensor (all the parameters concatenated) and
            returns a scalar or 1-D tensor (:mod:`.constraints`). Passed to ``minimize`` in the
            same form with numpy wrappers; SLSQP and trust-constr get the Jacobian (``J``, or
            torch autograd when missing).
        constraint_tol: a point counts as feasible for the best-point tracking when its largest
            violation is at most this; feasible points always beat infeasible ones.
        **options: ``minimize``'s ``options`` dict.
    """

    stop_exc = _Stop

    def __init__(self, method: str, *, budget=None, bounds=None, mode: str = "evaluation",
                 tol=None, constraints=None, constraint_tol: float = 1e-6, **options):
        _import_scipy_optimize()
        if not isinstance(method, str) or method.lower() not in GRADIENT_METHODS + FREE_METHODS:
            raise ValueError(
                f"Scipy: method must be one of {', '.join(FREE_METHODS + GRADIENT_METHODS)}; "
                f"got {method!r}"
            )
        super().__init__(budget, bounds, mode, constraints, constraint_tol)
        if self.constraints and method.lower() not in CONSTRAINT_METHODS:
            raise ValueError(
                f"Scipy ({method}): does not accept constraints; use one of "
                f"{', '.join(CONSTRAINT_METHODS)}"
            )
        self.method = method
        self.uses_grad = method.lower() in GRADIENT_METHODS
        if tol is not None and (isinstance(tol, bool) or not isinstance(tol, (int, float)) or tol < 0):
            raise ValueError(f"Scipy: tol must be None or a number >= 0, got {tol!r}")
        self.tol = tol
        key = BUDGET_OPTION.get(method.lower())
        if key is not None and key in options and self.budget is not None:
            raise ValueError(f"Scipy: option {key!r} is set from budget; pass one of them")
        self.options = dict(options)

    def __repr__(self) -> str:
        return f"Scipy({self.method!r}, budget={self.budget}, mode={self.mode!r})"

    def solver_options(self, budget: int | None) -> dict:
        """The ``options`` dict handed to ``minimize`` for ``budget`` remaining evaluations."""
        opts = dict(self.options)
        key = BUDGET_OPTION.get(self.method.lower())
        if key is not None and budget is not None:
            opts[key] = budget
        return opts

    def _build(self, x0: np.ndarray, limits, budget):
        so = _import_scipy_optimize()
        method, tol, uses_grad = self.method, self.tol, self.uses_grad
        options = self.solver_options(budget.limit)
        bounds = None if limits is None else so.Bounds(limits[0], limits[1])
        constraints = to_scipy(self.constraints, with_jac=uses_grad)

        def solve(request):  # the worker's greenlet; holds no reference to the module
            def fun(x):
                budget.take()
                f, g = request(x)  # kept only until the reply
                return (f, g) if uses_grad else f

            return so.minimize(fun, x0, method=method, jac=True if uses_grad else None,
                               bounds=bounds, constraints=constraints, tol=tol, options=options)

        return solve

    def _outcome(self, result, exc) -> str:
        if exc is None:
            return str(result.message)
        if isinstance(exc, _Stop):
            return "stopped"
        if isinstance(exc, ValueError):
            raise ValueError(f"Scipy ({self.method}): {exc}") from None
        raise RuntimeError(f"Scipy ({self.method}): the solver failed: {exc!r}") from exc
