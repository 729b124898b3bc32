"""Nevergrad adapter: bit-identical candidates vs nevergrad called directly, exact budget,
bounds (incl. one-sided), best-point tracking, non-finite values, NGOpt/MetaModel under
numpy >= 2.4, bad input."""

import math
import warnings

import nevergrad as ng
import numpy as np
import pytest
import torch

import optbridge
from optbridge.adapters import Nevergrad
from optbridge.adapters.solvers import nevergrad as ngmod

X0 = np.array([1.0, -0.5, 0.25])


def sphere(x):
    return float(np.sum((x - 0.3) ** 2))


def direct_points(name, budget, seed, x0=X0, lower=None, upper=None, fn=sphere):
    param = ng.p.Array(init=x0.copy())
    if lower is not None or upper is not None:
        param.set_bounds(lower, upper)
    param.random_state.seed(seed)
    opt = ng.optimizers.registry[name](param, budget=budget, num_workers=1)
    pts = []
    for _ in range(budget):
        c = opt.ask()
        pts.append(np.asarray(c.value, dtype=np.float64).copy())
        opt.tell(c, fn(c.value))
    return pts


def make_params(x0=X0):
    a = torch.nn.Parameter(torch.tensor(x0[:2], dtype=torch.float64))
    b = torch.nn.Parameter(torch.tensor(x0[2:], dtype=torch.float64))
    return a, b


def make_closure(params, fn=sphere, record=None):
    def closure(backward=True):
        x = torch.cat([p.detach().reshape(-1) for p in params]).numpy().copy()
        if record is not None:
            record.append(x)
        return torch.tensor(fn(x), dtype=torch.float64)
    return closure


def run_adapter(name, budget, steps=None, fn=sphere, x0=X0, **kw):
    params = make_params(x0)
    pts = []
    opt = optbridge.Modular(params, Nevergrad(name, budget=budget, **kw))
    closure = make_closure(params, fn=fn, record=pts)
    for _ in range(steps or budget + 3):
        opt.step(closure)
    return pts, opt, params


@pytest.mark.parametrize("name", ["OnePlusOne", "CMA", "DE"])
def test_candidates_bit_identical_to_direct_nevergrad(name):
    budget = 40
    ref = direct_points(name, budget, seed=7)
    pts, opt, _ = run_adapter(name, budget, seed=7)
    assert len(pts) == len(ref) == budget
    assert all(np.array_equal(a, b) for a, b in zip(pts, ref))
    assert len({tuple(p) for p in pts}) > budget // 2  # the candidates do move


def test_candidates_bit_identical_with_one_sided_bounds():
    lower = np.array([0.5, -np.inf, -np.inf])
    upper = np.array([np.inf, np.inf, 0.3])
    ref = direct_points("OnePlusOne", 40, seed=3, lower=lower, upper=upper)
    pts, _, _ = run_adapter("OnePlusOne", 40, seed=3, bounds=[(torch.tensor([0.5, -math.inf]), None), (None, 0.3)])
    assert all(np.array_equal(a, b) for a, b in zip(pts, ref)) and len(pts) == 40
    P = np.array(pts)
    assert (P[:, 0] >= 0.5).all() and (P[:, 2] <= 0.3).all()
    assert P[:, 1].min() < -0.5 or P[:, 1].max() > -0.5  # unbounded element moves


def test_seed_reproducible_and_differs_between_seeds():
    a, _, _ = run_adapter("CMA", 20, seed=1)
    b, _, _ = run_adapter("CMA", 20, seed=1)
    c, _, _ = run_adapter("CMA", 20, seed=2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


@pytest.mark.parametrize("name", ["OnePlusOne", "TwoPointsDE", "CMA"])
def test_budget_is_exactly_n_evaluations(name):
    n = 17
    pts, opt, _ = run_adapter(name, n, steps=30, seed=0)
    assert len(pts) == n == opt.evals.total
    assert opt.num_steps == n  # terminated on the n-th step, later steps do nothing
    assert opt.terminated and opt.stop_reason == "Nevergrad: budget exhausted"


def test_solve_mode_runs_whole_budget_in_one_step():
    pts, opt, params = run_adapter("CMA", 25, steps=1, seed=0, mode="solve")
    ref = direct_points("CMA", 25, seed=0)
    assert len(pts) == 25 and all(np.array_equal(a, b) for a, b in zip(pts, ref))
    assert opt.terminated
    best = min(pts, key=sphere)
    x = torch.cat([p.detach().reshape(-1) for p in params]).numpy()
    assert np.array_equal(x, best)


def test_bounds_two_sided_per_parameter_tensor():
    lo = torch.tensor([-0.1, 0.0])
    pts, _, _ = run_adapter("DE", 60, seed=0, bounds=[(lo, 0.2), (0.25, 0.26)])
    P = np.array(pts)
    assert (P[:, 0] >= -0.1).all() and (P[:, 1] >= 0.0).all() and (P[:, :2] <= 0.2).all()
    assert ((P[:, 2] >= 0.25) & (P[:, 2] <= 0.26)).all()


def test_initial_point_outside_bounds_is_clipped():
    pts, _, _ = run_adapter("OnePlusOne", 5, seed=0, bounds=(-0.2, 0.2))
    assert all(((p >= -0.2) & (p <= 0.2)).all() for p in pts)


def test_params_stay_at_best_point_and_step_returns_loss():
    params = make_params()
    pts = []
    opt = optbridge.Modular(params, mod := Nevergrad("OnePlusOne", budget=30, seed=5))
    closure = make_closure(params, record=pts)
    best_f = math.inf
    for _ in range(30):
        loss = opt.step(closure)
        assert float(loss) == sphere(pts[-1])
        if sphere(pts[-1]) < best_f:
            best_f, best_x = sphere(pts[-1]), pts[-1]
        x = torch.cat([p.detach().reshape(-1) for p in params]).numpy()
        assert np.array_equal(x, best_x)
    assert mod.best_value == best_f < sphere(X0)
    assert mod.evaluations == 30


def test_non_finite_values_never_best_and_told_as_penalty():
    def fn(x):
        return math.nan if x[0] > 0.5 else (math.inf if x[1] > 0 else sphere(x))

    pts, opt, params = run_adapter("OnePlusOne", 40, seed=1, fn=fn)
    x = torch.cat([p.detach().reshape(-1) for p in params]).numpy()
    finite = [p for p in pts if math.isfinite(fn(p))]
    assert len(finite) < 40 and math.isfinite(fn(x)) and fn(x) == min(fn(p) for p in finite)
    # direct nevergrad with the same penalty gives the same candidates
    ref = direct_points("OnePlusOne", 40, seed=1, fn=lambda v: fn(v) if math.isfinite(fn(v)) else ngmod.PENALTY)
    assert all(np.array_equal(a, b) for a, b in zip(pts, ref))


def test_only_non_finite_values_leave_params_at_start():
    pts, opt, params = run_adapter("OnePlusOne", 5, seed=0, fn=lambda x: math.nan)
    x = torch.cat([p.detach().reshape(-1) for p in params]).numpy()
    assert np.array_equal(x, X0) and len(pts) == 5 and opt.terminated


def test_family_and_class_accepted_and_resolved_name():
    fam = ng.families.ParametrizedOnePlusOne(noise_handling="random")
    pts, opt, _ = run_adapter(fam, 10, seed=0)
    assert len(pts) == 10
    pts, opt, _ = run_adapter(ng.optimizers.PSO, 10, seed=0)
    assert len(pts) == 10
    m = Nevergrad("NGOpt", budget=150)
    assert m.resolved_name is None
    params = make_params()
    optbridge.Modular(params, m).step(make_closure(params))
    assert m.resolved_name == ngmod.resolved_name(
        ng.optimizers.NGOpt(ng.p.Array(init=X0), budget=150)) != "NGOpt"


def test_portfolio_resolved_name_lists_its_members():
    m = Nevergrad("Portfolio", budget=100, seed=0)
    params = make_params()
    optbridge.Modular(params, m).step(make_closure(params))
    direct = ng.optimizers.registry["Portfolio"](ng.p.Array(init=X0), budget=100)
    # MetaCMA, like NGOpt, hands the work to the optimizer it selects (`.optim`)
    members = [getattr(o, "optim", o).name for o in direct.optims]
    assert len(members) == 3 and members != [o.name for o in direct.optims]
    assert m.resolved_name == f"Portfolio[{', '.join(members)}]"
    # minimize reports the same
    res = optbridge.minimize(lambda x: float(np.sum(x ** 2)), X0, method="nevergrad:Portfolio",
                             budget=30, seed=0)
    assert res.resolved == m.resolved_name


def test_numpy24_metamodel_crash_reproduced_without_patch(monkeypatch):
    from nevergrad.optimization import metamodel

    if np.lib.NumpyVersion(np.__version__) < "2.4.0":
        pytest.fail("this environment is expected to have numpy >= 2.4")
    monkeypatch.delattr(metamodel, "float", raising=False)
    param = ng.p.Array(init=np.ones(2))
    param.random_state.seed(0)
    opt = ng.optimizers.registry["MetaModel"](param, budget=120)
    with pytest.raises(TypeError, match="0-dimensional"):
        for _ in range(120):
            c = opt.ask()
            opt.tell(c, sphere(np.append(c.value, 0.3)))


@pytest.mark.parametrize("name", ["NGOpt", "MetaModel"])
def test_ngopt_and_metamodel_run_to_completion(name):
    x0 = np.array([1.0, 1.0])
    params = (torch.nn.Parameter(torch.tensor(x0)),)
    pts = []
    m = Nevergrad(name, budget=120, seed=0)
    opt = optbridge.Modular(params, m)
    closure = make_closure(params, fn=lambda x: float(np.sum((x - 0.3) ** 2)), record=pts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(125):
            opt.step(closure)
    assert len(pts) == 120 and opt.terminated
    assert m.best_value < 1e-6 < float(np.sum((x0 - 0.3) ** 2))
    if name == "NGOpt":
        assert m.resolved_name == "MetaModel"


@pytest.mark.parametrize("kw,match", [
    (dict(budget=0), "budget"), (dict(budget=-3), "budget"), (dict(budget=None), "budget"),
    (dict(budget=2.5), "budget"), (dict(budget=5, num_workers=0), "num_workers"),
    (dict(budget=5, seed=-1), "seed"), (dict(budget=5, mode="batch"), "mode"),
    (dict(budget=5, bounds=(1.0, 0.0)), "bounds"), (dict(budget=5, foo=1), "foo"),
])
def test_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=f"Nevergrad.*{match}"):
        Nevergrad("OnePlusOne", **kw)


def test_unknown_optimizer_lists_closest_matches():
    with pytest.raises(ValueError, match=r"Nevergrad: unknown optimizer 'OnePlusOnne'.*closest matches: .*OnePlusOne"):
        Nevergrad("OnePlusOnne", budget=5)
    with pytest.raises(ValueError, match="Nevergrad: optimizer must be"):
        Nevergrad(3, budget=5)


def test_options_forwarded_to_optimizer_class():
    fam = ng.families.ParametrizedOnePlusOne
    pts, _, _ = run_adapter(fam, 12, seed=4, mutation="cauchy")
    param = ng.p.Array(init=X0.copy())
    param.random_state.seed(4)
    direct = fam(mutation="cauchy")(param, budget=12, num_workers=1)
    ref = []
    for _ in range(12):
        c = direct.ask()
        ref.append(c.value.copy())
        direct.tell(c, sphere(c.value))
    assert len(pts) == 12 and all(np.array_equal(a, b) for a, b in zip(pts, ref))
    with pytest.raises(ValueError, match="Nevergrad: options of ParametrizedOnePlusOne"):
        Nevergrad(fam, budget=5, nonsense=1)
    with pytest.raises(ValueError, match="Nevergrad.*popsize"):
        Nevergrad("CMA", budget=5, popsize=4)


def test_checkpoint_restarts_from_best_with_remaining_budget():
    params = make_params()
    pts = []
    opt = optbridge.Modular(params, Nevergrad("OnePlusOne", budget=20, seed=0))
    closure = make_closure(params, record=pts)
    for _ in range(8):
        opt.step(closure)
    sd = opt.state_dict()
    best = torch.cat([p.detach().reshape(-1) for p in params]).clone()
    params2 = make_params()
    opt2 = optbridge.Modular(params2, Nevergrad("OnePlusOne", budget=20, seed=0))
    opt2.load_state_dict(sd)
    with torch.no_grad():
        for p, q in zip(params2, params):
            p.copy_(q)
    pts2 = []
    closure2 = make_closure(params2, record=pts2)
    for _ in range(20):
        opt2.step(closure2)
    assert len(pts2) == 12 and opt2.terminated
    assert opt2.modules[0].best_value <= sphere(best.numpy())
