"""The MARS gradient correction of the native optimizers' ``mars`` flag.

MARS (Yuan et al., 2024, "MARS: Unleashing the Power of Variance Reduction for Training Large
Models", https://arxiv.org/abs/2411.10438) replaces the gradient by

.. math::
    c_t = g_t + \\gamma \\frac{\\beta_1}{1-\\beta_1} (g_t - g_{t-1}),\\qquad c_1 = g_1

:meth:`.base.NativeOptimizer.prepared_grad` applies it with the optimizer's
:meth:`~.base.NativeOptimizer.mars_beta1`. The previous gradient lives in the
``mars_prev_grad`` slot, created at the first corrected step: that step is recognised by the
slot not existing yet (no step count is read, so no host sync; also right when ``mars`` is
switched on later).
"""

from __future__ import annotations

import torch

PREV = "mars_prev_grad"


def mars_corrected(g: torch.Tensor, state: dict, beta1: float, gamma: float,
                   slot_dtype: torch.dtype) -> torch.Tensor:
    """:math:`c_t` for the prepared gradient ``g`` (a fresh tensor); stores ``g`` as the next
    step's :math:`g_{t-1}` in ``state["mars_prev_grad"]`` (created in ``slot_dtype``)."""
    prev = state.get(PREV)
    if prev is None:
        state[PREV] = g.to(slot_dtype, copy=True)
        return g
    corrected = g + (gamma * beta1 / (1 - beta1)) * (g - prev.to(g.dtype))
    prev.copy_(g)
    return corrected
