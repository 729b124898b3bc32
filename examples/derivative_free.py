"""Derivative-free optimization through closures.

The closure below never calls ``backward()`` when asked for the loss only; gradient
approximators (``FDM``, ``SPSA``, ``MeZO`` …) estimate the gradient from loss evaluations and
hand the rest of the chain a closure that returns those estimates, so any chain — here L-BFGS
with a strong-Wolfe line search — runs without autograd. Evaluation counts come from
``opt.evals``.

Run: ``python examples/derivative_free.py``
"""

from __future__ import annotations

import torch

import optbridge as ob
from optbridge import m


def rosenbrock(x: torch.Tensor) -> torch.Tensor:
    return (100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum()


def solve(name: str, *modules, steps: int = 150, reuse: bool = False) -> None:
    x = torch.tensor([-1.2, 1.0] * 5, dtype=torch.float64, requires_grad=True)
    opt = ob.Modular([x], *modules, reuse_evaluation=reuse)

    def closure(backward=True):
        loss = rosenbrock(x)
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss

    for _ in range(steps):
        opt.step(closure)
    f = rosenbrock(x.detach()).item()
    print(f"{name:<56} f = {f:9.2e}  loss-only evals {opt.evals.loss:6d}  "
          f"loss+grad evals {opt.evals.loss_and_grad:3d}")


def main() -> None:
    print("10-D Rosenbrock from (-1.2, 1, ...)\n")
    solve("autograd: [LBFGS, StrongWolfe]", m.LBFGS(), m.StrongWolfe(), reuse=True)
    solve("zeroth order: [FDM, LBFGS, StrongWolfe]", m.FDM(h=1e-6), m.LBFGS(), m.StrongWolfe())
    solve("zeroth order: [SPSA(n_samples=50), LBFGS, StrongWolfe]",
          m.SPSA(h=1e-5, n_samples=50, seed=0), m.LBFGS(), m.StrongWolfe(), steps=300)


if __name__ == "__main__":
    main()
