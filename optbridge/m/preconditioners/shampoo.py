"""Shampoo (Gupta, Koren & Singer, 2018, https://arxiv.org/abs/1802.09568)."""

from __future__ import annotations

import torch

from ...core import checks
from ...core.module import Module
from ._kron import contract, layout, outer, stacked, work_dtype


def _per(value, n: int) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value] * n


def _inverse_root(power: float, eps: float, method: str):
    def fn(mats: torch.Tensor) -> torch.Tensor:
        vals, vecs = torch.linalg.eigh(mats)
        vals = vals.abs() if method == "eigh_abs" else vals.clamp(min=0)
        vals = (vals + eps).pow(power)
        return (vecs * vals.unsqueeze(-2)) @ vecs.mT

    return fn


_KEYS = ("beta", "update_freq", "matrix_power", "matrix_eps", "matrix_power_method", "merge_small",
         "max_dim", "precondition_1d", "adagrad_eps")


class Shampoo(Module):
    """Shampoo's Kronecker-factored preconditioner, without the learning rate (chain an ``LR``).

    For a gradient :math:`G` with :math:`k` preconditioned dimensions (a matrix: :math:`k=2`),
    each dimension :math:`i` keeps the statistic of its unfolding :math:`G_{(i)}`:

    .. math::
        S_i \\leftarrow S_i + G_{(i)} G_{(i)}^\\top
        \\quad(\\text{or } S_i \\leftarrow \\beta S_i + (1-\\beta) G_{(i)} G_{(i)}^\\top),
        \\qquad S_i^{(0)} = I,

        P_i = (S_i + \\epsilon I)^{p},\\quad p = -\\tfrac{1}{2k}\\ \\text{(default)},\\qquad
        u = G \\times_1 P_1 \\times_2 P_2 \\cdots \\times_k P_k

    so a matrix gets :math:`u = L^{-1/4} G R^{-1/4}` with :math:`L = I + \\sum G G^\\top`,
    :math:`R = I + \\sum G^\\top G` (the paper's :math:`\\epsilon I` start with
    :math:`\\epsilon = 1`, as torchzero; with ``beta`` the identity decays like the rest).
    The roots come from one symmetric eigendecomposition per factor (same-size factors in one
    batched ``torch.linalg.eigh``), refreshed every ``update_freq`` steps starting at the first;
    eigenvalues are made non-negative (``matrix_power_method``) and :math:`\\epsilon` is added
    before the power. :math:`k` counts the preconditioned dimensions (default exponents multiply
    to :math:`-1/2`, Adagrad's). Tensors with no preconditioned dimension (scalars, 1-D tensors
    when ``precondition_1d`` is off, every dimension larger than ``max_dim``) use Adagrad:
    :math:`u = G / (\\sqrt{\\sum G^2} + \\epsilon_{ada})`. Shampoo's raw step size differs
    from Adam's; graft it (``m.Graft(m.Shampoo(), m.Adam())``) or tune the ``LR``.

    Args:
        beta: None sums the statistics (Shampoo, the paper); a number in [0, 1) keeps an EMA.
        update_freq: the roots are recomputed every ``update_freq`` steps.
        matrix_power: exponent :math:`p` of every factor; None: :math:`-1/(2k)`.
        matrix_eps: :math:`\\epsilon`, added to the (non-negative) eigenvalues before the root
            (default 1e-12; keeps decayed EMA statistics invertible).
        matrix_power_method: ``"eigh_abs"`` takes the absolute eigenvalues, ``"eigh"`` clamps
            negative ones (round-off) to zero.
        merge_small: merge adjacent dimensions while their product is ``<= max_dim`` before
            factoring (a small matrix becomes one full-matrix factor).
        max_dim: dimensions larger than this get no factor.
        precondition_1d: give 1-D tensors a full-matrix factor (else Adagrad).
        adagrad_eps: :math:`\\epsilon_{ada}` of the Adagrad fallback.
        inner: optional sub-chain run on the update after the statistics were updated; its
            output is what gets preconditioned.
    """

    def __init__(self, beta: float | None = None, update_freq: int = 10,
                 matrix_power: float | None = None, matrix_eps: float = 1e-12,
                 matrix_power_method: str = "eigh_abs", merge_small: bool = True,
                 max_dim: int = 10_000, precondition_1d: bool = True, adagrad_eps: float = 1e-8,
                 inner=None):
        super().__init__(
            dict(beta=beta, update_freq=update_freq, matrix_power=matrix_power,
                 matrix_eps=matrix_eps, matrix_power_method=matrix_power_method,
                 merge_small=merge_small, max_dim=max_dim, precondition_1d=precondition_1d,
                 adagrad_eps=adagrad_eps),
            rules=dict(beta=checks.optional(checks.unit_interval), update_freq=checks.positive_int,
                       matrix_power=checks.optional(checks.number), matrix_eps=checks.positive,
                       matrix_power_method=checks.one_of("eigh_abs", "eigh"),
                       merge_small=checks.boolean, max_dim=checks.positive_int,
                       precondition_1d=checks.boolean, adagrad_eps=checks.positive),
        )
        self.set_child("inner", inner)

    def step(self, ctx) -> None:
        params = ctx.params
        n = len(params)
        if not n:
            return
        s = {k: _per(self.settings(ctx, k), n) for k in _KEYS}
        grads = ctx.update
        states = self.param_states(ctx)
        shapes: list = [None] * n
        kron, diag = [], []
        roots: dict = {}
        for i, (g, st) in enumerate(zip(grads, states)):
            work, dims = layout(tuple(g.shape), s["merge_small"][i], s["max_dim"][i],
                                s["precondition_1d"][i])
            shapes[i] = work
            if not dims:
                diag.append(i)
                continue
            kron.append(i)
            wd = work_dtype(g.dtype)
            gw = g.reshape(work).to(wd)
            step = st.get("step", 0)
            st["step"] = step + 1
            beta = s["beta"][i]
            power = s["matrix_power"][i]
            if power is None:
                power = -1.0 / (2 * len(dims))
            refresh = step % s["update_freq"][i] == 0
            for d in dims:
                acc = st.get(f"stat{d}")
                if acc is None:
                    acc = st[f"stat{d}"] = torch.eye(work[d], dtype=wd, device=g.device)
                    st[f"precond{d}"] = torch.eye(work[d], dtype=wd, device=g.device)
                gg = outer(gw, d)
                if beta is None:
                    acc.add_(gg)
                else:
                    acc.lerp_(gg, 1 - beta)
                if refresh:
                    key = (work[d], wd, g.device, power, s["matrix_eps"][i],
                           s["matrix_power_method"][i])
                    roots.setdefault(key, []).append((st, f"precond{d}", acc))
        for (_, _, _, power, eps, method), members in roots.items():
            res = stacked([m for _, _, m in members], _inverse_root(power, eps, method))
            torch._foreach_copy_([st[name] for st, name, _ in members], res)

        if diag:
            self._update_diagonal([grads[i] for i in diag], [states[i] for i in diag],
                                  [s["beta"][i] for i in diag])
        update = self.run_child(ctx, "inner").update if "inner" in self.children else grads
        result: list = [None] * n
        for i in kron:
            st, u, work = states[i], update[i], shapes[i]
            factors = [st.get(f"precond{d}") for d in range(len(work))]
            out = contract(u.reshape(work).to(work_dtype(u.dtype)), factors)
            result[i] = out.reshape(u.shape).to(u.dtype)
        if diag:
            u = [update[i] for i in diag]
            den = torch._foreach_sqrt([states[i]["diag"] for i in diag])
            torch._foreach_add_(den, [s["adagrad_eps"][i] for i in diag])
            for i, t in zip(diag, torch._foreach_div(u, den)):
                result[i] = t
        ctx.set_update(result, owned=True)

    @staticmethod
    def _update_diagonal(grads, states, betas) -> None:
        acc = []
        for st, g in zip(states, grads):
            a = st.get("diag")
            if a is None:
                a = st["diag"] = torch.zeros_like(g)
            acc.append(a)
        if all(b is None for b in betas):
            torch._foreach_addcmul_(acc, grads, grads)
            return
        for b, a, g in zip(betas, acc, grads):
            if b is None:
                a.addcmul_(g, g)
            else:
                a.mul_(b).addcmul_(g, g, value=1 - b)
