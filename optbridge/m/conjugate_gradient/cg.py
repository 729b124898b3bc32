"""Nonlinear conjugate gradient methods; they differ only in :math:`\\beta_k`.

Notation: :math:`y = g_k - g_{k-1}`, :math:`d = d_{k-1}` the previous direction in the engine's
sign (the step taken was along :math:`-d`). Each formula is the textbook one (Hager & Zhang,
"A survey of nonlinear conjugate gradient methods", Pacific J. Optim. 2 (2006) 35-58, table 1)
rewritten with :math:`p_{k-1} = -d`; a denominator at most twice the smallest normal number gives
:math:`\\beta = 0`.
"""

from __future__ import annotations

import torch

from ...core import foreach as fe
from .base import ConjugateGradientBase, safe_ratio

def _y(g, g_prev):
    return torch._foreach_sub(g, g_prev)


class PolakRibiere(ConjugateGradientBase):
    """Polak-Ribiere-Polyak conjugate gradient (PR+ by default: ``clip_beta=True``).

    .. math::
        \\beta_k = \\frac{g_k^T (g_k - g_{k-1})}{g_{k-1}^T g_{k-1}}, \\qquad
        d_k = g_k + \\beta_k d_{k-1}

    Args: see :class:`ConjugateGradientBase`. Put a line search after it, e.g.
    ``StrongWolfe(c2=0.1)``.

    Reference: E. Polak and G. Ribiere, Rev. Francaise Informat. Recherche Operationnelle 3
    (1969) 35-43; B. T. Polyak, USSR Comp. Math. Math. Phys. 9 (1969) 94-112.
    """

    def __init__(self, clip_beta: bool = True, restart_interval="auto"):
        super().__init__(clip_beta=clip_beta, restart_interval=restart_interval)

    def beta(self, g, g_prev, d_prev, gg, gg_prev):
        return safe_ratio(gg - fe.dot(g, g_prev), gg_prev)


class FletcherReeves(ConjugateGradientBase):
    """Fletcher-Reeves conjugate gradient.

    .. math::
        \\beta_k = \\frac{g_k^T g_k}{g_{k-1}^T g_{k-1}}, \\qquad d_k = g_k + \\beta_k d_{k-1}

    Args: see :class:`ConjugateGradientBase`. Put a line search after it, e.g.
    ``StrongWolfe(c2=0.1)``.

    Reference: R. Fletcher and C. M. Reeves, "Function minimization by conjugate gradients",
    The Computer Journal 7 (1964) 149-154.
    """

    def __init__(self, restart_interval="auto", clip_beta: bool = False):
        super().__init__(clip_beta=clip_beta, restart_interval=restart_interval)

    def beta(self, g, g_prev, d_prev, gg, gg_prev):
        return safe_ratio(gg, gg_prev)


class HestenesStiefel(ConjugateGradientBase):
    """Hestenes-Stiefel conjugate gradient.

    .. math::
        \\beta_k = \\frac{g_k^T y_k}{p_{k-1}^T y_k} = -\\frac{g_k^T y_k}{d_{k-1}^T y_k}

    Args: see :class:`ConjugateGradientBase`. Put a line search after it, e.g.
    ``StrongWolfe(c2=0.1)``.

    Reference: M. R. Hestenes and E. Stiefel, "Methods of conjugate gradients for solving
    linear systems", J. Research NBS 49 (1952) 409-436.
    """

    def __init__(self, restart_interval="auto", clip_beta: bool = False):
        super().__init__(clip_beta=clip_beta, restart_interval=restart_interval)

    def beta(self, g, g_prev, d_prev, gg, gg_prev):
        y = _y(g, g_prev)
        return safe_ratio(-fe.dot(g, y), fe.dot(d_prev, y))


class DaiYuan(ConjugateGradientBase):
    """Dai-Yuan conjugate gradient.

    .. math::
        \\beta_k = \\frac{g_k^T g_k}{p_{k-1}^T y_k} = -\\frac{g_k^T g_k}{d_{k-1}^T y_k}

    Args: see :class:`ConjugateGradientBase`. Put a line search after it, e.g.
    ``StrongWolfe(c2=0.1)``.

    Reference: Y. H. Dai and Y. Yuan, "A nonlinear conjugate gradient method with a strong global
    convergence property", SIAM J. Optim. 10 (1999) 177-182.
    """

    def __init__(self, restart_interval="auto", clip_beta: bool = False):
        super().__init__(clip_beta=clip_beta, restart_interval=restart_interval)

    def beta(self, g, g_prev, d_prev, gg, gg_prev):
        y = _y(g, g_prev)
        return safe_ratio(-gg, fe.dot(d_prev, y))


class LiuStorey(ConjugateGradientBase):
    """Liu-Storey conjugate gradient.

    .. math::
        \\beta_k = \\frac{g_k^T y_k}{-p_{k-1}^T g_{k-1}} = \\frac{g_k^T y_k}{d_{k-1}^T g_{k-1}}

    Args: see :class:`ConjugateGradientBase`. Put a line search after it, e.g.
    ``StrongWolfe(c2=0.1)``.

    Reference: Y. Liu and C. Storey, "Efficient generalized conjugate gradient algorithms, part
    1: theory", J. Optim. Theory Appl. 69 (1991) 129-137.
    """

    def __init__(self, restart_interval="auto", clip_beta: bool = False):
        super().__init__(clip_beta=clip_beta, restart_interval=restart_interval)

    def beta(self, g, g_prev, d_prev, gg, gg_prev):
        return safe_ratio(gg - fe.dot(g, g_prev), fe.dot(d_prev, g_prev))


class ConjugateDescent(ConjugateGradientBase):
    """Fletcher's conjugate descent.

    .. math::
        \\beta_k = \\frac{g_k^T g_k}{-p_{k-1}^T g_{k-1}} = \\frac{g_k^T g_k}{d_{k-1}^T g_{k-1}}

    Args: see :class:`ConjugateGradientBase`. Put a line search after it, e.g.
    ``StrongWolfe(c2=0.1)``.

    Reference: R. Fletcher, *Practical Methods of Optimization*, vol. 1, Wiley 1987.
    """

    def __init__(self, restart_interval="auto", clip_beta: bool = False):
        super().__init__(clip_beta=clip_beta, restart_interval=restart_interval)

    def beta(self, g, g_prev, d_prev, gg, gg_prev):
        return safe_ratio(gg, fe.dot(d_prev, g_prev))


class HagerZhang(ConjugateGradientBase):
    """Hager-Zhang conjugate gradient (CG_DESCENT's :math:`\\beta`).

    .. math::
        \\beta_k = \\frac{1}{p^T y}\\Big(y - 2 p \\frac{\\|y\\|^2}{p^T y}\\Big)^T g_k
        = -\\frac{1}{d^T y}\\Big(g_k^T y - 2\\, d^T g_k \\frac{\\|y\\|^2}{d^T y}\\Big),
        \\quad d = d_{k-1}

    Args: see :class:`ConjugateGradientBase`. Put a line search after it, e.g.
    ``StrongWolfe(c2=0.1)``.

    Reference: W. W. Hager and H. Zhang, "A new conjugate gradient method with guaranteed descent
    and an efficient line search", SIAM J. Optim. 16 (2005) 170-192.
    """

    def __init__(self, restart_interval="auto", clip_beta: bool = False):
        super().__init__(clip_beta=clip_beta, restart_interval=restart_interval)

    def beta(self, g, g_prev, d_prev, gg, gg_prev):
        y = _y(g, g_prev)
        dy = fe.dot(d_prev, y)
        yy_over_dy = safe_ratio(fe.dot(y, y), dy)
        return safe_ratio(-(fe.dot(g, y) - 2 * fe.dot(d_prev, g) * yy_over_dy), dy)


class DYHS(ConjugateGradientBase):
    """Hybrid of Dai-Yuan and Hestenes-Stiefel.

    .. math::
        \\beta_k = \\max\\big(0, \\min(\\beta_k^{HS}, \\beta_k^{DY})\\big)

    Args: see :class:`ConjugateGradientBase`. Put a line search after it, e.g.
    ``StrongWolfe(c2=0.1)``.

    Reference: Y. H. Dai and Y. Yuan, "An efficient hybrid conjugate gradient method for
    unconstrained optimization", Annals of Operations Research 103 (2001) 33-47.
    """

    def __init__(self, restart_interval="auto", clip_beta: bool = False):
        super().__init__(clip_beta=clip_beta, restart_interval=restart_interval)

    def beta(self, g, g_prev, d_prev, gg, gg_prev):
        y = _y(g, g_prev)
        dy = fe.dot(d_prev, y)
        hs = safe_ratio(-fe.dot(g, y), dy)
        dy_beta = safe_ratio(-gg, dy)
        return torch.minimum(hs, dy_beta).clamp(min=0)


class HybridHS_DY(DYHS):
    """The same method as :class:`DYHS` (torchzero's README name for it):
    :math:`\\beta_k = \\max(0, \\min(\\beta_k^{HS}, \\beta_k^{DY}))`.

    Reference: Dai & Yuan, Annals of Operations Research 103 (2001) 33-47.
    """
