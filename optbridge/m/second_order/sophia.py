"""SophiaH (Liu et al., 2023, https://arxiv.org/abs/2305.14342)."""

from __future__ import annotations

import torch

from ...core import checks
from ...core import foreach as fe
from ...core.module import Module
from ._common import SeededGenerator, hvp_method_rule
from .adahessian import DISTRIBUTIONS
from .hutchinson import scheduled_hutchinson
from .newton import rhs


class SophiaH(Module):
    """Sophia with the Hutchinson Hessian-diagonal estimator: momentum divided by an EMA of
    diagonal estimates, clipped elementwise (Liu, Li, Hall, Liang & Ma, "Sophia: A Scalable
    Stochastic Second-order Optimizer for Language Model Pre-training", 2023,
    https://arxiv.org/abs/2305.14342, Algorithm 1 with Hutchinson). No learning rate: chain an
    ``LR``.

    .. math::
        m_t = \\beta_1 m_{t-1} + (1-\\beta_1) u_t

        h_t = \\beta_2 h_{t-k} + (1-\\beta_2)\\, \\hat h_t \\quad (t \\equiv 1 \\bmod k),\\qquad
        \\hat h = \\tfrac1S \\textstyle\\sum_s z_s \\odot \\nabla^2 f\\, z_s

        \\text{update} = \\operatorname{clip}\\big(m_t / \\max(\\gamma\\, h_t, \\epsilon),
        -c, c\\big)

    with ``γ = precond_scale``, ``c = clip``, ``k = update_freq`` (the first estimate on step 1;
    ``h`` is kept in between). No bias correction (as in the paper). ``u`` is the incoming update
    or ``inner``'s output. Weight decay: chain a weight-decay module.

    Args:
        beta1: momentum decay.
        beta2: decay of the diagonal EMA.
        update_freq: ``k``, steps between diagonal estimates.
        precond_scale: ``γ``.
        clip: ``c``, elementwise bound of the update.
        eps: lower bound of ``γ h`` (negative estimates become ``eps``, giving a clipped
            sign-like step).
        hvp_method: ``"autograd"``, ``"batched_autograd"``, ``"fd_forward"``, ``"fd_central"``.
        h: finite-difference step.
        n_samples: random vectors per estimate ``S``.
        seed: seed of the random vectors (state checkpointed in ``global_state``).
        distribution: ``"gaussian"`` (the paper's ``u ~ N(0, I)``, torchzero's default) or
            ``"rademacher"``.
        inner: modules whose output is the momentum's input.

    Random vectors are drawn as in :class:`AdaHessian`. Evaluations: on estimate steps, the
    engine's ``closure(True)`` plus one ``closure(False)`` (autograd) or ``S`` / ``2S``
    ``closure(True)`` (finite differences); other steps only the engine's evaluation.
    """

    def __init__(self, beta1: float = 0.96, beta2: float = 0.99, update_freq: int = 10,
                 precond_scale: float = 1.0, clip: float = 1.0, eps: float = 1e-12,
                 hvp_method: str = "autograd", h: float = 1e-3, n_samples: int = 1,
                 seed: int | None = None, distribution: str = "gaussian", inner=None):
        super().__init__(
            dict(beta1=beta1, beta2=beta2, update_freq=update_freq, precond_scale=precond_scale,
                 clip=clip, eps=eps, hvp_method=hvp_method, h=h, n_samples=n_samples, seed=seed,
                 distribution=distribution),
            rules=dict(beta1=checks.unit_interval, beta2=checks.unit_interval,
                       update_freq=checks.positive_int, precond_scale=checks.positive,
                       clip=checks.positive, eps=checks.positive, hvp_method=hvp_method_rule,
                       h=checks.positive, n_samples=checks.positive_int,
                       seed=checks.optional(checks.nonnegative_int),
                       distribution=checks.one_of(*DISTRIBUTIONS)),
        )
        self.set_child("inner", inner)
        self._rng = SeededGenerator(self)

    def step(self, ctx) -> None:
        params = ctx.params
        if not params:
            return
        states, _, D = scheduled_hutchinson(self, ctx, "hess_diag")
        beta1, beta2, gamma, clip, eps = self.settings(
            ctx, "beta1", "beta2", "precond_scale", "clip", "eps")
        u = rhs(self, ctx)
        exp_avg = fe.state_buffers(states, params, "exp_avg")
        fe.ema_(exp_avg, u, beta1)
        hd = fe.state_buffers(states, params, "hess_diag")
        if D is not None:
            fe.ema_(hd, D, beta2)
        denom = torch._foreach_mul(hd, gamma)
        torch._foreach_clamp_min_(denom, eps)
        out = torch._foreach_div(exp_avg, denom)
        torch._foreach_clamp_min_(out, fe.scalar_map(lambda c: -c, clip))
        torch._foreach_clamp_max_(out, clip)
        ctx.set_update(out, owned=True)
