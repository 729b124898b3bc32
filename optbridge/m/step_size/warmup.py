"""Linear warmup: of the step-size factor (``Warmup``) or of a cap on the update norm
(``WarmupNormClip``)."""

from __future__ import annotations

from ...core import checks
from ...core import foreach as fe
from ...core.module import Module
from ._common import linear_schedule, scale_by_tensor


class Warmup(Module):
    """Linear warmup of a step-size multiplier (Goyal et al., 2017,
    https://arxiv.org/abs/1706.02677).

    .. math::
        u_t \\leftarrow \\Big(a_0 + (a_1 - a_0)\\,\\frac{\\min(t, T)}{T}\\Big)\\, u_t,
        \\qquad t = 0, 1, 2, \\dots

    The factor is a Python number, folded lazily into the parameter update (no pass over
    memory); the module can go anywhere in the chain, e.g. ``[Adam(), LR(1e-2), Warmup(1000)]``.

    Args:
        steps: :math:`T`, number of steps over which the multiplier grows.
        start_lr: :math:`a_0`, the multiplier on the first step.
        end_lr: :math:`a_1`, the multiplier from step :math:`T` on.
    """

    def __init__(self, steps: int = 100, start_lr: float = 1e-5, end_lr: float = 1.0):
        super().__init__(
            dict(steps=steps, start_lr=start_lr, end_lr=end_lr),
            rules=dict(steps=checks.positive_int, start_lr=checks.nonnegative,
                       end_lr=checks.nonnegative),
        )

    def step(self, ctx) -> None:
        if not ctx.params:
            return
        steps, start, end = self.settings(ctx, "steps", "start_lr", "end_lr")
        t = self.global_state.get("step", 0)
        self.global_state["step"] = t + 1
        factor = linear_schedule(t, steps, start, end)
        if fe.is_list(factor) or factor != 1:
            ctx.scale_update(factor)


class WarmupNormClip(Module):
    """Warmup by capping the global norm of the update with a linearly growing threshold.

    .. math::
        c_t = c_0 + (c_1 - c_0)\\,\\frac{t}{T},\\qquad
        u_t \\leftarrow u_t \\cdot \\min\\Big(1, \\frac{c_t}{\\lVert u_t \\rVert_2}\\Big)
        \\quad (t = 0, \\dots, T)

    After step :math:`T` the update passes unchanged. The norm is over all parameters together,
    as in ``torch.nn.utils.clip_grad_norm_`` (norm clipping: Pascanu et al., 2013,
    https://arxiv.org/abs/1211.5063); the factor stays a device tensor (no host sync). Put it
    before ``LR``: ``[Adam(), WarmupNormClip(1000), LR(1e-2)]``.

    Args:
        steps: :math:`T`, number of warmup steps.
        start_norm: :math:`c_0`, the largest update norm allowed on the first step.
        end_norm: :math:`c_1`, the largest update norm allowed on step :math:`T`.
    """

    def __init__(self, steps: int = 100, start_norm: float = 1e-5, end_norm: float = 1.0):
        super().__init__(
            dict(steps=steps, start_norm=start_norm, end_norm=end_norm),
            rules=dict(steps=checks.positive_int, start_norm=checks.positive,
                       end_norm=checks.positive),
        )

    def step(self, ctx) -> None:
        if not ctx.params:
            return
        steps = self.uniform_setting(ctx, "steps")
        start = self.uniform_setting(ctx, "start_norm")
        end = self.uniform_setting(ctx, "end_norm")
        t = self.global_state.get("step", 0)
        if t > steps:
            return
        self.global_state["step"] = t + 1
        max_norm = linear_schedule(t, steps, start, end)
        norm = fe.global_norm(ctx.update, 2.0)
        scale_by_tensor(ctx, (max_norm / norm).clamp_(max=1.0))
