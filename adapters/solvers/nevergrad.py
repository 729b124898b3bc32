"""``Nevergrad``: a Nevergrad optimizer as a chain module, advanced one evaluation per step.

Nevergrad is ask/tell already, so unlike :class:`~.nlopt.NLopt`/:class:`~.scipy.Scipy` no
worker thread is needed: each ``step`` asks one candidate, evaluates it and tells the value.

References: J. Rapin and O. Teytaud, Nevergrad - A gradient-free optimization platform,
https://github.com/facebookresearch/nevergrad (optimizers:
https://facebookresearch.github.io/nevergrad/optimizers_ref.html).
"""

from __future__ import annotations

import builtins
import difflib
import inspect
import math
import numbers

import numpy as np

from .base import FEASIBILITY_TOL, SolverModule
from .bounds import resolve_bounds

#: the finite loss told to Nevergrad for NaN/inf values (Nevergrad's own clipping value: its
#: ``tell`` replaces any ``not loss < 5e20`` by ``5e20`` with a ``LossTooLargeWarning``).
PENALTY = 5.0e20


def _import_nevergrad():
    try:
        import nevergrad as ng
    except ImportError:
        raise ImportError(
            "Nevergrad: needs the nevergrad package; pip install optbridge[nevergrad]"
        ) from None
    _patch_numpy24(ng)
    return ng


# ------------------------------------------------------------------ numpy >= 2.4 compatibility
def _compat_float(x=0.0):
    """``float`` accepting size-1 arrays of any ndim, as numpy < 2.4 did (the conversion of
    ``ndim > 0`` arrays was deprecated in numpy 1.25 and is a ``TypeError`` since 2.4)."""
    if isinstance(x, np.ndarray) and x.ndim and x.size == 1:
        x = x.reshape(())
    return builtins.float(x)


def _patch_numpy24(ng) -> bool:
    """Make Nevergrad's MetaModel optimizers (often selected by ``NGOpt``) work with numpy >= 2.4.

    nevergrad <= 1.0.12, ``optimization/metamodel.py``, ``learn_on_k_best.loss_function_sm``
    does ``float(model.predict(X[None, :]))``; ``predict`` returns a shape-(1,) array and
    numpy 2.4 raises ``TypeError: only 0-dimensional arrays can be converted to Python
    scalars``, so ``MetaModel``/``NGOpt`` crash once the metamodel kicks in (~100 evaluations
    in low dimension). The patch shadows the builtin ``float`` **in that module's namespace
    only** by :func:`_compat_float` (identical for every other argument). Applied once, only
    when numpy >= 2.4 and the module does not define ``float`` itself; site-packages untouched.
    Returns whether the patch is (now) in place.
    """
    if np.lib.NumpyVersion(np.__version__) < "2.4.0":
        return False
    from nevergrad.optimization import metamodel

    current = metamodel.__dict__.get("float")
    if current is _compat_float:
        return True
    if current is not None:
        return False
    metamodel.float = _compat_float
    return True


# ---------------------------------------------------------------------------------- adapter
class Nevergrad(SolverModule):
    """Minimizes the chain's closure with a Nevergrad optimizer.

    Put it alone in a chain: ``Modular(params, Nevergrad("NGOpt", budget=200))`` and call
    ``opt.step(closure)``. The parameters taking part (in ``ctx.params`` order) are flattened
    into one float64 vector, parametrized as ``ng.p.Array(init=x0)`` where ``x0`` is their
    value at the first step (clipped into the bounds), with ``set_bounds`` when bounds are given
    (a side that is unbounded for every element is passed as ``None``, per-element infinities
    otherwise, so one-sided bounds work). Each candidate is written into the parameters in place
    (``copy_``; float32 parameters see it rounded) and ``closure(False)`` is evaluated.

    Modes:

    - ``"evaluation"`` (default): each ``step(closure)`` asks exactly one candidate, evaluates
      and tells it, returns the loss at the candidate and leaves the parameters at the **best
      point seen so far**. The step doing the ``budget``-th evaluation calls
      ``ctx.terminate``; later steps do nothing.
    - ``"solve"``: one ``step`` runs the whole remaining budget.

    Non-finite values (NaN, +-inf) count as evaluations, never become the best point, and are
    told to Nevergrad as the finite penalty :data:`PENALTY` = ``5e20`` (the value Nevergrad's
    own ``tell`` clips them to; we pass it directly, without its warning).

    Reproducibility: with ``seed`` set, ``parametrization.random_state.seed(seed)`` is called
    before the optimizer is created; the candidates are then identical to calling Nevergrad
    directly (``ng.p.Array(init=x0)``, same bounds, seed, optimizer, ``budget`` and
    ``num_workers``, one ask/tell at a time). ``seed=None`` draws from numpy's global state.

    ``resolved_name``: after the first step, the name of the optimizer that actually runs
    (for ``NGOpt`` and other wrappers with an ``.optim``, the innermost one, e.g.
    ``"MetaModel"``, ``"CMA"``); before it, None.

    Conventions: minimization; no learning rate (the engine's update is skipped; the module
    moves the parameters itself); no gradients are computed.

    Checkpoints: the optimizer itself is not saved. ``global_state`` holds ``best_x``,
    ``best_f`` and ``evaluations``; after ``load_state_dict`` the next step restarts Nevergrad
    from ``best_x`` with the remaining budget (and the same seed).

    numpy >= 2.4: importing the adapter applies :func:`_patch_numpy24` (MetaModel fix).

    Args:
        optimizer: a registry name (``"NGOpt"``, ``"CMA"``, ``"OnePlusOne"``, ``"DE"``,
            ``"TwoPointsDE"``, ... see ``ng.optimizers.registry``), an optimizer class
            (``ng.optimizers.NGOpt``), a family class (``ng.families.ParametrizedOnePlusOne``,
            configured with ``**options``) or a configured family instance
            (``ng.families.ParametrizedOnePlusOne(noise_handling="random")``).
        budget: exactly this many objective evaluations (int >= 1, also given to Nevergrad).
        bounds: ``None``, ``(low, high)`` for every parameter, or a list of one ``(low, high)``
            (or None) per parameter; numbers/tensors broadcastable to the parameter, ``None``
            for an unbounded side.
        num_workers: Nevergrad's ``num_workers`` (candidates are still asked/told one by one).
        seed: seed of the parametrization's ``random_state`` (None: not seeded).
        mode: ``"evaluation"`` or ``"solve"``.
        bound_method: Nevergrad's ``set_bounds`` method (default ``"bouncing"``).
        constraints: SciPy-style constraints (dicts ``{"type": "ineq"|"eq", "fun": c}`` with
            ineq meaning ``c(x) >= 0``, ``NonlinearConstraint``, ``LinearConstraint``;
            :mod:`.constraints`), ``c`` taking ONE flat float64 torch tensor. Each candidate is
            told with Nevergrad's documented ``optimizer.tell(candidate, loss,
            constraint_violation)``, the violation vector being ``lb - c`` and ``c - ub`` on
            the finite sides (``> 0`` means violated; Nevergrad adds its penalty to the loss).
            The best point is the best feasible one (violation <= ``constraint_tol``).
        constraint_tol: feasibility tolerance of the best-point tracking.
        **options: the family's configuration when ``optimizer`` is a family class, else extra
            keyword arguments of an optimizer class's constructor (checked against its
            signature); not accepted with registry names or configured instances.
    """

    fast_step = None  # ask/tell steps: no paused solver, always the full engine step

    def __init__(self, optimizer, *, budget, bounds=None, num_workers: int = 1, seed=None,
                 mode: str = "evaluation", bound_method: str = "bouncing", constraints=None,
                 constraint_tol: float = FEASIBILITY_TOL, **options):
        ng = _import_nevergrad()
        if isinstance(budget, bool) or not isinstance(budget, numbers.Integral) or budget < 1:
            raise ValueError(f"Nevergrad: budget must be an integer >= 1, got {budget!r}")
        self.optimizer_cls, self.optimizer_name = _resolve_optimizer(ng, optimizer)
        super().__init__(budget, bounds, mode, constraints, constraint_tol)
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1:
            raise ValueError(f"Nevergrad: num_workers must be an integer >= 1, got {num_workers!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise ValueError(f"Nevergrad: seed must be None or an integer >= 0, got {seed!r}")
        if not isinstance(bound_method, str):
            raise ValueError(f"Nevergrad: bound_method must be a string, got {bound_method!r}")
        if isinstance(self.optimizer_cls, type) and issubclass(self.optimizer_cls, _configured()):
            try:  # a family class: configure it with the options
                self.optimizer_cls = self.optimizer_cls(**options)
            except TypeError as e:
                raise ValueError(f"Nevergrad: options of {self.optimizer_name}: {e}") from None
            options = {}
        elif options:
            _check_options(self.optimizer_cls, options)
        self.num_workers, self.seed, self.bound_method = num_workers, seed, bound_method
        self.options = dict(options)
        self.optim = None  # the live nevergrad optimizer (built at the first step)
        self.resolved_name = None

    def __repr__(self) -> str:
        return f"Nevergrad({self.optimizer_name!r}, budget={self.budget}, mode={self.mode!r})"

    def close(self) -> None:
        """Drop the live Nevergrad optimizer (a later step restarts from the best point)."""
        self.optim = None

    # ------------------------------------------------------------------------------ running
    def _make_optimizer(self, ctx, x0: np.ndarray, remaining: int):
        ng = _import_nevergrad()
        limits = self._limits(ctx)
        param = ng.p.Array(init=x0 if limits is None else np.clip(x0, *limits))
        try:
            if limits is not None:
                lo, hi = limits
                param.set_bounds(None if np.isneginf(lo).all() else lo,
                                 None if np.isposinf(hi).all() else hi, method=self.bound_method)
            if self.seed is not None:
                param.random_state.seed(self.seed)
            optim = self.optimizer_cls(param, budget=remaining, num_workers=self.num_workers,
                                       **self.options)
        except (ValueError, TypeError) as e:
            raise ValueError(f"Nevergrad ({self.optimizer_name}): {e}") from None
        self._bind_constraints(x0)
        self.optim = optim
        self.resolved_name = resolved_name(optim)

    def _limits(self, ctx):
        limits = resolve_bounds(self.bounds, ctx.params, self.name)
        if limits is not None and np.isneginf(limits[0]).all() and np.isposinf(limits[1]).all():
            return None
        return limits

    def step(self, ctx) -> None:
        flat = self._prepare(ctx)
        x_now = flat.read()
        ctx.skip_update = True
        if self._evaluations >= self.budget:
            ctx.terminate(f"{self.name}: budget exhausted")
            return
        if self.optim is None:
            self._make_optimizer(ctx, x_now if self._best.x is None else self._best.x,
                        self.budget - self._evaluations)
        try:
            while True:
                ctx.loss = self._ask_tell(ctx, flat)
                if self._evaluations >= self.budget or self.mode == "evaluation":
                    break
        finally:
            best = self._best.x
            if best is not None:
                flat.write(best)
            elif self._evaluations:  # only non-finite values seen: back to the start
                flat.write(x_now)
        if self._evaluations >= self.budget:
            self.close()
            ctx.terminate(f"{self.name}: budget exhausted")

    def _ask_tell(self, ctx, flat):
        cand = self.optim.ask()
        x = np.ascontiguousarray(cand.value, dtype=np.float64).reshape(-1)
        flat.write(x)
        loss = ctx.closure(False)
        f = float(loss)
        self._evaluations += 1
        told = f if math.isfinite(f) else PENALTY
        cset = self._cset
        if cset is None:
            self._best.update(x, f)
            self._sync_state()
            self.optim.tell(cand, told)
            return loss
        viol = cset.violations(x)
        self._best.update(x, f, float(max(viol.max(initial=0.0), 0.0)))
        self._sync_state()
        self.optim.tell(cand, told, constraint_violation=viol)
        return loss

    def _restore(self, gs) -> None:
        self.close()
        self._best = self._best_from_state(gs)
        self._evaluations = int(gs.get("evaluations", 0))
        self._sync_state()


def resolved_name(optim, _depth: int = 0) -> str:
    """Name of the optimizer doing the work: follows ``.optim`` (NGOpt and other wrappers
    choosing a sub-optimizer at construction) down to the innermost one; a portfolio (an
    optimizer sharing the budget among ``.optims``) is named with its members, resolved the
    same way: ``"Portfolio[CMAtuning, TwoPointsDE, ScrHammersleySearch]"`` (its MetaCMA member
    runs CMAtuning there)."""
    from nevergrad.optimization.base import Optimizer

    seen = 0
    while seen < 20:
        inner = getattr(optim, "optim", None)
        if not isinstance(inner, Optimizer) or inner is optim:
            break
        optim, seen = inner, seen + 1
    name = getattr(optim, "name", type(optim).__name__)
    members = getattr(optim, "optims", None)
    if _depth < 3 and isinstance(members, (list, tuple)):
        names = [resolved_name(m, _depth + 1) for m in members if isinstance(m, Optimizer)]
        if names:
            name = f"{name}[{', '.join(names)}]"
    return name


def _resolve_optimizer(ng, optimizer):
    from nevergrad.optimization.base import ConfiguredOptimizer, Optimizer

    registry = ng.optimizers.registry
    if isinstance(optimizer, str):
        if optimizer not in registry:
            close = difflib.get_close_matches(optimizer, list(registry), n=5, cutoff=0.5)
            hint = f"; closest matches: {', '.join(close)}" if close else ""
            raise ValueError(
                f"Nevergrad: unknown optimizer {optimizer!r} (see nevergrad.optimizers.registry){hint}"
            )
        return registry[optimizer], optimizer
    if isinstance(optimizer, ConfiguredOptimizer):
        return optimizer, getattr(optimizer, "name", repr(optimizer))
    if isinstance(optimizer, type) and issubclass(optimizer, (Optimizer, ConfiguredOptimizer)):
        return optimizer, optimizer.__name__
    raise ValueError(
        "Nevergrad: optimizer must be a registry name, an optimizer class or a configured family, "
        f"got {optimizer!r}"
    )


def _configured():
    from nevergrad.optimization.base import ConfiguredOptimizer

    return ConfiguredOptimizer


def _check_options(cls, options) -> None:
    if not isinstance(cls, type):
        raise ValueError(
            f"Nevergrad: options {sorted(options)} are only accepted with an optimizer class; "
            "configure a family instead (e.g. ng.families.ParametrizedOnePlusOne(...))"
        )
    sig = inspect.signature(cls.__init__)
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return
    bad = [k for k in options if k not in sig.parameters or k in ("self", "parametrization")]
    if bad:
        raise ValueError(f"Nevergrad: {cls.__name__} has no option(s) {bad}")

