"""Newton with a randomized Nyström approximation of the Hessian (Frangella, Tropp & Udell)."""

from __future__ import annotations

import torch

from ...core import checks
from ...core.module import Module
from ._common import Layout, SeededGenerator, hvp_method_rule
from ._linalg import cg, nystrom
from .derivatives import HessianOperator
from .newton import rhs


def _sketch(module, ctx, lay: Layout, rank: int, method: str, h: float, seed):
    """``(U, lam)``: rank-``rank`` Nyström approximation of the Hessian, from ``rank`` products
    with the rows of an orthonormalised Gaussian test matrix drawn from the module's generator."""
    rng = module._rng
    gen = rng.get(seed, lay.device)
    with HessianOperator(ctx, module.name, method, h) as op:
        U, lam = nystrom(op.mm, lay.n, min(rank, lay.n), gen, lay.dtype, lay.device)
    rng.save()
    return U, lam


class NystromSketchAndSolve(Module):
    """Newton's direction with the Hessian replaced by its randomized Nyström approximation.

    .. math::
        \\nabla^2 f \\approx \\hat H = U \\operatorname{diag}(\\hat\\lambda) U^T,\\qquad
        d = (\\hat H + \\text{reg}\\, I)^{-1} u
          = U \\frac{U^T u}{\\hat\\lambda + \\text{reg}} + \\frac{u - U U^T u}{\\text{reg}}

    (``reg=None``: ``d = U diag(1/λ̂) Uᵀ u`` over the nonzero ``λ̂``.) ``U, λ̂`` come from
    ``rank`` Hessian-vector products with a random orthonormal test matrix (Frangella, Tropp &
    Udell, "Randomized Nyström preconditioning", SIAM J. Matrix Anal. Appl. 2023,
    https://arxiv.org/abs/2110.02820, Algorithm 2.1; sketch-and-solve as in SketchySGD, Frangella
    et al. 2024). ``λ̂ ≥ 0``: for an indefinite Hessian only the positive part of the sketched core
    is used. Small ``reg`` (below about 1e-4) makes the solve unstable.

    Args:
        rank: sketch size (Hessian-vector products per update; capped at ``n``).
        reg: ``reg·I`` added to ``Ĥ``, or None (see above).
        eigv_tol: drop eigenvalues below ``eigv_tol·max(λ̂)``.
        truncate: keep only the largest ``truncate`` eigenvalues.
        damping: added to the kept eigenvalues.
        rdamping: ``rdamping·max(λ̂)`` added to the kept eigenvalues.
        update_freq: recompute the sketch every this many steps (reused in between).
        hvp_method: ``"batched_autograd"`` (one vectorised double backward for all ``rank``
            products), ``"autograd"`` (a loop), ``"fd_forward"``, ``"fd_central"``.
        h: finite-difference step.
        seed: seed of the test matrices (None: drawn once from torch's global RNG); the
            generator state is checkpointed in ``global_state``.
        inner: modules whose output is preconditioned.

    Evaluations per sketch step: the engine's ``closure(True)`` plus one ``closure(False)``
    (autograd methods) or ``rank`` / ``2·rank`` ``closure(True)`` (finite differences); other
    steps only the engine's evaluation.
    """

    def __init__(self, rank: int = 100, reg: float | None = 1e-2, eigv_tol: float = 0.0,
                 truncate: int | None = None, damping: float = 0.0, rdamping: float = 0.0,
                 update_freq: int = 1, hvp_method: str = "batched_autograd", h: float = 1e-3,
                 seed: int | None = None, inner=None):
        super().__init__(
            dict(rank=rank, reg=reg, eigv_tol=eigv_tol, truncate=truncate, damping=damping,
                 rdamping=rdamping, update_freq=update_freq, hvp_method=hvp_method, h=h,
                 seed=seed),
            rules=dict(rank=checks.positive_int, reg=checks.optional(checks.positive),
                       eigv_tol=checks.nonnegative, truncate=checks.optional(checks.positive_int),
                       damping=checks.nonnegative, rdamping=checks.nonnegative,
                       update_freq=checks.positive_int, hvp_method=hvp_method_rule,
                       h=checks.positive, seed=checks.optional(checks.nonnegative_int)),
        )
        self.set_child("inner", inner)
        self._rng = SeededGenerator(self)

    def step(self, ctx) -> None:
        if not ctx.params:
            return
        s = {k: self.uniform_setting(ctx, k) for k in self.defaults}
        gs = self.global_state
        step = gs.get("step", 0)
        gs["step"] = step + 1
        lay = Layout(ctx.params)
        if step % s["update_freq"] == 0 or gs.get("n") != lay.n or "U" not in gs:
            U, lam = _sketch(self, ctx, lay, s["rank"], s["hvp_method"], s["h"], s["seed"])
            top = lam.max() if lam.numel() else lam.new_zeros(())
            keep = lam >= top * s["eigv_tol"]
            if s["truncate"] is not None:
                keep[s["truncate"]:] = False  # lam is in decreasing order
            U, lam = U[:, keep], lam[keep] + s["damping"] + s["rdamping"] * top
            gs["U"], gs["lam"], gs["n"] = U, lam, lay.n
        U, lam = gs["U"], gs["lam"]
        b = lay.flatten(rhs(self, ctx))
        Utb = U.T @ b
        reg = s["reg"]
        if reg is None:
            inv = torch.where(lam > 0, 1.0 / lam.clamp(min=torch.finfo(lam.dtype).tiny), 0.0)
            x = U @ (Utb * inv)
        else:
            x = U @ (Utb / (lam + reg))
            x.add_(b - U @ Utb, alpha=1.0 / reg)
        ctx.set_update(lay.unflatten(x), owned=True)


class NystromPCG(Module):
    """Newton's direction by conjugate gradient preconditioned with a randomized Nyström
    approximation of the Hessian (Frangella, Tropp & Udell, "Randomized Nyström
    preconditioning", 2023, https://arxiv.org/abs/2110.02820, Algorithms 2.1 and 5.1).

    .. math::
        (\\nabla^2 f + \\mu I) d = u,\\qquad
        P^{-1} = (\\hat\\lambda_\\ell + \\mu) U (\\hat\\Lambda + \\mu I)^{-1} U^T + (I - U U^T)

    with ``Ĥ = U diag(λ̂) Uᵀ`` the rank-``ℓ`` sketch (``λ̂_ℓ`` its smallest eigenvalue) and
    ``μ = reg``. The sketch is rebuilt every step. Negative curvature in CG is handled as in
    :class:`NewtonCG` (``npc_terminate``).

    Args:
        rank: sketch size ``ℓ`` (products per step before CG; capped at ``n``).
        maxiter: CG iterations at most (default ``n``).
        tol: relative residual tolerance of CG.
        reg: ``μ > 0``, added to the Hessian and used in the preconditioner.
        hvp_method: ``"batched_autograd"``, ``"autograd"``, ``"fd_forward"``, ``"fd_central"``.
        h: finite-difference step.
        seed: seed of the test matrices (generator state checkpointed in ``global_state``).
        npc_terminate: stop CG on negative curvature.
        inner: modules whose output is preconditioned.

    Evaluations per step: the engine's ``closure(True)`` plus one ``closure(False)`` (autograd
    methods), or ``rank + k`` (``fd_forward``) / ``2(rank + k)`` (``fd_central``)
    ``closure(True)`` with ``k`` CG iterations (``global_state["iterations"]``).
    """

    def __init__(self, rank: int = 100, maxiter: int | None = None, tol: float = 1e-8,
                 reg: float = 1e-6, hvp_method: str = "batched_autograd", h: float = 1e-3,
                 seed: int | None = None, npc_terminate: bool = True, inner=None):
        super().__init__(
            dict(rank=rank, maxiter=maxiter, tol=tol, reg=reg, hvp_method=hvp_method, h=h,
                 seed=seed, npc_terminate=npc_terminate),
            rules=dict(rank=checks.positive_int, maxiter=checks.optional(checks.positive_int),
                       tol=checks.nonnegative, reg=checks.positive, hvp_method=hvp_method_rule,
                       h=checks.positive, seed=checks.optional(checks.nonnegative_int),
                       npc_terminate=checks.boolean),
        )
        self.set_child("inner", inner)
        self._rng = SeededGenerator(self)

    def step(self, ctx) -> None:
        if not ctx.params:
            return
        s = {k: self.uniform_setting(ctx, k) for k in self.defaults}
        lay = Layout(ctx.params)
        b = lay.flatten(rhs(self, ctx))
        mu = s["reg"]
        rng = self._rng
        gen = rng.get(s["seed"], lay.device)
        with HessianOperator(ctx, self.name, s["hvp_method"], s["h"]) as op:
            U, lam = nystrom(op.mm, lay.n, min(s["rank"], lay.n), gen, lay.dtype, lay.device)
            rng.save()
            if lam.numel():
                scale = (lam[-1] + mu) / (lam + mu)

                def precond(r):
                    Utr = U.T @ r
                    return r + U @ (Utr * scale - Utr)
            else:
                precond = None
            x, iters = cg(op.mv, b, tol=s["tol"], maxiter=s["maxiter"], reg=mu, precond=precond,
                          npc_terminate=s["npc_terminate"])
        self.global_state["iterations"] = iters
        ctx.set_update(lay.unflatten(x), owned=True)
