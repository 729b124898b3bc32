"""The MARS gradient correction for the matrix optimizers (Muon, MuonLaProp, Shampoo, SOAP,
PSGDKron).

MARS (Yuan et al., 2024, "MARS: Unleashing the Power of Variance Reduction for Training Large
Models", https://arxiv.org/abs/2411.10438) replaces the gradient by

.. math::
    c_t = g_t + \\gamma \\frac{\\beta_1}{1-\\beta_1} (g_t - g_{t-1}),\\qquad c_1 = g_1

with the same arithmetic as :meth:`.base.NativeOptimizer.prepared_grad`. The matrix optimizers
keep Python-int step counts and choose :math:`\\beta_1` themselves (Muon's ``momentum``, PSGD's
``beta``), so they
call :meth:`prepared_grad` with ``mars`` off and correct here. The first step is the one where
the ``mars_prev_grad`` slot does not exist yet (also when ``mars`` is switched on later).
"""

from __future__ import annotations

import torch

PREV = "mars_prev_grad"


def without_mars(group: dict) -> dict:
    """``group`` as :meth:`prepared_grad` should see it when the caller applies MARS itself."""
    return {**group, "mars": False} if group.get("mars") else group


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
