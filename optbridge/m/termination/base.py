"""Base class of termination criteria and the combinators TerminateAny, TerminateAll,
TerminateNever."""

from __future__ import annotations

import math
import numbers

from ...core.module import Module


def norm_order(v):
    """A norm order: a number > 0, or ``inf``."""
    ok = (isinstance(v, numbers.Real) and not isinstance(v, bool)
          and (v == math.inf or (math.isfinite(v) and v > 0)))
    return None if ok else "a number > 0 or inf"


class TerminationCriteriaBase(Module):
    """A module that stops the optimizer when its criterion holds.

    Subclasses implement ``criterion(ctx) -> bool`` (read at the step's starting point) and
    ``describe(ctx) -> str`` (the ``stop_reason``). Modules with an ``n`` setting fire only when
    the criterion held on ``n`` consecutive steps. When the criterion fires, the module calls
    ``ctx.terminate(reason)``: the current step still completes and applies its update (the
    engine's rule), ``optimizer.terminated`` becomes true and later ``step()`` calls do nothing.
    The update passes through unchanged. Deciding needs the criterion's value on the host, so
    criteria on norms or losses synchronize once per step.
    """

    def setting(self, ctx, key: str):
        return self.uniform_setting(ctx, key) if ctx.spans else self.defaults[key]

    def criterion(self, ctx) -> bool:
        raise NotImplementedError(f"{self.name} does not implement criterion()")

    def describe(self, ctx) -> str:
        return self.name

    def check(self, ctx) -> bool:
        """Evaluate the criterion once for this step; whether the module fires."""
        hit = bool(self.criterion(ctx))
        count = self.global_state.get("n_hits", 0) + 1 if hit else 0
        self.global_state["n_hits"] = count
        n = self.setting(ctx, "n") if "n" in self.defaults else 1
        return count >= n

    def step(self, ctx) -> None:
        if self.check(ctx):
            ctx.terminate(self.describe(ctx))


class _Combination(TerminationCriteriaBase):
    def __init__(self, *criteria):
        super().__init__()
        if not criteria:
            raise ValueError(f"{self.name}: needs at least one termination criterion")
        for i, c in enumerate(criteria):
            if not isinstance(c, TerminationCriteriaBase):
                raise TypeError(
                    f"{self.name}: criterion {i} must be a termination criterion (e.g. "
                    f"TerminateAfterNSteps(100)), got {type(c).__name__}"
                )
            self.set_child(str(i), c)
        self._fired: list[str] = []

    def criterion(self, ctx) -> bool:
        fired = []
        for c in self.children.values():
            if c.check(ctx):  # every child is checked, so that each counts its own streak
                fired.append(c.describe(ctx))
        self._fired = fired
        return self.combine(len(fired), len(self.children))

    def describe(self, ctx) -> str:
        return f"{self.name}: " + "; ".join(self._fired)


class TerminateAny(_Combination):
    """Terminates when at least one of ``criteria`` fires (each keeps its own ``n`` streak).

    Args:
        *criteria: termination criteria modules.
    """

    @staticmethod
    def combine(n_fired: int, n: int) -> bool:
        return n_fired > 0


class TerminateAll(_Combination):
    """Terminates when all of ``criteria`` fire on the same step.

    Args:
        *criteria: termination criteria modules.
    """

    @staticmethod
    def combine(n_fired: int, n: int) -> bool:
        return n_fired == n


class TerminateNever(TerminationCriteriaBase):
    """Never terminates (a placeholder criterion)."""

    def criterion(self, ctx) -> bool:
        return False
