"""SaveBest: remember the parameters with the lowest loss."""

from __future__ import annotations

import math

import torch

from ...core.module import Module


class SaveBest(Module):
    """Keeps a copy of the parameters with the lowest loss seen so far; put it last.

    .. math::
        \\text{if } f(x_t) < f_{best}:\\quad f_{best} \\leftarrow f(x_t),\\ x_{best} \\leftarrow x_t

    with :math:`f(x_t)` the loss at each step's starting point (needs a closure). The update
    passes through unchanged. The parameters are put at :math:`x_{best}`:

    - automatically on the step where the optimizer terminates (a termination module earlier
      in the chain fired): that step's update is skipped, so after the last step the
      parameters hold the best point evaluated;
    - on demand with :meth:`restore_best` (e.g. after a fixed number of steps).

    The comparison and the copy run on the device (no host sync). State: one copy of the
    parameters and the best loss (``best_loss``), both checkpointed.
    """

    def step(self, ctx) -> None:
        if not ctx.params:
            return
        ctx.require_closure("it compares the loss of every step")
        loss = ctx.get_loss().detach()
        best = self.global_state.get("best_loss")
        states = self.param_states(ctx)
        if best is None or any("best_params" not in s for s in states):
            for s, p in zip(states, ctx.params):
                s["best_params"] = p.detach().clone()
            better = ~torch.isnan(loss)
            self.global_state["best_loss"] = torch.where(better, loss, math.inf)
        else:
            better = loss < best
            self.global_state["best_loss"] = torch.where(better, loss, best)
            # lerp with weight 0 or 1 is exact: the copy holds x_t or keeps x_best bit for bit
            saved = [s["best_params"] for s in states]
            dtypes = {p.dtype for p in ctx.params}
            if len(dtypes) == 1:
                torch._foreach_lerp_(saved, ctx.params, better.to(dtypes.pop()))
            else:
                for b, p in zip(saved, ctx.params):
                    b.lerp_(p, better.to(p.dtype))
        if ctx.optimizer.terminated:
            self._restore(ctx.params, states)
            ctx.skip_update = True

    @property
    def best_loss(self) -> float:
        """The lowest loss seen (``inf`` before the first step)."""
        best = self.global_state.get("best_loss")
        return math.inf if best is None else float(best)

    @torch.no_grad()
    def restore_best(self) -> None:
        """Copy the best parameters into the optimizer's parameters."""
        opt = getattr(self, "_optimizer", None)
        if opt is None:
            raise RuntimeError(f"{self.name}: not part of an optimizer yet")
        for group in opt.param_groups:
            for p in group["params"]:
                b = opt.state.get(p, {}).get(self.key, {}).get("best_params")
                if b is not None:
                    (torch.view_as_real(p) if p.is_complex() else p).copy_(b)

    @staticmethod
    def _restore(params, states) -> None:
        torch._foreach_copy_(params, [s["best_params"] for s in states])
