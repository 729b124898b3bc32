"""Restart criteria for conjugate gradient (and quasi-Newton) modules."""

from __future__ import annotations

import torch

from ...core import checks
from ...core import foreach as fe
from ...core.module import Module


def _reset_others(ctx, keep: Module) -> None:
    """Reset every module of the optimizer except ``keep`` and the modules containing it."""
    for m in ctx.optimizer.chain.walk():
        if not any(x is keep for x in m.walk()):
            m.reset()


class PowellRestart(Module):
    """Powell's restart criteria for conjugate gradient methods.

    With :math:`g` the gradient and :math:`u` the direction (the update, subtracted by the
    engine), a restart happens when

    1. :math:`|g_k^T g_{k-1}| \\ge c_1 \\|g_k\\|^2` (successive gradients far from orthogonal), or
    2. :math:`u_k^T g_k \\notin [(1 - c_2)\\|g_k\\|^2, (1 + c_2)\\|g_k\\|^2]` (the direction is not
       sufficiently downhill: Powell requires :math:`-1.2\\|g\\|^2 \\le p^T g \\le -0.8\\|g\\|^2`
       for the descent direction :math:`p = -u`, which is :math:`c_2 = 0.2`).

    With ``modules`` given (``PowellRestart(PolakRibiere())``), criterion 1 is checked before
    running them and resets them (their state is cleared, so they take a steepest-descent step);
    criterion 2 is checked on their output and, when it holds, they are reset and run again on
    the same step (unless they moved the parameters themselves, e.g. contain a line search: then
    the reset takes effect on the next step). With ``modules=None`` the module acts on the
    update it receives (place it right after the direction module); when a criterion holds,
    every other module of the optimizer is reset and this step's update becomes the gradient.

    Args:
        modules: module(s) to restart, or ``None`` (see above).
        cond1: :math:`c_1`, ``None`` disables criterion 1.
        cond2: :math:`c_2`, ``None`` disables criterion 2.

    State: ``g_prev`` per parameter; ``global_state["restarts"]`` counts restarts and
    ``global_state["last_restart"]`` is the step index of the last one.

    Reference: M. J. D. Powell, "Restart procedures for the conjugate gradient method",
    Mathematical Programming 12 (1977) 241-254.
    """

    def __init__(self, modules=None, cond1: float | None = 0.2, cond2: float | None = 0.2):
        super().__init__(
            dict(cond1=cond1, cond2=cond2),
            rules=dict(cond1=checks.optional(checks.nonnegative),
                       cond2=checks.optional(checks.nonnegative)),
        )
        if modules is not None:
            self.set_child("modules", modules)

    def _record(self, ctx) -> None:
        gs = self.global_state
        gs["restarts"] = gs.get("restarts", 0) + 1
        gs["last_restart"] = ctx.step_index

    def _downhill_fails(self, u, g, gg, cond2) -> bool:
        ug = fe.dot(u, g)
        return bool((ug < (1 - cond2) * gg) | (ug > (1 + cond2) * gg))

    def step(self, ctx) -> None:
        if not ctx.params:
            return
        cond1 = self.uniform_setting(ctx, "cond1")
        cond2 = self.uniform_setting(ctx, "cond2")
        g = ctx.grads
        gg = fe.dot(g, g)
        states = self.param_states(ctx)
        fire = False
        if cond1 is not None and all("g_prev" in st for st in states):
            g_prev = [st["g_prev"] for st in states]
            fire = bool(fe.dot(g, g_prev).abs() >= cond1 * gg)
        for st, t in zip(states, g):
            st.setdefault("g_prev", torch.empty_like(t)).copy_(t)
        child = self.children.get("modules")
        if child is not None:
            if fire:
                child.reset()
                self._record(ctx)
            sub = self.run_child(ctx, "modules")
            if cond2 is not None and not fire and self._downhill_fails(sub.update, g, gg, cond2):
                child.reset()
                self._record(ctx)
                if not sub.skip_update:  # modules that moved the parameters are not run twice
                    sub = self.run_child(ctx, "modules")
            _take(ctx, sub)
            return
        if not fire and cond2 is not None:
            fire = self._downhill_fails(ctx.update, g, gg, cond2)
        if fire:
            _reset_others(ctx, self)
            self._record(ctx)
            ctx.update = g


class BirginMartinezRestart(Module):
    """Birgin and Martinez's restart criterion: restart ``module`` when its direction is not
    sufficiently downhill,

    .. math::
        u^T g < c\\, \\|u\\|\\, \\|g\\|

    (:math:`u` the update, subtracted by the engine, so the descent direction is :math:`-u`).
    On a restart the module is reset (its state cleared) and run again on the same step, so this
    step is its first, steepest-descent step (a module that moved the parameters itself, e.g.
    one containing a line search, is not run twice: the reset then takes effect on the next
    step).

    Args:
        module: the module to watch and restart, usually a conjugate gradient method.
        cond: :math:`c`; the default 1e-3 is the paper's.

    State: ``global_state["restarts"]`` counts restarts, ``global_state["last_restart"]`` is the
    step index of the last one.

    Reference: E. G. Birgin and J. M. Martinez, "A spectral conjugate gradient method for
    unconstrained optimization", Applied Mathematics and Optimization 43 (2001) 117-128.
    """

    def __init__(self, module, cond: float = 1e-3):
        super().__init__(dict(cond=cond), rules=dict(cond=checks.nonnegative))
        self.set_child("module", module)

    def step(self, ctx) -> None:
        if not ctx.params:
            return
        cond = self.uniform_setting(ctx, "cond")
        sub = self.run_child(ctx, "module")
        u, g = sub.update, ctx.grads
        bad = fe.dot(u, g) < cond * fe.global_norm(u) * fe.global_norm(g)
        if bool(bad):
            self.children["module"].reset()
            gs = self.global_state
            gs["restarts"] = gs.get("restarts", 0) + 1
            gs["last_restart"] = ctx.step_index
            if not sub.skip_update:  # a module that moved the parameters is not run twice
                sub = self.run_child(ctx, "module")
        _take(ctx, sub)


def _take(ctx, sub) -> None:
    """Adopt a child context's result (update, ownership, parameter moves)."""
    if sub.skip_update:
        ctx.skip_update = True
    ctx.set_update(sub.update, owned=sub.update_is_owned)
