"""Matrix-free Newton: conjugate gradient on Hessian-vector products."""

from __future__ import annotations

from ...core import checks
from ...core.module import Module
from ._common import Layout, hvp_method_rule
from ._linalg import cg
from .derivatives import HessianOperator
from .newton import rhs


class NewtonCG(Module):
    """Truncated Newton: ``(H + reg·I) d = u`` solved by conjugate gradient with Hessian-vector
    products, never forming ``H``.

    .. math::
        d \\approx (\\nabla^2 f(x) + \\text{reg}\\, I)^{-1} u, \\qquad
        \\|(\\nabla^2 f + \\text{reg}\\, I) d - u\\| \\le \\text{tol}\\,\\|u\\|

    ``u`` is the incoming update (the gradient when first) or the output of ``inner``.
    Nocedal & Wright, *Numerical Optimization*, 2nd ed., Algorithm 7.1 (line-search Newton–CG).

    Negative curvature: with ``npc_terminate`` (default) CG stops at the first direction ``p``
    with ``pᵀ(H + reg·I)p ≤ 0`` and returns the iterate reached so far, or ``u`` itself (a
    gradient step) when that happens on the first iteration, so the result is a descent
    direction. ``npc_terminate=False`` keeps iterating (plain CG, which may return an ascent
    direction on an indefinite Hessian).

    Args:
        maxiter: CG iterations at most (default: the number of parameters ``n``).
        tol: relative residual tolerance.
        reg: ``reg·I`` added to the Hessian.
        hvp_method: ``"autograd"``/``"batched_autograd"`` (double backward through a graph of
            the loss), ``"fd_forward"`` (``(g(x + εv) - g(x)) / ε``, ``ε = h/‖v‖``) or
            ``"fd_central"``.
        h: finite-difference step.
        warm_start: start CG from the previous step's solution.
        npc_terminate: stop CG on negative curvature (see above).
        inner: modules whose output is preconditioned.

    Evaluations per step: the engine's ``closure(True)``, plus one ``closure(False)`` with a
    graph (autograd methods), or plus ``k`` (``fd_forward``) / ``2k`` (``fd_central``)
    ``closure(True)`` where ``k`` is the number of products: the CG iterations
    (``global_state["iterations"]``), plus one for the initial residual with ``warm_start``.
    """

    def __init__(self, maxiter: int | None = None, tol: float = 1e-8, reg: float = 1e-8,
                 hvp_method: str = "autograd", h: float = 1e-3, warm_start: bool = False,
                 npc_terminate: bool = True, inner=None):
        super().__init__(
            dict(maxiter=maxiter, tol=tol, reg=reg, hvp_method=hvp_method, h=h,
                 warm_start=warm_start, npc_terminate=npc_terminate),
            rules=dict(maxiter=checks.optional(checks.positive_int), tol=checks.nonnegative,
                       reg=checks.nonnegative, hvp_method=hvp_method_rule, h=checks.positive,
                       warm_start=checks.boolean, npc_terminate=checks.boolean),
        )
        self.set_child("inner", inner)

    def step(self, ctx) -> None:
        if not ctx.params:
            return
        s = {k: self.uniform_setting(ctx, k) for k in self.defaults}
        lay = Layout(ctx.params)
        b = lay.flatten(rhs(self, ctx))
        states = self.param_states(ctx)
        x0 = None
        if s["warm_start"] and all("x_prev" in st for st in states):
            x0 = lay.flatten([st["x_prev"] for st in states])
        with HessianOperator(ctx, self.name, s["hvp_method"], s["h"]) as op:
            x, iters = cg(op.mv, b, x0=x0, tol=s["tol"], maxiter=s["maxiter"], reg=s["reg"],
                          npc_terminate=s["npc_terminate"])
            self.global_state["products"] = op.products
        self.global_state["iterations"] = iters
        out = lay.unflatten(x)
        if s["warm_start"]:
            for st, t in zip(states, out):
                st["x_prev"] = t
            ctx.update = out
        else:
            ctx.set_update(out, owned=True)
