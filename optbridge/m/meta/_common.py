"""Helpers shared by the meta modules: running a child on the context itself, contexts at new
points."""

from __future__ import annotations

from ...core.context import StepContext
from ...core.module import Chain, Module


def run_inline(ctx: StepContext, module: Module) -> None:
    """Run ``module`` on ``ctx`` itself (its update, pending factors and closure changes stay in
    ``ctx``); error messages name ``module``."""
    outer = ctx.module
    if not isinstance(module, Chain):
        ctx.module = module
    try:
        module.step(ctx)
    finally:
        ctx.module = outer


def context_here(ctx: StepContext) -> StepContext:
    """A fresh context over ``ctx``'s parameters at their current values: the loss and the
    gradient are evaluated again (lazily, through ``ctx.closure``) and the update starts as
    that gradient."""
    out = StepContext(ctx.optimizer, ctx.params, ctx.keys, ctx.spans, ctx.closure, ctx.step_index)
    out.module, out.parent = ctx.module, ctx
    return out

