"""Quick start: train a small classifier with chained optbridge modules.

Trains the same MLP on generated data with ``torch.optim.AdamW`` and with two optbridge chains
(the same AdamW written as modules, and a clipped, cautious variant), then prints the losses.
Run: ``python examples/quickstart.py``
"""

from __future__ import annotations

import torch

import optbridge as ob
from optbridge import m


def make_data(n: int = 512, dim: int = 20, classes: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=g) * 2.0
    y = torch.randint(0, classes, (n,), generator=g)
    x = centers[y] + torch.randn(n, dim, generator=g)
    return x, y


def make_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))


def train(make_opt, epochs: int = 60) -> list[float]:
    x, y = make_data()
    model = make_model()
    opt = make_opt(model.parameters())
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    losses = []
    for _ in range(epochs):
        def closure(backward=True):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            if backward:
                opt.zero_grad()
                loss.backward()
            return loss

        losses.append(float(opt.step(closure)))
        sched.step()
    return losses


def main() -> None:
    runs = {
        "torch.optim.AdamW": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=1e-2),
        "[Adam, WeightDecay, LR]": lambda p: ob.Modular(
            p, m.Adam(), m.WeightDecay(1e-2), m.LR(1e-2)),
        "[ClipNorm, Adam, Cautious, WeightDecay, LR]": lambda p: ob.Modular(
            p, m.ClipNorm(1.0), m.Adam(), m.Cautious(), m.WeightDecay(1e-2), m.LR(1e-2)),
    }
    print(f"{'optimizer':<46}{'loss@1':>10}{'loss@20':>10}{'final':>10}")
    results = {}
    for name, make in runs.items():
        losses = train(make)
        results[name] = losses
        print(f"{name:<46}{losses[0]:10.4f}{losses[19]:10.4f}{losses[-1]:10.4f}")
    a, b = results["torch.optim.AdamW"], results["[Adam, WeightDecay, LR]"]
    print(f"\nmax |loss difference| AdamW vs [Adam, WeightDecay, LR]: "
          f"{max(abs(u - v) for u, v in zip(a, b)):.2e}")


if __name__ == "__main__":
    main()
