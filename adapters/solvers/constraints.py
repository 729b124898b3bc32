"""Constraints for solver modules, in SciPy's vocabulary, on the flat parameter vector.

Accepted (a single one or a list/tuple):

- a dict ``{"type": "ineq" | "eq", "fun": c, "jac": J (optional), "args": (...) (optional)}``:
  ``"ineq"`` means ``c(x) >= 0``, ``"eq"`` means ``c(x) == 0`` (SciPy's convention);
- ``scipy.optimize.NonlinearConstraint(c, lb, ub, jac=...)``: ``lb <= c(x) <= ub`` (an element
  with ``lb == ub`` is an equality); a string ``jac`` (``"2-point"``, SciPy's default) is
  replaced by the autograd Jacobian;
- ``scipy.optimize.LinearConstraint(A, lb, ub)``: ``lb <= A @ x <= ub``.

``x`` is ONE flat float64 torch tensor (all the chain's parameters concatenated, the point the
solver works on); ``c`` returns a scalar or a 1-D tensor; ``J`` returns the ``(m, n)`` Jacobian
(``(n,)`` for a scalar ``c``). A missing Jacobian is computed with torch autograd
(``torch.autograd.functional.jacobian``), only for methods that use derivatives.

Everything is reduced to ``lb <= g(x) <= ub`` over all constraints stacked
(:class:`ConstraintSet`), from which each library's form is derived: NLopt's ``h(x) <= 0`` /
``h(x) == 0`` (:meth:`ConstraintSet.nlopt_parts`), Nevergrad's violation vector (``> 0`` means
violated, :meth:`ConstraintSet.violations`) and SciPy's own objects (:func:`to_scipy`).
"""

from __future__ import annotations

import numpy as np
import torch

KINDS = ("ineq", "eq")


def _is_scipy(obj, name: str) -> bool:
    return any(c.__name__ == name and c.__module__.startswith("scipy.optimize") for c in type(obj).__mro__)


def check_constraints(constraints, where: str) -> tuple:
    """Validate (constructor time): returns a tuple of dicts / SciPy constraint objects."""
    if constraints is None:
        return ()
    if isinstance(constraints, dict) or _is_scipy(constraints, "NonlinearConstraint") \
            or _is_scipy(constraints, "LinearConstraint"):
        constraints = (constraints,)
    if not isinstance(constraints, (list, tuple)):
        raise ValueError(
            f"{where}: constraints must be a dict, a scipy NonlinearConstraint/LinearConstraint "
            f"or a list of them, got {type(constraints).__name__}"
        )
    for i, c in enumerate(constraints):
        if isinstance(c, dict):
            if c.get("type") not in KINDS:
                raise ValueError(f"{where}: constraints[{i}]['type'] must be 'ineq' or 'eq', got {c.get('type')!r}")
            if not callable(c.get("fun")):
                raise ValueError(f"{where}: constraints[{i}]['fun'] must be callable")
            if c.get("jac") is not None and not callable(c["jac"]):
                raise ValueError(f"{where}: constraints[{i}]['jac'] must be callable or absent")
            extra = set(c) - {"type", "fun", "jac", "args"}
            if extra:
                raise ValueError(f"{where}: constraints[{i}] has unknown key(s) {sorted(extra)}")
        elif _is_scipy(c, "NonlinearConstraint"):
            if not callable(c.fun):
                raise ValueError(f"{where}: constraints[{i}].fun must be callable")
        elif not _is_scipy(c, "LinearConstraint"):
            raise ValueError(
                f"{where}: constraints[{i}] must be a dict or a scipy NonlinearConstraint/"
                f"LinearConstraint, got {type(c).__name__}"
            )
    return tuple(constraints)


def _values(t) -> np.ndarray:
    if not isinstance(t, torch.Tensor):
        t = torch.as_tensor(t, dtype=torch.float64)
    return t.detach().reshape(-1).to("cpu", torch.float64).numpy()


class _Part:
    """One constraint as ``lb <= g(x) <= ub`` with its torch function and Jacobian."""

    def __init__(self, c):
        if isinstance(c, dict):
            args = tuple(c.get("args", ()))
            fun, jac = c["fun"], c.get("jac")
            self.fun = (lambda x: fun(x, *args)) if args else fun
            self.jac = None if jac is None else ((lambda x: jac(x, *args)) if args else jac)
            self.lb, self.ub = (0.0, np.inf) if c["type"] == "ineq" else (0.0, 0.0)
        elif _is_scipy(c, "NonlinearConstraint"):
            self.fun = c.fun
            self.jac = c.jac if callable(c.jac) else None
            self.lb, self.ub = c.lb, c.ub
        else:  # LinearConstraint: numbers, so A is used as given
            A = np.atleast_2d(np.asarray(c.A, dtype=np.float64))
            At = torch.from_numpy(A)
            self.fun = lambda x: At @ x
            self.jac = lambda x: At
            self.lb, self.ub = c.lb, c.ub

    def value(self, x: torch.Tensor) -> np.ndarray:
        return _values(self.fun(x))

    def jacobian(self, x: torch.Tensor) -> np.ndarray:
        """``(m, n)`` Jacobian: the given one, else torch autograd."""
        if self.jac is not None:
            J = self.jac(x)
        else:
            with torch.enable_grad():
                J = torch.autograd.functional.jacobian(self.fun, x.detach())
        return _values(J).reshape(-1, x.numel())


class ConstraintSet:
    """All constraints stacked as ``lb <= g(x) <= ub``; sizes known after :meth:`bind`."""

    def __init__(self, constraints):
        self.items = tuple(constraints)
        self.parts = [_Part(c) for c in self.items]
        self.sizes = None
        self.lb = self.ub = None

    def __bool__(self) -> bool:
        return bool(self.parts)

    def bind(self, x0: np.ndarray, where: str) -> None:
        """Evaluate every constraint once at ``x0`` to learn its size; check ``lb``/``ub``."""
        x = torch.from_numpy(x0.copy())
        sizes, lbs, ubs = [], [], []
        for i, part in enumerate(self.parts):
            v = part.value(x)
            try:
                lbs.append(np.broadcast_to(np.asarray(part.lb, dtype=np.float64), v.shape))
                ubs.append(np.broadcast_to(np.asarray(part.ub, dtype=np.float64), v.shape))
            except ValueError:
                raise ValueError(f"{where}: constraints[{i}] returns {v.size} values but its "
                                 "lb/ub do not match") from None
            if (lbs[-1] > ubs[-1]).any():
                raise ValueError(f"{where}: constraints[{i}] has lb > ub")
            sizes.append(v.size)
        self.sizes = sizes
        self.lb = np.concatenate(lbs) if lbs else np.zeros(0)
        self.ub = np.concatenate(ubs) if ubs else np.zeros(0)

    def values(self, x: np.ndarray) -> np.ndarray:
        t = _own_tensor(x)
        return np.concatenate([p.value(t) for p in self.parts]) if self.parts else np.zeros(0)

    def jacobian(self, x: np.ndarray) -> np.ndarray:
        t = _own_tensor(x)
        return np.concatenate([p.jacobian(t) for p in self.parts])

    # ------------------------------------------------------------------------ derived forms
    def violations(self, x: np.ndarray) -> np.ndarray:
        """Per bound ``> 0`` where violated: ``lb - g`` and ``g - ub`` on finite sides."""
        v = self.values(x)
        lo, hi = np.isfinite(self.lb), np.isfinite(self.ub)
        return np.concatenate([(self.lb - v)[lo], (v - self.ub)[hi]])

    def max_violation(self, x: np.ndarray) -> float:
        if not self.parts:
            return 0.0
        viol = self.violations(x)
        return float(max(viol.max(initial=0.0), 0.0))

    def nlopt_parts(self):
        """``(ineq, eq)``: for each, the row selection as ``(rows, sign, offset)`` so that
        ``h = sign * g[rows] - offset`` with ``h <= 0`` (ineq) or ``h == 0`` (eq); None if empty."""
        eq = self.lb == self.ub
        up = np.isfinite(self.ub) & ~eq  # g - ub <= 0
        lo = np.isfinite(self.lb) & ~eq  # lb - g <= 0
        idx = np.arange(self.lb.size)
        rows = np.concatenate([idx[up], idx[lo]])
        sign = np.concatenate([np.ones(up.sum()), -np.ones(lo.sum())])
        offset = np.concatenate([self.ub[up], -self.lb[lo]])
        ineq = (rows, sign, offset) if rows.size else None
        eqs = (idx[eq], np.ones(eq.sum()), self.lb[eq]) if eq.any() else None
        return ineq, eqs


def to_scipy(items, with_jac: bool):
    """The constraints as SciPy objects whose functions take numpy arrays (calling the torch
    functions); Jacobians (given, or autograd) only ``with_jac``."""
    import scipy.optimize as so

    out = []
    for c in items:
        part = _Part(c)
        fun = _np_fun(part)
        jac = _np_jac(part) if with_jac else None
        if isinstance(c, dict):
            d = {"type": c["type"], "fun": fun}
            if jac is not None:
                d["jac"] = jac
            out.append(d)
        elif _is_scipy(c, "NonlinearConstraint"):
            kw = {} if jac is None else {"jac": jac}
            if not with_jac and not callable(c.jac):
                kw["jac"] = c.jac
            out.append(so.NonlinearConstraint(fun, c.lb, c.ub, keep_feasible=c.keep_feasible, **kw))
        else:
            out.append(c)
    return out


def _np_fun(part):
    def fun(x):
        return _values(part.fun(torch.from_numpy(np.array(x, dtype=np.float64))))
    return fun


def _np_jac(part):
    def jac(x):
        return part.jacobian(torch.from_numpy(np.array(x, dtype=np.float64)))
    return jac


def _own_tensor(x: np.ndarray) -> torch.Tensor:
    """A float64 tensor with its own copy of ``x`` (the solver's buffer may be read-only, and
    the user's constraint must not be able to change the solver's point)."""
    return torch.from_numpy(np.array(x, dtype=np.float64, copy=True))
