"""Line-search base class: moves the parameters along the incoming update and picks the step.

The incoming update :math:`d` is subtracted, so the trial points are :math:`x(t) = x_0 - t\\,d`
and the one-dimensional function is

.. math::
    \\phi(t) = f(x_0 - t d), \\qquad \\phi'(t) = -\\langle \\nabla f(x(t)), d \\rangle .

A subclass implements ``search(line, ctx) -> (t, reason)`` with the helper :class:`Line`
(``line.f(t)``, ``line.f_d(t)``, ``line.f0``, ``line.dphi0``); the base class then writes the
accepted point into the parameters and sets ``ctx.skip_update``.
"""

from __future__ import annotations

import math

import torch

from ...core.module import Module

#: reasons recorded in ``global_state["reason"]``
ACCEPTED = "accepted"
NO_STEP = "no acceptable step"
NOT_DESCENT = "not a descent direction"
BAD_DIRECTION = "non-finite direction"
BAD_START = "non-finite loss at the starting point"


def as_float(loss) -> float:
    """A closure's loss as a Python float."""
    return float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)




def finite_or_inf(value: float) -> float:
    """A trial loss as a float; NaN and +-inf become +inf (a failed trial, never accepted)."""
    return value if math.isfinite(value) else math.inf


class _Scratch:
    """Buffers a line search reuses from step to step (not checkpointed: rebuilt each step).

    When every parameter shares one dtype and device the saved point, the direction and the
    gradient live in flat vectors (one ``dot`` per directional derivative, the same arithmetic
    as ``torch.optim.LBFGS``), with per-parameter views for the foreach moves.
    """

    __slots__ = ("key", "token", "flat", "x0", "x0_views", "d", "d_views", "g", "sizes")

    def __init__(self, params: list[torch.Tensor]):
        first = params[0]
        self.key = _layout_key(params)
        self.token = None
        self.flat = all(p.dtype == first.dtype and p.device == first.device for p in params)
        self.sizes = [p.numel() for p in params]
        if self.flat:
            n = sum(self.sizes)
            self.x0 = torch.empty(n, dtype=first.dtype, device=first.device)
            self.d = torch.empty_like(self.x0)
            self.g = torch.empty_like(self.x0)
            self.x0_views = _views(self.x0, params, self.sizes)
            self.d_views = _views(self.d, params, self.sizes)
        else:
            self.x0 = self.d = self.g = None
            self.x0_views = [torch.empty_like(p) for p in params]
            self.d_views = [torch.empty_like(p) for p in params]


def _views(flat: torch.Tensor, params, sizes) -> list[torch.Tensor]:
    return [v.view_as(p) for v, p in zip(flat.split(sizes), params)]


def _layout_key(params) -> tuple:
    return tuple((p.shape, p.dtype, p.device) for p in params)


def fast_layout_token(ctx) -> tuple:
    """Changes when the optimizer's parameter layout changes (cheap per-step check; the full
    shape/dtype key is compared only when it does)."""
    params = ctx.params
    first, last = params[0], params[-1]
    return (ctx.layout_token, len(params), id(first), id(last), first.dtype,
            first.device, last.dtype)


class Line:
    """The function :math:`\\phi(t) = f(x_0 - t d)` of one step.

    Attributes:
        f0: :math:`\\phi(0)`, the starting loss (from ``ctx``, not re-evaluated).
        evals: evaluations made by the search in this step.
        at: the step the parameters currently hold.
    """

    __slots__ = ("ctx", "params", "s", "d", "f0", "at", "evals", "_dphi0", "_dnorm")

    def __init__(self, ctx, scratch: _Scratch):
        self.ctx, self.params, self.s = ctx, ctx.params, scratch
        update = ctx.update
        torch._foreach_copy_(scratch.x0_views, self.params)
        if scratch.flat:
            torch.cat([u.reshape(-1) for u in update], out=scratch.d)
        else:
            torch._foreach_copy_(scratch.d_views, update)
        # a private copy: a closure that zeroes gradients in place cannot change the direction
        self.d = scratch.d_views
        self.f0 = as_float(ctx.get_loss())
        self.at = 0.0
        self.evals = 0
        self._dphi0 = None
        self._dnorm = None

    # ------------------------------------------------------------------------------ geometry
    def _dot_d(self, grads) -> float:
        s = self.s
        if s.flat:
            torch.cat([g.reshape(-1) for g in grads], out=s.g)
            return -float(s.g.dot(s.d))
        return -sum(float(torch.vdot(g.reshape(-1), d.reshape(-1)).real)
                    for g, d in zip(grads, self.d))

    @property
    def dphi0(self) -> float:
        """:math:`\\phi'(0) = -\\langle g_0, d\\rangle` from the starting gradients."""
        if self._dphi0 is None:
            self._dphi0 = self._dot_d(self.ctx.grads)
        return self._dphi0

    @property
    def d_inf_norm(self) -> float:
        """:math:`\\lVert d \\rVert_\\infty`."""
        if self._dnorm is None:
            s = self.s
            if s.flat:
                self._dnorm = float(s.d.abs().max()) if s.d.numel() else 0.0
            else:
                norms = [float(d.abs().max()) if d.numel() else 0.0 for d in self.d]
                self._dnorm = max(norms) if all(map(math.isfinite, norms)) else math.nan
        return self._dnorm

    def direction_finite(self) -> bool:
        return math.isfinite(self.d_inf_norm)

    def move(self, t: float) -> None:
        """Put the parameters at :math:`x_0 - t d` (computed from :math:`x_0`, so exact)."""
        if t == self.at:
            return
        if self.at != 0.0:
            torch._foreach_copy_(self.params, self.s.x0_views)
        if t != 0.0:
            torch._foreach_add_(self.params, self.d, alpha=-t)
        self.at = t

    # ---------------------------------------------------------------------------- evaluation
    def f(self, t: float) -> float:
        """:math:`\\phi(t)`, loss only; non-finite values come back as ``inf``."""
        self.move(t)
        self.evals += 1
        return finite_or_inf(as_float(self.ctx.closure(False)))

    def f_d(self, t: float) -> tuple[float, float]:
        """:math:`(\\phi(t), \\phi'(t))`; a non-finite trial gives ``(inf, nan)``."""
        self.move(t)
        self.evals += 1
        loss = as_float(self.ctx.closure(True))
        if not math.isfinite(loss):
            return math.inf, math.nan
        dphi = self._dot_d(self.ctx.read_grads())
        if not math.isfinite(dphi):
            return math.inf, math.nan
        return loss, dphi

    def finish(self, t: float) -> None:
        """Leave the parameters at the accepted step ``t`` (``0``: exactly :math:`x_0`)."""
        if t == 0.0:
            if self.at != 0.0:
                torch._foreach_copy_(self.params, self.s.x0_views)
                self.at = 0.0
        else:
            self.move(t)


class LineSearch(Module):
    """Base class of line searches (subclasses implement ``search``).

    .. math::
        x_{k+1} = x_k - t_k d_k, \\qquad t_k = \\operatorname{search}(\\phi),\\quad
        \\phi(t) = f(x_k - t d_k)

    where :math:`d_k` is the incoming update (the gradient when the line search comes first).
    The search evaluates ``closure(False)`` (loss only) or ``closure(True)`` when it needs
    :math:`\\phi'(t) = -\\langle \\nabla f(x_k - t d_k), d_k\\rangle`; the loss and gradient at
    :math:`t = 0` are taken from the step context, never re-evaluated.

    After the search the parameters hold the accepted point and the chain applies nothing more
    (``ctx.skip_update``). A trial whose loss (or directional derivative) is NaN or infinite is a
    failed trial, never accepted. When no step is acceptable the parameters are restored to an
    exact copy of :math:`x_k` (step 0). ``global_state`` records ``last_step`` (the accepted
    :math:`t`, 0.0 on failure), ``reason`` (``"accepted"``, ``"no acceptable step"``,
    ``"not a descent direction"``, ``"non-finite direction"`` or
    ``"non-finite loss at the starting point"``) and ``evals`` (evaluations of this step).

    Needs a closure (``ClosureError`` naming the module otherwise). Settings must be the same in
    every param group (one search for all parameters). The param groups' ``lr`` plays no part:
    the search picks the step (set the first trial with the module's own argument).

    A new search subclasses this and implements ``search(line, ctx) -> (t, reason)`` using
    ``line.f(t)`` (loss only), ``line.f_d(t)`` (loss and :math:`\\phi'(t)`), ``line.f0`` and
    ``line.dphi0``; it returns ``(0.0, reason)`` when it finds nothing.
    """

    def __init__(self, defaults: dict | None = None, rules: dict | None = None):
        super().__init__(defaults, rules)
        self._scratch: _Scratch | None = None

    def _get_scratch(self, ctx) -> _Scratch:
        params, s = ctx.params, self._scratch
        token = fast_layout_token(ctx)
        if s is not None and s.token == token:
            return s
        if s is None or s.key != _layout_key(params):
            s = self._scratch = _Scratch(params)
        s.token = token
        return s

    def uniform(self, ctx, *keys):
        """Settings ``keys``, which must agree across param groups (``ValueError`` otherwise).
        Tuple-valued settings (brackets, bounds) are returned as they are."""
        out = self.uniform_settings(ctx, *keys)
        return out[0] if len(keys) == 1 else out

    def step(self, ctx) -> None:
        if not ctx.params:
            return
        ctx.require_closure("a line search evaluates the loss at trial points")
        self.validate(ctx)
        line = Line(ctx, self._get_scratch(ctx))
        try:
            if not math.isfinite(line.f0):
                t, reason = 0.0, BAD_START
            elif not line.direction_finite():
                t, reason = 0.0, BAD_DIRECTION
            else:
                t, reason = self.search(line, ctx)
                if t is None or not math.isfinite(t):
                    t, reason = 0.0, NO_STEP if reason == ACCEPTED else reason
        except BaseException:
            line.finish(0.0)
            raise
        line.finish(t)
        gs = self.global_state
        gs["last_step"] = float(t)
        gs["reason"] = reason if t != 0.0 else (NO_STEP if reason == ACCEPTED else reason)
        gs["evals"] = line.evals
        ctx.skip_update = True

    def validate(self, ctx) -> None:
        """Cross-setting checks (run on each step, after group overrides)."""

    def search(self, line: Line, ctx) -> tuple[float, str]:
        """Return ``(t, reason)``: the accepted step (0.0 for none) and why."""
        raise NotImplementedError(f"{self.name} does not implement search()")
