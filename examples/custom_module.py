"""Writing a new module in a few lines.

An elementwise rule subclasses ``optbridge.Transform``: declare the hyperparameters with a
validation rule each, then implement ``transform(update, part)``. Settings arrive as plain
numbers in ``part.settings`` (param groups may override them by name), per-parameter state
lives in ``part.buffers(...)`` and is checkpointed by ``state_dict()`` automatically.

This file defines ``SignMomentum`` (Signum: the sign of an EMA of the updates, Bernstein et al.
2018, https://arxiv.org/abs/1802.04434) and uses it in a chain.
Run: ``python examples/custom_module.py``
"""

from __future__ import annotations

import torch

import optbridge as ob
from optbridge import m
from optbridge.core import checks


class SignMomentum(ob.Transform):
    """``buf <- beta * buf + (1 - beta) * u``; output ``sign(buf)``."""

    def __init__(self, beta: float = 0.9):
        super().__init__(dict(beta=beta), rules=dict(beta=checks.unit_interval))

    def transform(self, update, part):
        buf = part.buffers("momentum")  # zeros on the first step, one per parameter
        torch._foreach_lerp_(buf, update, 1 - part.settings["beta"])
        return torch._foreach_sign(buf)  # a fresh list: the chain owns it


def main() -> None:
    torch.manual_seed(0)
    x = torch.randn(256, 8)
    w_true = torch.randn(8, 1)
    y = x @ w_true
    model = torch.nn.Linear(8, 1, bias=False)
    opt = ob.Modular(model.parameters(), m.ClipValue(10.0), SignMomentum(0.9), m.LR(0.01))
    for step in range(300):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == 299:
            print(f"step {step:3d}  loss {loss.item():.5f}")
    print("state of the custom module:", sorted(opt.state[model.weight]["1"]))


if __name__ == "__main__":
    main()
