"""Helpers shared by the second-order modules: flat layout, seeded randomness, validators."""

from __future__ import annotations

import torch

from ...core import checks

HVP_METHODS = ("autograd", "batched_autograd", "fd_forward", "fd_central")


def optional_callable(v):
    """None or a callable."""
    return None if v is None or callable(v) else "None or a callable"


hvp_method_rule = checks.one_of(*HVP_METHODS)


class Layout:
    """The parameters of a step seen as one flat vector (real views, in ``ctx.params`` order).

    The flat dtype is the promotion of the parameters' dtypes; ``unflatten`` returns views of the
    flat vector (cast back per parameter when dtypes differ).
    """

    __slots__ = ("shapes", "numels", "dtypes", "n", "dtype", "device")

    def __init__(self, tensors: list[torch.Tensor]):
        self.shapes = [t.shape for t in tensors]
        self.numels = [t.numel() for t in tensors]
        self.dtypes = [t.dtype for t in tensors]
        self.n = sum(self.numels)
        dtype = tensors[0].dtype
        for t in tensors[1:]:
            dtype = torch.promote_types(dtype, t.dtype)
        self.dtype = dtype
        self.device = tensors[0].device

    def flatten(self, tensors) -> torch.Tensor:
        """A new flat vector holding ``tensors`` (never a view of them)."""
        return torch.cat([t.reshape(-1).to(self.dtype) for t in tensors])

    def unflatten(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Per-parameter tensors shaped like the parameters (views of ``flat`` when possible)."""
        out = []
        for piece, shape, dt in zip(flat.split(self.numels), self.shapes, self.dtypes):
            piece = piece.view(shape)
            out.append(piece if dt == flat.dtype else piece.to(dt))
        return out

    def unflatten_rows(self, mat: torch.Tensor) -> list[torch.Tensor]:
        """Rows of ``mat`` (k, n) as per-parameter batches (k, *shape)."""
        k = mat.shape[0]
        out = []
        for piece, shape, dt in zip(mat.split(self.numels, dim=1), self.shapes, self.dtypes):
            piece = piece.reshape(k, *shape)
            out.append(piece if dt == mat.dtype else piece.to(dt))
        return out


class SeededGenerator:
    """A ``torch.Generator`` whose state is kept in a module's ``global_state``.

    The state is saved after every draw (``global_state["rng_state"]``), so a checkpoint restores
    the exact random stream. Without a seed, the first use draws one from torch's global RNG
    (reproducible under ``torch.manual_seed``).
    """

    __slots__ = ("module", "gen", "saved")

    def __init__(self, module):
        self.module = module
        self.gen: torch.Generator | None = None
        self.saved = None

    def get(self, seed, device) -> torch.Generator:
        gs = self.module.global_state
        state = gs.get("rng_state")
        if self.gen is None or self.gen.device != torch.device(device):
            self.gen, self.saved = torch.Generator(device=device), None
        if state is None:
            if seed is None:
                seed = int(torch.randint(0, 2**62, ()).item())
            self.gen.manual_seed(seed)
        elif state is not self.saved:
            self.gen.set_state(state)
        return self.gen

    def save(self) -> None:
        self.saved = self.module.global_state["rng_state"] = self.gen.get_state()


def random_matrix(gen: torch.Generator, rows: int, cols: int, distribution: str, dtype, device):
    """``rows`` x ``cols`` random values in one draw: Rademacher (``torch.randint(0, 2)`` mapped to
    ±1) or standard normal (``torch.randn``)."""
    if distribution == "rademacher":
        z = torch.randint(0, 2, (rows, cols), generator=gen, dtype=dtype, device=device)
        return z.mul_(2).sub_(1)
    return torch.randn((rows, cols), generator=gen, dtype=dtype, device=device)
