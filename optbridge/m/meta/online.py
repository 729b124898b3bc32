"""Online: consistent two-point information for modules run on mini-batches."""

from __future__ import annotations

import copy

import torch

from ...core.module import Module
from ._common import context_here, run_inline


def _online_modules(root: Module) -> list[Module]:
    return [m for m in root.walk() if getattr(m, "online_keys", ())]


def _restore(state: dict, saved: dict, keep: set) -> None:
    """Put ``state`` back to ``saved`` (tensors copied into the existing ones), except the
    keys in ``keep``."""
    for k in [k for k in state if k not in saved and k not in keep]:
        del state[k]
    for k, v in saved.items():
        if k in keep:
            continue
        cur = state.get(k)
        if (isinstance(cur, torch.Tensor) and isinstance(v, torch.Tensor)
                and cur.shape == v.shape and cur.dtype == v.dtype):
            cur.copy_(v)
        else:
            state[k] = v


class Online(Module):
    """Makes modules that compare consecutive points (Barzilai-Borwein, quasi-Newton, ...) use
    gradient differences from one mini-batch, as in online L-BFGS (Schraudolph, Yu & Guenter,
    2007, "A stochastic quasi-Newton method for online convex optimization",
    https://proceedings.mlr.press/v2/schraudolph07a.html).

    On a mini-batch, :math:`y = g_t - g_{t-1}` mixes two batches. Each step after the first,
    ``Online`` moves the parameters back to the previous point :math:`x_{t-1}`, evaluates the
    *current* batch's gradient there (``closure(True)``) and re-runs the wrapped modules at
    :math:`(x_{t-1}, \\nabla f_t(x_{t-1}))` starting without a previous point; of that pass only
    the records of the previous point are kept, then the wrapped modules step normally at
    :math:`x_t`:

    .. math::
        s = x_t - x_{t-1},\\qquad y = \\nabla f_t(x_t) - \\nabla f_t(x_{t-1})

    A wrapped module declares which of its state entries record the previous point with a class
    attribute ``online_keys`` (e.g. ``("prev_p", "prev_g")``), keys of its per-parameter state or
    of its ``global_state``; without them the module must behave as on a first step (no pair).
    Every other piece of state is restored after the refresh pass, so momentum or histories
    advance once per step.
    Cost: one extra gradient evaluation per step and a copy of the wrapped modules' state.
    Put it first (the refresh pass feeds the wrapped modules the gradient, whatever precedes
    ``Online``). After a step, ``.grad`` holds the gradient at :math:`x_{t-1}`.

    Args:
        *modules: the wrapped modules (at least one of them, or of their children, must
            declare ``online_keys``).
    """

    def __init__(self, *modules):
        super().__init__()
        if not modules:
            raise ValueError(f"{self.name}: needs the modules to wrap, e.g. Online(LBFGS())")
        self.set_child("module", list(modules) if len(modules) > 1 else modules[0])
        if not _online_modules(self.children["module"]):
            raise ValueError(
                f"{self.name}: none of the wrapped modules declares online_keys (the state "
                "entries recording the previous point), so Online would only cost evaluations; it "
                "is meant for modules that compare consecutive points"
            )

    def step(self, ctx) -> None:
        if not ctx.params:
            return
        ctx.require_closure("it evaluates the current mini-batch at the previous point")
        child = self.children["module"]
        states = self.param_states(ctx)
        if all("p_prev" in s for s in states):
            self._refresh(ctx, child, [s["p_prev"] for s in states])
        run_inline(ctx, child)
        for s, p in zip(states, ctx.params):
            if "p_prev" in s:
                s["p_prev"].copy_(p)
            else:
                s["p_prev"] = p.detach().clone()

    def _refresh(self, ctx, child: Module, p_prev: list[torch.Tensor]) -> None:
        grads = ctx.grads
        ptrs = [g.data_ptr() for g in grads]
        modules = list(child.walk())
        saved = [(m, [copy.deepcopy(s) for s in m.param_states(ctx)], copy.deepcopy(m.global_state))
                 for m in modules]
        for m in _online_modules(child):
            for s in [*m.param_states(ctx), m.global_state]:
                for k in m.online_keys:
                    s.pop(k, None)
        params = ctx.params
        here = [p.clone() for p in params]
        torch._foreach_copy_(params, p_prev)
        try:
            run_inline(context_here(ctx), child)
        finally:
            torch._foreach_copy_(params, here)
        for m, states, gstate in saved:
            keys = set(getattr(m, "online_keys", ()))
            for s, old in zip(m.param_states(ctx), states):
                _restore(s, old, keys)
            _restore(m.global_state, gstate, keys)
        # a closure that zeroes .grad in place overwrote the step's gradient: evaluate it again
        if any(k.grad is not None and k.grad.data_ptr() == ptr for k, ptr in zip(ctx.keys, ptrs)):
            ctx.evaluate(backward=True)
