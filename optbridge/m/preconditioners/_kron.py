"""Shared helpers of the Kronecker-factored preconditioners (Shampoo, SOAP).

A tensor of shape ``(n_1, ..., n_k)`` gets one ``n_i x n_i`` factor per preconditioned dimension.
Contracting dimension 0 with a factor moves the result's new axis to the end, so applying
``k`` contractions (or plain rotations for dimensions without a factor) in order returns the
dimensions in their original order.
"""

from __future__ import annotations

import torch


def merged_shape(shape: tuple, max_dim: int) -> tuple:
    """Adjacent dimensions merged while their product stays ``<= max_dim`` (size-1 dimensions
    vanish), the rule of the official SOAP code's ``merge_dims``; e.g. ``(6, 5) -> (30,)`` for
    ``max_dim >= 30``, ``(64, 32, 3, 3) -> (64, 288)`` for ``max_dim = 300``."""
    out: list[int] = []
    cur = 1
    for n in shape:
        if cur * n > max_dim:
            if cur > 1:
                out.append(cur)
                cur = n
            else:
                out.append(n)
                cur = 1
        else:
            cur *= n
    if cur > 1 or not out:
        out.append(cur)
    return tuple(out)


def layout(shape: tuple, merge_small: bool, max_dim: int, precondition_1d: bool):
    """``(working shape, preconditioned dimensions)`` of a tensor: dimensions of size
    ``2..max_dim`` of the (merged) shape get a factor; tensors of ``ndim <= 1`` only when
    ``precondition_1d``. An empty list means the diagonal (Adagrad) fallback."""
    if len(shape) == 0:
        return (1,), []
    work = merged_shape(shape, max_dim) if merge_small else tuple(shape)
    if len(shape) == 1 and not precondition_1d:
        return work, []
    return work, [i for i, n in enumerate(work) if 1 < n <= max_dim]


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """Precision of the factors: float32 at least (half-precision parameters are promoted)."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def outer(t: torch.Tensor, dim: int) -> torch.Tensor:
    """``t_(dim) t_(dim)^T``: the ``n_dim x n_dim`` Gram matrix of the mode-``dim`` unfolding."""
    others = [i for i in range(t.ndim) if i != dim]
    return torch.tensordot(t, t, dims=(others, others))


def contract(t: torch.Tensor, factors: list, transpose: bool = False) -> torch.Tensor:
    """Multiply every dimension of ``t`` by its factor: ``t x_1 F_1^T x_2 F_2^T ...``
    (``F_i^T`` contracted on its rows; ``transpose`` contracts on columns, i.e. uses ``F_i``).
    A ``None`` factor leaves its dimension as is."""
    for f in factors:
        if f is None:
            t = t.permute(*range(1, t.ndim), 0) if t.ndim > 1 else t
        else:
            t = torch.tensordot(t, f, dims=([0], [1 if transpose else 0]))
    return t


def stacked(mats: list, fn) -> list:
    """``fn`` applied to same-shape matrices in one batched call; returns the results as a list."""
    return list(fn(torch.stack(mats)).unbind(0))
