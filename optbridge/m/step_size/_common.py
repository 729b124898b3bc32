"""Helpers shared by modules that compute one global factor for the whole update."""

from __future__ import annotations

import torch

from ...core import foreach as fe




def scale_by_tensor(ctx, factor: torch.Tensor) -> None:
    """``update <- factor * update`` for a 0-dim tensor ``factor``, without a host sync.

    ``StepContext.scale_update`` folds numbers into the final parameter update, but its apply
    path turns a tensor into a Python number; a tensor factor is therefore multiplied in now:
    in place when the update is owned, into one new buffer otherwise.
    """
    update = ctx.update
    if ctx.update_is_owned:
        torch._foreach_mul_(update, factor)
    else:
        ctx.set_update(torch._foreach_mul(update, factor), owned=True)


def squared_norm(tensors) -> torch.Tensor:
    """Sum of squares of all elements (0-dim tensor)."""
    norms = torch._foreach_norm(tensors, 2)
    return torch.stack(norms).square().sum()


def linear_schedule(step: int, steps, start, end):
    """``start + (end - start) * min(step, steps) / steps``; arguments may be per-parameter
    lists."""
    if not (fe.is_list(steps) or fe.is_list(start) or fe.is_list(end)):
        return start + (end - start) * (min(step, steps) / steps)
    n = max(len(x) for x in (steps, start, end) if fe.is_list(x))
    cols = [x if fe.is_list(x) else [x] * n for x in (steps, start, end)]
    return [a + (b - a) * (min(step, s) / s) for s, a, b in zip(*cols)]
