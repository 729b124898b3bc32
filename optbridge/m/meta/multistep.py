"""Several inner steps per optimizer step: Multistep and Sequential."""

from __future__ import annotations

import torch

from ...core import checks
from ...core.module import Module, as_module
from ._common import context_here, run_inline


def _inner_steps(self: Module, ctx, modules: list[Module]) -> None:
    """Take one inner step with each of ``modules`` in turn, moving the parameters; then put
    them back and output the total displacement as the update."""
    if len(modules) > 1:
        ctx.require_closure("it evaluates the gradient at every inner step")
    params = ctx.params
    start = [p.clone() for p in params]
    for j, module in enumerate(modules):
        sub = ctx.fork() if j == 0 else context_here(ctx)
        run_inline(sub, module)
        if j == 0:
            ctx.merge_evaluations(sub)
        sub.apply_update()
    delta = torch._foreach_sub(start, params)
    torch._foreach_copy_(params, start)
    ctx.set_update(delta, owned=True)


class Multistep(Module):
    """Takes ``steps`` inner steps with one sub-chain per optimizer step; the update is the
    total displacement.

    .. math::
        x^{(0)} = x_t,\\quad x^{(j+1)} = x^{(j)} - d\\big(\\nabla f(x^{(j)})\\big),\\qquad
        u_t = x^{(0)} - x^{(K)}

    The first inner step uses the step's gradient and incoming update; each later one
    evaluates ``closure(True)`` at its point (``K`` gradient evaluations per step in all). The
    parameters are put back exactly and ``u_t`` is output, so modules after it (or an ``LR``)
    act on the whole displacement. The sub-chain's state advances ``K`` times per step.

    Args:
        module: the sub-chain (a module or a list of modules) taking the inner steps.
        steps: :math:`K \\ge 1`.
    """

    def __init__(self, module, steps: int = 1):
        super().__init__(dict(steps=steps), rules=dict(steps=checks.positive_int))
        self.set_child("module", module)
        self.needs_grad = self.children["module"].needs_grad

    def step(self, ctx) -> None:
        if not ctx.params:
            return
        k = self.uniform_setting(ctx, "steps")
        _inner_steps(self, ctx, [self.children["module"]] * k)


class Sequential(Module):
    """Each optimizer step takes one inner step with each of ``modules`` in order, ``steps``
    times over; the update is the total displacement.

    .. math::
        x^{(0)} = x_t,\\quad x^{(j+1)} = x^{(j)} - m_{j \\bmod M}\\big(\\nabla f(x^{(j)})\\big),
        \\quad j < M K,\\qquad u_t = x^{(0)} - x^{(MK)}

    Each element of ``modules`` is one inner step (write a sub-chain as a nested list:
    ``Sequential([[Adam(), StepSize(1e-2)], [HeavyBall(), StepSize(1e-3)]])``; one param group
    holds one ``lr``, so fixed factors that differ are ``StepSize``). The first inner step uses the
    step's gradient and incoming update, each later one evaluates ``closure(True)`` at its point
    (:math:`MK` gradient evaluations per step in all); the parameters are put back exactly.

    Args:
        modules: a sequence of sub-chains :math:`m_0, \\dots, m_{M-1}`.
        steps: :math:`K \\ge 1`, passes over the sequence per step.
    """

    def __init__(self, modules, steps: int = 1):
        super().__init__(dict(steps=steps), rules=dict(steps=checks.positive_int))
        if isinstance(modules, Module):
            modules = [modules]
        elif isinstance(modules, (list, tuple)):
            modules = list(modules)
        else:
            as_module(modules, f"{self.name}(modules=...)")
        if not modules:
            raise ValueError(f"{self.name}: needs at least one module")
        for i, mod in enumerate(modules):
            self.set_child(str(i), mod)
        self.needs_grad = self.children["0"].needs_grad

    def step(self, ctx) -> None:
        if not ctx.params:
            return
        k = self.uniform_setting(ctx, "steps")
        _inner_steps(self, ctx, list(self.children.values()) * k)
