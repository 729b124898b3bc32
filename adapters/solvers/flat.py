"""The parameters taking part as one flat float64 vector ``x`` (the solver's view), and back.

:class:`FlatParams` keeps plain flat views of the parameters (``p.detach().view(-1)``: same
storage and version counter as ``p``) so that writing a point costs one ``copy_`` per tensor:
operations on ``nn.Parameter`` objects themselves go through ``__torch_function__`` and cost
several microseconds each, which matters at one solver evaluation per step. A single contiguous
float64 CPU parameter (the common case) is written through its numpy view (``array[...] = x``, then
the version counter is bumped as ``torch.autograd.graph.increment_version`` does so in-place checks still see the change): about a
third of the cost of a torch ``copy_``.
"""

from __future__ import annotations

import numpy as np
import torch


class FlatParams:
    __slots__ = ("key", "params", "views", "sizes", "size", "_fast", "_array", "_bump")

    def __init__(self, params):
        self.key = tuple(map(id, params))
        self.params = list(params)  # keeps the ids in `key` valid
        self.views = []
        self.sizes = []
        for p in self.params:
            d = p.detach()
            self.views.append(d.view(-1) if d.is_contiguous() else None)
            self.sizes.append(d.numel())
        self.size = sum(self.sizes)
        v = self.views[0] if len(self.views) == 1 else None
        self._fast = v is not None and type(v) is torch.Tensor and v.dtype == torch.float64 \
            and v.device.type == "cpu"
        self._array = v.numpy() if self._fast else None  # same memory as the parameter
        self._bump = (v,)  # for torch._C._increment_version (what increment_version calls)

    def matches(self, params) -> bool:
        key = self.key
        if len(params) != len(key):
            return False
        if len(key) == 1:
            return id(params[0]) == key[0]
        return all(id(p) == k for p, k in zip(params, key))

    def write(self, x: np.ndarray) -> None:
        """Copy the flat float64 point ``x`` into the parameters, in place."""
        if self._array is not None:
            self._array[...] = x
            torch._C._increment_version(self._bump)
            return
        src = torch.from_numpy(x if x.flags.writeable else x.copy())
        if len(self.views) == 1 and self.views[0] is not None:
            self.views[0].copy_(src)
            return
        pos = 0
        for p, v, n in zip(self.params, self.views, self.sizes):
            part = src[pos:pos + n]
            if v is not None:
                v.copy_(part)
            else:
                p.detach().copy_(part.view(p.shape))
            pos += n

    def read(self) -> np.ndarray:
        """A new float64 vector with the parameters' current values."""
        if self._fast:
            return self.views[0].numpy().copy()
        return flatten(self.params)


def flatten(tensors) -> np.ndarray:
    """The tensors concatenated into one new float64 numpy vector."""
    if not tensors:
        return np.zeros(0)
    if len(tensors) == 1:
        t = tensors[0].detach().reshape(-1)
        return t.to("cpu", torch.float64, copy=True).numpy()
    return torch.cat([t.detach().reshape(-1).to("cpu", torch.float64) for t in tensors]).numpy()
