"""Learning-rate modules."""

from __future__ import annotations

from ...core import checks
from ...core.module import Module


class LR(Module):
    """``update <- lr * update``.

    ``lr`` is the param group's ``lr``, so ``torch.optim.lr_scheduler`` schedulers drive it. The
    multiplication is folded into the final parameter update when nothing after it reads the
    update (no extra pass over memory).
    """

    def __init__(self, lr: float = 1e-3):
        super().__init__(dict(lr=lr), rules=dict(lr=checks.nonnegative))

    def step(self, ctx) -> None:
        if ctx.params:
            ctx.scale_update(self.settings(ctx, "lr"))


class StepSize(Module):
    """``update <- step_size * update``: a fixed factor that learning-rate schedulers leave alone
    (it is not the group's ``lr``)."""

    def __init__(self, step_size: float = 1e-3):
        super().__init__(dict(step_size=step_size), rules=dict(step_size=checks.number))

    def step(self, ctx) -> None:
        if ctx.params:
            ctx.scale_update(self.settings(ctx, "step_size"))
