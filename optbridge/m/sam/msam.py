"""Momentum-SAM: sharpness-aware steps with the perturbation along the momentum."""

from __future__ import annotations

import torch

from ...core import checks
from ...core import foreach as fe
from ...core.module import Module


class MSAM(Module):
    """Momentum-SAM (Becker et al., 2024, https://arxiv.org/abs/2401.12033): the gradient is
    taken at weights moved along the (descent) momentum direction, at no extra evaluation.

    The optimizer's parameters are the perturbed point :math:`x_t = w_t - a_t`; the weights
    :math:`w_t` are :math:`x_t + a_t` (:meth:`unperturbed_params`). With :math:`g_t` the
    incoming update (the gradient at :math:`x_t`) and :math:`d` the ``modules`` sub-chain:

    .. math::
        v_{t+1} = \\mu v_t + g_t \\quad(\\text{lerp: } \\mu v_t + (1-\\mu) g_t),\\qquad
        n_{t+1} = v_{t+1} \\quad(\\text{nesterov: } g_t + \\mu v_{t+1}
        \\text{, lerp: } (1-\\mu) g_t + \\mu v_{t+1})

        a_{t+1} = \\rho\\, n_{t+1} / \\lVert n_{t+1} \\rVert_2,\\qquad a_0 = 0

        u_t = d(g_t) + a_{t+1} - a_t + \\lambda (x_t + a_t)

    so :math:`w_{t+1} = w_t - d(g_t) - \\lambda w_t` and :math:`x_{t+1} = w_{t+1} - a_{t+1}`.
    ``MSAM([HeavyBall(mu), LR(lr)], momentum=mu)`` is the paper's MSAM-SGD; the learning rate
    belongs inside ``modules`` (an ``LR`` after MSAM would also scale the perturbation terms).
    The norm is over all parameters. State: the momentum :math:`v` and the perturbation
    :math:`a` (one buffer each per parameter).

    Args:
        modules: the sub-chain that makes the step of the weights from :math:`g_t` (include
            the ``LR``).
        momentum: :math:`\\mu` in [0, 1), decay of MSAM's own momentum.
        rho: :math:`\\rho \\ge 0`, length of the perturbation.
        weight_decay: :math:`\\lambda \\ge 0`, decay of the unperturbed weights (not scaled by
            the learning rate).
        nesterov: perturb along the Nesterov direction :math:`n_{t+1}` above.
        lerp: average instead of accumulate (:math:`(1-\\mu)` on :math:`g_t`).
    """

    def __init__(self, modules, momentum: float = 0.9, rho: float = 0.3, weight_decay: float = 0.0,
                 nesterov: bool = False, lerp: bool = False):
        super().__init__(
            dict(momentum=momentum, rho=rho, weight_decay=weight_decay, nesterov=nesterov,
                 lerp=lerp),
            rules=dict(momentum=checks.unit_interval, rho=checks.nonnegative,
                       weight_decay=checks.nonnegative, nesterov=checks.boolean,
                       lerp=checks.boolean),
        )
        if modules is None:
            raise TypeError(f"{self.name}: modules is required (the sub-chain with the LR)")
        self.set_child("modules", modules)

    def step(self, ctx) -> None:
        if not ctx.params:
            return
        mu, rho, wd = self.settings(ctx, "momentum", "rho", "weight_decay")
        nesterov = self.uniform_setting(ctx, "nesterov")
        lerp = self.uniform_setting(ctx, "lerp")
        g = ctx.update
        states = self.param_states(ctx)
        velocity = fe.state_buffers(states, ctx.params, "velocity")
        pert = fe.state_buffers(states, ctx.params, "perturbation")

        sub = self.run_child(ctx, "modules", g)
        u = sub.mutable_update()
        if fe.is_list(wd) or wd != 0:
            fe.add_scaled_(u, ctx.params, wd)
            fe.add_scaled_(u, pert, wd)
        torch._foreach_sub_(u, pert)

        if lerp:
            fe.ema_(velocity, g, mu)
        else:
            torch._foreach_mul_(velocity, mu)
            torch._foreach_add_(velocity, g)
        torch._foreach_copy_(pert, velocity if not nesterov else g)
        if nesterov:
            if lerp:
                torch._foreach_mul_(pert, fe.scalar_map(lambda b: 1 - b, mu))
            fe.add_scaled_(pert, velocity, mu)
        norm = fe.global_norm(pert, 2.0)
        torch._foreach_div_(pert, norm.clamp_min(torch.finfo(norm.dtype).tiny))
        torch._foreach_mul_(pert, rho)
        torch._foreach_add_(u, pert)
        ctx.set_update(u, owned=True)

    def unperturbed_params(self) -> list[torch.Tensor]:
        """The weights :math:`w = x + a` (new tensors, one per parameter this module has
        stepped, in param-group order); the optimizer's parameters hold :math:`x`."""
        opt = getattr(self, "_optimizer", None)
        if opt is None:
            raise RuntimeError(f"{self.name}: not part of an optimizer yet")
        out = []
        for group in opt.param_groups:
            for p in group["params"]:
                a = opt.state.get(p, {}).get(self.key, {}).get("perturbation")
                if a is not None:
                    x = torch.view_as_real(p) if p.is_complex() else p
                    w = x.detach() + a
                    out.append(torch.view_as_complex(w) if p.is_complex() else w)
        return out
