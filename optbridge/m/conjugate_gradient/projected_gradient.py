"""Pearson's projected gradient method (a conjugate-direction method with an explicit
projection matrix)."""

from __future__ import annotations

from ..quasi_newton.base import DEFAULT_MAX_DIM, HessianUpdateStrategy, low_rank_update_, masked_inv


def projected_gradient_(H, y, ok, tol) -> None:
    """:math:`H_+ = H - \\frac{H y\\, y^T H}{y^T H y}`, applied when :math:`|y^T H y| > tol`
    (``H`` symmetric)."""
    Hy = H @ y
    yHy = y.dot(Hy)
    k = masked_inv(yHy, ok & (yHy.abs() > tol))
    low_rank_update_(H, [-k * Hy], [Hy])


class ProjectedGradientMethod(HessianUpdateStrategy):
    """Projected gradient method: the gradient projected onto the subspace conjugate to the
    past steps (Pearson's algorithm 5; not projected gradient descent for constraints).

    .. math::
        H_{k+1} = H_k - \\frac{H_k y_k y_k^T H_k}{y_k^T H_k y_k}, \\quad H_0 = I,
        \\qquad u_k = H_k g_k

    ``H`` is an n x n matrix (O(n^2) memory) restarted every ``restart_interval`` updates
    (default: number of variables + 1). On a quadratic with exact line searches it produces the
    conjugate gradient iterates. The step length must come from a line search after it
    (``StrongWolfe(c2=0.1)``). The arguments are described in
    :class:`~optbridge.m.quasi_newton.HessianUpdateStrategy` (``inverse`` is always true).

    Reference: J. D. Pearson, "Variable metric methods of minimisation", The Computer Journal 12
    (1969) 171-178, https://doi.org/10.1093/comjnl/12.2.171 (algorithm 5, section 6).
    """

    def __init__(self, init_scale=1, tol: float = 1e-32, ptol: float | None = 1e-32,
                 ptol_restart: bool = False, gtol: float | None = 1e-32,
                 restart_interval="auto", beta: float | None = None, update_freq: int = 1,
                 scale_first: bool = False, concat_params: bool = True,
                 max_dim: int | None = DEFAULT_MAX_DIM, inner=None):
        super().__init__(
            init_scale=init_scale, tol=tol, ptol=ptol, ptol_restart=ptol_restart, gtol=gtol,
            restart_interval=restart_interval, beta=beta, update_freq=update_freq,
            scale_first=scale_first, concat_params=concat_params, inverse=True,
            max_dim=max_dim, inner=inner,
        )

    def update_H(self, H, s, y, g, ok, slot, settings):
        projected_gradient_(H, y, ok, settings["tol"])
