"""``NLopt``: an NLopt algorithm as a chain module, advanced one evaluation per step.

References: S. G. Johnson, The NLopt nonlinear-optimization package,
https://github.com/stevengj/nlopt (algorithms: https://nlopt.readthedocs.io/en/latest/NLopt_Algorithms/).
"""

from __future__ import annotations

import numpy as np

from .base import FEASIBILITY_TOL, SolverModule

#: algorithms accepting inequality / equality constraints (NLopt's algorithm reference)
INEQ_ALGORITHMS = ("LN_COBYLA", "LD_MMA", "LD_CCSAQ", "LD_SLSQP", "GN_ISRES", "GN_ORIG_DIRECT",
                   "GN_ORIG_DIRECT_L", "GN_AGS", "AUGLAG", "AUGLAG_EQ", "LD_AUGLAG",
                   "LD_AUGLAG_EQ", "LN_AUGLAG", "LN_AUGLAG_EQ")
EQ_ALGORITHMS = ("LN_COBYLA", "LD_SLSQP", "GN_ISRES", "AUGLAG", "AUGLAG_EQ", "LD_AUGLAG",
                 "LD_AUGLAG_EQ", "LN_AUGLAG", "LN_AUGLAG_EQ")
#: algorithms that run a subsidiary (local) optimizer
LOCAL_ALGORITHMS = ("AUGLAG", "AUGLAG_EQ", "LD_AUGLAG", "LD_AUGLAG_EQ", "LN_AUGLAG",
                    "LN_AUGLAG_EQ", "G_MLSL", "G_MLSL_LDS", "GN_MLSL", "GN_MLSL_LDS", "GD_MLSL",
                    "GD_MLSL_LDS")
#: ... of which these have no default and need one
NEEDS_LOCAL = LOCAL_ALGORITHMS[:8]

_RESULTS = {1: "success", 2: "stopval reached", 3: "ftol reached", 4: "xtol reached",
            5: "maxeval reached", 6: "maxtime reached"}


def _import_nlopt():
    try:
        import nlopt
    except ImportError:
        raise ImportError("NLopt: needs the nlopt package; pip install optbridge[nlopt]") from None
    return nlopt


class NLopt(SolverModule):
    """Minimizes the chain's closure with an NLopt algorithm.

    Put it alone in a chain: ``Modular(params, NLopt("LN_BOBYQA", budget=200))`` and call
    ``opt.step(closure)``. The parameters taking part (``requires_grad``, in ``ctx.params``
    order; complex ones as real views) are flattened into one float64 vector ``x``; NLopt
    minimizes ``closure(False)`` at ``x`` for derivative-free algorithms (``LN_*``, ``GN_*``)
    and ``closure(True)`` plus the flattened gradients for gradient algorithms (``LD_*``,
    ``GD_*``). Points are written into the parameters in place (``copy_``, so float32
    parameters see the point rounded to float32).

    Modes:

    - ``"evaluation"`` (default): each ``step(closure)`` advances NLopt by exactly one objective
      evaluation. NLopt is callback-driven, so ``opt.optimize`` runs in a greenlet of the
      calling thread (:mod:`.worker`) whose callback switches each point to ``step`` and is
      resumed with its value (a switch costs about a microsecond; no extra thread). Step it
      from the thread that started it (another thread gets a ``RuntimeError``). NLopt's random
      state (``nlopt.srand``) is the thread's, as in a direct call: randomized algorithms
      stepped alternately with another NLopt solver in the same thread share that stream.
      ``step`` returns the loss at the evaluated point and leaves the parameters at the **best
      point seen so far** (NaN/inf values count as evaluations but never become best). When
      NLopt finishes (budget, tolerance, ``RoundoffLimited``, ``ForcedStop``) the step calls
      ``ctx.terminate(reason)``; later steps do nothing and the parameters stay at the best
      point.
    - ``"solve"``: one ``step`` runs the whole solve and leaves the parameters at the best
      point; needs a ``budget`` or a stopping criterion. The solver's callback evaluates the
      closure directly (no worker, no per-evaluation handoff).

    Conventions: minimization of the returned loss; no learning rate (do not chain ``LR``; the
    engine's update is skipped, the module moves the parameters itself). The sequence of points
    NLopt evaluates is bit-identical to calling ``nlopt`` directly with the same algorithm, x0,
    bounds, budget and options on the same objective.

    Lifecycle: the suspended solver is stopped (``nlopt.ForcedStop`` raised inside the
    callback, so NLopt unwinds) when NLopt finishes, when the closure raises, by :meth:`close`,
    or when the module is garbage-collected (``weakref.finalize``).

    Checkpoints: the running solver cannot be saved. ``state_dict()`` stores, in this module's
    ``global_state``, ``best_x`` (float64 tensor), ``best_f`` and ``evaluations``. After
    ``load_state_dict`` the next step **restarts** NLopt from ``best_x`` with the remaining
    budget (the solver's internal model, e.g. BOBYQA's trust region, starts afresh).

    Args:
        algorithm: an NLopt algorithm name (``"LN_BOBYQA"``) or constant (``nlopt.LN_BOBYQA``).
        budget: exactly this many objective evaluations in all (``maxeval``, also enforced by
            raising ``nlopt.ForcedStop`` if NLopt asks for more). None: no limit.
        bounds: ``None``, ``(low, high)`` for every parameter, or a list of one ``(low, high)``
            (or None) per parameter; ``low``/``high`` numbers or tensors broadcastable to the
            parameter, ``None`` for a one-sided bound. Required by ``GN_*`` algorithms.
        mode: ``"evaluation"`` or ``"solve"``.
        ftol_rel, xtol_rel: NLopt's relative tolerances (None: NLopt's default, disabled).
        constraints: SciPy-style constraints (dicts ``{"type": "ineq"|"eq", "fun": c,
            "jac": J}`` with ineq meaning ``c(x) >= 0``, ``NonlinearConstraint``,
            ``LinearConstraint``; :mod:`.constraints`) where ``c`` takes ONE flat float64 torch
            tensor and returns a scalar or 1-D tensor. Added with
            ``add_inequality_mconstraint``/``add_equality_mconstraint`` in NLopt's convention
            ``h(x) <= 0`` (so ``h = -c`` for an ineq dict, ``h = c - ub`` and ``lb - c`` for
            bounds ``lb <= c <= ub``); the Jacobian (``J``, or torch autograd when missing) is
            computed only when the algorithm asks for it. Algorithms: inequalities for
            LN_COBYLA, LD_MMA, LD_CCSAQ, LD_SLSQP, GN_ISRES, GN_ORIG_DIRECT(_L), GN_AGS and the
            AUGLAG family; equalities for LN_COBYLA, LD_SLSQP, GN_ISRES and AUGLAG.
        constraint_tol: NLopt's constraint tolerance ``tol`` (for every constraint row; None:
            NLopt's default 0), also the feasibility tolerance of the best-point tracking (a
            feasible point beats any infeasible one; None: ``1e-6``).
        local_algorithm: the subsidiary algorithm of AUGLAG / MLSL (a name), e.g.
            ``"LD_LBFGS"``, ``"LN_BOBYQA"``; ``local_options``: its setters (``xtol_rel`` ...).
        **options: ``opt.set_<name>(value)`` when NLopt has such a setter (``ftol_abs``,
            ``xtol_abs``, ``stopval``, ``initial_step``, ``population``, ``maxtime``,
            ``vector_storage``), else one of NLopt's documented algorithm parameters
            (``opt.set_param(name, value)``: the CCSA/MMA ones, :data:`ALGORITHM_PARAMS`).
            ``params={...}`` passes any other ``set_param`` names unchecked. A name that is
            neither is a ``ValueError`` listing the closest option names (NLopt itself
            ignores unknown parameter names).
    """

    def __init__(self, algorithm, *, budget=None, bounds=None, mode: str = "evaluation",
                 ftol_rel=None, xtol_rel=None, constraints=None, constraint_tol=None,
                 local_algorithm=None, local_options=None, **options):
        nlopt = _import_nlopt()
        self.algorithm, self.algorithm_name = _resolve_algorithm(nlopt, algorithm)
        super().__init__(budget, bounds, mode, constraints,
                         FEASIBILITY_TOL if constraint_tol is None else constraint_tol)
        self.nlopt_tol = 0.0 if constraint_tol is None else self.constraint_tol
        name = self.algorithm_name
        for c in self.constraints:
            kinds = _kinds(c)
            if "ineq" in kinds and name not in INEQ_ALGORITHMS:
                raise ValueError(f"NLopt ({name}): does not accept inequality constraints; use one "
                                 f"of {', '.join(INEQ_ALGORITHMS)}")
            if "eq" in kinds and name not in EQ_ALGORITHMS:
                raise ValueError(f"NLopt ({name}): does not accept equality constraints; use one "
                                 f"of {', '.join(EQ_ALGORITHMS)}")
        self.local_algorithm = self.local_name = None
        if local_algorithm is not None:
            if name not in LOCAL_ALGORITHMS:
                raise ValueError(f"NLopt ({name}): takes no local_algorithm (only "
                                 f"{', '.join(LOCAL_ALGORITHMS)})")
            self.local_algorithm, self.local_name = _resolve_algorithm(nlopt, local_algorithm)
        elif name in NEEDS_LOCAL:
            raise ValueError(f"NLopt ({name}): needs local_algorithm=, e.g. 'LN_BOBYQA' or 'LD_LBFGS'")
        if local_options is not None and not isinstance(local_options, dict):
            raise ValueError(f"NLopt: local_options must be a dict, got {type(local_options).__name__}")
        self.local_options = dict(local_options or {})
        for key, v in (("ftol_rel", ftol_rel), ("xtol_rel", xtol_rel)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0):
                raise ValueError(f"NLopt: {key} must be None or a number >= 0, got {v!r}")
        self.ftol_rel, self.xtol_rel = ftol_rel, xtol_rel
        for key in options:
            if key in ("maxeval", "lower_bounds", "upper_bounds", "min_objective", "max_objective"):
                raise ValueError(f"NLopt: option {key!r} is set by the adapter (use budget/bounds)")
        _check_option_names(nlopt, options, "NLopt")
        _check_option_names(nlopt, self.local_options, "NLopt (local_options)")
        self.options = dict(options)
        if mode == "solve" and self.budget is None and not any(
            k in options for k in ("ftol_abs", "xtol_abs", "stopval", "maxtime")
        ) and ftol_rel is None and xtol_rel is None:
            raise ValueError("NLopt: mode='solve' needs a budget or a stopping criterion")
        self.uses_grad = name[1:3] == "D_" or (  # LD_*, GD_*, or a gradient local algorithm
            self.local_name is not None and self.local_name[1:3] == "D_")
        self.stop_exc = nlopt.ForcedStop
        self._opt = None

    def __repr__(self) -> str:
        return f"NLopt({self.algorithm_name!r}, budget={self.budget}, mode={self.mode!r})"

    def _build(self, x0: np.ndarray, limits, budget):
        nlopt = _import_nlopt()
        opt = nlopt.opt(self.algorithm, x0.size)
        try:
            if limits is not None:
                opt.set_lower_bounds(limits[0])
                opt.set_upper_bounds(limits[1])
            if budget.limit is not None:
                opt.set_maxeval(budget.limit)
            if self.ftol_rel is not None:
                opt.set_ftol_rel(self.ftol_rel)
            if self.xtol_rel is not None:
                opt.set_xtol_rel(self.xtol_rel)
            _apply_options(opt, self.options)
            if self.local_algorithm is not None:
                local = nlopt.opt(self.local_algorithm, x0.size)
                _apply_options(local, self.local_options)
                opt.set_local_optimizer(local)
            cset = self._cset
            if cset is not None:
                ineq, eq = cset.nlopt_parts()
                tol = self.nlopt_tol
                if ineq is not None:
                    opt.add_inequality_mconstraint(_mconstraint(cset, *ineq), np.full(ineq[0].size, tol))
                if eq is not None:
                    opt.add_equality_mconstraint(_mconstraint(cset, *eq), np.full(eq[0].size, tol))
        except (ValueError, TypeError, nlopt.invalid_argument) as e:
            raise ValueError(f"NLopt ({self.algorithm_name}): {_message(e, opt)}") from None
        self._opt = opt

        def solve(request):  # the worker's greenlet; holds no reference to the module
            def objective(x, grad):
                budget.take()
                f, g = request(x)  # NLopt's read-only buffer, kept only until the reply
                if grad.size > 0:
                    grad[:] = g
                return f

            opt.set_min_objective(objective)
            return opt.optimize(x0)

        return solve

    def _outcome(self, result, exc) -> str:
        nlopt = _import_nlopt()
        opt = self._opt
        if exc is None:
            code = opt.last_optimize_result()
            return _RESULTS.get(code, f"result {code}")
        if isinstance(exc, nlopt.ForcedStop):
            return "forced stop"
        if isinstance(exc, nlopt.RoundoffLimited):
            return "roundoff limited"
        if isinstance(exc, (ValueError, nlopt.invalid_argument)):
            raise ValueError(f"NLopt ({self.algorithm_name}): {_message(exc, opt)}") from None
        raise RuntimeError(f"NLopt ({self.algorithm_name}): the solver failed: {exc!r}") from exc


#: NLopt's documented algorithm parameters (``nlopt_set_param``): the CCSA / MMA family's.
ALGORITHM_PARAMS = ("inner_maxeval", "verbosity", "rho_init", "dual_algorithm", "dual_ftol_rel",
                    "dual_ftol_abs", "dual_xtol_rel", "dual_xtol_abs", "dual_maxeval")


def _check_option_names(nlopt, options: dict, where: str) -> None:
    import difflib

    setters = sorted(n[4:] for n in dir(nlopt.opt) if n.startswith("set_"))
    for key, value in options.items():
        if key == "params":
            if not isinstance(value, dict):
                raise ValueError(f"{where}: params must be a dict of set_param names, "
                                 f"got {type(value).__name__}")
            continue
        if key in setters or key in ALGORITHM_PARAMS:
            continue
        close = difflib.get_close_matches(key, setters + list(ALGORITHM_PARAMS), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"{where}: unknown option {key!r}{hint} (other algorithm parameters: "
                         f"params={{name: value}})")


def _apply_options(opt, options: dict) -> None:
    for k, v in options.items():
        if k == "params":
            for name, value in v.items():
                opt.set_param(name, value)
            continue
        setter = getattr(opt, f"set_{k}", None)
        if setter is not None:
            setter(v)
        else:
            opt.set_param(k, v)


def _kinds(c) -> set:
    if isinstance(c, dict):
        return {c["type"]}
    lb = np.asarray(c.lb, dtype=np.float64)
    ub = np.asarray(c.ub, dtype=np.float64)
    eq = lb == ub
    out = {"eq"} if eq.any() else set()
    return out | ({"ineq"} if not eq.all() else set())


def _mconstraint(cset, rows, sign, offset):
    """NLopt vector constraint ``h = sign * g[rows] - offset`` (``h <= 0`` or ``h == 0``)."""
    def h(result, x, grad):
        x = np.array(x, dtype=np.float64, copy=True)
        result[:] = sign * cset.values(x)[rows] - offset
        if grad.size > 0:
            grad[:] = sign[:, None] * cset.jacobian(x)[rows]
    return h


def _message(exc, opt) -> str:
    """NLopt's C++ exceptions reach Python without text; the reason is in ``get_errmsg()``."""
    text = str(exc)
    if not text and opt is not None:
        try:
            text = opt.get_errmsg() or ""
        except Exception:
            text = ""
    return text or f"invalid argument ({type(exc).__name__})"


def _resolve_algorithm(nlopt, algorithm):
    names = {getattr(nlopt, n): n for n in dir(nlopt)
             if n[:3] in ("GN_", "GD_", "LN_", "LD_", "G_M") or n.startswith("AUGLAG")}
    if isinstance(algorithm, str):
        value = getattr(nlopt, algorithm, None)
        if algorithm not in names.values() or value is None:
            raise ValueError(f"NLopt: unknown algorithm {algorithm!r} (e.g. 'LN_BOBYQA', 'LD_LBFGS')")
        return value, algorithm
    if isinstance(algorithm, int) and not isinstance(algorithm, bool) and algorithm in names:
        return algorithm, names[algorithm]
    raise ValueError(f"NLopt: algorithm must be an NLopt algorithm name or constant, got {algorithm!r}")
