"""Gradient centralization."""

from __future__ import annotations

import math

import torch

from ...core import checks
from ._common import OwnershipTransform, complex_flags, complex_views, dim_spec, reduce_dims


class Centralize(OwnershipTransform):
    """Subtracts the mean of the update (gradient centralization, Yong, Huang, Hua & Zhang,
    2020, https://arxiv.org/abs/2004.01461).

    .. math::
        u \\leftarrow u - \\operatorname{mean}_{D}(u)

    where :math:`D` are the reduced dimensions. The defaults are the paper's rule: for every
    tensor with at least two dimensions, the mean over all dimensions but the first (one mean per
    output unit) is removed; vectors and scalars are left alone.

    Args:
        dim: ``"global"``, subtract the mean of all parameters' entries together; ``None``,
            each tensor's mean over all its entries; an int or a sequence of ints, the mean over
            those dimensions of each tensor (tensors lacking them are left alone).
        inverse_dims: with an int or sequence ``dim``, reduce over all the *other* dimensions
            (the default ``dim=0, inverse_dims=True`` reduces over every dimension but the first).
        min_size: tensors whose reduced slices have fewer elements than this are left alone
            (the default 2 skips slices of one element, whose centred value would be 0).
    """

    def __init__(self, dim=0, inverse_dims: bool = True, min_size: int = 2):
        super().__init__(
            dict(dim=dim, inverse_dims=inverse_dims, min_size=min_size),
            rules=dict(dim=dim_spec, inverse_dims=checks.boolean, min_size=checks.nonnegative_int),
        )

    def transform(self, update, part):
        s = part.settings
        flags = complex_flags(part)
        views = complex_views(update, flags)
        if s["dim"] == "global":
            total = torch.stack([t.sum() for t in views]).sum()
            mean = total / sum(t.numel() for t in views)
            if flags is None:
                means = [mean] * len(update)
            else:
                means = [torch.view_as_real(mean.to(t.dtype)) if f else mean.real
                         for t, f in zip(views, flags)]
        else:
            flags = flags or [False] * len(views)
            means = [self._mean(t, s, f) for t, f in zip(views, flags)]
        if self.owned(part):
            torch._foreach_sub_(update, means)
            return update
        return torch._foreach_sub(update, means)

    @staticmethod
    def _mean(t, s, is_complex):
        """Mean of ``t`` over the reduced dimensions (kept as size 1), or 0 to leave it alone."""
        dims = reduce_dims(t, s["dim"], s["inverse_dims"])
        v = t.reshape(1) if t.ndim == 0 else t
        if not dims or math.prod(v.shape[d] for d in dims) < s["min_size"]:
            return torch.zeros((), dtype=t.real.dtype, device=t.device)
        mean = v.mean(dim=dims, keepdim=True)
        if t.ndim == 0:
            mean = mean.reshape(())
        return torch.view_as_real(mean) if is_complex else mean
