"""Scaling an update by its cosine similarity to another direction."""

from __future__ import annotations

import torch

from ...core import checks
from ...core import foreach as fe
from ...core.module import Module, Transform
from ._common import setting_buckets, subset


def cosine_similarity(a, b, eps: float) -> torch.Tensor:
    """``<a, b> / max(|a| |b|, eps)`` over all tensors, as a 0-dim tensor."""
    return fe.dot(a, b) / (fe.global_norm(a) * fe.global_norm(b)).clamp(min=eps)


class ScaleByGradCosineSimilarity(Transform):
    """Multiply the update by its cosine similarity with the gradient (a negative similarity
    flips the update).

    .. math::
        \\text{output } u \\cdot \\frac{\\langle u, g\\rangle}{\\max(\\|u\\|\\,\\|g\\|, \\epsilon)}

    The inner product and norms run over all parameters sharing this module's settings (all of
    them unless param groups override ``eps``).

    Args:
        eps: lower bound of the denominator.
    """

    def __init__(self, eps: float = 1e-6):
        super().__init__(dict(eps=eps), rules=dict(eps=checks.positive))

    def transform(self, update, part):
        cos = cosine_similarity(update, part.grads, part.settings["eps"])
        torch._foreach_mul_(update, cos)
        return update


class ScaleModulesByCosineSimilarity(Module):
    """Scale the output of sub-chain ``main`` by its cosine similarity to the output of
    ``compare`` (both run on the incoming update).

    .. math::
        m = \\text{main}(u),\\quad c = \\text{compare}(u),\\quad
        \\text{output } m \\cdot \\frac{\\langle m, c\\rangle}{\\max(\\|m\\|\\,\\|c\\|, \\epsilon)}

    Args:
        main: module or list of modules whose output is scaled.
        compare: module or list of modules to compare with.
        eps: lower bound of the denominator.
    """

    def __init__(self, main, compare, eps: float = 1e-6):
        super().__init__(dict(eps=eps), rules=dict(eps=checks.positive))
        self.set_child("main", main)
        self.set_child("compare", compare)

    def step(self, ctx) -> None:
        if not ctx.params:
            return
        main_ctx = self.run_child(ctx, "main")
        compare = self.run_child(ctx, "compare").update
        main = main_ctx.mutable_update()
        for s, idx in setting_buckets(self, ctx):
            piece = subset(main, idx)
            torch._foreach_mul_(piece, cosine_similarity(piece, subset(compare, idx), s["eps"]))
        ctx.set_update(main, owned=True)
