"""Hutchinson's estimate of the Hessian diagonal, ``E[z ⊙ Hz]``, with a checkpointed generator."""

from __future__ import annotations

import torch

from ._common import Layout, random_matrix
from .derivatives import HessianOperator


def hutchinson_diagonal(module, ctx, *, n_samples: int, distribution: str, method: str, h: float,
                        seed) -> list[torch.Tensor]:
    """``D = (1/S) Σₛ zₛ ⊙ H zₛ`` per parameter (real views, ``ctx.params`` order).

    Random vectors: ``module._rng`` (a :class:`~._common.SeededGenerator`) draws one
    ``(n_samples, n)`` matrix over the flattened parameters, ``torch.randint(0, 2)`` mapped to ±1
    (Rademacher) or ``torch.randn`` (Gaussian), in the flat dtype; row ``s`` is ``zₛ``.
    """
    lay = Layout(ctx.params)
    gen = module._rng.get(seed, lay.device)
    Z = random_matrix(gen, n_samples, lay.n, distribution, lay.dtype, lay.device)
    module._rng.save()
    Zs = lay.unflatten_rows(Z)
    with HessianOperator(ctx, module.name, method, h) as op:
        if n_samples == 1:
            z = [t[0] for t in Zs]
            D = op.mv_list(z, retain=False)
            torch._foreach_mul_(D, z)
            return D
        HZ = op.mm_list(Zs, retain=False)
    torch._foreach_mul_(HZ, Zs)
    return [t.mean(0) for t in HZ]


def scheduled_hutchinson(module, ctx, key: str):
    """Advance ``module``'s step counter (``global_state["step"]``) and, when the estimate is due
    (every ``update_freq`` steps, or when some parameter's state lacks ``key``), compute
    :func:`hutchinson_diagonal` with the module's uniform settings ``n_samples``,
    ``distribution``, ``hvp_method``, ``h`` and ``seed``.

    Returns ``(param states, fresh, D)``; ``D`` is ``None`` when not ``fresh``.
    """
    gs = module.global_state
    step = gs.get("step", 0)
    gs["step"] = step + 1
    update_freq = module.uniform_setting(ctx, "update_freq")
    states = module.param_states(ctx)
    fresh = step % update_freq == 0 or any(key not in st for st in states)
    D = None
    if fresh:
        D = hutchinson_diagonal(
            module, ctx, n_samples=module.uniform_setting(ctx, "n_samples"),
            distribution=module.uniform_setting(ctx, "distribution"),
            method=module.uniform_setting(ctx, "hvp_method"), h=module.uniform_setting(ctx, "h"),
            seed=module.uniform_setting(ctx, "seed"))
    return states, fresh, D
