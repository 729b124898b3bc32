"""Constraints in the solver modules (Scipy, NLopt, Nevergrad): SciPy-style constraints on the
flat parameter vector, points bit-identical to the libraries called directly with the same
constraints, known constrained optima reached, best point = best feasible point, bad input."""

import math

import nevergrad as ng
import nlopt
import numpy as np
import pytest
import scipy.optimize as so
import torch

import optbridge
from optbridge.adapters import NLopt, Nevergrad, Scipy

X0 = np.array([2.0, 0.0])
OPT = np.array([0.5, 0.5])  # argmin x0^2 + x1^2 s.t. x0 + x1 >= 1


def sq(x):
    return float(x[0] ** 2 + x[1] ** 2)


def sq_grad(x):
    return 2.0 * x


def disc_obj(x):  # min (x0-2)^2 + (x1-1)^2 on the unit disc: optimum (2, 1)/sqrt(5)
    return float((x[0] - 2.0) ** 2 + (x[1] - 1.0) ** 2)


def disc_grad(x):
    return np.array([2.0 * (x[0] - 2.0), 2.0 * (x[1] - 1.0)])


LINE_T = {"type": "ineq", "fun": lambda x: x[0] + x[1] - 1.0}  # torch form, no jac
LINE_NP = {"type": "ineq", "fun": lambda x: x[0] + x[1] - 1.0, "jac": lambda x: np.array([1.0, 1.0])}
DISC_T = {"type": "ineq", "fun": lambda x: 1.0 - x[0] ** 2 - x[1] ** 2}  # autograd Jacobian
DISC_NP = {"type": "ineq", "fun": lambda x: 1.0 - x[0] ** 2 - x[1] ** 2,
           "jac": lambda x: np.array([-2.0 * x[0], -2.0 * x[1]])}


def run(module, fn=sq, grad=sq_grad, steps=400, x0=X0):
    # two parameters (1,) and (1,): the constraint sees them concatenated
    params = [torch.nn.Parameter(torch.tensor(x0[:1])), torch.nn.Parameter(torch.tensor(x0[1:]))]
    pts = []

    def closure(backward=True):
        x = torch.cat([p.detach() for p in params]).numpy().copy()
        pts.append(x)
        if backward:
            g = grad(x)
            params[0].grad = torch.tensor(g[:1])
            params[1].grad = torch.tensor(g[1:])
        return torch.tensor(fn(x), dtype=torch.float64)

    opt = optbridge.Modular(params, module)
    for _ in range(steps):
        opt.step(closure)
        if opt.terminated:
            break
    return pts, opt, torch.cat([p.detach() for p in params]).numpy()


def direct_scipy(method, constraints, fn=sq, grad=sq_grad, **options):
    pts = []

    def fun(x):
        pts.append(x.copy())
        return (fn(x), grad(x)) if method == "SLSQP" else fn(x)

    so.minimize(fun, X0.copy(), method=method, jac=True if method == "SLSQP" else None,
                constraints=constraints, options=options)
    return pts


@pytest.mark.parametrize("method,con_t,con_np,fn,grad,optimum", [
    ("SLSQP", LINE_T, LINE_NP, sq, sq_grad, OPT),
    ("COBYLA", LINE_T, LINE_NP, sq, sq_grad, OPT),
    ("SLSQP", DISC_T, DISC_NP, disc_obj, disc_grad, np.array([2.0, 1.0]) / math.sqrt(5.0)),
])
def test_scipy_points_bit_identical_and_optimum(method, con_t, con_np, fn, grad, optimum):
    key = "maxiter" if method == "COBYLA" else None
    opts = {key: 300} if key else {}
    ref = direct_scipy(method, [con_np], fn, grad, **opts)
    pts, opt, x = run(Scipy(method, constraints=con_t, budget=300 if key else None), fn, grad)
    assert len(pts) == len(ref) >= 4
    assert all(np.array_equal(a, b) for a, b in zip(pts, ref))
    assert np.allclose(x, optimum, atol=1e-4)
    mod = opt.chain.modules[0]
    assert mod.best_violation <= mod.constraint_tol


def test_scipy_trust_constr_nonlinear_and_linear_constraint_objects():
    nl = so.NonlinearConstraint(lambda x: x[0] + x[1], 1.0, np.inf)  # jac '2-point' -> autograd
    _, _, x = run(Scipy("trust-constr", constraints=nl, budget=300))
    assert np.allclose(x, OPT, atol=1e-3)
    lin = so.LinearConstraint([[1.0, 1.0]], 1.0, np.inf)
    _, _, x = run(Scipy("SLSQP", constraints=[lin]))
    assert np.allclose(x, OPT, atol=1e-6)
    eq = so.NonlinearConstraint(lambda x: x[0] - 2.0 * x[1], 0.0, 0.0)  # x0 = 2 x1: equality
    _, _, x = run(Scipy("SLSQP", constraints=[eq, LINE_T]))
    assert np.allclose(x, [2.0 / 3.0, 1.0 / 3.0], atol=1e-6)  # 5 x1^2 with 3 x1 >= 1


def direct_nlopt(alg, h, n_h, fn=sq, grad=sq_grad, budget=200, local=None, tol=0.0):
    pts = []
    o = nlopt.opt(getattr(nlopt, alg), 2)
    o.set_maxeval(budget)
    if local is not None:
        o.set_xtol_rel(1e-6)
        lo = nlopt.opt(getattr(nlopt, local), 2)
        lo.set_xtol_rel(1e-8)
        o.set_local_optimizer(lo)

    def f(x, g):
        pts.append(x.copy())
        if g.size:
            g[:] = grad(x)
        return fn(x)

    o.set_min_objective(f)
    o.add_inequality_mconstraint(h, np.full(n_h, tol))
    try:
        o.optimize(X0.copy())
    except nlopt.RoundoffLimited:
        pass
    return pts


def line_h(result, x, grad):  # NLopt form of c = x0 + x1 - 1 >= 0: h = -c <= 0
    result[:] = [-(x[0] + x[1] - 1.0)]
    if grad.size:
        grad[:] = [[-1.0, -1.0]]


@pytest.mark.parametrize("alg,local", [("LN_COBYLA", None), ("LD_SLSQP", None), ("LD_MMA", None),
                                       ("AUGLAG", "LD_LBFGS")])
def test_nlopt_points_bit_identical_and_optimum(alg, local):
    ref = direct_nlopt(alg, line_h, 1, local=local)
    kw = {} if local is None else dict(local_algorithm=local, local_options={"xtol_rel": 1e-8},
                                       xtol_rel=1e-6)
    pts, opt, x = run(NLopt(alg, budget=200, constraints=LINE_T, **kw))
    assert len(pts) == len(ref) >= 5
    assert all(np.array_equal(a, b) for a, b in zip(pts, ref))
    assert np.allclose(x, OPT, atol=1e-3)
    assert x[0] + x[1] >= 1.0 - 1e-6


def test_nlopt_equality_and_two_sided_nonlinear_constraint():
    # 1.2 <= x0 + x1 <= 3 (an inequality pair) and x0 - x1 == 0.2 (an equality)
    cons = [so.NonlinearConstraint(lambda x: x[0] + x[1], 1.2, 3.0),
            {"type": "eq", "fun": lambda x: x[0] - x[1] - 0.2}]
    _, opt, x = run(NLopt("LD_SLSQP", budget=200, constraints=cons, xtol_rel=1e-10))
    assert np.allclose(x, [0.7, 0.5], atol=1e-6)
    _, opt, x = run(NLopt("LN_COBYLA", budget=400, constraints=cons, xtol_rel=1e-8))
    assert np.allclose(x, [0.7, 0.5], atol=1e-4)


def test_best_point_is_the_best_feasible_point():
    # COBYLA visits infeasible points with lower objective; parameters stay at feasible ones
    pts, opt, x = run(NLopt("LN_COBYLA", budget=40, constraints=LINE_T), steps=40)
    feasible = [p for p in pts if p[0] + p[1] - 1.0 >= -1e-6]
    assert any(sq(p) < min(sq(q) for q in feasible) for p in pts)  # an infeasible better point
    best = min(feasible, key=sq)
    assert np.array_equal(x, best)


def test_nevergrad_tells_violations_like_direct_and_respects_constraints():
    budget = 300
    param = ng.p.Array(init=X0.copy())
    param.random_state.seed(4)
    o = ng.optimizers.registry["TwoPointsDE"](param, budget=budget)
    ref = []
    for _ in range(budget):
        c = o.ask()
        x = np.asarray(c.value, dtype=np.float64)
        ref.append(x.copy())
        o.tell(c, sq(x), constraint_violation=np.array([-(x[0] + x[1] - 1.0)]))
    pts, opt, x = run(Nevergrad("TwoPointsDE", budget=budget, seed=4, constraints=LINE_T),
                      steps=budget)
    assert len(pts) == budget
    assert all(np.array_equal(a, b) for a, b in zip(pts, ref))
    assert x[0] + x[1] >= 1.0 - 1e-6 and sq(x) < 0.52  # feasible, near the optimum 0.5
    _, _, free = run(Nevergrad("TwoPointsDE", budget=budget, seed=4), steps=budget)
    assert free[0] + free[1] < 0.5  # without the constraint the search goes elsewhere


@pytest.mark.parametrize("make,msg", [
    (lambda: Scipy("BFGS", constraints=LINE_T), r"Scipy \(BFGS\): does not accept constraints"),
    (lambda: NLopt("LN_BOBYQA", constraints=LINE_T), r"NLopt \(LN_BOBYQA\): does not accept inequality"),
    (lambda: NLopt("LD_MMA", constraints={"type": "eq", "fun": abs}), "does not accept equality"),
    (lambda: NLopt("AUGLAG", constraints=LINE_T), "needs local_algorithm"),
    (lambda: Scipy("SLSQP", constraints={"type": "lt", "fun": abs}), r"\['type'\] must be 'ineq' or 'eq'"),
    (lambda: Scipy("SLSQP", constraints={"type": "eq", "fun": 3}), r"\['fun'\] must be callable"),
    (lambda: Nevergrad("CMA", budget=5, constraints="x>0"), "Nevergrad: constraints must be"),
    (lambda: Scipy("SLSQP", constraints=LINE_T, constraint_tol=-1), "constraint_tol"),
])
def test_bad_constraints_fail_at_construction(make, msg):
    with pytest.raises(ValueError, match=msg):
        make()


def test_constraint_size_mismatch_fails_before_evaluating():
    bad = so.NonlinearConstraint(lambda x: x, [0.0, 0.0, 0.0], np.inf)  # 2 values, 3 bounds
    p = torch.nn.Parameter(torch.tensor(X0))
    calls = []
    opt = optbridge.Modular([p], NLopt("LN_COBYLA", budget=10, constraints=bad))
    with pytest.raises(ValueError, match=r"NLopt: constraints\[0\] returns 2 values"):
        opt.step(lambda backward=True: calls.append(1) or (p ** 2).sum())
    assert calls == [] and torch.equal(p.detach(), torch.tensor(X0))


@pytest.mark.parametrize("make", [
    lambda con: NLopt("LN_COBYLA", budget=60, constraints=con),
    lambda con: Scipy("SLSQP", budget=60, constraints=con),
])
def test_constraint_functions_run_in_the_callers_context(make):
    """Constraint functions are called from inside the paused solver (a greenlet), which would
    start in an empty ``contextvars`` context: they see the caller's context variables, and what
    they set is seen by the caller, as with a direct call."""
    import contextvars

    offset = contextvars.ContextVar("offset")
    calls = contextvars.ContextVar("calls", default=0)
    seen = []

    def line(x):
        seen.append(offset.get(None))
        calls.set(calls.get() + 1)
        return x[0] + x[1] - offset.get()

    def stepped():
        offset.set(1.0)
        pts, opt, x = run(make({"type": "ineq", "fun": line}))
        return opt, x, calls.get()

    opt, x, n_calls = contextvars.copy_context().run(stepped)
    assert seen and all(v == 1.0 for v in seen)
    assert n_calls == len(seen)  # the constraint's sets reached the caller's context
    assert calls.get() == 0  # and only that context
    np.testing.assert_allclose(x, OPT, atol=1e-4)
