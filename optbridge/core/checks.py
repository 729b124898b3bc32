"""Validators for module hyperparameters.

Every module declares a rule per hyperparameter; the rule runs on the module's defaults at
construction and on every param-group override, so a bad value fails before any state changes.
A rule is a callable ``rule(value) -> str | None`` returning a description of what was expected
when the value is invalid. Parametrised rules are small classes, not closures, so modules holding
them stay picklable.
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


class optional:
    """``None`` or a value accepted by ``rule``."""

    def __init__(self, rule: Rule):
        self.rule = rule

    def __call__(self, v):
        if v is None:
            return None
        msg = self.rule(v)
        return None if msg is None else f"None or {msg}"


class one_of:
    """One of the given values."""

    def __init__(self, *choices):
        self.choices = choices

    def __call__(self, v):
        if any(isinstance(v, bool) == isinstance(c, bool) and v == c for c in self.choices):
            return None
        return "one of " + ", ".join(repr(c) for c in self.choices)


class interval:
    """A finite number in the interval between ``low`` and ``high``."""

    def __init__(self, low: float, high: float, *, low_open: bool = False, high_open: bool = False):
        self.low, self.high, self.low_open, self.high_open = low, high, low_open, high_open

    def __call__(self, v):
        left, right = ("(" if self.low_open else "["), (")" if self.high_open else "]")
        expected = f"a number in {left}{self.low}, {self.high}{right}"
        if not _finite(v):
            return expected
        ok_low = v > self.low if self.low_open else v >= self.low
        ok_high = v < self.high if self.high_open else v <= self.high
        return None if ok_low and ok_high else expected


class pair:
    """A pair ``(a, b)`` whose elements satisfy ``rule``."""

    def __init__(self, rule: Rule):
        self.rule = rule

    def __call__(self, v):
        if not isinstance(v, (tuple, list)) or len(v) != 2:
            return "a pair (a, b)"
        for x in v:
            msg = self.rule(x)
            if msg is not None:
                return f"a pair of {msg}"
        return None


def norm_order(v):
    """A norm order: a number > 0 or ``inf``."""
    ok = _is_real(v) and (v == math.inf or (math.isfinite(v) and v > 0))
    return None if ok else "a number > 0 or inf"


def nonzero(v):
    """A finite number other than 0."""
    return None if _finite(v) and v != 0 else "a finite nonzero number"


def check_value(owner: str, name: str, value, rule: Rule) -> None:
    """Raise ``ValueError`` naming ``owner`` and ``name`` when ``value`` breaks ``rule``."""
    msg = rule(value)
    if msg is not None:
        raise ValueError(f"{owner}: invalid {name}={value!r}; expected {msg}")
