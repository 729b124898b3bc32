"""Gauss–Newton for nonlinear least squares: the closure returns the residual vector."""

from __future__ import annotations

import torch

from ...core import checks
from ...core.closure import CountedClosure
from ...core.module import Module
from ._common import Layout
from ._linalg import solve
from .derivatives import DerivativeError, jacobian


def _residuals(ctx, who: str, graph: bool) -> torch.Tensor:
    """Evaluate the user's residual closure once (counted as a loss-only evaluation)."""
    ctx.require_closure("it evaluates the residuals")
    cl = ctx.closure
    with torch.set_grad_enabled(graph):
        if isinstance(cl, CountedClosure):
            r = cl.fn(False) if cl.takes_backward else cl.fn()
            cl.counts.loss += 1
        else:
            r = cl(False)
    if not isinstance(r, torch.Tensor) or not r.is_floating_point():
        raise TypeError(f"{who}: the closure must return the residuals as a real floating-point "
                        f"tensor, got {type(r).__name__}"
                        + (f" of dtype {r.dtype}" if isinstance(r, torch.Tensor) else ""))
    if graph and not r.requires_grad:
        raise DerivativeError(f"{who}: the residuals have no autograd graph (computed under "
                              "torch.no_grad() or detached?)")
    return r


class GaussNewton(Module):
    """Gauss–Newton direction for ``f(x) = Σᵢ rᵢ(x)²`` where the closure returns the residual
    vector ``r`` (any shape; flattened).

    .. math::
        J = \\partial r / \\partial x,\\qquad d = (J^T J + \\text{reg}\\, I)^{-1} J^T r

    (with more parameters than residuals, the equivalent ``d = Jᵀ(J Jᵀ + reg·I)⁻¹ r``, which for
    ``reg → 0`` is the minimum-norm step). ``[GaussNewton(), LR(1.0)]`` is the textbook
    Gauss–Newton iteration (Nocedal & Wright, *Numerical Optimization*, 2nd ed., §10.3).

    Closure protocol (as torchzero's): ``closure(backward)`` returns the residual tensor and never
    calls ``backward()`` itself (``backward`` is always False here); the module differentiates the
    residuals by autograd. GaussNewton must come first in the chain (it is a module with
    ``needs_grad = False``: the engine must not evaluate the closure as a scalar loss first), so it
    runs on every parameter with ``requires_grad``; parameters the residuals do not use get a zero
    update. After it:

    - the step's loss (what ``step()`` returns) is ``Σ rᵢ²``;
    - ``ctx.grads`` is its gradient ``2 Jᵀ r``;
    - the closure seen by later modules (line searches, trust regions) returns ``Σ rᵢ²`` as a
      scalar, and with ``backward=True`` fills ``.grad`` with its gradient;
    - with ``inner``, ``2 Jᵀ r`` goes through the inner modules and ``d = (2JᵀJ + 2 reg I)⁻¹
      inner(2 Jᵀ r)`` (the same ``d`` when ``inner`` is the identity).

    Args:
        reg: ``reg·I`` added to ``JᵀJ`` (Levenberg-style damping; keeps the solve defined when
            ``J`` is rank deficient).
        update_freq: compute the Jacobian every this many steps; in between only the residuals
            are evaluated and the stored ``J`` is reused.
        batched: compute the Jacobian rows in one vectorised backward (``is_grads_batched``;
            falls back to a loop for operators without a batching rule); False: a loop.
        inner: modules applied to the gradient before the solve.

    Evaluations: one loss-only evaluation per step (``evals.loss``), with or without the
    Jacobian; none with ``backward=True``.
    """

    needs_grad = False

    def __init__(self, reg: float = 1e-8, update_freq: int = 1, batched: bool = True, inner=None):
        super().__init__(
            dict(reg=reg, update_freq=update_freq, batched=batched),
            rules=dict(reg=checks.nonnegative, update_freq=checks.positive_int,
                       batched=checks.boolean),
        )
        self.set_child("inner", inner)

    def step(self, ctx) -> None:
        if not ctx.params:
            return
        s = {k: self.uniform_setting(ctx, k) for k in self.defaults}
        gs = self.global_state
        step = gs.get("step", 0)
        gs["step"] = step + 1
        lay = Layout(ctx.params)
        user_closure = ctx.closure
        fresh = step % s["update_freq"] == 0 or gs.get("n") != lay.n or "J" not in gs
        r = _residuals(ctx, self.name, graph=fresh)
        if fresh:
            J = jacobian(r, ctx, self.name, batched=s["batched"])
            gs["J"], gs["n"] = J, lay.n
        J = gs["J"]
        r = r.detach().reshape(-1).to(lay.dtype)
        if J.shape[0] != r.numel():
            raise ValueError(f"{self.name}: the closure returned {r.numel()} residuals, the stored "
                             f"Jacobian has {J.shape[0]} rows")
        ctx.loss = r.square().sum()
        Jr = J.T @ r
        ctx.grads = lay.unflatten(Jr * 2)
        ctx.closure = _sum_of_squares_closure(user_closure, ctx)
        reg = s["reg"]
        m, n = J.shape
        if "inner" in self.children:
            b = lay.flatten(self.run_child(ctx, "inner", ctx.grads).update)
            A = J.T @ J
            A.diagonal().add_(reg)
            x = solve(A, b / 2, fallback="lstsq")[0]
        elif m >= n:
            A = J.T @ J
            A.diagonal().add_(reg)
            x = solve(A, Jr, fallback="lstsq")[0]
        else:
            A = J @ J.T
            A.diagonal().add_(reg)
            x = J.T @ solve(A, r, fallback="lstsq")[0]
        ctx.set_update(lay.unflatten(x), owned=True)


def _sum_of_squares_closure(user_closure, ctx):
    """``closure(backward)`` returning ``Σ rᵢ²`` (a scalar), with its gradient when asked."""
    counted = user_closure if isinstance(user_closure, CountedClosure) else None
    keys = ctx.keys

    def raw():
        if counted is not None:
            return counted.fn(False) if counted.takes_backward else counted.fn()
        return user_closure(False)

    def closure(backward: bool = True):
        if backward:
            for k in keys:
                k.grad = None
            with torch.enable_grad():
                loss = raw().square().sum()
                loss.backward()
            if counted is not None:
                counted.counts.loss_and_grad += 1
        else:
            loss = raw().square().sum()
            if counted is not None:
                counted.counts.loss += 1
        return loss.detach()

    return closure
