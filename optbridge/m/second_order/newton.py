"""Newton's method with the exact Hessian (autograd or gradient finite differences)."""

from __future__ import annotations

import torch

from ...core import checks
from ...core.module import Module
from ._common import Layout, optional_callable
from ._linalg import FALLBACKS, apply_factor, solve
from .derivatives import HessianOperator

HESSIAN_METHODS = ("batched_autograd", "autograd", "gfd_forward", "gfd_central")


def rhs(module: Module, ctx) -> list[torch.Tensor]:
    """The vector a preconditioner is applied to: the update, or the ``inner`` child's output."""
    if "inner" in module.children:
        return module.run_child(ctx, "inner").update
    return ctx.update


def apply_H_tfm(H_tfm, H: torch.Tensor, b: torch.Tensor, solve_kw: dict) -> torch.Tensor:
    """``H_tfm(H, b)`` returns the update itself (a tensor) or ``(matrix, is_inverted)``."""
    res = H_tfm(H, b)
    if isinstance(res, torch.Tensor):
        return res.reshape(-1).to(b.dtype)
    M, inverted = res
    if inverted:
        return M @ b
    return solve(M, b, **solve_kw)[0]


class Newton(Module):
    """Newton's direction ``(H + damping·I)⁻¹ u`` with the exact Hessian of the closure's loss.

    .. math::
        d = (\\nabla^2 f(x) + \\lambda I)^{-1} u

    where ``u`` is the incoming update (the gradient when Newton is first) or the output of
    ``inner``. ``[Newton(), LR(1.0)]`` is the classical Newton step (Nocedal & Wright, *Numerical
    Optimization*, 2nd ed., ch. 3); it solves a convex quadratic in one step.

    The Hessian is the Jacobian of the gradient over all parameters flattened (real coordinates
    for complex parameters). How the system is solved:

    - ``eigval_fn`` given: eigendecomposition ``H = Q diag(L) Qᵀ``, ``d = Q diag(1/eigval_fn(L))
      Qᵀ u`` (eigenvalues mapped to 0 are dropped), e.g. ``lambda L: L.abs().clamp(min=1e-4)``.
    - ``use_lstsq=True``: least squares (minimum-norm solution for a singular ``H``).
    - otherwise Cholesky; when ``H + λI`` is not positive definite (indefinite, or singular:
      Cholesky fails or a pivot is within ``n·eps`` of the largest) the ``fallback``:
      ``"abs"`` (default) eigendecomposition with ``|L|`` — the saddle-free Newton direction of
      Dauphin et al., 2014, https://arxiv.org/abs/1406.2572 — which is a descent direction,
      with eigenvalues within rounding of zero dropped (pseudo-inverse, no step along flat
      directions); ``"lu"`` torchzero's order (LU, the exact solve, which may head for a saddle
      point or maximum; least squares if singular); ``"lstsq"`` least squares.

    A solve that still comes out non-finite is redone with the ``"abs"`` pseudo-inverse; a
    Hessian with non-finite entries leaves the update unchanged (a gradient step). So no NaN
    reaches the parameters unless the gradient itself has one.

    Args:
        damping: ``λ`` added to the Hessian's diagonal (Tikhonov regularisation).
        eigval_fn: function applied to the eigenvalues (see above); None for Cholesky.
        update_freq: recompute the Hessian every this many steps; in between the stored
            factorization is reused with the new update.
        precompute_inverse: store the explicit inverse instead of the factorization (cheaper
            reuse); None: when ``update_freq >= 10``.
        use_lstsq: always solve by least squares.
        hessian_method: ``"batched_autograd"`` (one vectorised double backward,
            ``is_grads_batched``; falls back to the loop for operators without a batching rule),
            ``"autograd"`` (one double backward per row), ``"gfd_forward"``/``"gfd_central"``
            (columns ``(g(x + h eᵢ) - g(x)) / h`` or the central difference).
        h: finite-difference step for the ``gfd_*`` methods.
        H_tfm: optional ``H_tfm(H, u)`` (flat ``H + λI`` and flat ``u``) returning either the
            update (a flat tensor) or ``(matrix, is_inverted)``: the matrix is then used as
            ``H⁻¹`` or solved with as above.
        fallback: ``"abs"``, ``"lu"`` or ``"lstsq"``, see above.
        inner: modules whose output Newton preconditions (default: the incoming update).

    Evaluations per step where the Hessian is computed: the engine's ``closure(True)`` plus one
    ``closure(False)`` with a graph (autograd methods), or plus ``n`` (``gfd_forward``) / ``2n``
    (``gfd_central``) ``closure(True)`` for ``n`` parameters in all. Other steps: the engine's
    ``closure(True)`` only. A closure is required; its loss must be twice differentiable
    (:class:`~optbridge.m.second_order.derivatives.DerivativeError` otherwise).
    """

    def __init__(self, damping: float = 0.0, eigval_fn=None, update_freq: int = 1,
                 precompute_inverse: bool | None = None, use_lstsq: bool = False,
                 hessian_method: str = "batched_autograd", h: float = 1e-3, H_tfm=None,
                 fallback: str = "abs", inner=None):
        super().__init__(
            dict(damping=damping, eigval_fn=eigval_fn, update_freq=update_freq,
                 precompute_inverse=precompute_inverse, use_lstsq=use_lstsq,
                 hessian_method=hessian_method, h=h, H_tfm=H_tfm, fallback=fallback),
            rules=dict(damping=checks.nonnegative, eigval_fn=optional_callable,
                       update_freq=checks.positive_int,
                       precompute_inverse=checks.optional(checks.boolean),
                       use_lstsq=checks.boolean, hessian_method=checks.one_of(*HESSIAN_METHODS),
                       h=checks.positive, H_tfm=optional_callable,
                       fallback=checks.one_of(*FALLBACKS)),
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
        precompute = s["precompute_inverse"]
        if precompute is None:
            precompute = s["update_freq"] >= 10
        solve_kw = dict(eigval_fn=s["eigval_fn"], use_lstsq=s["use_lstsq"], fallback=s["fallback"])
        fresh = step % s["update_freq"] == 0 or gs.get("n") != lay.n or (
            "H" not in gs and "factor" not in gs)
        H = None
        if fresh:
            method = s["hessian_method"].replace("gfd_", "fd_")
            with HessianOperator(ctx, self.name, method, s["h"]) as op:
                H = op.hessian()
            if s["damping"]:
                H.diagonal().add_(s["damping"])
            gs["n"] = lay.n
            gs.pop("factor", None)
            gs.pop("H", None)
            if s["H_tfm"] is not None:
                gs["H"] = H
        b = lay.flatten(rhs(self, ctx))
        if s["H_tfm"] is not None:
            x = apply_H_tfm(s["H_tfm"], gs["H"], b, solve_kw)
        elif H is not None:
            x, f = solve(H, b, precompute_inverse=precompute, **solve_kw)
            gs["factor"] = f
        else:
            x = apply_factor(gs["factor"], b)
        ctx.set_update(lay.unflatten(x), owned=True)
