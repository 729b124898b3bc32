"""The solver hand-off (``adapters/solvers/worker.py``): callback-driven solvers run in a
greenlet of the calling thread. Stopping unwinds the solver through its callback, stepping from
another thread fails clearly, solvers stepped alternately (or from inside another greenlet)
still evaluate exactly the points of direct library calls."""

import gc
import threading

import greenlet
import nlopt
import numpy as np
import pytest
import torch

import optbridge
from optbridge.adapters import NLopt, Scipy
from optbridge.adapters.solvers.base import SolverModule

from test_adapter_nlopt import direct_points, make_closure, make_params, rosen
from test_adapter_scipy_solver import direct_points as scipy_direct_points


def flat_x(params) -> torch.Tensor:
    """The parameters' current values as one vector (the solver's view)."""
    return torch.cat([p.detach().reshape(-1) for p in params])


class _Stop(Exception):
    pass


class Recording(SolverModule):
    """A solver whose loop records how it ended: the exception its request raised (if any) and
    whether its ``finally`` ran."""

    stop_exc = _Stop

    def __init__(self, log: list, budget=None):
        super().__init__(budget, None, "evaluation")
        self.log = log

    def _build(self, x0, limits, budget):
        log = self.log

        def solve(request):
            x = x0.copy()
            try:
                for i in range(1000):
                    budget.take()
                    x[0] = x0[0] + i
                    request(x.copy())
            except BaseException as e:
                log.append(type(e))
                raise
            finally:
                log.append("unwound")
        return solve

    def _outcome(self, result, exc):
        return "ended"


def _quadratic_run(module, steps):
    x = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    opt = optbridge.Modular([x], module)
    for _ in range(steps):
        opt.step(lambda backward=True: (x ** 2).sum())
    return opt


@pytest.mark.parametrize("how", ["close", "garbage collection"])
def test_stopping_raises_stop_exc_inside_the_solver_callback(how):
    log = []
    module = Recording(log)
    opt = _quadratic_run(module, 3)
    assert log == []  # suspended in its callback
    if how == "close":
        module.close()
    else:
        del opt, module
        gc.collect()
    assert log == [_Stop, "unwound"]


def test_solver_collected_in_another_thread_is_unwound_in_its_own():
    log = []
    opt = _quadratic_run(Recording(log), 3)
    cycle = [opt]
    cycle.append(cycle)  # only a garbage collection frees the optimizer
    gc.disable()  # ... and it runs in the other thread
    try:
        del opt, cycle
        t = threading.Thread(target=gc.collect)
        t.start()
        t.join()
        assert log == []  # the finalizer ran there: it cannot switch into this thread's solver
    finally:
        gc.enable()
    greenlet.getcurrent()  # this thread's next greenlet call unwinds it
    assert log == [greenlet.GreenletExit, "unwound"]


def test_budget_stop_unwinds_the_solver():
    log = []
    opt = _quadratic_run(Recording(log, budget=4), 6)
    assert opt.terminated and opt.evals.total == 4 and opt.stop_reason.endswith("budget exhausted")
    assert log == [_Stop, "unwound"]


def test_solver_runs_in_the_calling_thread_without_new_threads():
    threads = threading.active_count()
    seen = []

    def positive(x):  # called by NLopt itself, between objective evaluations
        seen.append(threading.get_ident())
        return x[0] + 10.0

    params = make_params()
    opt = optbridge.Modular(params, NLopt("LN_COBYLA", budget=20,
                                          constraints={"type": "ineq", "fun": positive}))
    closure = make_closure(params)
    for _ in range(5):
        opt.step(closure)
        assert threading.active_count() == threads
    assert seen and set(seen) == {threading.get_ident()}


def test_step_from_another_thread_fails_clearly_and_changes_nothing():
    ref = direct_points("LN_BOBYQA", 30)
    params = make_params()
    pts = []
    opt = optbridge.Modular(params, NLopt("LN_BOBYQA", budget=30))
    closure = make_closure(params, record=pts)
    for _ in range(5):
        opt.step(closure)
    before = [p.detach().clone() for p in params]
    errors = []

    def other():
        try:
            opt.step(closure)
        except RuntimeError as e:
            errors.append(str(e))

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert len(errors) == 1 and "NLopt" in errors[0] and "another thread" in errors[0]
    assert len(pts) == 5 and opt.evals.total == 5
    assert all(torch.equal(p, q) for p, q in zip(params, before))
    while not opt.terminated:  # resumes in the thread that started it
        opt.step(closure)
    assert len(pts) == len(ref) and all(np.array_equal(a, b) for a, b in zip(pts, ref))


def test_close_then_step_from_another_thread_restarts_from_the_best_point():
    params = make_params()
    pts = []
    mod = NLopt("LN_BOBYQA", budget=30)
    opt = optbridge.Modular(params, mod)
    closure = make_closure(params, record=pts)
    for _ in range(8):
        opt.step(closure)
    best = torch.cat([p.detach() for p in params]).numpy().copy()
    mod.close()
    t = threading.Thread(target=lambda: [opt.step(closure) for _ in range(40)])
    t.start()
    t.join()
    assert np.array_equal(pts[8], best) and len(pts) == 30 and opt.terminated


def test_alternating_solvers_each_match_direct_calls():
    ref_nl = direct_points("LN_BOBYQA", 40)
    ref_sp = scipy_direct_points("Nelder-Mead", False, maxfev=40)
    runs = []
    for module in (NLopt("LN_BOBYQA", budget=40), NLopt("LN_BOBYQA", budget=40),
                   Scipy("Nelder-Mead", budget=40)):
        params = make_params()
        pts = []
        runs.append((optbridge.Modular(params, module), make_closure(params, record=pts), pts))
    for _ in range(45):
        for opt, closure, _ in runs:
            opt.step(closure)
    for (_, _, pts), ref in zip(runs, (ref_nl, ref_nl, ref_sp)):
        assert len(pts) == len(ref) == 40 and all(np.array_equal(a, b) for a, b in zip(pts, ref))


def test_stepping_from_inside_another_greenlet():
    ref = direct_points("LN_BOBYQA", 30)
    params = make_params()
    pts = []
    opt = optbridge.Modular(params, NLopt("LN_BOBYQA", budget=30))
    closure = make_closure(params, record=pts)
    for _ in range(3):  # started from the main greenlet ...
        opt.step(closure)

    def loop():  # ... continued from another one, which yields to main between steps
        while not opt.terminated:
            opt.step(closure)
            main.switch()

    main = greenlet.getcurrent()
    g = greenlet.greenlet(loop)
    while not g.dead:
        g.switch()
    assert len(pts) == len(ref) and all(np.array_equal(a, b) for a, b in zip(pts, ref))


def test_forced_stop_from_the_objective_keeps_the_best_point():
    params = make_params()
    pts = []
    good = make_closure(params, record=pts)

    def closure(backward=True):
        if len(pts) == 7:
            raise nlopt.ForcedStop("user stop")
        return good(backward)

    opt = optbridge.Modular(params, NLopt("LN_NELDERMEAD", budget=50))
    with pytest.raises(nlopt.ForcedStop):
        for _ in range(10):
            opt.step(closure)
    best = min(pts, key=rosen)
    assert np.array_equal(torch.cat([p.detach() for p in params]).numpy(), best)


# ---------------------------------------------------------------- engine fast path (fast_step)
def _spied(module, taken: list):
    """Record each ``fast_step`` that ran the step (not ``NotImplemented``)."""
    real = module.fast_step

    def spy(*args):
        out = real(*args)
        taken.append(out is not NotImplemented)
        return out
    module.fast_step = spy
    return module


def _run_recorded(make_module, params, reuse: bool, steps=None, closure_fn=None):
    """Step to the end; returns (points evaluated, losses returned, optimizer, fast steps)."""
    pts, losses, taken = [], [], []
    opt = optbridge.Modular(params, _spied(make_module(), taken), reuse_evaluation=reuse)
    closure = make_closure(params, record=pts) if closure_fn is None else closure_fn(params, pts)
    n = 0
    while not opt.terminated and (steps is None or n < steps):
        loss = opt.step(closure)
        losses.append(None if loss is None else loss.item())
        n += 1
    return pts, losses, opt, taken


@pytest.mark.parametrize("alg", ["LN_BOBYQA", "LD_LBFGS"])
@pytest.mark.parametrize("layout", ["one float64 tensor", "two tensors"])
def test_fast_path_matches_the_full_engine_step_and_the_direct_call(alg, layout):
    def params():
        if layout == "two tensors":
            return make_params()
        return [torch.nn.Parameter(torch.tensor([-1.2, 1.0, 0.5], dtype=torch.float64))]

    budget = 20
    make = lambda: NLopt(alg, budget=budget)  # noqa: E731
    fast = _run_recorded(make, params(), reuse=False)
    # reuse_evaluation=True never takes the fast path: the full engine step as a reference
    full = _run_recorded(make, params(), reuse=True)
    assert any(fast[3]) and not any(full[3])
    assert fast[3].count(True) == len(fast[0]) - 1  # every evaluation but the first one
    if layout == "two tensors":
        np.testing.assert_array_equal(np.array(fast[0]), np.array(direct_points(alg, budget)))
    np.testing.assert_array_equal(np.array(fast[0]), np.array(full[0]))
    assert fast[1] == full[1]  # the loss returned by each step
    f_opt, r_opt = fast[2], full[2]
    assert f_opt.evals.as_dict() == r_opt.evals.as_dict()
    assert f_opt.evals.total == len(fast[0])
    assert (f_opt.num_steps, f_opt.stop_reason) == (r_opt.num_steps, r_opt.stop_reason)
    for a, b in zip(f_opt.param_groups[0]["params"], r_opt.param_groups[0]["params"]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    m = f_opt.modules[0]
    assert m.best_value == min(v for v in fast[1] if v is not None)
    assert m.global_state["evaluations"] == len(fast[0])


def test_fast_path_uses_a_new_closure_and_restores_the_best_point_on_errors():
    params = make_params()
    pts, taken = [], []
    opt = optbridge.Modular(params, _spied(NLopt("LN_BOBYQA", budget=50), taken))
    first = make_closure(params, record=pts)
    for _ in range(5):
        opt.step(first)
    other_pts = []
    opt.step(make_closure(params, record=other_pts))  # a new closure object is used and counted
    assert len(other_pts) == 1 and opt.evals.loss == 6 and taken[-1]

    m = opt.modules[0]
    best = m.global_state["best_x"].clone()

    def bad_shape(backward=True):
        return torch.zeros(2, dtype=torch.float64)
    with pytest.raises(ValueError, match="NLopt: the closure returned a tensor of shape"):
        opt.step(bad_shape)
    x = flat_x(params)
    torch.testing.assert_close(x, best, rtol=0, atol=0)  # back at the best point
    assert m._worker is None  # the solver was stopped; the next step restarts it

    with pytest.raises(TypeError, match="Modular.step: closure must be callable"):
        optbridge.Modular(make_params(), NLopt("LN_BOBYQA", budget=5)).step(3)


def test_fast_path_keeps_step_hooks():
    params = make_params()
    seen, taken = [], []
    opt = optbridge.Modular(params, _spied(NLopt("LN_BOBYQA", budget=8), taken))
    opt.register_step_pre_hook(lambda o, args, kwargs: seen.append("pre"))
    opt.register_step_post_hook(lambda o, args, kwargs: seen.append("post"))
    closure = make_closure(params)
    while not opt.terminated:
        opt.step(closure)
    assert seen == ["pre", "post"] * 8 and taken.count(True) == 7 and opt.evals.loss == 8


def _with_bad_values(bad: dict):
    """A closure factory for ``_run_recorded``: Rosenbrock, but the evaluations numbered in
    ``bad`` (0-based) return the value given there (NaN, inf)."""
    def factory(params, pts):
        good = make_closure(params, record=pts)

        def closure(backward=True):
            loss = good(backward)
            v = bad.get(len(pts) - 1)
            return loss if v is None else torch.tensor(v, dtype=torch.float64)
        return closure
    return factory


@pytest.mark.parametrize("bad", [{0: float("nan"), 1: float("inf"), 4: float("nan")},
                                 {3: float("-inf"), 5: float("nan")}])
def test_fast_path_non_finite_values_match_the_full_step(bad):
    make = lambda: NLopt("LN_BOBYQA", budget=15)  # noqa: E731
    fast = _run_recorded(make, make_params(), reuse=False, closure_fn=_with_bad_values(bad))
    full = _run_recorded(make, make_params(), reuse=True, closure_fn=_with_bad_values(bad))
    assert fast[3].count(True) == len(fast[0]) - 1
    np.testing.assert_array_equal(np.array(fast[0]), np.array(full[0]))
    np.testing.assert_equal(fast[1], full[1])
    for a, b in zip(fast[2].param_groups[0]["params"], full[2].param_groups[0]["params"]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    finite = [(v, i) for i, v in enumerate(fast[1]) if np.isfinite(v)]
    best_value, best_index = min(finite)
    m = fast[2].modules[0]
    assert m.best_value == best_value
    np.testing.assert_array_equal(m.global_state["best_x"].numpy(), fast[0][best_index])


def test_fast_path_while_nothing_is_finite_keeps_the_start_point():
    params = make_params()
    start = flat_x(params).clone()
    pts, taken = [], []
    opt = optbridge.Modular(params, _spied(NLopt("LN_BOBYQA", budget=10), taken))
    closure = _with_bad_values({i: float("nan") for i in range(4)})(params, pts)
    for _ in range(4):
        opt.step(closure)
        torch.testing.assert_close(flat_x(params), start,
                                   rtol=0, atol=0)
    assert taken.count(True) == 3 and opt.modules[0].global_state["best_x"] is None


def test_fast_path_sees_a_parameter_leaving_or_joining():
    params = make_params()
    opt = optbridge.Modular(params, NLopt("LN_BOBYQA", budget=30))
    closure = make_closure(params)
    for _ in range(3):
        opt.step(closure)
    assert opt.takes_part_unchanged(list(params))
    params[1].requires_grad_(False)
    assert not opt.takes_part_unchanged(list(params))
    before = [p.detach().clone() for p in params]
    with pytest.raises(ValueError, match=r"NLopt: the parameters taking part changed size \(3 -> 2\)"):
        opt.step(closure)
    for p, b in zip(params, before):
        torch.testing.assert_close(p.detach(), b, rtol=0, atol=0)
    params[1].requires_grad_(True)
    opt.step(closure)  # the same tensors again: the solver goes on
    extra = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt.add_param_group({"params": [extra]})
    assert not opt.takes_part_unchanged(list(params))
    with pytest.raises(ValueError, match=r"changed size \(3 -> 4\)"):
        opt.step(closure)


def test_fast_path_closure_without_backward_argument_fails_and_restores_the_best_point():
    from optbridge.core.closure import ClosureError

    params = make_params()
    opt = optbridge.Modular(params, NLopt("LN_BOBYQA", budget=30))
    closure = make_closure(params)
    for _ in range(5):
        opt.step(closure)
    m = opt.modules[0]
    best = m.global_state["best_x"].clone()
    with pytest.raises(ClosureError, match="NLopt: needs a loss-only evaluation"):
        opt.step(lambda: closure(False))
    torch.testing.assert_close(flat_x(params), best,
                               rtol=0, atol=0)
    assert opt.evals.loss == 5 and m.evaluations == 5


@pytest.mark.parametrize("module", ["NLopt", "Scipy"])
def test_solver_buffers_are_not_kept_or_handed_to_torch_read_only(module):
    """The point is passed from the solver without a copy: the parameters (float32, so the
    general write path) receive it without torch's read-only warning, and the best point kept
    (``best_x``, one buffer updated in place) is after every step the best point evaluated so
    far, whatever the solver later does with its own buffers."""
    import warnings

    a = torch.nn.Parameter(torch.tensor([-1.2, 1.0], dtype=torch.float32))
    b = torch.nn.Parameter(torch.tensor([0.5], dtype=torch.float32))
    make = (lambda: NLopt("LN_BOBYQA", budget=40)) if module == "NLopt" else \
        (lambda: Scipy("Nelder-Mead", budget=40))
    opt = optbridge.Modular([a, b], make())
    pts = []
    closure = make_closure([a, b], record=pts)
    views = set()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        while not opt.terminated:
            opt.step(closure)
            gs = opt.modules[0].global_state
            best = min(pts, key=rosen)  # as the float32 parameters saw it
            np.testing.assert_array_equal(gs["best_x"].numpy().astype(np.float32), best)
            assert gs["best_f"] == rosen(best)
            views.add(id(gs["best_x"]))
    assert len(views) == 1  # no new tensor per improvement
    (state,) = opt.state_dict()["optbridge"]["modules"].values()
    assert state["best_x"] is not opt.modules[0].global_state["best_x"]  # checkpoints copy
