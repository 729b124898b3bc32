"""Newton's method restricted to a low-dimensional subspace (randomized subspace Newton)."""

from __future__ import annotations

import torch

from ...core import checks
from ...core.module import Module
from ._common import Layout, SeededGenerator, hvp_method_rule, optional_callable
from ._linalg import FALLBACKS, solve
from .derivatives import HessianOperator
from .newton import apply_H_tfm, rhs

SKETCH_TYPES = ("common_directions", "orthonormal", "rows", "topk", "rademacher")


class SubspaceNewton(Module):
    """Newton step within the span of a basis ``S`` (n × k, ``k = sketch_size``).

    .. math::
        H_S = S^T \\nabla^2 f\\, S + \\lambda I,\\qquad d = S\\, H_S^{-1} S^T u

    which minimises the quadratic model of ``f`` over ``x - S y`` (``u`` the incoming update or
    ``inner``'s output). ``H_S`` needs ``k`` Hessian-vector products. Gower, Kovalev, Lieder &
    Richtárik, "RSN: Randomized Subspace Newton", NeurIPS 2019,
    https://arxiv.org/abs/1905.10874; common directions: Wang, Lee & Lin, JMLR 20(58), 2019.

    ``sketch_type``:

    - ``"common_directions"``: the last ``k`` gradients, orthonormalised (QR); the first step
      is a Newton step along the gradient.
    - ``"orthonormal"``: a random orthonormal basis (QR of a Gaussian draw).
    - ``"rademacher"``: random ±1/√n entries (nearly orthonormal for large ``n``).
    - ``"rows"``: ``k`` random coordinates.
    - ``"topk"``: the ``k`` coordinates where ``|u|`` is largest.

    The small system is solved like :class:`Newton` (``eigval_fn``, ``use_lstsq``, Cholesky with
    ``fallback`` for a non positive definite ``H_S``, ``H_tfm``).

    Args:
        sketch_size: subspace dimension ``k`` (capped at ``n``).
        sketch_type: see above.
        damping: ``λ`` added to ``H_S``.
        hvp_method: ``"batched_autograd"`` (all ``k`` products in one vectorised double
            backward), ``"autograd"``, ``"fd_forward"``, ``"fd_central"``.
        h: finite-difference step.
        use_lstsq: solve ``H_S`` by least squares.
        update_freq: recompute ``S`` and ``H_S`` every this many steps (reused in between).
        H_tfm: ``H_tfm(H_S, Sᵀu)`` returning the subspace step or ``(matrix, is_inverted)``.
        eigval_fn: function of the eigenvalues of ``H_S`` (eigendecomposition solve).
        seed: seed of the random bases (generator state checkpointed in ``global_state``).
        fallback: ``"abs"``, ``"lu"`` or ``"lstsq"`` (see :class:`Newton`).
        inner: modules whose output is preconditioned.

    Evaluations per basis step: the engine's ``closure(True)`` plus one ``closure(False)``
    (autograd methods), or ``k`` / ``2k`` ``closure(True)`` (finite differences).
    """

    def __init__(self, sketch_size: int = 100, sketch_type: str = "common_directions",
                 damping: float = 0.0, hvp_method: str = "batched_autograd", h: float = 1e-2,
                 use_lstsq: bool = False, update_freq: int = 1, H_tfm=None, eigval_fn=None,
                 seed: int | None = None, fallback: str = "abs", inner=None):
        super().__init__(
            dict(sketch_size=sketch_size, sketch_type=sketch_type, damping=damping,
                 hvp_method=hvp_method, h=h, use_lstsq=use_lstsq, update_freq=update_freq,
                 H_tfm=H_tfm, eigval_fn=eigval_fn, seed=seed, fallback=fallback),
            rules=dict(sketch_size=checks.positive_int, sketch_type=checks.one_of(*SKETCH_TYPES),
                       damping=checks.nonnegative, hvp_method=hvp_method_rule, h=checks.positive,
                       use_lstsq=checks.boolean, update_freq=checks.positive_int,
                       H_tfm=optional_callable, eigval_fn=optional_callable,
                       seed=checks.optional(checks.nonnegative_int),
                       fallback=checks.one_of(*FALLBACKS)),
        )
        self.set_child("inner", inner)
        self._rng = SeededGenerator(self)

    def _basis(self, ctx, lay: Layout, k: int, kind: str, b: torch.Tensor, seed) -> torch.Tensor:
        n, dtype, device = lay.n, lay.dtype, lay.device
        if kind == "common_directions":
            return torch.linalg.qr(self.global_state["history"])[0]
        if kind == "topk":
            idx = b.abs().topk(k).indices
            return torch.eye(n, dtype=dtype, device=device)[:, idx]
        gen = self._rng.get(seed, device)
        if kind == "orthonormal":
            S = torch.linalg.qr(torch.randn((n, k), generator=gen, dtype=dtype, device=device))[0]
        elif kind == "rademacher":
            S = torch.randint(0, 2, (n, k), generator=gen, dtype=dtype, device=device)
            S.mul_(2).sub_(1).div_(n**0.5)
        else:  # rows
            idx = torch.randperm(n, generator=gen, device=device)[:k]
            S = torch.eye(n, dtype=dtype, device=device)[:, idx]
        self._rng.save()
        return S

    def step(self, ctx) -> None:
        if not ctx.params:
            return
        s = {key: self.uniform_setting(ctx, key) for key in self.defaults}
        gs = self.global_state
        step = gs.get("step", 0)
        gs["step"] = step + 1
        lay = Layout(ctx.params)
        k = min(s["sketch_size"], lay.n)
        b = lay.flatten(rhs(self, ctx))
        if s["sketch_type"] == "common_directions":
            g = lay.flatten(ctx.grads).unsqueeze(1)
            hist = gs.get("history")
            if hist is None or hist.shape[0] != lay.n:
                hist = g
            else:
                hist = torch.cat([hist[:, -(k - 1):] if k > 1 else hist[:, :0], g], dim=1)
            gs["history"] = hist
        if step % s["update_freq"] == 0 or gs.get("n") != lay.n or "S" not in gs:
            S = self._basis(ctx, lay, k, s["sketch_type"], b, s["seed"])
            with HessianOperator(ctx, self.name, s["hvp_method"], s["h"]) as op:
                HS = op.mm(S.T.contiguous())  # rows: H s_j
            Hs = HS @ S
            Hs = (Hs + Hs.T) / 2
            if s["damping"]:
                Hs.diagonal().add_(s["damping"])
            gs["S"], gs["Hs"], gs["n"] = S, Hs, lay.n
        S, Hs = gs["S"], gs["Hs"]
        bs = S.T @ b
        solve_kw = dict(eigval_fn=s["eigval_fn"], use_lstsq=s["use_lstsq"], fallback=s["fallback"])
        if s["H_tfm"] is not None:
            y = apply_H_tfm(s["H_tfm"], Hs, bs, solve_kw)
        else:
            y = solve(Hs, bs, **solve_kw)[0]
        ctx.set_update(lay.unflatten(S @ y), owned=True)
