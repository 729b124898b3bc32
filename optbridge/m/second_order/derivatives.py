"""Second derivatives of the closure's loss: Hessian-vector products, Hessians, Jacobians.

Shared by the second-order modules (and by anyone needing curvature). Everything works on the
step's parameters as the engine sees them (``ctx.params``: real views of complex parameters), so
a complex parameter counts as pairs of real coordinates.

:class:`HessianOperator` is the entry point. With ``method="autograd"``/``"batched_autograd"`` it
evaluates ``closure(False)`` once under ``torch.enable_grad()`` (one loss-only evaluation),
differentiates it with ``create_graph=True`` and then forms products by differentiating the
gradient again (no further evaluations). With ``"fd_forward"``/``"fd_central"`` a product is a
difference of gradients, ``(g(x + εv) - g(x)) / ε`` or ``(g(x + εv) - g(x - εv)) / 2ε`` with
``ε = h / ‖v‖``, costing one or two ``closure(True)`` evaluations; the parameters are restored
exactly afterwards (copied back, never ``x + εv - εv``), and so are the values of ``ctx.grads``
(``p.grad`` itself is left as the last evaluation filled it).

A loss with no autograd graph (computed under ``torch.no_grad()`` or detached) or whose gradient
cannot be differentiated again raises :class:`DerivativeError` naming the module.
"""

from __future__ import annotations

import torch

from ._common import Layout

__all__ = ["DerivativeError", "HessianOperator", "graph_gradients", "jacobian"]


class DerivativeError(RuntimeError):
    """The closure's loss cannot be differentiated as a second-order module needs."""


def _real_grads(grads, ctx) -> list[torch.Tensor]:
    out = []
    for g, p, k in zip(grads, ctx.params, ctx.keys):
        if g is None:
            g = torch.zeros_like(p)
        elif p is not k:
            g = torch.view_as_real(g)
        out.append(g)
    return out


def graph_gradients(ctx, who: str):
    """Loss (one ``closure(False)`` under grad mode) and its gradient with a graph attached.

    Returns ``(loss, grads)``; ``grads`` are real views shaped like ``ctx.params``. Entries with no
    graph (the loss is linear in them, or does not use them) are constants."""
    ctx.require_closure("it re-evaluates the loss with an autograd graph for second derivatives")
    with torch.enable_grad():
        loss = ctx.closure(False)
        if not loss.requires_grad:
            raise DerivativeError(
                f"{who}: the loss returned by closure(backward=False) has no autograd graph "
                "(was it computed under torch.no_grad() or detached?). Second-order modules "
                "differentiate it twice: build the graph whether or not backward is true, and "
                "call loss.backward() only when it is."
            )
        try:
            grads = torch.autograd.grad(loss, ctx.keys, create_graph=True, allow_unused=True)
        except RuntimeError as e:
            raise DerivativeError(f"{who}: could not differentiate the loss: {e}") from e
        grads = _real_grads(grads, ctx)
    if not any(g.requires_grad for g in grads):
        raise DerivativeError(
            f"{who}: the gradient of the loss has no autograd graph, so it cannot be "
            "differentiated again: the loss is not twice differentiable by autograd (a custom "
            "Function without a differentiable backward, a detached term), or it is linear in "
            "the parameters"
        )
    return loss, grads


def _second_grad(who, outputs, keys, grad_outputs, batch: int, retain: bool, ctx,
                 what: str = "the gradient (is the loss twice differentiable?)"):
    """``torch.autograd.grad`` of ``outputs`` w.r.t. ``keys`` as real views; ``batch`` > 0 means
    ``grad_outputs`` carry a leading batch dimension of that size (``is_grads_batched``)."""
    batched = batch > 0
    try:
        with torch.enable_grad():
            res = torch.autograd.grad(outputs, keys, grad_outputs=grad_outputs, retain_graph=retain,
                                      allow_unused=True, is_grads_batched=batched)
    except RuntimeError as e:
        raise DerivativeError(
            f"{who}: could not differentiate {what}: {e}"
        ) from e
    out = []
    for r, p, k in zip(res, ctx.params, ctx.keys):
        if r is None:
            shape = ((batch,) if batched else ()) + tuple(p.shape)
            r = p.new_zeros(shape)
        elif p is not k:
            r = torch.view_as_real(r)
        out.append(r)
    return out


class HessianOperator:
    """Products with the Hessian of the closure's loss at the current parameters.

    Use as a context manager (finite differences restore the parameters on exit)::

        with HessianOperator(ctx, "NewtonCG", "autograd") as H:
            hv = H.mv(v)          # flat vector (n,)
            HV = H.mm(V)          # rows: (k, n) -> (k, n)
            hz = H.mv_list(z)     # per-parameter tensors

    Evaluations: autograd methods cost one ``closure(False)`` at construction; ``fd_forward``
    costs one ``closure(True)`` per product, ``fd_central`` two. ``batched_autograd`` forms several
    products in one vectorised backward (``is_grads_batched``), falling back to a loop when an
    operator has no batching rule.
    """

    def __init__(self, ctx, who: str, method: str = "autograd", h: float = 1e-3):
        self.ctx, self.who, self.method, self.h = ctx, who, method, h
        self.layout = Layout(ctx.params)
        self.loss = None
        self.grads = None  # graph-carrying gradients (autograd methods)
        self._x0 = None
        self._g0 = None
        self.products = 0
        if method in ("autograd", "batched_autograd"):
            self.loss, self.grads = graph_gradients(ctx, who)
            self._outs = [(i, g) for i, g in enumerate(self.grads) if g.requires_grad]
        elif method in ("fd_forward", "fd_central"):
            ctx.require_closure("it evaluates gradients at nearby points for Hessian products")
            self._g0 = [g.clone() for g in ctx.grads]
            self._x0 = [p.clone() for p in ctx.params]
        else:
            raise ValueError(f"{who}: unknown hvp_method {method!r}")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def close(self) -> None:
        """Restore parameters and gradient values (finite differences); drop the graph."""
        if self._x0 is not None:
            torch._foreach_copy_(self.ctx.params, self._x0)
            torch._foreach_copy_(self.ctx.grads, self._g0)
            self._x0 = None
        self.grads = self._outs = None

    # ------------------------------------------------------------------------ gradient
    def gradient(self) -> list[torch.Tensor]:
        """The gradient at the point (detached)."""
        if self._g0 is not None:
            return self._g0
        return [g.detach() for g in self.grads]

    # ------------------------------------------------------------------------ products
    def mv_list(self, v: list[torch.Tensor], retain: bool = True) -> list[torch.Tensor]:
        """``H v`` with ``v`` and the result shaped like ``ctx.params``."""
        self.products += 1
        if self._x0 is not None:
            return self._fd(v)
        outs = self._outs
        return _second_grad(self.who, [g for _, g in outs], self.ctx.keys, [v[i] for i, _ in outs],
                            0, retain, self.ctx)

    def mm_list(self, V: list[torch.Tensor], retain: bool = True) -> list[torch.Tensor]:
        """Batched products: ``V[i]`` is (k, *shape_i); returns the same layout."""
        k = V[0].shape[0]
        if self.method == "batched_autograd" and k > 1:
            outs = self._outs
            try:
                res = _second_grad(self.who, [g for _, g in outs], self.ctx.keys,
                                   [V[i] for i, _ in outs], k, True, self.ctx)
                self.products += k
                return res
            except DerivativeError:
                pass  # no batching rule for some operator: the loop below gives the real error
        cols = [self.mv_list([t[j] for t in V], retain=retain or j < k - 1) for j in range(k)]
        return [torch.stack([c[i] for c in cols]) for i in range(len(V))]

    def mv(self, v: torch.Tensor) -> torch.Tensor:
        """``H v`` for a flat vector."""
        return self.layout.flatten(self.mv_list(self.layout.unflatten(v)))

    def mm(self, V: torch.Tensor) -> torch.Tensor:
        """``H`` applied to each row of ``V`` (k, n); returns (k, n)."""
        res = self.mm_list(self.layout.unflatten_rows(V))
        return torch.cat([r.reshape(V.shape[0], -1).to(self.layout.dtype) for r in res], dim=1)

    def hessian(self) -> torch.Tensor:
        """The full (n, n) Hessian, symmetrised."""
        n, lay = self.layout.n, self.layout
        if self._x0 is not None:
            H = self.mm(torch.eye(n, dtype=lay.dtype, device=lay.device))
        else:
            with torch.enable_grad():
                gcat = torch.cat([g.reshape(-1).to(lay.dtype) for g in self.grads])
            eye = torch.eye(n, dtype=lay.dtype, device=lay.device)
            rows = None
            if self.method == "batched_autograd" and n > 1:
                try:
                    rows = _second_grad(self.who, gcat, self.ctx.keys, eye, n, True, self.ctx)
                except DerivativeError:
                    rows = None
            if rows is None:
                with torch.enable_grad():
                    entries = list(gcat.unbind())
                cols = [_second_grad(self.who, e, self.ctx.keys, None, 0, True, self.ctx)
                        for e in entries]
                H = torch.stack([lay.flatten(c) for c in cols])
            else:
                H = torch.cat([r.reshape(n, -1).to(lay.dtype) for r in rows], dim=1)
            self.products += n
        return (H + H.T) / 2

    # ------------------------------------------------------------- finite differences
    def _grad_here(self) -> list[torch.Tensor]:
        self.ctx.closure(True)
        return _real_grads([k.grad for k in self.ctx.keys], self.ctx)

    def _fd(self, v: list[torch.Tensor]) -> list[torch.Tensor]:
        params, x0 = self.ctx.params, self._x0
        norms = torch._foreach_norm(v)
        vnorm = torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.tensor(0.0)
        if float(vnorm) == 0.0:
            return [torch.zeros_like(t) for t in v]
        eps = self.h / vnorm
        step = torch._foreach_mul(v, eps)
        torch._foreach_copy_(params, x0)
        torch._foreach_add_(params, step)
        gp = self._grad_here()
        if self.method == "fd_forward":
            out = torch._foreach_sub(gp, self._g0)
            torch._foreach_div_(out, eps)
        else:
            out = [g.clone() for g in gp]
            torch._foreach_copy_(params, x0)
            torch._foreach_sub_(params, step)
            gm = self._grad_here()
            torch._foreach_sub_(out, gm)
            torch._foreach_div_(out, 2 * eps)
        torch._foreach_copy_(params, x0)
        return out


def jacobian(outputs: torch.Tensor, ctx, who: str, batched: bool = True) -> torch.Tensor:
    """Jacobian (m, n) of a vector ``outputs`` (with a graph) with respect to ``ctx.params``."""
    lay = Layout(ctx.params)
    with torch.enable_grad():
        r = outputs.reshape(-1)
    m = r.numel()
    rows = None
    if batched and m > 1:
        eye = torch.eye(m, dtype=r.dtype, device=r.device)
        try:
            rows = _second_grad(who, r, ctx.keys, eye, m, True, ctx, "the residuals")
        except DerivativeError:
            rows = None
    if rows is None:
        with torch.enable_grad():
            entries = list(r.unbind())
        cols = [_second_grad(who, e, ctx.keys, None, 0, True, ctx, "the residuals")
                for e in entries]
        return torch.stack([lay.flatten(c) for c in cols])
    return torch.cat([t.reshape(m, -1).to(lay.dtype) for t in rows], dim=1)
