"""Line searches: Backtracking, AdaptiveBacktracking, StrongWolfe, ScipyMinimizeScalar."""

import io
import math

import pytest
import torch

import optbridge as ob
from optbridge import m
from optbridge.core.module import Module
from trajectory import assert_same_trajectory, loss_fn


class Spy(Module):
    """Records the direction that reaches the next module (the line search)."""

    def __init__(self):
        super().__init__()
        self.d = None

    def step(self, ctx):
        self.d = [u.detach().clone() for u in ctx.update]


class Flip(Module):
    """Negates the update (turns the gradient into an ascent direction)."""

    def step(self, ctx):
        ctx.set_update(torch._foreach_neg(ctx.update), owned=True)


def smooth_problem(seed, n=12, dtype=torch.float64):
    """A random smooth non-quadratic function of two tensors and its starting point."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(3 * n, n, generator=g, dtype=dtype)
    b = torch.randn(3 * n, generator=g, dtype=dtype)
    w = torch.rand(n, generator=g, dtype=dtype) + 0.1

    def f(xs):
        x = torch.cat([xs[0].reshape(-1), xs[1].reshape(-1)])
        return (torch.nn.functional.softplus(A @ x + b).sum() + 0.5 * (w * x * x).sum()
                + torch.cos(x).sum())

    x0 = [torch.randn(n // 2, generator=g, dtype=dtype) * 3,
          torch.randn(2, n // 4, generator=g, dtype=dtype) * 3]
    return f, x0


def value_and_grad(f, xs):
    xs = [x.detach().clone().requires_grad_() for x in xs]
    with torch.enable_grad():
        loss = f(xs)
        gs = torch.autograd.grad(loss, xs)
    return float(loss.detach()), [g.detach() for g in gs]


def dot(a, b):
    return sum(float((x * y).sum()) for x, y in zip(a, b))


def make_closure(opt, f, xs, log=None):
    def closure(backward=True):
        if log is not None:
            log.append([x.detach().clone() for x in xs])
        loss = f(xs)
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss
    return closure


# ------------------------------------------------------------------ references (float64 loops)
class RefBacktracking(torch.optim.Optimizer):
    """Gradient descent with Armijo backtracking, written out per tensor."""

    def __init__(self, params, init=1.0, beta=0.5, c=1e-4, maxiter=10, adaptive=True,
                 condition="armijo"):
        super().__init__(params, {})
        self.cfg = (init, beta, c, maxiter, adaptive, condition)
        self.scale = 1.0

    @torch.no_grad()
    def step(self, closure):
        init, beta, c, maxiter, adaptive, condition = self.cfg
        with torch.enable_grad():
            f0 = float(closure().detach())
        ps = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        d = [p.grad.clone() for p in ps]
        x0 = [p.clone() for p in ps]
        slope = -sum(float((x * x).sum()) for x in d)
        t = init * (self.scale if adaptive else 1.0)
        for _ in range(maxiter):
            for p, x, di in zip(ps, x0, d):
                p.copy_(x - t * di)
            f = float(closure(False))
            ok = f <= f0 + c * t * slope if condition == "armijo" else f < f0
            if ok:
                self.scale = 1.0
                return
            t *= beta
        for p, x in zip(ps, x0):
            p.copy_(x)
        self.scale *= beta ** maxiter


class RefAdaptiveBacktracking(torch.optim.Optimizer):
    """Gradient descent with AdaptiveBacktracking's rule, written out per tensor."""

    def __init__(self, params, init=1.0, beta=0.5, c=1e-4, maxiter=20, target_iters=1, nplus=2.0,
                 scale_beta=0.0):
        super().__init__(params, {})
        self.cfg = (beta, c, maxiter, target_iters, nplus, scale_beta)
        self.a = init

    @torch.no_grad()
    def step(self, closure):
        beta, c, maxiter, target_iters, nplus, scale_beta = self.cfg
        with torch.enable_grad():
            f0 = float(closure().detach())
        ps = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        d = [p.grad.clone() for p in ps]
        x0 = [p.clone() for p in ps]
        slope = -sum(float((x * x).sum()) for x in d)
        t = self.a
        for i in range(maxiter):
            for p, x, di in zip(ps, x0, d):
                p.copy_(x - t * di)
            if float(closure(False)) <= f0 + c * t * slope:
                new = t * nplus if i == 0 else t / beta ** target_iters
                self.a = scale_beta * self.a + (1 - scale_beta) * new
                return
            if i + 1 < maxiter:
                t *= beta
        for p, x in zip(ps, x0):
            p.copy_(x)
        self.a = t * beta


@pytest.mark.parametrize("kw", [
    dict(),
    dict(init=3.0, beta=0.3, c=0.3),
    dict(init=50.0, beta=0.7, maxiter=4, adaptive=True),
    dict(init=2.0, beta=0.7, maxiter=3, adaptive=False),
    dict(init=2.0, condition="decrease"),
])
def test_backtracking_matches_reference(kw):
    assert_same_trajectory(
        lambda ps: RefBacktracking(ps, **kw),
        lambda ps: ob.Modular(ps, m.Backtracking(**kw)),
        steps=50, dtype=torch.float64, rtol=1e-9, atol=1e-11, closure=True,
    )


@pytest.mark.parametrize("kw", [
    dict(),
    dict(init=10.0, beta=0.4, target_iters=2, nplus=3.0),
    dict(init=0.01, scale_beta=0.5, c=0.2),
])
def test_adaptive_backtracking_matches_reference(kw):
    assert_same_trajectory(
        lambda ps: RefAdaptiveBacktracking(ps, **kw),
        lambda ps: ob.Modular(ps, m.AdaptiveBacktracking(**kw)),
        steps=50, dtype=torch.float64, rtol=1e-9, atol=1e-11, closure=True,
    )


@pytest.mark.parametrize("module", [
    lambda: m.Backtracking(init=4.0, beta=0.6, c=0.1),
    lambda: m.Backtracking(init=0.5, c=1e-4, adaptive=False),
    lambda: m.AdaptiveBacktracking(init=8.0, c=0.3),
])
def test_armijo_holds_at_accepted_points_and_counts(module):
    for seed in range(2):
        f, x0 = smooth_problem(seed)
        xs = [x.clone().requires_grad_() for x in x0]
        ls, spy = module(), Spy()
        opt = ob.Modular(xs, m.LBFGS(history_size=4), spy, ls)
        c = ls.defaults["c"]
        accepted = 0
        for _ in range(20):
            start = [x.detach().clone() for x in xs]
            f0, g0 = value_and_grad(f, start)
            before = opt.evals.as_dict()
            opt.step(make_closure(opt, f, xs))
            t = ls.global_state["last_step"]
            evals = ls.global_state["evals"]
            assert opt.evals.loss_and_grad - before["loss_and_grad"] == 1
            assert opt.evals.loss - before["loss"] == evals
            if t == 0.0:
                assert all(torch.equal(x, s) for x, s in zip(xs, start))
                continue
            accepted += 1
            for x, s, d in zip(xs, start, spy.d):
                torch.testing.assert_close(x.detach(), s - t * d, rtol=1e-12, atol=1e-12)
            f1, _ = value_and_grad(f, xs)
            assert f1 <= f0 + c * t * (-dot(g0, spy.d)) + 1e-12
        assert accepted >= 15


@pytest.mark.parametrize("kw", [
    dict(),
    dict(c1=0.1, c2=0.3),
    dict(c2=0.1, a_init="first-order"),
    dict(a_init="quadratic-clip", interpolation="quadratic"),
    dict(a_init="previous", interpolation="bisection", init_value=5.0),
    dict(a_init="quadratic", init_value=0.01),
])
@pytest.mark.parametrize("with_lbfgs", [False, True])
def test_strong_wolfe_conditions_hold_at_accepted_points(kw, with_lbfgs):
    c1, c2 = kw.get("c1", 1e-4), kw.get("c2", 0.9)
    for seed in range(2):
        f, x0 = smooth_problem(seed + 10)
        xs = [x.clone().requires_grad_() for x in x0]
        ls, spy = m.StrongWolfe(**kw), Spy()
        chain = ([m.LBFGS(history_size=5)] if with_lbfgs else []) + [spy, ls]
        opt = ob.Modular(xs, *chain)
        accepted = 0
        for _ in range(12):
            start = [x.detach().clone() for x in xs]
            f0, g0 = value_and_grad(f, start)
            before = opt.evals.as_dict()
            opt.step(make_closure(opt, f, xs))
            gs = ls.global_state
            t = gs["last_step"]
            assert opt.evals.loss == before["loss"]
            assert opt.evals.loss_and_grad - before["loss_and_grad"] == 1 + gs["evals"]
            assert gs["evals"] <= ls.defaults["maxiter"]
            if t == 0.0:
                assert all(torch.equal(x, s) for x, s in zip(xs, start))
                continue
            accepted += 1
            assert gs["reason"] == "accepted"
            for x, s, d in zip(xs, start, spy.d):
                torch.testing.assert_close(x.detach(), s - t * d, rtol=1e-12, atol=1e-12)
            f1, g1 = value_and_grad(f, xs)
            dphi0, dphi1 = -dot(g0, spy.d), -dot(g1, spy.d)
            assert dphi0 < 0
            assert f1 <= f0 + c1 * t * dphi0 + 1e-12
            assert abs(dphi1) <= c2 * abs(dphi0) * (1 + 1e-9) + 1e-14
        assert accepted >= 5


def test_strong_wolfe_first_order_init_uses_history():
    f, x0 = smooth_problem(3)
    xs = [x.clone().requires_grad_() for x in x0]
    ls = m.StrongWolfe(a_init="first-order", c2=0.1)
    opt = ob.Modular(xs, ls)
    opt.step(make_closure(opt, f, xs))
    gs = ls.global_state
    t_prev, dphi_prev = gs["prev_t"], gs["prev_dphi0"]
    _, g = value_and_grad(f, xs)
    expected = t_prev * dphi_prev / (-dot(g, g))
    # the first trial of the next step is the first-order estimate: record where it evaluates
    log = []
    opt.step(make_closure(opt, f, xs, log))
    x_start, first = (torch.cat([a.reshape(-1) for a in pt]) for pt in log[:2])
    g_flat = torch.cat([x.reshape(-1) for x in g])
    t_first = float(((x_start - first) @ g_flat) / (g_flat @ g_flat))
    assert math.isclose(t_first, expected, rel_tol=1e-9)


# ------------------------------------------------------------------------- non-finite trials
def walled(f, radius, value):
    """``f`` inside the box ``|x|_inf <= radius``, ``value`` (inf or nan) outside."""
    def g(xs):
        out = f(xs)
        inside = max(float(x.detach().abs().max()) for x in xs) <= radius
        return out if inside else out * 0 + value
    return g


@pytest.mark.parametrize("value", [math.inf, math.nan, -math.inf])
@pytest.mark.parametrize("module", [
    lambda: m.Backtracking(init=1e3),
    lambda: m.AdaptiveBacktracking(init=1e3),
    lambda: m.StrongWolfe(init_value=1e3),
    lambda: m.StrongWolfe(init_value=1e3, interpolation="quadratic", fallback=True),
    lambda: m.ScipyMinimizeScalar(maxiter=40),
])
def test_non_finite_trials_are_rejected(value, module):
    f0, x0 = smooth_problem(5)
    f = walled(f0, 6.0, value)
    xs = [x.clamp(-5, 5).requires_grad_() for x in x0]
    ls = module()
    opt = ob.Modular(xs, ls)
    log = []
    went_outside = accepted = 0
    for _ in range(5):
        opt.step(make_closure(opt, f, xs, log))
        assert all(torch.isfinite(x).all() for x in xs)
        loss = float(f([x.detach() for x in xs]))
        assert math.isfinite(loss), "the search accepted a non-finite point"
        accepted += ls.global_state["last_step"] != 0.0
    for pt in log:
        assert all(torch.isfinite(x).all() for x in pt), "a trial point had non-finite parameters"
        went_outside += max(float(x.abs().max()) for x in pt) > 6.0
    assert went_outside > 0 and accepted > 0


@pytest.mark.parametrize("module", [
    lambda: m.Backtracking(init=1e6, maxiter=3),
    lambda: m.AdaptiveBacktracking(init=1e6, maxiter=3),
    lambda: m.StrongWolfe(init_value=1e6, maxiter=2),
    lambda: m.StrongWolfe(init_value=1e6, maxiter=1, fallback=True),
    lambda: m.ScipyMinimizeScalar(bounds=(1e5, 1e6), method="bounded", maxiter=5),
])
def test_exact_restoration_when_no_step_is_accepted(module):
    f0, x0 = smooth_problem(6, dtype=torch.float32)
    f = walled(f0, 6.0, math.inf)
    xs = [x.clamp(-5, 5).requires_grad_() for x in x0]
    ls = module()
    opt = ob.Modular(xs, ls)
    start = [x.detach().clone() for x in xs]
    opt.step(make_closure(opt, f, xs))
    assert all(torch.equal(x, s) for x, s in zip(xs, start))
    assert ls.global_state["last_step"] == 0.0
    assert ls.global_state["reason"] == "no acceptable step"
    assert ls.global_state["evals"] > 0


def test_non_descent_direction_takes_no_step_and_no_evaluation():
    f, x0 = smooth_problem(7)
    xs = [x.clone().requires_grad_() for x in x0]
    for ls in (m.Backtracking(), m.StrongWolfe()):
        opt = ob.Modular(xs, Flip(), ls)
        start = [x.detach().clone() for x in xs]
        opt.step(make_closure(opt, f, xs))
        assert all(torch.equal(x, s) for x, s in zip(xs, start))
        assert ls.global_state["reason"] == "not a descent direction"
        assert opt.evals.loss == 0 and opt.evals.loss_and_grad == 1


def test_try_negative_searches_the_opposite_direction():
    f, x0 = smooth_problem(7)
    xs = [x.clone().requires_grad_() for x in x0]
    ls = m.Backtracking(try_negative=True)
    opt = ob.Modular(xs, Flip(), ls)
    f_start = float(f(xs).detach())
    opt.step(make_closure(opt, f, xs))
    assert ls.global_state["last_step"] < 0
    assert float(f(xs).detach()) < f_start


# --------------------------------------------------------------------------------- scipy
@pytest.mark.parametrize("kw", [dict(), dict(method="brent"), dict(method="golden"),
                                dict(method="bounded", bounds=(0, 10)), dict(bracket=(0, 0.1))])
def test_scipy_minimize_scalar_finds_exact_minimiser_on_quadratic(kw):
    g = torch.Generator().manual_seed(0)
    Q = torch.randn(8, 8, generator=g, dtype=torch.float64)
    A = Q @ Q.T + torch.eye(8, dtype=torch.float64)
    b = torch.randn(8, generator=g, dtype=torch.float64)
    x = torch.randn(8, generator=g, dtype=torch.float64).requires_grad_()

    def f(xs):
        return 0.5 * xs[0] @ A @ xs[0] - b @ xs[0]

    ls = m.ScipyMinimizeScalar(**kw)
    opt = ob.Modular([x], ls)
    for i in range(3):
        grad = (A @ x - b).detach()
        t_star = float(grad @ grad / (grad @ A @ grad))
        x_start = x.detach().clone()
        opt.step(make_closure(opt, f, [x]))
        assert math.isclose(ls.global_state["last_step"], t_star, rel_tol=1e-5)
        torch.testing.assert_close(x.detach(), x_start - ls.global_state["last_step"] * grad)
        assert opt.evals.loss_and_grad == i + 1  # only the engine's start evaluation


# ---------------------------------------------------------------- checkpoint and bad input
def test_adaptive_state_is_checkpointed():
    def run(split):
        from trajectory import make_params
        ps = make_params(0, torch.float64)
        def mk():
            return ob.Modular(ps, m.AdaptiveBacktracking(init=100.0, scale_beta=0.3))
        opt = mk()

        def cl(backward=True):
            loss = loss_fn(ps)
            if backward:
                opt.zero_grad()
                loss.backward()
            return loss
        for i in range(12):
            if i == split:
                buf = io.BytesIO()
                torch.save(opt.state_dict(), buf)
                buf.seek(0)
                opt = mk()
                opt.load_state_dict(torch.load(buf, weights_only=True))
            opt.step(cl)
        return [p.detach().clone() for p in ps]

    for a, b in zip(run(-1), run(5)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("make, name, arg", [
    (lambda: m.Backtracking(beta=0.0), "Backtracking", "beta"),
    (lambda: m.Backtracking(beta=1.0), "Backtracking", "beta"),
    (lambda: m.Backtracking(beta=1.5), "Backtracking", "beta"),
    (lambda: m.Backtracking(c=1.0), "Backtracking", "c"),
    (lambda: m.Backtracking(maxiter=0), "Backtracking", "maxiter"),
    (lambda: m.Backtracking(condition="wolfe"), "Backtracking", "condition"),
    (lambda: m.AdaptiveBacktracking(beta=-0.5), "AdaptiveBacktracking", "beta"),
    (lambda: m.AdaptiveBacktracking(nplus=0), "AdaptiveBacktracking", "nplus"),
    (lambda: m.StrongWolfe(c1=0.5, c2=0.4), "StrongWolfe", "c2"),
    (lambda: m.StrongWolfe(c1=0.5, c2=0.5), "StrongWolfe", "c2"),
    (lambda: m.StrongWolfe(c2=1.0), "StrongWolfe", "c2"),
    (lambda: m.StrongWolfe(c1=0.0), "StrongWolfe", "c1"),
    (lambda: m.StrongWolfe(maxiter=0), "StrongWolfe", "maxiter"),
    (lambda: m.StrongWolfe(a_init="cubic"), "StrongWolfe", "a_init"),
    (lambda: m.StrongWolfe(interpolation="spline"), "StrongWolfe", "interpolation"),
    (lambda: m.ScipyMinimizeScalar(method="bounded"), "ScipyMinimizeScalar", "bounds"),
    (lambda: m.ScipyMinimizeScalar(method="newton"), "ScipyMinimizeScalar", "method"),
    (lambda: m.ScipyMinimizeScalar(bounds=(2, 1)), "ScipyMinimizeScalar", "bounds"),
    (lambda: m.ScipyMinimizeScalar(bracket=(0,)), "ScipyMinimizeScalar", "bracket"),
    (lambda: m.ScipyMinimizeScalar(method="golden", bounds=(0, 1)), "ScipyMinimizeScalar",
     "bounds"),
])
def test_bad_hyperparameters(make, name, arg):
    with pytest.raises(ValueError, match=rf"{name}.*{arg}"):
        make()


def test_group_override_of_c1_c2_is_checked():
    x = torch.ones(3, requires_grad=True)
    opt = ob.Modular([{"params": [x], "c1": 0.95}], m.StrongWolfe())

    def cl(backward=True):
        loss = (x ** 2).sum()
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss
    with pytest.raises(ValueError, match="StrongWolfe.*c2"):
        opt.step(cl)
    assert torch.equal(x.detach(), torch.ones(3))


@pytest.mark.parametrize("make", [m.Backtracking, m.AdaptiveBacktracking, m.StrongWolfe,
                                  m.ScipyMinimizeScalar])
def test_requires_closure(make):
    x = torch.ones(3, requires_grad=True)
    x.grad = torch.ones(3)
    ls = make()
    opt = ob.Modular([x], ls)
    with pytest.raises(ob.ClosureError, match=ls.name):
        opt.step()


def test_zero_argument_closure_needs_backward_argument():
    x = torch.ones(3, requires_grad=True)
    opt = ob.Modular([x], m.Backtracking())

    def cl():
        opt.zero_grad()
        loss = (x ** 2).sum()
        loss.backward()
        return loss
    with pytest.raises(ob.ClosureError, match="Backtracking"):
        opt.step(cl)
    assert torch.equal(x.detach(), torch.ones(3))


@pytest.mark.parametrize("module", [lambda: m.Backtracking(), lambda: m.StrongWolfe(),
                                    lambda: m.ScipyMinimizeScalar(maxiter=20)])
def test_mixed_dtypes_and_complex_parameters(module):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, generator=g).requires_grad_()
    b = torch.randn(2, 2, generator=g, dtype=torch.float64).requires_grad_()
    z = torch.randn(4, generator=g, dtype=torch.complex128).requires_grad_()
    c = torch.randn(4, generator=g, dtype=torch.complex128)

    def f(ps):
        a, b, z = ps
        return (a ** 2).sum() + ((b - 1) ** 4).sum() + ((z - c).abs() ** 2).sum()

    xs = [a, b, z]
    ls = module()
    opt = ob.Modular(xs, ls)
    start = float(f(xs).detach())
    for _ in range(15):
        before = [x.detach().clone() for x in xs]
        opt.step(make_closure(opt, f, xs))
        if ls.global_state["last_step"] == 0.0:
            assert all(torch.equal(x, y) for x, y in zip(xs, before))
    assert float(f(xs).detach()) < 1e-2 * start
