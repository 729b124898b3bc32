"""Validators for module hyperparameters.

Every module declares a rule per hyperparameter; the rule runs on the module's defaults at
construction and on every param-group override, so a bad value fails before any state changes.
A rule is a callable ``rule(value) -> str | None`` returning a description of what was expected
when the value is invalid.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

Rule = Callable[[object], "str | None"]


def _is_real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _finite(v) -> bool:
    return _is_real(v) and math.isfinite(v)


def number(v):
    """Any finite real number."""
    return None if _finite(v) else "a finite number"


def positive(v):
    """A finite number > 0."""
    return None if _finite(v) and v > 0 else "a finite number > 0"


def nonnegative(v):
    """A finite number >= 0."""
    return None if _finite(v) and v >= 0 else "a finite number >= 0"


def unit_interval(v):
    """A number in [0, 1) — the range of an EMA decay such as Adam's betas."""
    return None if _finite(v) and 0 <= v < 1 else "a number in [0, 1)"


def closed_unit_interval(v):
    """A number in [0, 1]."""
    return None if _finite(v) and 0 <= v <= 1 else "a number in [0, 1]"


def boolean(v):
    """True or False."""
    return None if isinstance(v, bool) else "True or False"


def positive_int(v):
    """An int >= 1."""
    return None if isinstance(v, int) and not isinstance(v, bool) and v >= 1 else "an int >= 1"


def nonnegative_int(v):
    """An int >= 0."""
    return None if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else "an int >= 0"


def anything(v):
    """No constraint (for values checked by the module itself)."""
    return None


def optional(rule: Rule) -> Rule:
    """``None`` or a value accepted by ``rule``."""

    def check(v):
        if v is None:
            return None
        msg = rule(v)
        return None if msg is None else f"None or {msg}"

    check.__doc__ = f"None or {rule.__doc__}"
    return check


def one_of(*choices) -> Rule:
    """One of the given values."""

    def check(v):
        return None if v in choices else "one of " + ", ".join(repr(c) for c in choices)

    return check


def interval(low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> Rule:
    """A finite number in the interval between ``low`` and ``high``."""
    left, right = ("(" if low_open else "["), (")" if high_open else "]")

    def check(v):
        if not _finite(v):
            return f"a number in {left}{low}, {high}{right}"
        ok_low = v > low if low_open else v >= low
        ok_high = v < high if high_open else v <= high
        return None if ok_low and ok_high else f"a number in {left}{low}, {high}{right}"

    return check


def pair(rule: Rule) -> Rule:
    """A pair ``(a, b)`` whose elements satisfy ``rule``."""

    def check(v):
        if not isinstance(v, (tuple, list)) or len(v) != 2:
            return "a pair (a, b)"
        for x in v:
            msg = rule(x)
            if msg is not None:
                return f"a pair of {msg}"
        return None

    return check


def check_value(owner: str, name: str, value, rule: Rule) -> None:
    """Raise ``ValueError`` naming ``owner`` and ``name`` when ``value`` breaks ``rule``."""
    msg = rule(value)
    if msg is not None:
        raise ValueError(f"{owner}: invalid {name}={value!r}; expected {msg}")
