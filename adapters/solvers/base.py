"""``SolverModule``: the shared stepwise mechanism of callback-driven solver adapters.

A subclass says how to build the solve (``_build``) and how to read its outcome
(``_outcome``); this class flattens the parameters, runs the solve in a
:class:`~.worker.SolverWorker`, evaluates the closure for each point the solver asks for,
tracks the best point (:class:`~.best.BestSeen`), enforces the budget (:class:`~.budget.Budget`),
terminates the optimizer when the solver finishes, and checkpoints the best point.
"""

from __future__ import annotations

import math
import weakref

import numpy as np
import torch

from optbridge.core.module import Module

from .best import BestSeen
from .bounds import check_bounds, resolve_bounds
from .budget import Budget, check_budget
from .worker import DONE, SolverWorker

MODES = ("evaluation", "solve")


class SolverModule(Module):
    """Base class; see :class:`~.nlopt.NLopt` for the user-facing behaviour.

    Subclasses set ``uses_grad`` and ``label`` (for messages) and implement ``_build`` and
    ``_outcome``.
    """

    #: exception raised inside the solver's callback to stop it (budget, close)
    stop_exc: type[BaseException] = RuntimeError
    uses_grad: bool = False

    def __init__(self, budget, bounds, mode: str):
        super().__init__()
        self.budget = check_budget(budget, self.name)
        self.bounds = check_bounds(bounds, self.name)
        if mode not in MODES:
            raise ValueError(f"{self.name}: mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.needs_grad = False  # the module evaluates the closure itself
        self._worker = None
        self._finalizer = None
        self._pending = None
        self._budget = None
        self._best = BestSeen()
        self._evaluations = 0
        self._live_state = None

    @property
    def label(self) -> str:
        return self.name

    @property
    def evaluations(self) -> int:
        """Objective evaluations so far (restored from checkpoints)."""
        return self._evaluations

    @property
    def best_value(self) -> float:
        """Lowest finite value seen (``inf`` if none)."""
        return self._best.f

    def close(self) -> None:
        """Stop the worker thread (the solver sees ``stop_exc`` raised in its callback)."""
        if self._finalizer is not None:
            self._finalizer()
        self._finalizer = self._worker = self._pending = None

    # ------------------------------------------------------------------- subclass interface
    def _build(self, x0: np.ndarray, limits, budget: Budget):
        """Return ``solve(request)``, run in the worker thread. ``request(x)`` returns
        ``(f, grad)`` (grad None unless ``uses_grad``); ``solve`` must call ``budget.take()``
        before each request and must hold no reference to ``self``."""
        raise NotImplementedError

    def _outcome(self, result, exc) -> str:
        """The termination reason for a finished solve (``exc``: what it raised, or None);
        raise for errors."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------ running
    def _start(self, ctx, x0: np.ndarray) -> None:
        limits = resolve_bounds(self.bounds, ctx.params, self.name)
        remaining = None if self.budget is None else self.budget - self._evaluations
        budget = Budget(remaining, self.stop_exc)
        solve = self._build(x0.copy(), limits, budget)
        self._budget = budget
        self._worker = worker = SolverWorker(solve, self.stop_exc, f"optbridge-{self.name}")
        self._finalizer = weakref.finalize(self, worker.close)

    def _sync_state(self) -> None:
        gs = self.global_state
        gs["evaluations"] = self._evaluations
        gs["best_f"] = self._best.f
        gs["best_x"] = None if self._best.x is None else torch.from_numpy(self._best.x.copy())
        self._live_state = gs

    def _restore(self, gs) -> None:
        """State was loaded (or reset): restart the solver from the saved best point."""
        self.close()
        bx = gs.get("best_x")
        self._best = BestSeen(None if bx is None else bx.numpy(), gs.get("best_f", math.inf))
        self._evaluations = int(gs.get("evaluations", 0))
        self._sync_state()

    def _prepare(self, ctx):
        """Common start of a step: closure check, restart after a load or reset, and the
        current parameters as one float64 vector (their size must not change)."""
        ctx.require_closure(f"{self.name} evaluates the objective through it")
        gs = self.global_state
        if gs is not self._live_state or (self._live_state is not None and "evaluations" not in gs):
            self._restore(gs)
        x_now = _flatten(ctx.params)
        if self._best.x is not None and self._best.x.size != x_now.size:
            raise ValueError(
                f"{self.name}: the parameters taking part changed size ({self._best.x.size} -> "
                f"{x_now.size}); create a new optimizer"
            )
        return x_now

    def step(self, ctx) -> None:
        params = ctx.params
        x_now = self._prepare(ctx)
        if self._worker is None:
            if self.budget is not None and self._evaluations >= self.budget:
                ctx.skip_update = True
                ctx.terminate(f"{self.name}: budget exhausted")
                return
            self._start(ctx, x_now if self._best.x is None else self._best.x)
        fallback = x_now if self._best.x is None else None
        try:
            while True:
                kind, payload = self._pending or self._worker.next()
                self._pending = None
                if kind == DONE:
                    self._finish(ctx, payload, fallback)
                    return
                ctx.loss = self._evaluate(ctx, payload)
                self._pending = self._worker.next()  # the next point, or the end of the solve
                if self._pending[0] == DONE:
                    self._finish(ctx, self._pending[1], fallback)
                    return
                if self.mode == "evaluation":
                    break
        except BaseException:
            self.close()
            self._set_params(params, self._best.x if self._best.x is not None else x_now)
            raise
        self._set_params(params, self._best.x if self._best.x is not None else x_now)
        ctx.skip_update = True

    def _evaluate(self, ctx, x: np.ndarray):
        self._set_params(ctx.params, x)
        loss = ctx.closure(self.uses_grad)
        f = float(loss)
        g = _flatten(ctx.read_grads()) if self.uses_grad else None
        self._evaluations += 1
        self._best.update(x, f)
        self._sync_state()
        self._worker.reply((f, g))
        return loss

    def _finish(self, ctx, payload, fallback) -> None:
        result, exc = payload
        self.close()
        x = self._best.x if self._best.x is not None else fallback
        if x is not None:
            self._set_params(ctx.params, x)
        ctx.skip_update = True
        if isinstance(exc, self.stop_exc) and self._budget.exhausted:
            reason = "budget exhausted"
        else:
            reason = self._outcome(result, exc)
        ctx.terminate(f"{self.name}: {reason}")

    @staticmethod
    def _set_params(params, x: np.ndarray) -> None:
        pos = 0
        src = torch.from_numpy(x)
        for p in params:
            n = p.numel()
            p.copy_(src[pos:pos + n].view(p.shape))
            pos += n


def _flatten(tensors) -> np.ndarray:
    if not tensors:
        return np.zeros(0)
    return torch.cat([t.detach().reshape(-1).to("cpu", torch.float64) for t in tensors]).numpy()
