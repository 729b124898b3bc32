"""Closures that evaluate the user's objective at a moved point and put the parameters back.

The modules of this family replace ``ctx.closure`` for the modules after them. Every
evaluation saves the parameters into a scratch copy, moves them, calls the original closure and
copies the saved values back (``x + h - h`` is not ``x`` in floating point, a copy is).
"""

from __future__ import annotations

import math
import numbers

import torch

from ...core.closure import ClosureError
from ...core.context import StepContext


def norm_p(v):
    """The order of the perturbation's norm ball: a number > 1, or ``inf``."""
    ok = (isinstance(v, numbers.Real) and not isinstance(v, bool)
          and (v == math.inf or (math.isfinite(v) and v > 1)))
    return None if ok else "a number > 1 or inf"


def at_point(ctx: StepContext, closure) -> StepContext:
    """A context over ``ctx``'s parameters whose gradient is evaluated by ``closure`` at the
    parameters' current values (the original closure, not a rewritten one)."""
    out = StepContext(ctx.optimizer, ctx.params, ctx.keys, ctx.spans, closure, ctx.step_index)
    out.module, out.parent = ctx.module, ctx
    return out


class MovedClosure:
    """``closure(backward)`` of the user's objective evaluated at ``move(params)``.

    ``move(params, backward)`` moves the parameters in place (it may evaluate the original
    closure first, e.g. SAM's gradient at the current point); the parameters are restored from
    a copy afterwards. ``owner`` names the module in errors.
    """

    def __init__(self, owner: str, ctx: StepContext, closure, move):
        self.owner = owner
        self.ctx = ctx
        self.closure = closure
        self.move = move
        self._scratch = None

    def _save(self, params):
        if self._scratch is None:
            self._scratch = [p.clone() for p in params]
        else:
            torch._foreach_copy_(self._scratch, params)
        return self._scratch

    def __call__(self, backward: bool = True):
        params = self.ctx.params
        if not backward:
            self._check_loss_only()
        backup = self._save(params)
        try:
            self.move(params, backward)
            return self.closure(backward)
        except ClosureError as e:
            if backward or str(e).startswith(self.owner + ":"):
                raise
            raise ClosureError(f"{self.owner}: {e}") from e
        finally:
            torch._foreach_copy_(params, backup)

    def _check_loss_only(self) -> None:
        if getattr(self.closure, "takes_backward", True) is False:
            raise ClosureError(
                f"{self.owner}: a module after {self.owner} needs a loss-only evaluation of the "
                f"{self.owner} objective, closure(backward=False), but the closure takes no "
                "arguments. Define it as `def closure(backward=True): ...` and call "
                "loss.backward() only when backward is true."
            )
