"""Powell's symmetric Broyden method."""

from __future__ import annotations

from .base import QuasiNewtonDefaults, low_rank_update_, masked_inv


def psb_B_(B, s, y, ok, tol) -> None:
    """Powell-symmetric-Broyden update, applied when :math:`s^T s > tol`:

    .. math::
        r = y - B s, \\qquad B_+ = B + \\frac{r s^T + s r^T}{s^T s}
        - \\frac{(r^T s)\\, s s^T}{(s^T s)^2}
    """
    r = y - B @ s
    ss = s.dot(s)
    inv = masked_inv(ss, ok & (ss > tol))
    k = r.dot(s) * inv * inv
    low_rank_update_(B, [inv * r - k * s, inv * s], [s, r])


class PSB(QuasiNewtonDefaults):
    """Powell's symmetric Broyden (PSB) quasi-Newton method; it keeps the Hessian
    approximation ``B`` (``inverse=False`` only) and solves :math:`B_k u_k = g_k` (LU).

    .. math::
        B_{k+1} = B_k + \\frac{r_k s_k^T + s_k r_k^T}{s_k^T s_k}
        - \\frac{(r_k^T s_k) s_k s_k^T}{(s_k^T s_k)^2}, \\quad r_k = y_k - B_k s_k

    ``B`` stays symmetric and satisfies :math:`B_{k+1} s_k = y_k` but need not be positive
    definite: a line search or a trust region is recommended.

    Reference: M. J. D. Powell, "A new algorithm for unconstrained optimization", in Nonlinear
    Programming (1970) 31-65; Spedicato & Huang, Computing 58 (1997) 69-89. The arguments are
    described in :class:`HessianUpdateStrategy`.
    """

    has_H = False
    has_B = True

    def update_B(self, B, s, y, g, ok, slot, settings):
        psb_B_(B, s, y, ok, settings["tol"])
