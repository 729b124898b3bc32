"""Helpers shared by the momentum family."""

from __future__ import annotations

import torch

from ...core import foreach as fe


def state_from_update(part, name: str, update: list[torch.Tensor]):
    """State tensor ``name`` per parameter; a missing one starts as a copy of its update.

    Returns ``(buffers, old)``: ``old`` is ``None`` when every buffer already existed, else the
    positions of those that did (the others were just created)."""
    bufs, old, fresh = [], [], False
    for i, (s, u) in enumerate(zip(part.states, update)):
        b = s.get(name)
        if b is None:
            b = s[name] = u.clone(memory_format=torch.preserve_format)
            fresh = True
        else:
            old.append(i)
        bufs.append(b)
    return bufs, (old if fresh else None)


def subset(tensors: list, idx):
    """``tensors`` restricted to ``idx`` (all of them when ``idx`` is None)."""
    return tensors if idx is None else [tensors[i] for i in idx]


def momentum_(bufs, update, beta: float, dampening: float, lerp: bool) -> None:
    """``buf <- beta * buf + c * update`` with ``c = (1-beta)(1-dampening)`` when ``lerp`` else
    ``c = 1-dampening`` (torch.optim.SGD's ``mul_``/``add_``)."""
    if not bufs:
        return
    if lerp and dampening == 0:
        torch._foreach_lerp_(bufs, update, 1 - beta)
        return
    c = (1 - beta) * (1 - dampening) if lerp else 1 - dampening
    torch._foreach_mul_(bufs, beta)
    torch._foreach_add_(bufs, update, alpha=c)


def as_list(value, n: int) -> list:
    return list(value) if fe.is_list(value) else [value] * n


def setting_buckets(module, ctx) -> list[tuple[dict, list[int]]]:
    """Positions of ``ctx.params`` grouped by this module's settings: ``[(settings, idx)]``."""
    buckets: dict = {}
    for group, a, b in ctx.spans:
        s = module.group_settings(group)
        key = tuple(sorted(s.items(), key=lambda kv: kv[0]))
        buckets.setdefault(key, (s, []))[1].extend(range(a, b))
    return list(buckets.values())


def scatter(n: int, pieces) -> list:
    """Assemble per-bucket results ``[(idx, tensors)]`` into one list of ``n`` tensors."""
    out: list = [None] * n
    for idx, tensors in pieces:
        for i, t in zip(idx, tensors):
            out[i] = t
    return out
