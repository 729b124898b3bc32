"""Variable metric methods from Pearson (1969): Pearson's, McCormick's and the projected
Newton-Raphson method."""

from __future__ import annotations

import torch

from .base import (
    DEFAULT_MAX_DIM,
    HessianUpdateStrategy,
    QuasiNewtonDefaults,
    low_rank_update_,
    masked_inv,
)
from .broyden import secant_c_


class Pearson(QuasiNewtonDefaults):
    """Pearson's quasi-Newton method.

    .. math::
        H_{k+1} = H_k + \\frac{(s_k - H_k y_k)(H_k y_k)^T}{y_k^T H_k y_k}, \\qquad u_k = H_k g_k

    A line search is recommended; the update is skipped when :math:`|y^T H y| \\le tol`.

    Reference: J. D. Pearson, "Variable metric methods of minimisation", The Computer Journal 12
    (1969) 171-178, https://doi.org/10.1093/comjnl/12.2.171. The arguments are described in
    :class:`HessianUpdateStrategy`.
    """

    def update_H(self, H, s, y, g, ok, slot, settings):
        secant_c_(H, s, y, H @ y, ok, settings["tol"])


class McCormick(QuasiNewtonDefaults):
    """McCormick's quasi-Newton method (Pearson's "algorithm 2", also called Pearson's second
    method).

    .. math::
        H_{k+1} = H_k + \\frac{(s_k - H_k y_k) s_k^T}{s_k^T y_k}, \\qquad u_k = H_k g_k

    A line search is recommended; the update is skipped when :math:`|s^T y| \\le tol`.

    Reference: J. D. Pearson, The Computer Journal 12 (1969) 171-178,
    https://doi.org/10.1093/comjnl/12.2.171. The arguments are described in
    :class:`HessianUpdateStrategy`.
    """

    def update_H(self, H, s, y, g, ok, slot, settings):
        secant_c_(H, s, y, s, ok, settings["tol"])


def projected_newton_raphson_(H, R, s, y, ok, tol) -> None:
    """Pearson's algorithm 7, applied when :math:`|y^T H y| > tol`:

    .. math::
        H_+ = H - \\frac{H y (H y)^T}{y^T H y}, \\qquad
        R_+ = R + \\frac{(s - R y)(H y)^T}{y^T H y}
    """
    Hy = H @ y
    yHy = y.dot(Hy)
    k = masked_inv(yHy, ok & (yHy.abs() > tol))
    low_rank_update_(R, [k * (s - R @ y)], [Hy])
    low_rank_update_(H, [-k * Hy], [Hy])


class ProjectedNewtonRaphson(HessianUpdateStrategy):
    """Projected Newton-Raphson method (Pearson's algorithm 7).

    ``H`` is a projection onto the subspace conjugate to the past steps, while ``R`` (kept in
    the state) accumulates an inverse-Hessian estimate; every ``restart_interval`` updates
    (default: number of variables + 1) ``H`` is replaced by ``R``:

    .. math::
        H_{k+1} = H_k - \\frac{H_k y_k (H_k y_k)^T}{y_k^T H_k y_k}, \\quad
        R_{k+1} = R_k + \\frac{(s_k - R_k y_k)(H_k y_k)^T}{y_k^T H_k y_k},
        \\qquad u_k = H_k g_k

    A line search is recommended. The arguments are described in
    :class:`HessianUpdateStrategy` (``inverse`` is always true).

    Reference: J. D. Pearson, "Variable metric methods of minimisation", The Computer Journal 12
    (1969) 171-178, https://doi.org/10.1093/comjnl/12.2.171.
    """

    def __init__(self, init_scale="auto", tol: float = 1e-32, ptol: float | None = 1e-32,
                 ptol_restart: bool = False, gtol: float | None = 1e-32,
                 restart_interval="auto", beta: float | None = None, update_freq: int = 1,
                 scale_first: bool = False, scale_second: bool = False,
                 concat_params: bool = True, max_dim: int | None = DEFAULT_MAX_DIM, inner=None):
        super().__init__(
            init_scale=init_scale, tol=tol, ptol=ptol, ptol_restart=ptol_restart, gtol=gtol,
            restart_interval=restart_interval, beta=beta, update_freq=update_freq,
            scale_first=scale_first, scale_second=scale_second, concat_params=concat_params,
            inverse=True, max_dim=max_dim, inner=inner,
        )

    def _R(self, slot, H):
        R = slot.get("R")
        if R is None:
            R = slot["R"] = torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
        return R

    def update_H(self, H, s, y, g, ok, slot, settings):
        projected_newton_raphson_(H, self._R(slot, H), s, y, ok, settings["tol"])

    def on_restart(self, slot, M, s, y, settings):
        M.copy_(self._R(slot, M))
        return True
