"""Symmetric rank-one quasi-Newton method."""

from __future__ import annotations

from .base import DEFAULT_MAX_DIM, QuasiNewtonDefaults, low_rank_update_, masked_inv


def sr1_(M, a, b, ok, tol) -> None:
    """Symmetric rank-one update of ``M`` towards the secant equation :math:`M_+ b = a`:

    .. math::
        z = a - M b, \\qquad M_+ = M + \\frac{z z^T}{z^T b}

    applied when :math:`|z^T b| > tol \\, \\|z\\| \\|b\\|` (Nocedal & Wright eq. 6.26). With
    ``(a, b) = (s, y)`` it updates ``H`` (eq. 6.25), with ``(y, s)`` it updates ``B`` (eq. 6.24).
    """
    z = a - M @ b
    den = z.dot(b)
    ok = ok & (den.abs() > tol * z.norm() * b.norm())
    c = masked_inv(den, ok)
    low_rank_update_(M, [c * z], [z])


class SR1(QuasiNewtonDefaults):
    """Symmetric rank-one quasi-Newton method.

    .. math::
        H_{k+1} = H_k + \\frac{(s_k - H_k y_k)(s_k - H_k y_k)^T}{(s_k - H_k y_k)^T y_k},
        \\qquad u_k = H_k g_k

    or, with ``inverse=False``, :math:`B_{k+1} = B_k + \\frac{(y_k - B_k s_k)(y_k - B_k s_k)^T}
    {(y_k - B_k s_k)^T s_k}`, :math:`u_k = B_k^{-1} g_k` (LU solve). The update is skipped when
    :math:`|(s - H y)^T y| \\le tol \\|s - H y\\| \\|y\\|` (Nocedal & Wright's ``tol=1e-8``).
    The default ``init_scale`` is 1: with ``"auto"``, :math:`H_0 = (y^T s / y^T y) I` makes the
    first SR1 denominator :math:`(s - H_0 y)^T y` exactly zero, so that update is skipped (and in
    the ``B`` form it yields a singular matrix).
    SR1 does not keep the approximation positive definite, so its direction may point uphill:
    use it inside a trust region or with a line search that handles that.

    Reference: Nocedal & Wright, *Numerical Optimization* (2006), section 6.2. The arguments are
    described in :class:`HessianUpdateStrategy`.
    """

    has_B = True

    def __init__(self, init_scale=1.0, tol: float = 1e-8, ptol: float | None = 1e-32,
                 ptol_restart: bool = False, gtol: float | None = 1e-32, restart_interval=None,
                 beta: float | None = None, update_freq: int = 1, scale_first: bool = False,
                 scale_second: bool = False, concat_params: bool = True, inverse: bool = True,
                 max_dim: int | None = DEFAULT_MAX_DIM, inner=None):
        super().__init__(
            init_scale=init_scale, tol=tol, ptol=ptol, ptol_restart=ptol_restart, gtol=gtol,
            restart_interval=restart_interval, beta=beta, update_freq=update_freq,
            scale_first=scale_first, scale_second=scale_second, concat_params=concat_params,
            inverse=inverse, max_dim=max_dim, inner=inner,
        )

    def update_H(self, H, s, y, g, ok, slot, settings):
        sr1_(H, s, y, ok, settings["tol"])

    def update_B(self, B, s, y, g, ok, slot, settings):
        sr1_(B, y, s, ok, settings["tol"])
