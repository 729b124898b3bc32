"""SOAP: Shampoo with Adam in the preconditioner's eigenbasis (Vyas et al., 2024,
https://arxiv.org/abs/2409.11321; official code https://github.com/nikhilvyas/SOAP)."""

from __future__ import annotations

import torch

from ...core import checks
from ...core.module import Module
from ._kron import contract, layout, outer, stacked, work_dtype
from .shampoo import _per

_KEYS = ("beta1", "beta2", "shampoo_beta", "precond_freq", "merge_small", "max_dim",
         "precondition_1d", "eps", "debias", "proj_exp_avg", "normalize_grads")


def _eigenbasis(mats: torch.Tensor) -> torch.Tensor:
    """Eigenvectors of symmetric matrices, columns by decreasing eigenvalue (a ``1e-30``
    diagonal jitter keeps an all-zero statistic well defined, as the official code does)."""
    jitter = torch.eye(mats.shape[-1], dtype=mats.dtype, device=mats.device).mul_(1e-30)
    return torch.linalg.eigh(mats + jitter)[1].flip(-1)


def _qr(mats: torch.Tensor) -> torch.Tensor:
    return torch.linalg.qr(mats)[0]


class SOAP(Module):
    """SOAP's direction, without the learning rate (``[SOAP(), LR(lr)]`` is the official SOAP
    with that ``lr`` and ``weight_decay=0``).

    Each preconditioned dimension :math:`i` of the gradient :math:`G` keeps Shampoo's statistic
    and an orthogonal basis :math:`Q_i` of its eigenvectors; Adam runs on the coordinates of the
    gradient in that basis:

    .. math::
        \\tilde G = G \\times_1 Q_1^\\top \\cdots \\times_k Q_k^\\top,\\quad
        m_t = \\beta_1 m_{t-1} + (1-\\beta_1)\\tilde G,\\quad
        v_t = \\beta_2 v_{t-1} + (1-\\beta_2)\\tilde G^2

        u_t = \\frac{\\sqrt{1-\\beta_2^t}}{1-\\beta_1^t}\\,
        \\Big(\\frac{m_t}{\\sqrt{v_t} + \\epsilon}\\Big) \\times_1 Q_1 \\cdots \\times_k Q_k

        S_i \\leftarrow \\beta_s S_i + (1-\\beta_s)\\, G_{(i)} G_{(i)}^\\top

    after the update, with the official code's schedule: the first step only initialises
    :math:`S_i` and takes :math:`Q_i` from ``torch.linalg.eigh`` (columns by decreasing
    eigenvalue), outputting a zero update; every ``precond_freq`` Adam steps :math:`Q_i` is
    refreshed by one power iteration :math:`Q_i \\leftarrow \\mathrm{qr}(S_i Q_i)` (columns
    first sorted by the estimated eigenvalues :math:`\\mathrm{diag}(Q_i^\\top S_i Q_i)`, with
    :math:`v` permuted alike); :math:`m` lives in the rotated basis and is carried over to the new
    one. Same-size factors share one batched ``eigh``/``qr``.

    Args:
        beta1, beta2: Adam's betas (official default 0.95, 0.95).
        shampoo_beta: EMA factor :math:`\\beta_s` of the statistics; None uses ``beta2`` (the
            official ``shampoo_beta=-1``).
        precond_freq: Adam steps between basis refreshes (official ``precondition_frequency``).
        merge_small: merge adjacent dimensions while their product is ``<= max_dim`` (official
            ``merge_dims``).
        max_dim: dimensions larger than this get no basis (official ``max_precond_dim``).
        precondition_1d: give 1-D tensors a basis (else plain Adam).
        eps: Adam's :math:`\\epsilon`.
        debias: Adam's bias corrections (official ``correct_bias``).
        proj_exp_avg: keep :math:`m` in the rotated basis (official); False keeps it in the
            original space, rotated each step (the official code's later variant).
        normalize_grads: divide each tensor's update by its RMS (official ``normalize_grads``).
        inner: optional sub-chain run on the update; its output is what Adam sees (the
            statistics still come from this module's input).
    """

    def __init__(self, beta1: float = 0.95, beta2: float = 0.95, shampoo_beta: float | None = None,
                 precond_freq: int = 10, merge_small: bool = False, max_dim: int = 10_000,
                 precondition_1d: bool = False, eps: float = 1e-8, debias: bool = True,
                 proj_exp_avg: bool = True, normalize_grads: bool = False, inner=None):
        super().__init__(
            dict(beta1=beta1, beta2=beta2, shampoo_beta=shampoo_beta, precond_freq=precond_freq,
                 merge_small=merge_small, max_dim=max_dim, precondition_1d=precondition_1d,
                 eps=eps, debias=debias, proj_exp_avg=proj_exp_avg,
                 normalize_grads=normalize_grads),
            rules=dict(beta1=checks.unit_interval, beta2=checks.unit_interval,
                       shampoo_beta=checks.optional(checks.unit_interval),
                       precond_freq=checks.positive_int, merge_small=checks.boolean,
                       max_dim=checks.positive_int, precondition_1d=checks.boolean,
                       eps=checks.positive, debias=checks.boolean, proj_exp_avg=checks.boolean,
                       normalize_grads=checks.boolean),
        )
        self.set_child("inner", inner)

    def step(self, ctx) -> None:
        params = ctx.params
        n = len(params)
        if not n:
            return
        s = {k: _per(self.settings(ctx, k), n) for k in _KEYS}
        grads = ctx.update
        update = self.run_child(ctx, "inner").update if "inner" in self.children else grads
        states = self.param_states(ctx)
        layouts = [layout(tuple(g.shape), s["merge_small"][i], s["max_dim"][i],
                          s["precondition_1d"][i]) for i, g in enumerate(grads)]
        result: list = [None] * n
        fresh = [i for i, st in enumerate(states) if "exp_avg" not in st]
        ready = [i for i, st in enumerate(states) if "exp_avg" in st]
        if ready:
            self._adam(ready, s, update, states, layouts, result)
            self._refresh(ready, s, grads, states, layouts)
        if fresh:
            self._initialise(fresh, s, grads, states, layouts, result)
        ctx.set_update(result, owned=True)
        scale = [1.0] * n
        if any(s["debias"][i] for i in ready):
            for i in ready:
                if s["debias"][i]:
                    t, b1, b2 = states[i]["step"], s["beta1"][i], s["beta2"][i]
                    scale[i] = (1 - b2**t) ** 0.5 / (1 - b1**t)
            ctx.scale_update(scale[0] if all(x == scale[0] for x in scale) else scale)

    @staticmethod
    def _factors(st: dict, work: tuple) -> list:
        return [st.get(f"Q{d}") for d in range(len(work))]

    def _initialise(self, idx, s, grads, states, layouts, result) -> None:
        """First step of a parameter: zero update, statistics from this gradient, eigenbasis."""
        groups: dict = {}
        for i in idx:
            g, st, (work, dims) = grads[i], states[i], layouts[i]
            wd = work_dtype(g.dtype)
            st["step"] = 0
            st["exp_avg"] = torch.zeros(work, dtype=wd, device=g.device)
            st["exp_avg_sq"] = torch.zeros(work, dtype=wd, device=g.device)
            gw = g.reshape(work).to(wd)
            sb = s["shampoo_beta"][i]
            sb = s["beta2"][i] if sb is None else sb
            for d in dims:
                gg = st[f"GG{d}"] = torch.zeros(work[d], work[d], dtype=wd, device=g.device)
                gg.lerp_(outer(gw, d), 1 - sb)
                groups.setdefault((work[d], wd, g.device), []).append((st, d))
            result[i] = torch.zeros_like(g)
        for members in groups.values():
            qs = stacked([st[f"GG{d}"] for st, d in members], _eigenbasis)
            for (st, d), q in zip(members, qs):
                st[f"Q{d}"] = q

    def _adam(self, idx, s, update, states, layouts, result) -> None:
        """Adam on the rotated coordinates, rotated back."""
        gp, m, v, mp, b1, b2, eps = [], [], [], [], [], [], []
        for i in idx:
            st, (work, _) = states[i], layouts[i]
            st["step"] += 1
            q = self._factors(st, work)
            uw = update[i].reshape(work).to(st["exp_avg"].dtype)
            gp.append(contract(uw, q))
            m.append(st["exp_avg"])
            v.append(st["exp_avg_sq"])
            b1.append(1 - s["beta1"][i])
            b2.append(s["beta2"][i])
            eps.append(s["eps"][i])
            if not s["proj_exp_avg"][i]:
                st["exp_avg"].lerp_(uw, b1[-1])
                mp.append(contract(st["exp_avg"], q))
        if len(mp) < len(idx):
            proj = [k for k, i in enumerate(idx) if s["proj_exp_avg"][i]]
            torch._foreach_lerp_([m[k] for k in proj], [gp[k] for k in proj],
                                 [b1[k] for k in proj] if len(set(b1)) > 1 else b1[0])
            it = iter(mp)
            mp = [m[k] if s["proj_exp_avg"][i] else next(it) for k, i in enumerate(idx)]
        torch._foreach_mul_(v, b2)
        torch._foreach_addcmul_(v, gp, gp, [1 - b for b in b2])
        den = torch._foreach_sqrt(v)
        torch._foreach_add_(den, eps)
        ratio = torch._foreach_div(mp, den)
        out = []
        for k, i in enumerate(idx):
            st, (work, _) = states[i], layouts[i]
            back = contract(ratio[k], self._factors(st, work), transpose=True)
            out.append(back.reshape(update[i].shape).to(update[i].dtype))
        norm = [k for k, i in enumerate(idx) if s["normalize_grads"][i]]
        if norm:
            sel = [out[k] for k in norm]
            rms = torch._foreach_norm(sel)
            torch._foreach_mul_(rms, [t.numel() ** -0.5 for t in sel])
            torch._foreach_add_(rms, 1e-30)
            torch._foreach_div_(sel, rms)
        for k, i in enumerate(idx):
            result[i] = out[k]

    def _refresh(self, idx, s, grads, states, layouts) -> None:
        """Fold the gradient into the statistics; every ``precond_freq`` steps, one power
        iteration on each basis (``m`` is carried over to the new basis)."""
        groups: dict = {}
        moved = []
        for i in idx:
            g, st, (work, dims) = grads[i], states[i], layouts[i]
            refresh = dims and st["step"] % s["precond_freq"][i] == 0
            if refresh and s["proj_exp_avg"][i]:
                st["exp_avg"] = contract(st["exp_avg"], self._factors(st, work), transpose=True)
                moved.append(i)
            sb = s["shampoo_beta"][i]
            sb = s["beta2"][i] if sb is None else sb
            gw = g.reshape(work).to(st["exp_avg"].dtype)
            for d in dims:
                st[f"GG{d}"].lerp_(outer(gw, d), 1 - sb)
            if not refresh:
                continue
            v = st["exp_avg_sq"]
            for d in dims:
                gg, q = st[f"GG{d}"], st[f"Q{d}"]
                order = torch.argsort((q * (gg @ q)).sum(0), descending=True)
                v = v.index_select(d, order)
                groups.setdefault((work[d], gg.dtype, gg.device), []).append(
                    (st, d, gg @ q[:, order]))
            st["exp_avg_sq"] = v
        for members in groups.values():
            qs = stacked([m for _, _, m in members], _qr)
            for (st, d, _), q in zip(members, qs):
                st[f"Q{d}"] = q
        for i in moved:
            st = states[i]
            st["exp_avg"] = contract(st["exp_avg"], self._factors(st, layouts[i][0])).contiguous()
