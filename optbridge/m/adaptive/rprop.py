"""Rprop (Riedmiller & Braun, 1993, "A direct adaptive method for faster backpropagation
learning: the RPROP algorithm", https://doi.org/10.1109/ICNN.1993.298623)."""

from __future__ import annotations

import math

import torch

from ...core import checks
from ...core.module import Transform


class Rprop(Transform):
    """Resilient propagation: a per-element step size that grows while the gradient keeps its
    sign and shrinks when it flips; the output is the step itself (it owns its step sizes, so
    chain no ``LR``).

    .. math::
        \\eta_t = \\operatorname{clip}\\bigl(\\eta_{t-1}\\cdot
            \\begin{cases} \\eta^+ & g_t g_{t-1} > 0 \\\\ \\eta^- & g_t g_{t-1} < 0 \\\\
            1 & \\text{otherwise}\\end{cases},\\ [\\eta_{\\min}, \\eta_{\\max}]\\bigr)

        u_t = \\operatorname{sign}(g_t)\\,\\eta_t \\ \\text{where the sign did not flip};
        \\text{where it flipped:}\\ g_t \\leftarrow 0 \\text{ and }
        u_t = -u_{t-1} \\text{ (backtrack) or } 0

    The stored :math:`g_t` is the one after zeroing, so a flipped element neither grows nor
    shrinks on the next step. ``Modular(ps, Rprop(alpha=lr, backtrack=False))`` follows
    ``torch.optim.Rprop(ps, lr=lr)`` (torch's ``etas=(nminus, nplus)``,
    ``step_sizes=(lb, ub)``). A param group's ``lr`` still multiplies the output of a chain
    without an ``LR`` module (it defaults to 1), so give the initial step as ``alpha``.
    ``backtrack=True`` is the paper's weight-backtracking: it undoes this module's previous
    output, which undoes the previous parameter change only when nothing after the module
    rescales it differently from one step to the next.

    Args:
        nplus: :math:`\\eta^+ > 1`, growth factor while the sign is kept.
        nminus: :math:`\\eta^- \\in (0, 1)`, shrink factor when the sign flips.
        lb: :math:`\\eta_{\\min}`, lower bound of the step sizes (``None``: no bound).
        ub: :math:`\\eta_{\\max}`, upper bound of the step sizes (``None``: no bound).
        backtrack: on a sign flip, undo the previous output instead of outputting 0.
        alpha: initial step size of every element (torch's ``lr``).
        maximize: ascend (use :math:`-g`).
    """

    inplace = False

    def __init__(self, nplus: float = 1.2, nminus: float = 0.5, lb: float | None = 1e-6,
                 ub: float | None = 50.0, backtrack: bool = True, alpha: float = 1.0,
                 maximize: bool = False):
        super().__init__(
            dict(nplus=nplus, nminus=nminus, lb=lb, ub=ub, backtrack=backtrack, alpha=alpha,
                 maximize=maximize),
            rules=dict(nplus=checks.interval(1.0, math.inf, low_open=True, high_open=True),
                       nminus=checks.interval(0.0, 1.0, low_open=True, high_open=True),
                       lb=checks.optional(checks.nonnegative), ub=checks.optional(checks.positive),
                       backtrack=checks.boolean, alpha=checks.positive, maximize=checks.boolean),
        )
        self._check_bounds(lb, ub)

    def _check_bounds(self, lb, ub):
        if lb is not None and ub is not None and lb > ub:
            raise ValueError(f"{self.name}: invalid lb={lb!r}, ub={ub!r}; expected lb <= ub")

    def transform(self, update, part):
        s = part.settings
        self._check_bounds(s["lb"], s["ub"])
        alpha = s["alpha"]
        prev = part.buffers("prev")
        step_size = part.buffers("step_size", init=lambda p: torch.full_like(p, alpha))

        # sign of g_t * g_{t-1}, in {-1, 0, 1}
        flip = torch._foreach_mul(update, prev)
        if s["maximize"]:
            torch._foreach_neg_(flip)
        torch._foreach_sign_(flip)
        # step sizes *= nplus where the sign is kept, then *= nminus where it flipped: every
        # element is multiplied by its factor and by 1, so it rounds as torch's one multiply
        out = torch._foreach_mul(flip, s["nplus"])
        torch._foreach_clamp_min_(out, 1.0)
        torch._foreach_mul_(step_size, out)
        torch._foreach_add_(flip, 1.0)
        torch._foreach_clamp_min_(flip, s["nminus"])
        torch._foreach_clamp_max_(flip, 1.0)
        torch._foreach_mul_(step_size, flip)
        if s["lb"] is not None:
            torch._foreach_clamp_min_(step_size, s["lb"])
        if s["ub"] is not None:
            torch._foreach_clamp_max_(step_size, s["ub"])
        keep = flip
        torch._foreach_floor_(keep)  # nminus -> 0 where the sign flipped, 1 elsewhere

        torch._foreach_copy_(prev, update)
        if s["maximize"]:
            torch._foreach_neg_(prev)
        torch._foreach_mul_(prev, keep)
        torch._foreach_copy_(out, prev)
        torch._foreach_sign_(out)
        torch._foreach_mul_(out, step_size)
        if s["backtrack"]:
            prev_update = part.buffers("prev_update")
            torch._foreach_sub_(keep, 1.0)
            torch._foreach_addcmul_(out, keep, prev_update)
            torch._foreach_copy_(prev_update, out)
        return out
