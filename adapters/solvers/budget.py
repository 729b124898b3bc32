"""Evaluation budget: exactly ``n`` objective evaluations, enforced from the solver callback."""

from __future__ import annotations

import numbers


def check_budget(budget, where: str):
    """Validate ``budget`` (None or an int >= 1); ``ValueError`` naming ``where`` otherwise."""
    if budget is None:
        return None
    if isinstance(budget, bool) or not isinstance(budget, numbers.Integral) or budget < 1:
        raise ValueError(f"{where}: budget must be None or an integer >= 1, got {budget!r}")
    return int(budget)


class Budget:
    """Counts evaluations; ``take()`` raises ``stop_exc`` once ``limit`` were used.

    The solver is also told its own limit (``maxeval``/``maxfev``); ``take`` guarantees the
    limit when a solver would evaluate more than asked (some algorithms overshoot).
    """

    __slots__ = ("limit", "used", "stop_exc")

    def __init__(self, limit: int | None, stop_exc: type[BaseException], used: int = 0):
        self.limit, self.used, self.stop_exc = limit, used, stop_exc

    @property
    def exhausted(self) -> bool:
        return self.limit is not None and self.used >= self.limit

    @property
    def remaining(self) -> int | None:
        return None if self.limit is None else max(self.limit - self.used, 0)

    def take(self) -> None:
        used, limit = self.used, self.limit
        if limit is not None and used >= limit:
            raise self.stop_exc("evaluation budget exhausted")
        self.used = used + 1
