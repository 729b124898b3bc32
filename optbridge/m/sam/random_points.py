"""Objectives evaluated at randomly changed weights: WeightDropout and PerturbWeights."""

from __future__ import annotations

import torch

from ...core import checks
from ...core.module import Module
from ._closure import MovedClosure


def _probability(v):
    """A probability in [0, 1)."""
    return None if checks.number(v) is None and 0 <= v < 1 else "a number in [0, 1)"


def _distribution(v):
    """One of "normal", "uniform", "sphere"."""
    return None if v in ("normal", "uniform", "sphere") else "one of 'normal', 'uniform', 'sphere'"


class _RandomPoint(Module):
    """Draws a change of the weights once per step and rewrites the closure to evaluate there.

    The gradient and update become those of the changed objective (evaluated once, eagerly).
    ``needs_grad`` is false so that, first in a chain, no gradient is wasted at the unchanged
    point; the step then runs on every parameter that requires grad (one whose gradient stays
    ``None`` gets a zero gradient).
    """

    needs_grad = False

    def draw(self, ctx) -> list:
        raise NotImplementedError

    def apply(self, params, drawn) -> None:
        raise NotImplementedError

    def step(self, ctx) -> None:
        if not ctx.params:
            return
        ctx.require_closure(f"{self.name} evaluates the objective at changed weights")
        drawn = self.draw(ctx)
        ctx.closure = MovedClosure(self.name, ctx, ctx.closure, lambda ps, _: self.apply(ps, drawn))
        ctx.loss = ctx.evaluate(backward=True)
        ctx.update = ctx.grads


class WeightDropout(_RandomPoint):
    """Evaluates the objective with randomly dropped weights (DropConnect on the parameters;
    Wan et al., 2013, https://proceedings.mlr.press/v28/wan13.html).

    .. math::
        m_i \\sim \\mathrm{Bernoulli}(1 - p),\\qquad \\tilde f(x) = f(m \\odot x),\\qquad
        u = \\nabla f(y)\\big|_{y = m \\odot x}

    One mask per step (from torch's global generator), shared by every evaluation of the step;
    later modules' ``closure(...)`` calls evaluate :math:`f(m \\odot y)`. Like torchzero's, the
    gradient is the gradient at the dropped point (not multiplied by the mask) and the kept
    weights are not rescaled. Put it first; parameters are restored exactly after every
    evaluation. A param group with ``use_dropout=False`` keeps all its weights.

    Args:
        p: probability in [0, 1) that a weight is replaced with 0.
        use_dropout: whether to drop this group's weights (meant for param groups).
    """

    def __init__(self, p: float = 0.5, use_dropout: bool = True):
        super().__init__(
            dict(p=p, use_dropout=use_dropout),
            rules=dict(p=_probability, use_dropout=checks.boolean),
        )

    def draw(self, ctx):
        n = len(ctx.params)
        prob, use = self.settings(ctx, "p", "use_dropout")
        prob = prob if isinstance(prob, list) else [prob] * n
        use = use if isinstance(use, list) else [use] * n
        masks = []
        for x, q, on in zip(ctx.params, prob, use):
            masks.append(torch.rand_like(x) >= q if on else None)
        return masks

    def apply(self, params, masks):
        sel = [i for i, mk in enumerate(masks) if mk is not None]
        if sel:
            torch._foreach_mul_([params[i] for i in sel], [masks[i] for i in sel])


class PerturbWeights(_RandomPoint):
    """Evaluates the objective at randomly perturbed weights.

    .. math::
        \\tilde f(x) = f(x + \\delta),\\qquad
        \\delta_i = \\alpha\\, s_i\\, z_i,\\quad
        s_i = \\mathrm{mean}(|x_i|) \\text{ if relative else } 1

    per parameter tensor :math:`x_i`, with :math:`z_i` standard normal (``"normal"``), uniform on
    :math:`[-1, 1]` (``"uniform"``) or normal divided by its norm (``"sphere"``). One
    :math:`\\delta` per step (torch's global generator), shared by every evaluation of the step;
    :math:`u = \\nabla f(x + \\delta)`. Put it first; parameters are restored exactly after every
    evaluation. A param group with ``perturb=False`` is not perturbed.

    Args:
        alpha: :math:`\\alpha \\ge 0`, magnitude of the perturbation.
        relative: scale by the mean absolute value of each parameter tensor.
        distribution: ``"normal"``, ``"uniform"`` or ``"sphere"``.
        perturb: whether to perturb this group's weights (meant for param groups).
    """

    def __init__(self, alpha: float = 0.1, relative: bool = True, distribution: str = "normal",
                 perturb: bool = True):
        super().__init__(
            dict(alpha=alpha, relative=relative, distribution=distribution, perturb=perturb),
            rules=dict(alpha=checks.nonnegative, relative=checks.boolean,
                       distribution=_distribution,
                       perturb=checks.boolean),
        )

    def draw(self, ctx):
        n = len(ctx.params)
        values = self.settings(ctx, "alpha", "relative", "distribution", "perturb")
        alpha, relative, dist, on = (v if isinstance(v, list) else [v] * n for v in values)
        out = []
        for i, x in enumerate(ctx.params):
            if not on[i]:
                out.append(None)
                continue
            if dist[i] == "uniform":
                z = torch.rand_like(x).mul_(2).sub_(1)
            else:
                z = torch.randn_like(x)
                if dist[i] == "sphere":
                    z.div_(torch.linalg.vector_norm(z).clamp_min(torch.finfo(z.dtype).tiny))
            z.mul_(alpha[i])
            if relative[i]:
                z.mul_(x.abs().mean())
            out.append(z)
        return out

    def apply(self, params, deltas):
        sel = [i for i, d in enumerate(deltas) if d is not None]
        if sel:
            torch._foreach_add_([params[i] for i in sel], [deltas[i] for i in sel])
