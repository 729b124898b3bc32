"""Non-symmetric secant updates :math:`H_+ = H + (s - H y) c^T / c^T y` for several ``c``:
Broyden's good and bad methods, Greenstadt's two methods and Thomas's "optimal" method.

Every member satisfies the secant equation :math:`H_+ y = s`; they differ in the vector ``c``
(Spedicato & Huang 1997, who list them for nonlinear equations; here the equations are
:math:`\\nabla f = 0`).
"""

from __future__ import annotations

import torch

from .base import QuasiNewtonDefaults, low_rank_update_, masked_inv


def secant_c_(H, s, y, c, ok, tol) -> None:
    """:math:`H_+ = H + \\frac{(s - H y) c^T}{c^T y}`, applied when :math:`|c^T y| > tol`."""
    cy = c.dot(y)
    k = masked_inv(cy, ok & (cy.abs() > tol))
    low_rank_update_(H, [k * (s - H @ y)], [c])


def broyden_good_B_(B, s, y, ok, tol) -> None:
    """Broyden's good update of the Jacobian: :math:`B_+ = B + \\frac{(y - B s) s^T}{s^T s}`,
    the inverse of the ``H`` form with :math:`c = H^T s` (Sherman-Morrison)."""
    ss = s.dot(s)
    k = masked_inv(ss, ok & (ss > tol))
    low_rank_update_(B, [k * (y - B @ s)], [s])


def broyden_bad_B_(B, s, y, ok, tol) -> None:
    """Inverse (Sherman-Morrison) of Broyden's bad update:
    :math:`B_+ = B + \\frac{(y - B s) y^T B}{y^T B s}`."""
    Bs = B @ s
    yB = B.mT @ y
    den = yB.dot(s)
    k = masked_inv(den, ok & (den.abs() > tol))
    low_rank_update_(B, [k * (y - Bs)], [yB])


class BroydenGood(QuasiNewtonDefaults):
    """Broyden's "good" quasi-Newton method.

    .. math::
        H_{k+1} = H_k + \\frac{(s_k - H_k y_k) s_k^T H_k}{s_k^T H_k y_k}
        \\quad (c = H^T s), \\qquad u_k = H_k g_k

    or, with ``inverse=False``, :math:`B_{k+1} = B_k + (y_k - B_k s_k) s_k^T / s_k^T s_k`. The
    approximation is not symmetric; a trust region or an accurate line search is recommended.

    Reference: C. G. Broyden, "A class of methods for solving nonlinear simultaneous equations",
    Math. Comp. 19 (1965) 577-593; Spedicato & Huang, Computing 58 (1997) 69-89. The arguments are
    described in :class:`HessianUpdateStrategy`; the update is skipped when
    :math:`|s^T H y| \\le tol`.
    """

    has_B = True

    def update_H(self, H, s, y, g, ok, slot, settings):
        secant_c_(H, s, y, H.mT @ s, ok, settings["tol"])

    def update_B(self, B, s, y, g, ok, slot, settings):
        broyden_good_B_(B, s, y, ok, settings["tol"])


class BroydenBad(QuasiNewtonDefaults):
    """Broyden's "bad" quasi-Newton method.

    .. math::
        H_{k+1} = H_k + \\frac{(s_k - H_k y_k) y_k^T}{y_k^T y_k} \\quad (c = y),
        \\qquad u_k = H_k g_k

    or, with ``inverse=False``, its exact inverse
    :math:`B_{k+1} = B_k + (y_k - B_k s_k) y_k^T B_k / y_k^T B_k s_k`. A trust region or an
    accurate line search is recommended.

    Reference: C. G. Broyden (1965), Math. Comp. 19, 577-593; Spedicato & Huang, Computing 58
    (1997) 69-89. The arguments are described in :class:`HessianUpdateStrategy`.
    """

    has_B = True

    def update_H(self, H, s, y, g, ok, slot, settings):
        secant_c_(H, s, y, y, ok, settings["tol"])

    def update_B(self, B, s, y, g, ok, slot, settings):
        broyden_bad_B_(B, s, y, ok, settings["tol"])


class Greenstadt1(QuasiNewtonDefaults):
    """Greenstadt's first quasi-Newton method.

    .. math::
        H_{k+1} = H_k + \\frac{(s_k - H_k y_k) g_{k-1}^T}{g_{k-1}^T y_k} \\quad (c = g_{k-1}),
        \\qquad u_k = H_k g_k

    with :math:`g_{k-1}` the previous gradient. A trust region or an accurate line search is
    recommended.

    Reference: J. Greenstadt, "Variations on variable-metric methods", Math. Comp. 24 (1970)
    1-22; Spedicato & Huang, Computing 58 (1997) 69-89. The arguments are described in
    :class:`HessianUpdateStrategy`.
    """

    def update_H(self, H, s, y, g, ok, slot, settings):
        secant_c_(H, s, y, g - y, ok, settings["tol"])


class Greenstadt2(QuasiNewtonDefaults):
    """Greenstadt's second quasi-Newton method.

    .. math::
        H_{k+1} = H_k + \\frac{(s_k - H_k y_k) (H_k H_k y_k)^T}{y_k^T H_k H_k y_k}
        \\quad (c = H H y), \\qquad u_k = H_k g_k

    A line search is recommended.

    Reference: J. Greenstadt (1970), Math. Comp. 24, 1-22; Spedicato & Huang, Computing 58 (1997)
    69-89. The arguments are described in :class:`HessianUpdateStrategy`.
    """

    def update_H(self, H, s, y, g, ok, slot, settings):
        secant_c_(H, s, y, H @ (H @ y), ok, settings["tol"])


def thomas_(H, R, s, y, ok, tol) -> None:
    """Thomas's update: with :math:`\\nu = \\|s\\|` and :math:`d = (R + \\tfrac{\\nu}{2} I) s`,

    .. math::
        R_+ = (1 + \\nu)\\Big(R + \\nu I - \\frac{d d^T}{d^T s}\\Big), \\qquad
        H_+ = H + \\frac{(s - H y) (H^T d)^T}{d^T H y}

    (``R`` applied when :math:`|d^T s| > tol`, ``H`` when :math:`|d^T H y| > tol`).
    """
    nu = s.norm()
    d = R @ s + (nu / 2) * s
    ds = d.dot(s)
    okR = ok & (ds.abs() > tol) & torch.isfinite(nu)
    k = masked_inv(ds, okR)
    zero = torch.zeros_like(nu)
    secant_c_(H, s, y, H.mT @ d, ok, tol)
    low_rank_update_(R, [-k * d], [d])
    R.diagonal().add_(torch.where(okR, nu, zero))
    R.mul_(torch.where(okR, 1 + nu, torch.ones_like(nu)))


class ThomasOptimalMethod(QuasiNewtonDefaults):
    """Thomas's "optimal" quasi-Newton method.

    .. math::
        H_{k+1} = H_k + \\frac{(s_k - H_k y_k) (H_k^T d_k)^T}{d_k^T H_k y_k},
        \\quad d_k = (R_k + \\tfrac{\\|s_k\\|}{2} I) s_k, \\qquad u_k = H_k g_k

    with the auxiliary matrix :math:`R_{k+1} = (1 + \\|s_k\\|)(R_k + \\|s_k\\| I -
    d_k d_k^T / d_k^T s_k)`, :math:`R_0 = I` (see :func:`thomas_`), kept in the state as ``R``
    and reset with the approximation. A line search is recommended.

    Reference: S. W. Thomas, *Sequential estimation techniques for quasi-Newton algorithms*,
    PhD thesis, Cornell University, 1975. The arguments are described in
    :class:`HessianUpdateStrategy`.
    """

    def update_H(self, H, s, y, g, ok, slot, settings):
        R = slot.get("R")
        if R is None:
            R = slot["R"] = torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
        thomas_(H, R, s, y, ok, settings["tol"])

    def on_restart(self, slot, M, s, y, settings):
        slot.pop("R", None)
        return False
