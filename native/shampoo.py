"""Shampoo with batched inverse roots (Gupta, Koren & Singer, "Shampoo: Preconditioned Stochastic
Tensor Optimization", ICML 2018, https://arxiv.org/abs/1802.09568).

The same algorithm and defaults as :class:`optbridge.m.Shampoo` (``[m.Shampoo(...), m.LR(lr)]``)
as a ``torch.optim.Optimizer``.
"""

from __future__ import annotations

import torch

from optbridge.core import checks
from optbridge.m.preconditioners._kron import contract, layout, outer

from .base import STORAGE_DTYPES, NativeOptimizer


def _inverse_roots(mats: torch.Tensor, power: float, eps: float, method: str) -> torch.Tensor:
    """``(S + eps I)^power`` of symmetric matrices through one batched ``eigh`` (eigenvalues made
    non-negative first: absolute values for ``"eigh_abs"``, clamped at 0 for ``"eigh"``)."""
    vals, vecs = torch.linalg.eigh(mats)
    vals = vals.abs() if method == "eigh_abs" else vals.clamp(min=0)
    vals = (vals + eps).pow(power)
    return (vecs * vals.unsqueeze(-2)) @ vecs.mT


class Shampoo(NativeOptimizer):
    """Shampoo: Kronecker-factored Adagrad.

    For a gradient :math:`G` with :math:`k` preconditioned dimensions, dimension :math:`i` keeps
    :math:`S_i = I + \\sum G_{(i)} G_{(i)}^\\top` (or the EMA
    :math:`S_i \\leftarrow \\beta S_i + (1-\\beta) G_{(i)}G_{(i)}^\\top` from :math:`I`), and

    .. math::
        P_i = (S_i + \\epsilon I)^{p},\\ p = -\\tfrac{1}{2k},\\qquad
        W \\leftarrow W - \\eta\\, G \\times_1 P_1 \\cdots \\times_k P_k

    (a matrix: :math:`W \\leftarrow W - \\eta L^{-1/4} G R^{-1/4}`). The roots are recomputed
    every ``update_freq`` steps, starting with the first, by one symmetric eigendecomposition
    per factor; same-size factors of the whole optimizer share one batched ``eigh``. Tensors
    without a preconditioned dimension (scalars, 1-D tensors unless ``precondition_1d``,
    dimensions above ``max_dim``) take Adagrad: :math:`G / (\\sqrt{\\sum G^2} + \\epsilon_a)`.
    ``merge_small`` merges adjacent dimensions while their product is ``<= max_dim``.

    Args:
        lr: learning rate (default 1e-3; Shampoo's raw step is not Adam-scaled).
        beta: None sums the statistics (the paper); a number in [0, 1) keeps an EMA.
        update_freq: steps between root recomputations (default 10).
        matrix_power: exponent :math:`p` (None: :math:`-1/(2k)`).
        matrix_eps: :math:`\\epsilon` added to the eigenvalues (default 1e-12).
        matrix_power_method: ``"eigh_abs"`` or ``"eigh"``.
        merge_small, max_dim, precondition_1d: layout, see above.
        adagrad_eps: :math:`\\epsilon_a` of the Adagrad fallback.
        weight_decay, maximize, gradient_clipping, caution, update_clipping, warmup_steps,
            mars, mars_gamma, storage_dtype: shared flags
            (:data:`optbridge.native.base.SHARED_FLAGS`), off by default.

    ``mars``: the MARS-corrected gradient
    :math:`C_t = G_t + \\gamma\\frac{\\beta_1}{1-\\beta_1}(G_t - G_{t-1})`, :math:`C_1 = G_1`,
    with :math:`\\beta_1 = 0.9` (Shampoo has no momentum: :meth:`mars_beta1`) replaces :math:`G`
    everywhere: in the statistics (:math:`S_i \\mathrel{+}= C_{(i)} C_{(i)}^\\top`, the Adagrad
    sum :math:`\\sum C^2`) as MARS-AdamW feeds :math:`c_t` to its second moment, and in the
    preconditioned step :math:`C \\times_1 P_1 \\cdots`. ``storage_dtype="bfloat16"``: the
    elementwise buffers (the Adagrad sum of tensors without a preconditioned dimension, MARS's
    previous gradient) are stored in bfloat16, the Adagrad sum with stochastic rounding (seed
    ``sr_seed(param position, 0, step)``) after an fp32 update, and the step uses the fp32 sum
    before rounding; the statistics :math:`S_i` and the roots :math:`P_i` stay in fp32 (fp64
    for fp64 parameters).
    """

    flags = frozenset({"weight_decay", "maximize", "gradient_clipping", "caution",
                       "update_clipping", "warmup_steps", "mars", "mars_gamma",
                       "storage_dtype"})
    slots = ("diag",)
    rules = dict(lr=checks.nonnegative, beta=checks.optional(checks.unit_interval),
                 update_freq=checks.positive_int, matrix_power=checks.optional(checks.number),
                 matrix_eps=checks.positive,
                 matrix_power_method=checks.one_of("eigh_abs", "eigh"),
                 merge_small=checks.boolean, max_dim=checks.positive_int,
                 precondition_1d=checks.boolean, adagrad_eps=checks.positive)

    def __init__(self, params, lr: float = 1e-3, beta: float | None = None,
                 update_freq: int = 10, matrix_power: float | None = None,
                 matrix_eps: float = 1e-12, matrix_power_method: str = "eigh_abs",
                 merge_small: bool = True, max_dim: int = 10_000, precondition_1d: bool = True,
                 adagrad_eps: float = 1e-8, **flags):
        super().__init__(params, dict(lr=lr, beta=beta, update_freq=update_freq,
                                      matrix_power=matrix_power, matrix_eps=matrix_eps,
                                      matrix_power_method=matrix_power_method,
                                      merge_small=merge_small, max_dim=max_dim,
                                      precondition_1d=precondition_1d, adagrad_eps=adagrad_eps),
                         flags)

    @torch.no_grad()
    def step(self, closure=None):
        loss, live, factor = self._per_parameter_prologue(closure)
        if live is None:
            return loss
        items, roots = [], {}
        positions = None
        for group, params in live:
            storage = STORAGE_DTYPES[group.get("storage_dtype", "float32")]
            for p in params:
                st = self.state[p]
                g = self.prepared_grad(p, p.grad, st, group,
                                       None if factor is None else factor[p.device])
                work, dims = layout(tuple(p.shape), group["merge_small"], group["max_dim"],
                                    group["precondition_1d"])
                st["step"] = st.get("step", 0) + 1
                diag = None
                if dims:
                    self._accumulate(group, p, g, st, work, dims, roots)
                else:
                    if storage != torch.float32 and positions is None:
                        positions = self.param_positions()
                    diag = self._accumulate_diagonal(
                        group, p, g, st, storage,
                        None if positions is None else positions[id(p)])
                items.append((group, p, g, st, work, dims, diag))
        for (_, _, _, power, eps, method), members in roots.items():
            res = _inverse_roots(torch.stack([m for _, _, m in members]), power, eps, method)
            torch._foreach_copy_([st[name] for st, name, _ in members], list(res.unbind(0)))
        for group, p, g, st, work, dims, diag in items:
            if dims:
                factors = [st.get(f"precond{d}") for d in range(len(work))]
                u = contract(g.reshape(work), factors).reshape(p.shape)
            else:
                u = g / (diag.sqrt() + group["adagrad_eps"])
            self.apply_update(p, u, g, group, self.lr_at(group, st["step"]))
        return loss

    def _accumulate(self, group, p, g, st, work, dims, roots) -> None:
        beta, wd = group["beta"], g.dtype
        gw = g.reshape(work)
        power = group["matrix_power"]
        if power is None:
            power = -1.0 / (2 * len(dims))
        refresh = (st["step"] - 1) % group["update_freq"] == 0
        for d in dims:
            acc = st.get(f"stat{d}")
            if acc is None:
                acc = st[f"stat{d}"] = torch.eye(work[d], dtype=wd, device=p.device)
                st[f"precond{d}"] = torch.eye(work[d], dtype=wd, device=p.device)
            gg = outer(gw, d)
            if beta is None:
                acc.add_(gg)
            else:
                acc.lerp_(gg, 1 - beta)
            if refresh:
                key = (work[d], wd, p.device, power, group["matrix_eps"],
                       group["matrix_power_method"])
                roots.setdefault(key, []).append((st, f"precond{d}", acc))

    def mars_beta1(self, group) -> float:
        """MARS's :math:`\\beta_1`: Shampoo has no momentum, so the 0.9 MARS-AdamW uses."""
        return 0.9

    def _accumulate_diagonal(self, group, p, g, st, storage, position) -> torch.Tensor:
        """Adagrad's :math:`\\sum g^2` (or its EMA); returns it in the compute dtype and stores
        it (stochastic rounding into bfloat16 storage, slot index 0)."""
        if "diag" not in st:
            st["diag"] = torch.zeros_like(p, dtype=self.slot_dtype(p, storage))
        acc = self.read_slot(st, "diag", p)
        if group["beta"] is None:
            acc.addcmul_(g, g)
        else:
            acc.mul_(group["beta"]).addcmul_(g, g, value=1 - group["beta"])
        self.write_slot(st, "diag", acc, position, 0, st["step"])
        return acc
