"""Modules that replace the update by something else: the gradient, the parameters, constants or
random samples (torchzero's utility ``ops``, https://github.com/inikishev/torchzero)."""

from __future__ import annotations

import math

import torch

from ...core import checks
from ...core import foreach as fe
from ...core.module import Module
from ._base import as_list


class Identity(Module):
    """Leaves the update unchanged: :math:`u \\leftarrow u`. Accepts and ignores any arguments,
    so it can stand in for any module."""

    def __init__(self, *args, **kwargs):
        super().__init__()

    def step(self, ctx) -> None:
        return None


class Noop(Identity):
    """Same as :class:`Identity`: leaves the update unchanged and ignores its arguments."""


class Clone(Module):
    """Makes the update a private copy: :math:`u \\leftarrow \\operatorname{copy}(u)`.

    A borrowed update (the gradients, or a module's state buffer) is copied; an update the chain
    already owns is private and is kept as is. Chains never need it for correctness (in-place
    ops copy borrowed updates themselves); it exists for torchzero compatibility.
    """

    def __init__(self):
        super().__init__()

    def step(self, ctx) -> None:
        if ctx.params:
            ctx.mutable_update()


class Grad(Module):
    """Replaces the update by the gradient at the starting point: :math:`u \\leftarrow g`.
    The gradient is borrowed (no copy); later in-place ops copy it first."""

    def __init__(self):
        super().__init__()

    def step(self, ctx) -> None:
        if ctx.params:
            ctx.update = list(ctx.grads)


class Params(Module):
    """Replaces the update by the parameters: :math:`u \\leftarrow x`. The parameters are
    borrowed (no copy); later in-place ops copy them first."""

    def __init__(self):
        super().__init__()

    def step(self, ctx) -> None:
        if ctx.params:
            ctx.update = list(ctx.params)


class Zeros(Module):
    """Replaces the update by zeros: :math:`u \\leftarrow 0`."""

    def __init__(self):
        super().__init__()

    def step(self, ctx) -> None:
        if ctx.params:
            ctx.set_update([torch.zeros_like(p) for p in ctx.params])


class Ones(Module):
    """Replaces the update by ones: :math:`u \\leftarrow 1`."""

    def __init__(self):
        super().__init__()

    def step(self, ctx) -> None:
        if ctx.params:
            ctx.set_update([torch.ones_like(p) for p in ctx.params])


class Fill(Module):
    """Replaces the update by a constant: :math:`u \\leftarrow c`.

    Args:
        value: the constant :math:`c`.
    """

    def __init__(self, value: float):
        super().__init__(dict(value=value), rules=dict(value=checks.number))

    def step(self, ctx) -> None:
        if ctx.params:
            values = as_list(self.settings(ctx, "value"), len(ctx.params))
            ctx.set_update([torch.full_like(p, v) for p, v in zip(ctx.params, values)])


# ------------------------------------------------------------------------------------ random
class _Random(Module):
    """A source of random tensors driven by its own seeded ``torch.Generator``.

    The generator lives on the first parameter's device; its state is kept in ``global_state``
    (``seed``, ``rng_state``) after every step, so a run restored from a checkpoint draws the
    same numbers as an uninterrupted one (a state restored on another device restarts from the
    seed). ``seed=None`` draws the seed once from torch's global generator (so
    ``torch.manual_seed`` makes the run reproducible); ``reset()`` restarts the stream.
    """

    def __init__(self, defaults: dict, rules: dict):
        super().__init__(defaults, rules)
        self._gen: torch.Generator | None = None
        self._gen_state = None  # the tensor last stored in global_state

    def _generator(self, ctx) -> torch.Generator:
        saved = self.global_state.get("rng_state")
        if self._gen is not None and saved is self._gen_state:
            return self._gen
        device = ctx.params[0].device
        gen = torch.Generator(device=device)
        if saved is not None and self.global_state.get("device") == str(device):
            gen.set_state(saved)
        else:
            seed = self.global_state.get("seed")
            if seed is None:
                seed = self.settings(ctx, "seed")
                if fe.is_list(seed):
                    raise ValueError(f"{self.name}: param groups must agree on seed")
                if seed is None:
                    seed = int(torch.randint(0, 2**62, (), dtype=torch.int64).item())
            gen.manual_seed(seed)
            self.global_state["seed"] = seed
            self.global_state["device"] = str(device)
        self._gen = gen
        return gen

    def _save(self) -> None:
        self._gen_state = self._gen.get_state()
        self.global_state["rng_state"] = self._gen_state

    def _draw(self, ctx, params, kind: str) -> list[torch.Tensor]:
        """One tensor per parameter of ``params``, in order: ``randn``, ``rand`` (in [0, 1)) or
        ``bits`` (0 or 1 with probability 1/2)."""
        gen = self._generator(ctx)
        dev = gen.device
        out = []
        # no foreach kernel draws random numbers
        for p in params:
            if kind == "randn":
                t = torch.randn(p.shape, generator=gen, device=dev, dtype=p.dtype)
            elif kind == "rand":
                t = torch.rand(p.shape, generator=gen, device=dev, dtype=p.dtype)
            else:
                t = torch.randint(0, 2, p.shape, generator=gen, device=dev, dtype=p.dtype)
            out.append(t if t.device == p.device else t.to(p.device))
        self._save()
        return out


_DISTRIBUTIONS = ("normal", "gaussian", "uniform", "rademacher", "sphere")


class RandomSample(_Random):
    """Replaces the update by random numbers with zero mean.

    .. math:: u_i \\sim \\mathcal{N}(0, v) \\ (\\text{normal}),\\quad
        \\mathcal{U}(-\\sqrt{3v}, \\sqrt{3v}) \\ (\\text{uniform}),\\quad
        \\pm\\sqrt{v} \\ (\\text{rademacher}),\\quad
        u = \\sqrt{vN}\\, z / \\lVert z \\rVert,\\ z \\sim \\mathcal{N}(0, I) \\ (\\text{sphere})

    so every distribution has per-entry second moment :math:`v` (:math:`N`: total number of
    entries). ``variance=None`` gives the unscaled distribution: standard normal, uniform on
    :math:`[-1, 1]`, :math:`\\pm 1`, or a unit vector for ``sphere``.

    Args:
        distribution: ``"normal"`` (alias ``"gaussian"``), ``"uniform"``, ``"rademacher"`` or
            ``"sphere"``.
        variance: :math:`v`, or ``None``.
        seed: seed of the module's generator (``None``: drawn from torch's global generator).
    """

    def __init__(self, distribution: str = "normal", variance: float | None = None,
                 seed: int | None = None):
        super().__init__(
            dict(distribution=distribution, variance=variance, seed=seed),
            dict(distribution=checks.one_of(*_DISTRIBUTIONS),
                 variance=checks.optional(checks.nonnegative),
                 seed=checks.optional(checks.nonnegative_int)),
        )

    def step(self, ctx) -> None:
        if not ctx.params:
            return
        dist, var = self.settings(ctx, "distribution", "variance")
        if not fe.is_list(dist):
            ctx.set_update(self._sample(ctx, ctx.params, dist, var))
            return
        # groups disagree on the distribution: one draw per distribution, over its parameters
        n = len(ctx.params)
        variances = as_list(var, n)
        buckets: dict[str, list[int]] = {}
        for i, d in enumerate(dist):
            buckets.setdefault(d, []).append(i)
        out: list = [None] * n
        for d, idx in buckets.items():
            sub_var = [variances[i] for i in idx]
            sub_var = sub_var[0] if all(v == sub_var[0] for v in sub_var) else sub_var
            for i, t in zip(idx, self._sample(ctx, [ctx.params[i] for i in idx], d, sub_var)):
                out[i] = t
        ctx.set_update(out)

    def _sample(self, ctx, params, dist: str, var) -> list[torch.Tensor]:
        def scale(mult):
            """``sqrt(mult * v)``, or 1 when v is None (the unscaled distribution)."""
            return fe.scalar_map(lambda v: 1.0 if v is None else math.sqrt(mult * v), var)

        if dist in ("normal", "gaussian"):
            out = self._draw(ctx, params, "randn")
            if var is not None:
                torch._foreach_mul_(out, scale(1.0))
            return out
        if dist == "sphere":
            out = self._draw(ctx, params, "randn")
            radius = scale(fe.numel(out))
            norm = fe.global_norm(out)
            if fe.is_list(radius):
                torch._foreach_mul_(out, [r / norm for r in radius])
            else:
                torch._foreach_mul_(out, radius / norm)
            return out
        out = self._draw(ctx, params, "rand" if dist == "uniform" else "bits")
        b = scale(3.0) if dist == "uniform" else scale(1.0)
        torch._foreach_mul_(out, fe.scalar_map(lambda x: 2 * x, b))
        torch._foreach_sub_(out, b)
        return out


class Randn(_Random):
    """Replaces the update by standard normal samples: :math:`u_i \\sim \\mathcal{N}(0, 1)`.

    Args:
        seed: seed of the module's generator (``None``: drawn from torch's global generator).
    """

    def __init__(self, seed: int | None = None):
        super().__init__(dict(seed=seed), dict(seed=checks.optional(checks.nonnegative_int)))

    def step(self, ctx) -> None:
        if ctx.params:
            ctx.set_update(self._draw(ctx, ctx.params, "randn"))


class Uniform(_Random):
    """Replaces the update by uniform samples:
    :math:`u_i \\sim \\mathcal{U}(\\text{low}, \\text{high})`.

    Args:
        low: lower end of the interval.
        high: upper end of the interval.
        seed: seed of the module's generator (``None``: drawn from torch's global generator).
    """

    def __init__(self, low: float, high: float, seed: int | None = None):
        super().__init__(dict(low=low, high=high, seed=seed),
                         dict(low=checks.number, high=checks.number,
                              seed=checks.optional(checks.nonnegative_int)))
        if low > high:
            raise ValueError(
                f"{self.name}: invalid low={low!r}, high={high!r}; expected low <= high"
            )

    def step(self, ctx) -> None:
        if not ctx.params:
            return
        low, high = self.settings(ctx, "low", "high")
        out = self._draw(ctx, ctx.params, "rand")
        if fe.is_list(low) or fe.is_list(high):
            n = len(out)
            width = [h - lo for lo, h in zip(as_list(low, n), as_list(high, n))]
        else:
            width = high - low
        torch._foreach_mul_(out, width)
        torch._foreach_add_(out, low)
        ctx.set_update(out)
