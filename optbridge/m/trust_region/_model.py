"""The quadratic model of the trust-region modules and where its Hessian comes from.

The model at the current point is ``m(-d) = f - g^T d + 1/2 d^T B d`` for a step ``d`` that is
*subtracted* from the parameters (the chain's sign convention); all vectors are the parameters
flattened in ``ctx.params`` order (real views of complex parameters).

``B`` comes from

- an exact autograd Hessian (``hess_module=None``, Newton's model): :func:`exact_hessian`, one
  ``closure(False)`` evaluation under ``torch.enable_grad()``;
- a ``hess_module`` offering the Hessian-approximation interface below (quasi-Newton modules).

Hessian-approximation interface (duck-typed; a chain module with these methods):

``update_hessian(ctx) -> None``
    Fold the current point into the approximation (secant pair from the previous call:
    ``s = x - x_prev`` from ``ctx.params``, ``y = g - g_prev`` from ``ctx.update``, which is the
    gradient the trust region models). Called once per refreshed model (every ``update_freq``
    steps), before ``hessian``. It must not move the parameters or assign ``ctx.update``. After a
    rejected trust-region step the parameters did not move (``s = 0``): skip that update.
``hessian(ctx) -> Tensor | operator``
    The current approximation ``B`` of the Hessian (not its inverse): a dense symmetric
    ``(n, n)`` tensor, ``n = sum(p.numel() for p in ctx.params)``, rows and columns in the order
    of ``torch.cat([p.reshape(-1) for p in ctx.params])``; or an object with ``matvec(v)`` and
    ``to_dense()``.
``inverse_hessian(ctx) -> Tensor`` (optional)
    The inverse approximation ``H = B^{-1}`` (dense). Used, inverted, only when ``hessian`` is
    missing and the trust region allows it (``fallback=True``).
"""

from __future__ import annotations

from functools import reduce

import torch


class Layout:
    """Flattening of a list of tensors into one vector and back."""

    def __init__(self, tensors: list[torch.Tensor]):
        self.shapes = [t.shape for t in tensors]
        self.numels = [t.numel() for t in tensors]
        self.dtypes = [t.dtype for t in tensors]
        self.dtype = reduce(torch.promote_types, self.dtypes)
        self.n = sum(self.numels)

    def flatten(self, tensors) -> torch.Tensor:
        """A new flat vector (always a copy, so it may serve as a saved point)."""
        if len(tensors) == 1:
            return tensors[0].reshape(-1).to(self.dtype, copy=True)
        return torch.cat([t.reshape(-1).to(self.dtype) for t in tensors])

    def unflatten(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Views of ``flat`` shaped like the tensors (converted where the dtype differs)."""
        out = []
        for piece, shape, dt in zip(flat.split(self.numels), self.shapes, self.dtypes):
            piece = piece.view(shape)
            out.append(piece if piece.dtype == dt else piece.to(dt))
        return out


def exact_hessian(ctx, who: str, layout: Layout) -> torch.Tensor:
    """Dense Hessian of the loss at the current parameters by double autograd (one
    ``closure(False)`` under grad mode; rows by one batched backward, a loop if an operator has
    no batching rule). Complex parameters count as pairs of real coordinates."""
    keys, params = ctx.keys, ctx.params
    with torch.enable_grad():
        loss = ctx.closure(False)
        if not loss.requires_grad:
            raise RuntimeError(
                f"{who}: the loss returned by closure(backward=False) has no autograd graph, so "
                "the exact Hessian cannot be formed; build the graph whether or not backward is "
                "true"
            )
        grads = torch.autograd.grad(loss, keys, create_graph=True, allow_unused=True)
        flat = []
        for g, p, k in zip(grads, params, keys):
            if g is None:
                g = torch.zeros_like(p)
            elif p is not k:
                g = torch.view_as_real(g)
            flat.append(g.reshape(-1).to(layout.dtype))
        g = torch.cat(flat)
        n = layout.n
        if not g.requires_grad:  # the loss is linear: zero curvature
            return torch.zeros(n, n, dtype=layout.dtype, device=g.device)
        eye = torch.eye(n, dtype=g.dtype, device=g.device)
        try:
            rows = torch.autograd.grad(g, keys, grad_outputs=eye, is_grads_batched=True,
                                       allow_unused=True, retain_graph=True)
        except RuntimeError:  # an operator without a batching rule: one row at a time
            each = [torch.autograd.grad(g, keys, grad_outputs=e, allow_unused=True,
                                        retain_graph=True) for e in eye]
            rows = [None if each[0][j] is None else torch.stack([r[j] for r in each])
                    for j in range(len(keys))]
        H = _assemble(rows, ctx, n, layout)
    return H.add_(H.mT.clone()).mul_(0.5)


def _assemble(rows, ctx, batch: int, layout: Layout) -> torch.Tensor:
    cols = []
    for r, p, k in zip(rows, ctx.params, ctx.keys):
        if r is None:
            cols.append(torch.zeros(batch, p.numel(), dtype=layout.dtype, device=p.device))
            continue
        if p is not k:
            r = torch.view_as_real(r)
        cols.append(r.reshape(batch, -1).to(layout.dtype))
    return torch.cat(cols, dim=1)


class Model:
    """The Hessian (or its approximation) of the quadratic model, with per-step caches of the
    factorisations the solvers reuse across attempts."""

    def __init__(self, B=None, op=None):
        self._B = B
        self._op = op
        self.cache: dict = {}

    @property
    def dense(self) -> torch.Tensor:
        if self._B is None:
            self._B = self._op.to_dense()
        return self._B

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        if self._B is None:
            return self._op.matvec(v)
        return self._B @ v

    def cached(self, key, fn):
        if key not in self.cache:
            self.cache[key] = fn()
        return self.cache[key]


def has_hessian_interface(module) -> bool:
    return callable(getattr(module, "update_hessian", None)) and (
        callable(getattr(module, "hessian", None))
        or callable(getattr(module, "inverse_hessian", None)))


def module_model(module, ctx, who: str, fallback: bool, layout: Layout) -> Model:
    """Ask ``module`` (see the interface above) for the Hessian at the current point."""
    module.update_hessian(ctx)
    if callable(getattr(module, "hessian", None)):
        B = module.hessian(ctx)
        if isinstance(B, torch.Tensor):
            return Model(B.to(layout.dtype))
        return Model(op=B)
    if not fallback:
        raise RuntimeError(
            f"{who}: {module.name} keeps an inverse Hessian approximation only; the trust region "
            "needs the Hessian itself. Construct it with inverse=False, or pass fallback=True "
            "to invert it (costly and less stable)."
        )
    H = module.inverse_hessian(ctx).to(layout.dtype)
    return Model(torch.linalg.pinv(H, hermitian=True))
