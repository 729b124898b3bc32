"""Interleaved timing of competing callables: the ratio, not the absolute time, is the result."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def time_interleaved(fns: dict[str, Callable[[], None]], *, steps: int = 50, rounds: int = 15,
                     warmup: int = 10) -> dict[str, float]:
    """Median seconds per call of each function, measured in alternating blocks of ``steps``."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                fn()
            samples[name].append((time.perf_counter() - t0) / steps)
    return {k: statistics.median(v) for k, v in samples.items()}


def report(title: str, times: dict[str, float], baseline: str, goal: float | None = None) -> float:
    """Print a small table of times and ratios to ``baseline``; returns the worst ratio."""
    base = times[baseline]
    print(f"\n{title}")
    worst = 0.0
    for name, t in times.items():
        ratio = t / base
        if name != baseline:
            worst = max(worst, ratio)
        mark = ""
        if goal is not None and name != baseline:
            mark = "  ok" if ratio <= goal else f"  ABOVE GOAL {goal}x"
        print(f"  {name:<48} {t * 1e6:10.1f} us   {ratio:5.2f}x{mark}")
    return worst
