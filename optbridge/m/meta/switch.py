"""Choosing one of several sub-chains per step: Alternate (cycle) and Switch (at given steps)."""

from __future__ import annotations

import bisect

from ...core.module import Module
from ._common import run_inline


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


class _Choose(Module):
    """Runs one of its sub-chains per step on the step's context; the others keep their state
    untouched until their turn. ``global_state["step"]`` counts this module's steps."""

    def __init__(self, chains):
        super().__init__()
        if not chains:
            raise ValueError(
                f"{self.name}: needs at least one chain (a module or a list of modules)"
            )
        for i, c in enumerate(chains):
            self.set_child(str(i), c)
        self.needs_grad = any(c.needs_grad for c in self.children.values())

    def index(self, t: int) -> int:
        raise NotImplementedError

    def step(self, ctx) -> None:
        t = self.global_state.get("step", 0)
        self.global_state["step"] = t + 1
        run_inline(ctx, self.children[str(self.index(t))])


class Alternate(_Choose):
    """Cycles through sub-chains: ``steps[0]`` steps with the first, ``steps[1]`` with the
    second, ..., then again from the first.

    .. math::
        \\text{chain at step } t = \\min\\{i : (t \\bmod S) < s_0 + \\dots + s_i\\},\\quad
        S = \\textstyle\\sum_i s_i

    Each chain keeps its own state, which only changes on its turns. Different fixed step sizes
    per chain are ``StepSize`` (a param group holds one ``lr``, so two ``LR`` with different
    defaults are rejected by ``Modular``). Example::

        Alternate([Adam(), StepSize(1e-2)], [HeavyBall(), StepSize(1e-3)])

    Args:
        *chains: modules or lists of modules.
        steps: steps per turn: one int for every chain, or one int per chain.
    """

    def __init__(self, *chains, steps=1):
        super().__init__(chains)
        if _is_count(steps):
            steps = [steps] * len(chains)
        elif isinstance(steps, (list, tuple)) and all(_is_count(s) for s in steps):
            steps = list(steps)
            if len(steps) != len(chains):
                raise ValueError(
                    f"{self.name}: steps has {len(steps)} entries for {len(chains)} chains"
                )
        else:
            raise ValueError(
                f"{self.name}: invalid steps={steps!r}; expected an int >= 1 or one int >= 1 "
                "per chain"
            )
        self.steps = steps
        self._ends = [sum(steps[: i + 1]) for i in range(len(steps))]

    def index(self, t: int) -> int:
        return bisect.bisect_right(self._ends, t % self._ends[-1])


class Switch(_Choose):
    """Runs the first sub-chain until step ``steps[0]``, then the second until ``steps[1]``,
    ..., and the last one from ``steps[-1]`` on.

    .. math::
        \\text{chain at step } t = \\#\\{i : t \\ge k_i\\}\\quad(t = 0, 1, \\dots)

    Example: ``Switch([Adam(), LR(1e-3)], [LBFGS(), Backtracking()], steps=[1000])`` runs Adam
    on steps 0..999 and L-BFGS from step 1000.

    Args:
        *chains: modules or lists of modules.
        steps: the switch steps :math:`k_1 < k_2 < \\dots`, one fewer than the chains; one int
            :math:`k` means every :math:`k` steps (:math:`k, 2k, \\dots`).
    """

    def __init__(self, *chains, steps):
        super().__init__(chains)
        n = len(chains) - 1
        if _is_count(steps):
            points = [steps * (i + 1) for i in range(n)]
        elif isinstance(steps, (list, tuple)) and all(_is_count(s) for s in steps):
            points = list(steps)
            if len(points) != n:
                raise ValueError(
                    f"{self.name}: steps has {len(points)} switch points for {len(chains)} chains; "
                    f"expected {n}"
                )
            if any(b <= a for a, b in zip(points, points[1:])):
                raise ValueError(f"{self.name}: steps must be increasing, got {points}")
        else:
            raise ValueError(
                f"{self.name}: invalid steps={steps!r}; expected increasing ints >= 1 "
                "(the steps at which to switch)"
            )
        self.steps = points

    def index(self, t: int) -> int:
        return bisect.bisect_right(self.steps, t)
