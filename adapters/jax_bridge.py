"""Torch <-> JAX array exchange for the JAX adapters (DLPack, zero-copy where possible).

Imported only by the adapters' constructors: importing this module imports ``jax``.

- :func:`require_jax` imports ``jax``/``optax`` or raises ``ImportError`` naming the extra.
- :class:`ViewCache` keeps one JAX view per position of a list of torch tensors (parameters,
  gradients) and rebuilds it only when the tensor's storage, offset, shape or dtype changed, so a
  step does not pay a DLPack import per tensor when the tensors are the same as last step.
  A cached view keeps its torch tensor alive until it is replaced (at most one extra set of
  gradients when ``zero_grad(set_to_none=True)`` reallocates them every step).

Zero-copy rules (CPU): XLA imports a torch buffer without copying when its address is aligned
(contiguous tensors from torch's allocator are); a tensor that is not contiguous, or whose data
starts at an unaligned offset (e.g. ``t[1:]`` of a float32 tensor), is copied (``copy=None``). JAX
arrays come back to torch through ``torch.from_dlpack`` without a copy.
"""

from __future__ import annotations

import torch

_EXTRA = "pip install optbridge[jax]"


def require_jax(who: str):
    """``(jax, optax)``, or ``ImportError`` naming the ``optbridge[jax]`` extra."""
    try:
        import jax
        import optax
    except ImportError as e:  # pragma: no cover - exercised by monkeypatching sys.modules
        raise ImportError(f"{who} needs jax and optax: {_EXTRA} ({e})") from e
    return jax, optax


def _fast_importer(jax):
    """The private, per-tensor cheaper DLPack import (about 6x faster than
    ``jax.dlpack.from_dlpack``, which routes through ``jnp.asarray``); ``None`` if unavailable."""
    try:
        from jax._src.lib import _jax, jaxlib_extension_version
    except Exception:  # pragma: no cover
        return None
    dev = jax.devices("cpu")[0]
    to_dlpack = torch.utils.dlpack.to_dlpack

    if jaxlib_extension_version >= 467:
        def imp(t):
            return _jax.dlpack_managed_tensor_to_buffer(to_dlpack(t), dev, None, None, 1)
    else:  # pragma: no cover
        def imp(t):
            return _jax.dlpack_managed_tensor_to_buffer(to_dlpack(t), dev, None, None)
    return imp


def make_importer(jax):
    """A function torch CPU tensor -> JAX array (zero-copy when aligned and contiguous)."""
    fast = _fast_importer(jax)
    public = jax.dlpack.from_dlpack

    def imp(t: torch.Tensor):
        if not t.is_contiguous():
            t = t.contiguous()  # a copy (DLPack needs a dense layout XLA accepts)
        if fast is not None:
            try:
                return fast(t)
            except Exception:
                pass  # unaligned buffer or API change: the public path copies when needed
        return public(t, copy=None)

    return imp


class ViewCache:
    """One JAX view per list position, rebuilt only when the torch tensor changed."""

    __slots__ = ("importer", "keys", "views")

    def __init__(self, importer):
        self.importer = importer
        self.keys: list = []
        self.views: list = []

    def __call__(self, tensors: list[torch.Tensor]) -> list:
        n = len(tensors)
        if len(self.keys) != n:
            self.keys, self.views = [None] * n, [None] * n
        keys, views, imp = self.keys, self.views, self.importer
        for i, t in enumerate(tensors):
            k = (t.data_ptr(), t.shape, t.stride(), t.dtype)
            if keys[i] != k:
                v = views[i] = imp(t)
                # a copied import (non-contiguous or unaligned) goes stale: never reuse it
                keys[i] = k if _shares(v, t) else None
        return views

    def clear(self) -> None:
        self.keys, self.views = [], []


def _shares(v, t: torch.Tensor) -> bool:
    try:
        return v.unsafe_buffer_pointer() == t.data_ptr()
    except Exception:  # pragma: no cover
        return False


def to_torch(x) -> torch.Tensor:
    """A JAX array as a torch tensor (zero-copy, shares the buffer)."""
    return torch.from_dlpack(x)


def leaves_to_torch(leaves) -> list:
    """JAX leaves -> torch tensors that own their memory (for checkpoints); Python scalars and
    ``None`` pass through."""
    out = []
    for x in leaves:
        if hasattr(x, "__dlpack__") and not isinstance(x, torch.Tensor):
            out.append(torch.from_dlpack(x).clone())
        elif hasattr(x, "shape") and hasattr(x, "dtype") and not isinstance(x, torch.Tensor):
            out.append(torch.as_tensor(x).clone())  # pragma: no cover (numpy leaf)
        else:
            out.append(x)
    return out
