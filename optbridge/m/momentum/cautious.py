"""Cautious updates: keep only the coordinates whose sign agrees with a reference direction."""

from __future__ import annotations

import torch

from ...core import checks
from ...core import foreach as fe
from ...core.module import Module, Transform
from ._common import scatter, setting_buckets, subset

_MODES = ("zero", "grad", "backtrack")


def caution(update, reference, normalize: bool, eps: float, mode: str) -> list[torch.Tensor]:
    """New tensors: ``update`` where ``update * reference > 0``; elsewhere zero (``"zero"``),
    ``reference`` (``"grad"``) or ``-update`` (``"backtrack"``). With ``normalize`` and mode
    ``"zero"`` the result is divided by the kept fraction (clamped below by ``eps``)."""
    mask = torch._foreach_mul(update, reference)
    torch._foreach_sign_(mask)
    torch._foreach_clamp_min_(mask, 0.0)  # 1 where the signs agree, 0 elsewhere
    if mode == "grad":
        return torch._foreach_lerp(reference, update, mask)
    if mode == "backtrack":
        torch._foreach_mul_(mask, 2.0)
        torch._foreach_sub_(mask, 1.0)
    elif normalize:
        kept = torch.stack(torch._foreach_norm(mask, 1)).sum() / fe.numel(mask)
        torch._foreach_div_(mask, kept.clamp_(min=eps))
    torch._foreach_mul_(mask, update)
    return mask


def _rules():
    return dict(normalize=checks.boolean, eps=checks.positive, mode=checks.one_of(*_MODES))


class Cautious(Transform):
    """Cautious optimizer mask (Liang et al., 2024, "Cautious Optimizers: Improving Training with
    One Line of Code", https://arxiv.org/abs/2411.16085). Put it after a momentum-based module.

    .. math::
        \\phi_i = \\mathbb{1}[u_i g_i > 0],\\qquad
        \\text{output } \\frac{u \\odot \\phi}{\\max(\\operatorname{mean}(\\phi), \\epsilon)}
        \\ \\text{(normalize)} \\quad\\text{or}\\quad u \\odot \\phi

    where :math:`u` is the update, :math:`g` the gradient and the mean runs over every element
    of the parameters sharing this module's settings (all of them unless param groups override
    them).

    Args:
        normalize: divide by the fraction of kept coordinates, as in the paper (mode ``"zero"``
            only).
        eps: lower bound of that fraction.
        mode: what the disagreeing coordinates become: ``"zero"`` (the paper), ``"grad"`` (the
            gradient) or ``"backtrack"`` (the negated update).
    """

    inplace = False

    def __init__(self, normalize: bool = False, eps: float = 1e-6, mode: str = "zero"):
        super().__init__(dict(normalize=normalize, eps=eps, mode=mode), rules=_rules())

    def transform(self, update, part):
        s = part.settings
        return caution(update, part.grads, s["normalize"], s["eps"], s["mode"])


class IntermoduleCautious(Module):
    """:class:`Cautious` with the sign reference given by another sub-chain.

    .. math::
        m = \\text{main}(u),\\quad c = \\text{compare}(u),\\quad \\phi_i = \\mathbb{1}[m_i c_i > 0],
        \\quad \\text{output } m \\odot \\phi \\ (\\text{divided by } \\max(\\operatorname{mean}
        \\phi, \\epsilon) \\text{ with normalize})

    Both sub-chains receive the incoming update. Reference: Liang et al., 2024,
    https://arxiv.org/abs/2411.16085.

    Args:
        main: module or list of modules whose output is masked.
        compare: module or list of modules giving the reference signs.
        normalize, eps, mode: as in :class:`Cautious` (``"grad"`` substitutes ``compare``'s
            output).
    """

    def __init__(self, main, compare, normalize: bool = False, eps: float = 1e-6,
                 mode: str = "zero"):
        super().__init__(dict(normalize=normalize, eps=eps, mode=mode), rules=_rules())
        self.set_child("main", main)
        self.set_child("compare", compare)

    def step(self, ctx) -> None:
        if not ctx.params:
            return
        main = self.run_child(ctx, "main").update
        compare = self.run_child(ctx, "compare").update
        buckets = setting_buckets(self, ctx)
        pieces = [
            (idx, caution(subset(main, idx), subset(compare, idx), s["normalize"], s["eps"], s["mode"]))
            for s, idx in buckets
        ]
        out = pieces[0][1] if len(pieces) == 1 else scatter(len(ctx.params), pieces)
        ctx.set_update(out, owned=True)
