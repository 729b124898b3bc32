"""Per-element bounds for solvers working on the flattened parameter vector.

Accepted forms (``where`` names the adapter in errors):

- ``None``: unbounded;
- ``(low, high)``: the same bounds for every parameter;
- a list with one entry per parameter (in ``ctx.params`` order), each ``(low, high)`` or
  ``None``.

``low``/``high`` are numbers, tensors (or arrays) broadcastable to the parameter, or ``None``
(= -inf / +inf, a one-sided bound). The result is a pair of float64 vectors with ``-inf``/``inf``
where unbounded (NLopt's ``-HUGE_VAL``/``HUGE_VAL``).
"""

from __future__ import annotations

import numbers

import numpy as np
import torch


def _is_value(v) -> bool:
    return v is None or isinstance(v, (numbers.Real, torch.Tensor, np.ndarray)) and not isinstance(v, bool)


def _is_pair(b) -> bool:
    return isinstance(b, (tuple, list)) and len(b) == 2 and all(_is_value(v) for v in b)


def check_bounds(bounds, where: str):
    """Validate the form of ``bounds`` (constructor time); returns them normalized to
    ``None``, a pair, or a list of pairs/None."""
    if bounds is None:
        return None
    if _is_pair(bounds):
        _check_numbers(bounds, where, "bounds")
        return tuple(bounds)
    if isinstance(bounds, (tuple, list)):
        out = []
        for i, b in enumerate(bounds):
            if b is None:
                out.append(None)
            elif _is_pair(b):
                _check_numbers(b, where, f"bounds[{i}]")
                out.append(tuple(b))
            else:
                raise ValueError(
                    f"{where}: bounds[{i}] must be a (low, high) pair or None, got {b!r}"
                )
        return out
    raise ValueError(
        f"{where}: bounds must be None, a (low, high) pair or a list of pairs (one per "
        f"parameter), got {type(bounds).__name__}"
    )


def _check_numbers(pair, where, arg):
    low, high = pair
    if isinstance(low, numbers.Real) and isinstance(high, numbers.Real) and not low <= high:
        raise ValueError(f"{where}: {arg} has low > high ({low} > {high})")


def _expand(v, p: torch.Tensor, fill: float, where: str, arg: str) -> np.ndarray:
    if v is None:
        return np.full(p.numel(), fill)
    t = torch.as_tensor(v, dtype=torch.float64).detach().cpu()
    try:
        t = torch.broadcast_to(t, p.shape)
    except RuntimeError:
        raise ValueError(
            f"{where}: {arg} of shape {tuple(t.shape)} does not broadcast to the parameter's "
            f"shape {tuple(p.shape)}"
        ) from None
    out = t.reshape(-1).numpy().copy()
    if np.isnan(out).any():
        raise ValueError(f"{where}: {arg} contains NaN")
    return out


def resolve_bounds(bounds, params: list[torch.Tensor], where: str):
    """``(lb, ub)`` float64 vectors over the flattened ``params``, or ``None`` when unbounded.
    Raises ``ValueError`` on a shape mismatch or low > high."""
    if bounds is None:
        return None
    if isinstance(bounds, tuple):
        per = [bounds] * len(params)
    else:
        if len(bounds) != len(params):
            raise ValueError(
                f"{where}: bounds has {len(bounds)} entries but {len(params)} parameters take part"
            )
        per = bounds
    lows, highs = [], []
    for i, (p, b) in enumerate(zip(params, per)):
        low, high = (None, None) if b is None else b
        lo = _expand(low, p, -np.inf, where, f"bounds[{i}] low")
        hi = _expand(high, p, np.inf, where, f"bounds[{i}] high")
        if (lo > hi).any():
            j = int(np.argmax(lo > hi))
            raise ValueError(f"{where}: bounds[{i}] has low > high at element {j} ({lo[j]} > {hi[j]})")
        lows.append(lo)
        highs.append(hi)
    return np.concatenate(lows), np.concatenate(highs)
