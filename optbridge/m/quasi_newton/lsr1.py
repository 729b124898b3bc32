"""Limited-memory symmetric rank-one (L-SR1) inverse-Hessian approximation."""

from __future__ import annotations

import torch

from .lbfgs import _COMMON_RULES, LimitedMemory

#: SR1 skip rule constant r of Nocedal & Wright eq. 6.26
_SKIP_R = 1e-8


class LSR1(LimitedMemory):
    """Limited-memory SR1 (Byrd, Nocedal & Schnabel, 1994, "Representations of quasi-Newton
    matrices and their use in limited memory methods", Math. Prog. 63,
    https://doi.org/10.1007/BF01582063; Nocedal & Wright, Numerical Optimization, 2nd ed.,
    eq. 6.24 and 6.26). Outputs the direction :math:`H_k g_k`; follow it with a line search
    or a trust region.

    Starting from :math:`H^0 = \\gamma I` the stored pairs (oldest first) are applied as
    inverse SR1 updates:

    .. math::
        p_i = s_i - H^{i} y_i, \\qquad
        H^{i+1} = H^{i} + \\frac{p_i p_i^\\top}{p_i^\\top y_i}
        \\quad\\text{if } |p_i^\\top y_i| \\ge r \\lVert p_i\\rVert \\lVert y_i\\rVert
        \\ (r = 10^{-8}), \\text{ else } H^{i+1} = H^{i},

    :math:`\\gamma = s^\\top y / y^\\top y` of the newest pair with :math:`s^\\top y > 0` (1 before
    any). The :math:`p_i` are recomputed each step (:math:`O(m^2 n)`, no host sync). When
    :math:`g^\\top H g \\le 0` (the direction would not descend) the output is :math:`\\gamma g`.
    Pairs: :math:`s = x_k - x_{k-1}`, :math:`y = g_k - g_{k-1}` of consecutive points, ``g`` the
    incoming update; SR1 keeps pairs of any curvature. Non-finite values restart the history.
    All parameters must share one dtype and device.

    Args:
        history_size: number of stored pairs :math:`m`.
        ptol: skip the pair when :math:`\\max|s| <` ptol (None: never; zero :math:`s`/:math:`y`
            are always skipped).
        ptol_restart: restart (clear the history) instead of only skipping.
        gtol: skip the pair when :math:`\\max|y| <` gtol (None: never).
        gtol_restart: restart instead of only skipping.
        scale_first: on the first step output :math:`\\min(1, 1/\\lVert g\\rVert_1)\\, g`.
        update_freq: store a pair every this many steps.
        tol_grad: when :math:`\\max|g| \\le` tol_grad the direction is zero and the state is left
            untouched (None: off).
        inner: modules applied after the history update; their output is preconditioned.
    """

    def __init__(self, history_size: int = 10, ptol: float | None = None,
                 ptol_restart: bool = False, gtol: float | None = None,
                 gtol_restart: bool = False, scale_first: bool = False, update_freq: int = 1,
                 tol_grad: float | None = None, inner=None):
        super().__init__(
            dict(history_size=history_size, ptol=ptol, ptol_restart=ptol_restart, gtol=gtol,
                 gtol_restart=gtol_restart, scale_first=scale_first, update_freq=update_freq,
                 tol_grad=tol_grad),
            dict(_COMMON_RULES),
            inner,
        )
        self._p: list[torch.Tensor] = []

    def new_scale(self, sy, yy, sy_value, settings):
        return sy / yy if sy_value > 0 else None

    def direction(self, q: torch.Tensor, settings: dict) -> None:
        gs = self.global_state
        S, Y = gs["s"], gs["y"]
        gamma = gs.get("scale", 1.0)
        P = self._p
        if P and (P[0].shape != q.shape or P[0].dtype != q.dtype or P[0].device != q.device):
            P.clear()
        while len(P) < len(S):
            P.append(torch.empty_like(q))
        coef = []
        for i, (s, y) in enumerate(zip(S, Y)):
            p = P[i]
            torch.mul(y, gamma, out=p)
            for j in range(i):
                p.addcmul_(P[j], coef[j] * P[j].dot(y))
            torch.sub(s, p, out=p)
            py = p.dot(y)
            ok = py.abs() >= _SKIP_R * torch.linalg.vector_norm(p) * torch.linalg.vector_norm(y)
            ok = ok & (py != 0) & py.isfinite()
            coef.append(torch.where(ok, 1 / torch.where(ok, py, torch.ones_like(py)),
                                    torch.zeros_like(py)))
        m = len(S)
        raw = [P[i].dot(q) for i in range(m)]
        gHg = gamma * q.dot(q) + sum(c * r * r for c, r in zip(coef, raw))
        descent = (gHg > 0).to(q.dtype)
        q.mul_(gamma)
        for i in range(m):
            q.addcmul_(P[i], raw[i] * coef[i] * descent)
