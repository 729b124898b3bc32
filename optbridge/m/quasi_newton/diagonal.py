"""Diagonal quasi-Newton methods: only the diagonal of the approximation is kept and used."""

from __future__ import annotations

import torch

from .base import HessianUpdateStrategy, masked_inv


def diagonal_bfgs_(h, s, y, ok, tol) -> None:
    """Diagonal of the BFGS inverse update of :math:`\\mathrm{diag}(h)`, applied when
    :math:`s^T y > tol`:

    .. math::
        h_+ = h + (\\rho + \\rho^2\\, y^T \\mathrm{diag}(h)\\, y)\\, s \\odot s
        - 2 \\rho\\, h \\odot y \\odot s, \\qquad \\rho = 1 / s^T y
    """
    sy = s.dot(y)
    yhy = (y * h).dot(y)
    ok = ok & (sy > tol) & torch.isfinite(yhy)
    rho = masked_inv(sy, ok)
    c = rho + rho * rho * torch.where(ok, yhy, torch.zeros_like(yhy))
    h.add_(c * s * s - 2 * rho * h * y * s)


def diagonal_sr1_(h, a, b, ok, tol) -> None:
    """Diagonal of the SR1 update of :math:`\\mathrm{diag}(h)` towards :math:`h \\odot b = a`:

    .. math::
        z = a - h \\odot b, \\qquad h_+ = h + \\frac{z \\odot z}{z^T b}

    applied when :math:`|z^T b| > tol \\|z\\| \\|b\\|`.
    """
    z = a - h * b
    den = z.dot(b)
    c = masked_inv(den, ok & (den.abs() > tol * z.norm() * b.norm()))
    h.add_(c * z * z)


class _DiagonalDefaults(HessianUpdateStrategy):
    diagonal = True

    def __init__(self, init_scale="auto", tol: float = 1e-32, ptol: float | None = 1e-32,
                 ptol_restart: bool = False, gtol: float | None = 1e-32, restart_interval=None,
                 beta: float | None = None, update_freq: int = 1, scale_first: bool = False,
                 scale_second: bool = False, concat_params: bool = True, inverse: bool = True,
                 inner=None):
        super().__init__(
            init_scale=init_scale, tol=tol, ptol=ptol, ptol_restart=ptol_restart, gtol=gtol,
            restart_interval=restart_interval, beta=beta, update_freq=update_freq,
            scale_first=scale_first, scale_second=scale_second, concat_params=concat_params,
            inverse=inverse, inner=inner,
        )


class DiagonalBFGS(_DiagonalDefaults):
    """Diagonal BFGS: the diagonal of the BFGS update of a diagonal approximation
    :math:`\\mathrm{diag}(h)` of the inverse Hessian.

    .. math::
        h_{k+1} = h_k + (\\rho_k + \\rho_k^2 \\textstyle\\sum_i h_i y_i^2)\\, s_k^2
        - 2 \\rho_k\\, h_k y_k s_k, \\quad \\rho_k = 1/s_k^T y_k, \\qquad u_k = h_k g_k

    (elementwise products). It does not satisfy the secant equation. O(n) memory. The
    arguments are described in :class:`HessianUpdateStrategy` (``inverse`` is always true).

    Reference: the BFGS update, Nocedal & Wright, *Numerical Optimization* (2006), eq. 6.17.
    """

    def update_H(self, H, s, y, g, ok, slot, settings):
        diagonal_bfgs_(H, s, y, ok, settings["tol"])


class DiagonalSR1(_DiagonalDefaults):
    """Diagonal SR1: the diagonal of the SR1 update of a diagonal approximation.

    .. math::
        z_k = s_k - h_k y_k, \\quad h_{k+1} = h_k + \\frac{z_k^2}{z_k^T y_k},
        \\qquad u_k = h_k g_k

    (elementwise products), or with ``inverse=False`` the same for the diagonal ``b`` of the
    Hessian with ``s`` and ``y`` swapped, :math:`u_k = g_k / b_k`. Skipped when
    :math:`|z^T y| \\le tol \\|z\\| \\|y\\|`. Defaults ``init_scale=1`` and ``tol=1e-8`` as for
    :class:`SR1` (after the ``"auto"`` scaling the first denominator is zero). It does not
    satisfy the secant equation. O(n) memory. The arguments are described in
    :class:`HessianUpdateStrategy`.

    Reference: the SR1 update, Nocedal & Wright, *Numerical Optimization* (2006), eq. 6.24-6.25.
    """

    has_B = True

    def __init__(self, init_scale=1.0, tol: float = 1e-8, ptol: float | None = 1e-32,
                 ptol_restart: bool = False, gtol: float | None = 1e-32, restart_interval=None,
                 beta: float | None = None, update_freq: int = 1, scale_first: bool = False,
                 scale_second: bool = False, concat_params: bool = True, inverse: bool = True,
                 inner=None):
        super().__init__(
            init_scale=init_scale, tol=tol, ptol=ptol, ptol_restart=ptol_restart, gtol=gtol,
            restart_interval=restart_interval, beta=beta, update_freq=update_freq,
            scale_first=scale_first, scale_second=scale_second, concat_params=concat_params,
            inverse=inverse, inner=inner,
        )

    def update_H(self, H, s, y, g, ok, slot, settings):
        diagonal_sr1_(H, s, y, ok, settings["tol"])

    def update_B(self, B, s, y, g, ok, slot, settings):
        diagonal_sr1_(B, y, s, ok, settings["tol"])
