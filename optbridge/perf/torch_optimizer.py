"""``Modular(TorchOptimizer(cls))`` vs ``cls`` used directly: time per ``step()``.

The adapter copies the parameters into its shadows, runs the wrapped step on them and hands
``params - shadows`` to the engine, so its overhead is about three passes over the parameters
plus Python bookkeeping. Problem: 4 x ``Linear(256, 256)`` (float32, CPU), gradients computed
once before timing (only the optimizer step is timed). Goal (issue "TorchOptimizer"): <= 1.3x
the direct step.

Run: ``python -m optbridge.perf.torch_optimizer``
"""

from __future__ import annotations

import argparse
import warnings

import torch

import optbridge as ob
from optbridge.adapters import TorchOptimizer

from .timing import report, time_interleaved

CASES = [
    ("pytorch_optimizer:lion", dict(lr=1e-4)),
    ("pytorch_optimizer:adamp", dict(lr=1e-4)),
    ("torch:AdamW", dict(lr=1e-4)),
]


def _params(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(*[torch.nn.Linear(256, 256) for _ in range(4)])
    ps = list(model.parameters())
    for p in ps:
        p.grad = torch.randn_like(p) * 1e-2
    return ps


def _direct_class(name: str):
    from optbridge.adapters.torch_resolve import resolve

    return resolve(name)


def main(argv=None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    worst = 0.0
    for name, kw in CASES:
        cls = _direct_class(name)
        direct = cls(_params(), **kw)
        wrapped = ob.Modular(_params(), TorchOptimizer(name, **kw))
        times = time_interleaved({"direct": direct.step, "Modular(TorchOptimizer)": wrapped.step},
                                 steps=args.steps, rounds=args.rounds)
        worst = max(worst, report(f"{name} on 4 x Linear(256, 256), step only", times, "direct",
                                  goal=1.3))
    print(f"\nworst ratio: {worst:.2f}x (goal <= 1.3x)")
    return worst


if __name__ == "__main__":
    main()
