"""Batching helpers of the matrix optimizers: gather same-shape matrices into stacks.

A parameter of shape ``(..., rows, cols)`` contributes ``prod(...)`` matrices; Muon views 4-D
convolution filters as one ``(out, in*kh*kw)`` matrix (:func:`muon_matrices`). Matrices are
stored in their wide orientation (``rows <= cols``; tall ones transposed) so that a tall and a
wide matrix with swapped dimensions share a stack.
"""

from __future__ import annotations

from collections import defaultdict

import torch


def muon_matrices(t: torch.Tensor) -> torch.Tensor:
    """``t`` as a batch of matrices ``(n, rows, cols)`` the way Keller Jordan's ``muon_update``
    sees it: 4-D (convolution) tensors as ``(shape[0], -1)``, other tensors as a batch over
    their leading dimensions."""
    if t.ndim == 4:
        t = t.view(t.shape[0], -1)
    return t.reshape(-1, *t.shape[-2:])


def wide(mats: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """``(matrices in wide orientation, whether they were tall)``."""
    tall = mats.size(-2) > mats.size(-1)
    return (mats.mT if tall else mats), tall


def group_by(items, key) -> dict:
    """Items grouped by ``key(item)``, in first-seen order."""
    out: dict = defaultdict(list)
    for item in items:
        out[key(item)].append(item)
    return out
