"""``SolverModule``: the shared stepwise mechanism of callback-driven solver adapters.

A subclass says how to build the solve (``_build``) and how to read its outcome
(``_outcome``); this class flattens the parameters, runs the solve in a
:class:`~.worker.SolverWorker` (a greenlet of the calling thread), evaluates the closure for
each point the solver asks for, tracks the best point (:class:`~.best.BestSeen`), enforces the
budget (:class:`~.budget.Budget`), terminates the optimizer when the solver finishes, and
checkpoints the best point.
"""

from __future__ import annotations

import math
import weakref
from threading import get_ident

import numpy as np
import torch

from optbridge.core.closure import CountedClosure, check_loss
from optbridge.core.context import StepContext
from optbridge.core.module import Module

from .best import BestSeen
from .bounds import check_bounds, resolve_bounds
from .budget import Budget, check_budget
from .constraints import ConstraintSet, check_constraints
from .flat import FlatParams, flatten
from .worker import DONE, SolverWorker

MODES = ("evaluation", "solve")
_NEG_INF = -math.inf
#: default feasibility tolerance of the best-point tracking under constraints
FEASIBILITY_TOL = 1e-6


class SolverModule(Module):
    """Base class; see :class:`~.nlopt.NLopt` for the user-facing behaviour.

    Subclasses set ``uses_grad`` and ``label`` (for messages) and implement ``_build`` and
    ``_outcome``.
    """

    #: exception raised inside the solver's callback to stop it (budget, close)
    stop_exc: type[BaseException] = RuntimeError
    uses_grad: bool = False

    def __init__(self, budget, bounds, mode: str, constraints=None,
                 constraint_tol: float = FEASIBILITY_TOL):
        super().__init__()
        self.budget = check_budget(budget, self.name)
        self.bounds = check_bounds(bounds, self.name)
        if mode not in MODES:
            raise ValueError(f"{self.name}: mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.constraints = check_constraints(constraints, self.name)
        if isinstance(constraint_tol, bool) or not isinstance(constraint_tol, (int, float)) \
                or not constraint_tol >= 0:
            raise ValueError(f"{self.name}: constraint_tol must be a number >= 0, got {constraint_tol!r}")
        self.constraint_tol = float(constraint_tol)
        self._cset = None  # ConstraintSet, bound to the problem size at the first step
        self._flat = None  # FlatParams of the parameters taking part
        self.needs_grad = False  # the module evaluates the closure itself
        self._worker = None
        self._finalizer = None
        self._pending = None
        self._budget = None
        self._best = BestSeen(tol=self.constraint_tol)
        self._evaluations = 0
        self._live_state = None
        self._best_view = None  # (BestSeen.x, the tensor viewing it in global_state)
        self._at_best = False  # the parameters hold the best point (no restore needed)
        self._fast_ctx = None  # _EvalContext of the fast path, kept while the closure is the same
        self._inline_eval = False  # set by _start

    @property
    def label(self) -> str:
        return self.name

    @property
    def evaluations(self) -> int:
        """Objective evaluations so far (restored from checkpoints)."""
        return self._evaluations

    @property
    def best_value(self) -> float:
        """Lowest finite value seen (``inf`` if none); with constraints, at the best feasible
        point (see :class:`~.best.BestSeen`)."""
        return self._best.f

    @property
    def best_violation(self) -> float:
        """Largest constraint violation at the best point (0 without constraints)."""
        return self._best.v

    def _bind_constraints(self, x0: np.ndarray):
        """The :class:`ConstraintSet` sized at ``x0`` (None without constraints)."""
        if not self.constraints:
            return None
        if self._cset is None:
            self._cset = ConstraintSet(self.constraints)
        if self._cset.sizes is None:
            self._cset.bind(x0, self.name)
        return self._cset

    def close(self) -> None:
        """Stop the solver (it sees ``stop_exc`` raised in its callback and unwinds)."""
        if self._finalizer is not None:
            self._finalizer()
        self._finalizer = self._worker = self._pending = self._fast_ctx = None

    # ------------------------------------------------------------------- subclass interface
    def _build(self, x0: np.ndarray, limits, budget: Budget):
        """Return ``solve(request)``, run in the worker's greenlet. ``request(x)`` returns
        ``(f, grad)`` (grad None unless ``uses_grad``); ``solve`` must call ``budget.take()``
        before each request and must hold no reference to ``self``. ``x`` may be the solver's
        own float64 buffer, even a read-only one: it is read only until ``request`` returns
        (the module copies what it keeps), while the solver waits for the reply."""
        raise NotImplementedError

    def _outcome(self, result, exc) -> str:
        """The termination reason for a finished solve (``exc``: what it raised, or None);
        raise for errors."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------ running
    def _make_solve(self, ctx, x0: np.ndarray):
        limits = resolve_bounds(self.bounds, ctx.params, self.name)
        remaining = None if self.budget is None else self.budget - self._evaluations
        budget = Budget(remaining, self.stop_exc)
        self._bind_constraints(x0)
        solve = self._build(x0.copy(), limits, budget)
        self._budget = budget
        return solve

    def _start(self, ctx, x0: np.ndarray) -> None:
        solve = self._make_solve(ctx, x0)
        self._worker = worker = SolverWorker(solve, self.stop_exc, f"optbridge-{self.name}")
        # the fast path may evaluate inline what _evaluate_point would (see fast_step)
        self._inline_eval = (not self.uses_grad and self._cset is None
                             and type(self)._value is SolverModule._value
                             and self._best.v <= self._best.tol)
        self._finalizer = weakref.finalize(self, worker.close)

    def _sync_state(self, best_changed: bool = True) -> None:
        """Mirror evaluations and the best point into ``global_state`` (checkpoints).
        ``best_x`` is a tensor view of :class:`BestSeen`'s buffer, which improvements overwrite
        in place: the view is made again only when the buffer is a new one."""
        gs = self.global_state
        gs["evaluations"] = self._evaluations
        if not best_changed and gs is self._live_state:
            return
        best = self._best
        gs["best_f"] = best.f
        gs["best_violation"] = best.v
        bx = best.x
        if bx is None:
            gs["best_x"] = None
        else:
            view = self._best_view
            if view is None or view[0] is not bx or gs.get("best_x") is not view[1]:
                self._best_view = view = (bx, torch.from_numpy(bx))
            gs["best_x"] = view[1]
        self._live_state = gs

    def _restore(self, gs) -> None:
        """State was loaded (or reset): restart the solver from the saved best point."""
        self.close()
        self._best = self._best_from_state(gs)
        self._evaluations = int(gs.get("evaluations", 0))
        self._sync_state()

    def _best_from_state(self, gs) -> BestSeen:
        bx = gs.get("best_x")
        return BestSeen(None if bx is None else bx.numpy(), gs.get("best_f", math.inf),
                        gs.get("best_violation", 0.0), self.constraint_tol)

    def _prepare(self, ctx) -> FlatParams:
        """Common start of a step: closure check, restart after a load or reset, and a check
        that the parameters taking part did not change size; returns their flat view."""
        if ctx.closure is None:
            ctx.require_closure(f"{self.name} evaluates the objective through it")
        gs = self.global_state
        live = self._live_state
        if gs is not live or (live is not None and "evaluations" not in gs):
            self._restore(gs)
        flat = self._flat
        if flat is None or not flat.matches(ctx.params):
            flat = self._flat = FlatParams(ctx.params)
        if self._best.x is not None and self._best.x.size != flat.size:
            raise ValueError(
                f"{self.name}: the parameters taking part changed size ({self._best.x.size} "
                f"-> {flat.size}); create a new optimizer"
            )
        return flat

    def step(self, ctx) -> None:
        if self._worker is not None:
            self._worker.check_thread()  # before anything changes
        flat = self._prepare(ctx)
        ctx.skip_update = True
        x_start = None  # where the parameters were when this step began (lazy; read once)
        if self._worker is None:
            if self.budget is not None and self._evaluations >= self.budget:
                ctx.terminate(f"{self.name}: budget exhausted")
                return
            if self.mode == "solve":
                self._solve_inline(ctx, flat)
                return
            x_start = flat.read()
            self._start(ctx, x_start if self._best.x is None else self._best.x)
        try:
            kind, payload = self._pending or self._worker.next()
            self._pending = None
            while kind != DONE:
                if x_start is None and self._best.x is None:
                    x_start = flat.read()
                ctx.loss = self._evaluate(ctx, flat, payload)
                kind, payload = self._worker.next()  # the next point, or the end of the solve
                if kind != DONE and self.mode == "evaluation":
                    self._pending = (kind, payload)
                    break
        except BaseException:
            self.close()
            self._restore_params(flat, x_start)
            raise
        if kind == DONE:
            self._finish(ctx, flat, payload, x_start)
        elif not self._at_best:
            self._restore_params(flat, x_start)

    def fast_step(self, optimizer, closure):
        """The engine's fast path (``Modular.step``, this module alone in the chain): one
        evaluation of a solver paused at a point, without a :class:`StepContext`; returns the
        loss. Same semantics as :meth:`step` (counted closure, best point written back,
        termination); returns ``NotImplemented``, having changed nothing, whenever
        :meth:`step` has more to do (first step, restart after a load or reset, other
        parameters taking part, complex parameters, ``reuse_evaluation``, ``mode="solve"``).

        A derivative-free solver without constraints and with the plain :meth:`_value` (the
        common case) evaluates and records the point inline, as :meth:`_evaluate_point` would:
        at one evaluation per step each Python call saved shows in the per-evaluation
        overhead."""
        pending, gs, flat = self._pending, self.global_state, self._flat
        if (pending is None or gs is not self._live_state or "evaluations" not in gs
                or optimizer.reuse_evaluation or optimizer._has_complex
                or not optimizer.takes_part_unchanged(flat.params)):
            return NotImplemented
        worker = self._worker
        if worker.thread != get_ident():
            worker.check_thread()  # raises, before anything changes
        for p in flat.params:
            g = p.grad
            if g is not None and g.is_sparse:
                raise RuntimeError("Modular: sparse gradients are not supported")
        ctx = self._fast_ctx
        if ctx is None or ctx.closure.fn is not closure or ctx.closure.counts is not optimizer.evals:
            counted = CountedClosure(closure, optimizer.evals, self._owner_name)
            ctx = self._fast_ctx = _EvalContext(counted, flat.params)
        self._pending = None
        best = self._best
        x_start = None if best.x is not None else flat.read()
        x = pending[1]
        try:
            if not self._inline_eval:
                loss, reply = self._evaluate_point(ctx, flat, x)
            else:
                flat.write(x)
                counted = ctx.closure
                if not counted.takes_backward:
                    counted(False)  # raises ClosureError
                loss = closure(False)  # CountedClosure(False) inlined
                optimizer.evals.loss += 1
                if type(loss) is not torch.Tensor or loss.numel() != 1:
                    loss = check_loss(loss, self._owner_name(), False)
                f = loss.item()
                gs["evaluations"] = self._evaluations = self._evaluations + 1
                # BestSeen.update at violation 0 (the best point is feasible, or there is none
                # and best.f is inf), then _sync_state
                if _NEG_INF < f < best.f:
                    bx = best.x
                    if bx is not None:
                        bx[...] = x
                    else:
                        best.store(x)
                        self._sync_state()  # the new buffer's view
                    best.f = gs["best_f"] = f
                    best.v = gs["best_violation"] = 0.0
                    self._at_best = True
                else:
                    self._at_best = False
                reply = (f, None)
            out = worker.send(reply)
        except BaseException:
            self.close()
            self._restore_params(flat, x_start)
            raise
        if out[0] == DONE:
            step_ctx = StepContext(optimizer, flat.params, flat.params, None, ctx.closure,
                                   optimizer.num_steps)
            step_ctx.module = self
            self._finish(step_ctx, flat, out[1], x_start)
        else:
            self._pending = out  # (POINT, x)
            if not self._at_best:  # _restore_params, inlined
                if best.x is not None:
                    flat.write(best.x)
                    self._at_best = True
                elif x_start is not None:
                    flat.write(x_start)
        return loss

    def _owner_name(self) -> str:
        return type(self).__name__

    def _restore_params(self, flat: FlatParams, x_start) -> None:
        x = self._best.x if self._best.x is not None else x_start
        if x is not None:
            flat.write(x)
            self._at_best = self._best.x is not None

    def _value(self, ctx, x: np.ndarray):
        """Evaluate the objective at ``x`` (already written into the parameters): returns the
        loss (for ``ctx.loss``), its float value and the reply for the solver."""
        loss = ctx.closure(self.uses_grad)
        f = loss.item()
        if self.uses_grad:
            return loss, f, (f, flatten(ctx.read_grads()))
        return loss, f, (f, None)

    def _evaluate_point(self, ctx, flat: FlatParams, x: np.ndarray):
        """Write ``x`` into the parameters, evaluate, record; returns ``(loss, reply)``."""
        flat.write(x)
        loss, f, reply = self._value(ctx, x)
        self._evaluations += 1
        cset = self._cset
        self._at_best = improved = self._best.update(
            x, f, 0.0 if cset is None else cset.max_violation(x))
        self._sync_state(improved)
        return loss, reply

    def _evaluate(self, ctx, flat: FlatParams, x: np.ndarray):
        loss, reply = self._evaluate_point(ctx, flat, x)
        self._worker.reply(reply)
        return loss

    def _solve_inline(self, ctx, flat: FlatParams) -> None:
        """``mode="solve"``: the solver's callback evaluates the closure directly (no worker,
        no handoff). An exception from the closure stops the solver (``stop_exc``) and is
        re-raised as is, parameters at the best point."""
        x_start = flat.read()
        solve = self._make_solve(ctx, x_start if self._best.x is None else self._best.x)
        failure = []

        def request(x):
            try:
                ctx.loss, reply = self._evaluate_point(ctx, flat, x)
            except BaseException as e:
                failure.append(e)
                raise self.stop_exc("the closure raised") from None
            return reply

        try:
            payload = (solve(request), None)
        except BaseException as e:
            payload = (None, e)
        if failure:
            self._restore_params(flat, x_start)
            raise failure[0]
        self._finish(ctx, flat, payload, x_start)

    def _finish(self, ctx, flat, payload, x_start) -> None:
        result, exc = payload
        self.close()
        self._restore_params(flat, x_start)
        if isinstance(exc, self.stop_exc) and self._budget.exhausted:
            reason = "budget exhausted"
        else:
            reason = self._outcome(result, exc)
        ctx.terminate(f"{self.name}: {reason}")


class _EvalContext:
    """What :meth:`SolverModule._value` reads from a step context, for the fast path: the
    counted closure and the gradients of the parameters (no complex ones on that path)."""

    __slots__ = ("closure", "params")

    def __init__(self, closure: CountedClosure, params: list):
        self.closure, self.params = closure, params

    def read_grads(self) -> list:
        return [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
