"""Second-order modules: Newton family, Gauss-Newton, Nyström, subspace Newton, AdaHessian and
SophiaH, against float64 references written here (textbook formulas, plain loops)."""

import copy

import pytest
import torch

import optbridge as ob
from optbridge import m
from optbridge.m.second_order.derivatives import DerivativeError, HessianOperator
from trajectory import assert_same_trajectory, loss_fn, make_params

F64 = torch.float64


# --------------------------------------------------------------------------- problem helpers
def _spd(n, cond, seed=0):
    g = torch.Generator().manual_seed(seed)
    Q = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64))[0]
    lam = torch.logspace(0, torch.log10(torch.tensor(cond)).item(), n, dtype=F64)
    return Q @ torch.diag(lam) @ Q.T


class Quadratic:
    """f(v) = ½ vᵀAv - bᵀv over two parameter tensors (plus one unused tensor, grad None)."""

    def __init__(self, A, seed=1):
        g = torch.Generator().manual_seed(seed)
        self.A = A
        n = A.shape[0]
        self.b = torch.randn(n, generator=g, dtype=F64)
        self.k = n // 3
        self.ps = [torch.zeros(self.k, dtype=F64, requires_grad=True),
                   torch.zeros(n - self.k, dtype=F64, requires_grad=True),
                   torch.ones(3, dtype=F64, requires_grad=True)]
        self.solution = torch.linalg.solve(A, self.b)

    def vec(self):
        return torch.cat([self.ps[0], self.ps[1]])

    def loss(self):
        v = self.vec()
        return 0.5 * v @ self.A @ v - self.b @ v

    def closure(self, opt):
        def closure(backward=True):
            loss = self.loss()
            if backward:
                opt.zero_grad()
                loss.backward()
            return loss
        return closure

    def error(self):
        return float((self.vec().detach() - self.solution).norm() / self.solution.norm())


def _closure(ps, opt, fn=loss_fn):
    def closure(backward=True):
        loss = fn(ps)
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss
    return closure


def _flat_hessian(fn, ps):
    """Reference Hessian of fn over ps flattened, by torch.autograd.functional.hessian."""
    shapes = [p.shape for p in ps]
    sizes = [p.numel() for p in ps]
    x0 = torch.cat([p.detach().reshape(-1) for p in ps])

    def f(x):
        return fn([t.view(s) for t, s in zip(x.split(sizes), shapes)])
    return torch.autograd.functional.hessian(f, x0)


def _flat_grad(fn, ps):
    with torch.enable_grad():
        gs = torch.autograd.grad(fn(ps), ps)
    return torch.cat([g.reshape(-1) for g in gs])


class Probe(ob.Module):
    """Test module: runs ``fn(ctx)`` and stores what it returns."""

    def __init__(self, fn):
        super().__init__()
        self.fn, self.out = fn, []

    def step(self, ctx):
        self.out.append(self.fn(ctx))


# ================================================================================== Newton
@pytest.mark.parametrize("method,extra", [("batched_autograd", 0), ("autograd", 0),
                                          ("gfd_forward", 1), ("gfd_central", 2)])
def test_newton_solves_convex_quadratic_in_one_step(method, extra):
    q = Quadratic(_spd(9, 1e3))
    opt = ob.Modular(q.ps, m.Newton(hessian_method=method), m.LR(1.0))
    opt.step(q.closure(opt))
    assert q.error() < (1e-12 if extra == 0 else 1e-6)
    assert torch.equal(q.ps[2].detach(), torch.ones(3, dtype=F64))  # no grad: untouched
    # autograd: the engine's closure(True) + one closure(False) with a graph;
    # finite differences: + n (forward) or 2n (central) closure(True) for n = 9 coordinates
    expected = (1, 0) if extra == 0 else (0, extra * 9)
    assert (opt.evals.loss, opt.evals.loss_and_grad - 1) == expected


def test_hessian_matches_analytic_float64():
    g = torch.Generator().manual_seed(3)
    A = _spd(10, 50.0, seed=4)
    c = torch.randn(10, generator=g, dtype=F64)
    ps = [torch.randn(3, 2, generator=g, dtype=F64, requires_grad=True),
          torch.randn(4, generator=g, dtype=F64, requires_grad=True)]

    def f(ps):
        v = torch.cat([ps[0].reshape(-1), ps[1]])
        return 0.5 * v @ A @ v + torch.exp(c * v).sum() + (v[0] * v[1]) ** 2

    v = torch.cat([ps[0].detach().reshape(-1), ps[1].detach()])
    H_true = A + torch.diag(c**2 * torch.exp(c * v))
    H_true[0, 0] += 2 * v[1] ** 2
    H_true[1, 1] += 2 * v[0] ** 2
    H_true[0, 1] += 4 * v[0] * v[1]
    H_true[1, 0] += 4 * v[0] * v[1]
    def hessian(ctx, method):
        with HessianOperator(ctx, "Probe", method, 1e-4) as op:
            return op.hessian()

    for method, tol in [("batched_autograd", 1e-12), ("autograd", 1e-12), ("fd_central", 1e-5)]:
        probe = Probe(lambda ctx, meth=method: hessian(ctx, meth))
        opt = ob.Modular(ps, probe, m.LR(0.0))
        opt.step(_closure(ps, opt, f))
        torch.testing.assert_close(probe.out[0], H_true, rtol=tol, atol=tol)
    # and the Newton direction is H⁻¹g with that Hessian
    before = [p.detach().clone() for p in ps]
    opt = ob.Modular(ps, m.Newton(), m.LR(1.0))
    opt.step(_closure(ps, opt, f))
    step = torch.cat([(b - p.detach()).reshape(-1) for b, p in zip(before, ps)])
    g0 = _flat_grad(f, [b.clone().requires_grad_() for b in before])
    torch.testing.assert_close(step, torch.linalg.solve(H_true, g0), rtol=1e-10, atol=1e-12)


def test_newton_complex_parameter_one_step():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(3, generator=g, dtype=torch.complex128, requires_grad=True)
    w = torch.randn(2, generator=g, dtype=F64, requires_grad=True)
    target = torch.randn(3, generator=g, dtype=torch.complex128)

    def f(ps):
        z, w = ps
        return 2 * ((z - target).abs() ** 2).sum() + (w**2).sum() + (z.real * w[0]).sum() + w[1]

    opt = ob.Modular([z, w], m.Newton(), m.LR(1.0))
    opt.step(_closure([z, w], opt, f))
    grad = torch.autograd.grad(f([z, w]), [z, w])
    assert max(float(t.abs().max()) for t in grad) < 1e-12


def _saddle(ps):
    x, y = ps
    return (x**2).sum() + (y**4).sum() / 4 - (y**2).sum() / 2


def test_newton_indefinite_hessian_fallbacks():
    # y = (0.3, -0.2): curvature 3y² - 1 < 0, Cholesky fails
    def run(**kw):
        ps = [torch.zeros(2, dtype=F64, requires_grad=True),
              torch.tensor([0.3, -0.2], dtype=F64, requires_grad=True)]
        mod = m.Newton(**kw)
        opt = ob.Modular(ps, mod, m.LR(1.0))
        opt.step(_closure(ps, opt, _saddle))
        first = (mod.global_state["factor"]["mode"], float(_saddle(ps).detach()))
        for _ in range(10):
            opt.step(_closure(ps, opt, _saddle))
        return ps, first, mod

    f0 = float(_saddle([torch.zeros(2, dtype=F64), torch.tensor([0.3, -0.2], dtype=F64)]))
    ps, (mode, f1), mod = run()  # default fallback "abs": saddle-free Newton, a descent step
    assert mode == "eig" and f1 < f0
    torch.testing.assert_close(ps[1].detach().abs(), torch.ones(2, dtype=F64))  # minima ±1
    ps2, (mode2, f2), _ = run(eigval_fn=lambda L: L.abs())  # the same directions
    assert mode2 == "eig" and f2 == pytest.approx(f1, rel=1e-12)
    torch.testing.assert_close(ps2[1], ps[1])
    # "lu" (torchzero's order) takes the exact step toward the saddle point y = 0: loss goes up
    ps3, (mode3, f3), _ = run(fallback="lu")
    assert mode3 == "lu" and f3 > f0
    assert ps3[1].detach().abs().max() < 1e-3
    ps4, (mode4, _), _ = run(fallback="lstsq")
    assert mode4 == "lstsq" and all(torch.isfinite(p).all() for p in ps4)


def test_newton_first_fallback_step_by_hand():
    ps = [torch.tensor([1.0], dtype=F64, requires_grad=True),
          torch.tensor([0.3], dtype=F64, requires_grad=True)]
    opt = ob.Modular(ps, m.Newton(), m.LR(1.0))
    opt.step(_closure(ps, opt, _saddle))
    y = 0.3
    assert float(ps[0].detach()) == pytest.approx(0.0, abs=1e-14)
    assert float(ps[1].detach()) == pytest.approx(y - (y**3 - y) / abs(3 * y**2 - 1), rel=1e-13)


def test_newton_singular_hessian_is_finite_minimum_norm():
    x = torch.tensor([1.0, 3.0, -2.0], dtype=F64, requires_grad=True)
    for kw in [dict(), dict(use_lstsq=True), dict(fallback="lu")]:
        with torch.no_grad():
            x.copy_(torch.tensor([1.0, 3.0, -2.0]))
        opt = ob.Modular([x], m.Newton(**kw), m.LR(1.0))
        opt.step(_closure([x], opt, lambda ps: (ps[0][0] + ps[0][1]) ** 2 + ps[0][2] ** 2))
        assert torch.isfinite(x).all()
        # minimum-norm Newton step: x0 + x1 = 0, x2 = 0, x0 - x1 unchanged
        torch.testing.assert_close(x.detach(), torch.tensor([-1.0, 1.0, 0.0], dtype=F64),
                                   rtol=0, atol=1e-10)


_LOGREG = torch.Generator().manual_seed(7)
_X = torch.randn(30, 11, generator=_LOGREG, dtype=F64)
_Y = torch.randn(30, generator=_LOGREG, dtype=F64).sign()


def _convex_loss(ps):
    """Convex non-quadratic loss (L2-regularised logistic regression plus a quartic) over the
    first three tensors, 11 coordinates in all (a fourth tensor is never used)."""
    v = torch.cat([p.reshape(-1) for p in ps[:3]])
    logistic = torch.nn.functional.softplus(-_Y * (_X @ v)).mean()
    return logistic + 0.05 * (v**2).sum() + 1e-3 * (v**4).sum()


def _convex_hessian(v):
    """Analytic Hessian of ``_convex_loss`` at the flat point ``v``."""
    s = torch.sigmoid(-_Y * (_X @ v))
    return (_X.T * (s * (1 - s) / _X.shape[0])) @ _X + 0.1 * torch.eye(v.numel(), dtype=F64) \
        + torch.diag(12e-3 * v**2)


class RefNewton:
    """Reference: x -= lr (H + λI)⁻¹ g with the analytic H recomputed every ``freq`` steps."""

    def __init__(self, v, lr, damping, freq):
        self.v, self.lr, self.damping, self.freq, self.t, self.H = v, lr, damping, freq, 0, None

    def step(self):
        if self.t % self.freq == 0:
            self.H = _convex_hessian(self.v) + self.damping * torch.eye(self.v.numel(), dtype=F64)
        self.t += 1
        g = _flat_grad(lambda q: _convex_loss([q[0]]), [self.v.clone().requires_grad_()])
        self.v = self.v - self.lr * torch.linalg.solve(self.H, g)


@pytest.mark.parametrize("kw", [dict(), dict(damping=0.3, update_freq=3),
                                dict(update_freq=4, precompute_inverse=True),
                                dict(damping=0.1, hessian_method="autograd", use_lstsq=True)])
def test_newton_trajectory_matches_reference(kw):
    g = torch.Generator().manual_seed(0)
    shapes = [(3, 2), (4,), (1,), (2,)]
    ps = [torch.randn(s, generator=g, dtype=F64).requires_grad_() for s in shapes]
    unused = ps[3].detach().clone()
    start = torch.cat([p.detach().reshape(-1) for p in ps[:3]])
    ref = RefNewton(start, 0.3, kw.get("damping", 0.0), kw.get("update_freq", 1))
    opt = ob.Modular(ps, m.Newton(**kw), m.LR(0.3))
    for i in range(50):
        opt.step(_closure(ps, opt, _convex_loss))
        ref.step()
        ours = torch.cat([p.detach().reshape(-1) for p in ps[:3]])
        torch.testing.assert_close(ours, ref.v, rtol=1e-9, atol=1e-11,
                                   msg=lambda e: f"step {i}: {e}")
    assert torch.equal(ps[3].detach(), unused) and ps[3].grad is None
    assert float((ref.v - start).norm()) > 0.1  # it moved


def test_newton_update_freq_counts_and_H_tfm():
    ps = [torch.randn(s, dtype=F64).requires_grad_() for s in [(3, 2), (4,), (1,)]]
    opt = ob.Modular(ps, m.Newton(update_freq=3, damping=5.0), m.LR(0.1))
    for i in range(6):
        opt.step(_closure(ps, opt, _convex_loss))
    assert (opt.evals.loss_and_grad, opt.evals.loss) == (6, 2)  # Hessian on steps 1 and 4
    # H_tfm returning an explicit inverse / the update itself
    seen = []

    def tfm(H, g):
        seen.append(H.shape)
        return torch.linalg.inv(H), True
    q = Quadratic(_spd(6, 10.0))
    opt = ob.Modular(q.ps, m.Newton(H_tfm=tfm), m.LR(1.0))
    opt.step(q.closure(opt))
    assert seen == [(6, 6)] and q.error() < 1e-12
    q = Quadratic(_spd(6, 10.0))
    opt = ob.Modular(q.ps, m.Newton(H_tfm=lambda H, g: g), m.LR(1.0))  # a gradient step
    g0 = q.A @ q.vec().detach() - q.b
    opt.step(q.closure(opt))
    torch.testing.assert_close(q.vec().detach(), -g0)


def test_newton_inner_preconditions_child_output():
    q = Quadratic(_spd(6, 10.0))
    opt = ob.Modular(q.ps, m.Newton(inner=m.StepSize(0.5)), m.LR(1.0))
    opt.step(q.closure(opt))
    torch.testing.assert_close(q.vec().detach(), q.solution / 2, rtol=1e-12, atol=1e-12)


def test_finite_differences_restore_params_and_grads_with_in_place_zero_grad():
    # a closure that zeroes .grad in place overwrites the tensors ctx.grads refers to; the
    # Hessian operator restores their values (and the parameters, exactly)
    ps = make_params(1, dtype=F64)
    expected = torch.autograd.grad(loss_fn(ps), ps[:4])
    x0 = [p.detach().clone() for p in ps]

    def check(ctx):
        for g, e in zip(ctx.grads, expected):
            torch.testing.assert_close(g, e, rtol=0, atol=0)
        return True
    probe = Probe(check)
    opt = ob.Modular(ps, m.NewtonCG(hvp_method="fd_central", maxiter=3), probe, m.LR(0.0))

    def closure(backward=True):
        loss = loss_fn(ps)
        if backward:
            opt.zero_grad(set_to_none=False)
            loss.backward()
        return loss
    opt.step(closure)
    assert probe.out == [True]
    assert all(torch.equal(a, b.detach()) for a, b in zip(x0, ps))


# =============================================================================== NewtonCG
def test_newton_cg_converges_within_tolerance():
    q = Quadratic(_spd(12, 100.0))
    mod = m.NewtonCG(tol=1e-10, maxiter=200, reg=0.0)
    opt = ob.Modular(q.ps, mod, m.LR(1.0))
    opt.step(q.closure(opt))
    v = q.vec().detach()
    assert float((q.A @ v - q.b).norm() / q.b.norm()) <= 1e-10 * 1.01
    assert 1 <= mod.global_state["iterations"] <= 200
    assert (opt.evals.loss, opt.evals.loss_and_grad) == (1, 1)
    # truncated: maxiter=1 is a step along the gradient with the exact line minimiser
    q = Quadratic(_spd(12, 100.0))
    opt = ob.Modular(q.ps, m.NewtonCG(maxiter=1), m.LR(1.0))
    g = -q.b
    opt.step(q.closure(opt))
    torch.testing.assert_close(q.vec().detach(), -(g @ g) / (g @ q.A @ g) * g)


@pytest.mark.parametrize("method,per_product", [("fd_forward", 1), ("fd_central", 2)])
def test_newton_cg_finite_difference_counts_and_agreement(method, per_product):
    q = Quadratic(_spd(12, 100.0))
    mod = m.NewtonCG(tol=1e-9, maxiter=100, hvp_method=method)
    opt = ob.Modular(q.ps, mod, m.LR(1.0))
    opt.step(q.closure(opt))
    assert q.error() < 1e-6
    assert opt.evals.loss == 0
    assert opt.evals.loss_and_grad == 1 + per_product * mod.global_state["iterations"]
    # warm start: one more product for the initial residual
    mod = m.NewtonCG(tol=1e-9, maxiter=100, hvp_method=method, warm_start=True)
    opt = ob.Modular(q.ps, mod, m.LR(1e-3))
    opt.step(q.closure(opt))
    before = opt.evals.loss_and_grad
    opt.step(q.closure(opt))
    products = mod.global_state["iterations"] + 1
    assert opt.evals.loss_and_grad - before == 1 + per_product * products


def test_hvp_autograd_and_finite_differences_agree():
    ps = make_params(2, dtype=F64)
    g = torch.Generator().manual_seed(5)
    vs = [torch.randn(p.shape, generator=g, dtype=F64) for p in ps[:4]]
    results = {}
    for method in ("autograd", "batched_autograd", "fd_forward", "fd_central"):
        def probe(ctx, method=method):
            with HessianOperator(ctx, "Probe", method, 1e-5) as op:
                return op.mv_list(vs)
        p = Probe(probe)
        x0 = [t.detach().clone() for t in ps]
        opt = ob.Modular(ps, p, m.LR(0.0))
        opt.step(_closure(ps, opt))
        assert all(torch.equal(a, b.detach()) for a, b in zip(x0, ps))  # restored exactly
        results[method] = torch.cat([t.reshape(-1) for t in p.out[0]])
    H = _flat_hessian(loss_fn, ps[:4])
    exact = H @ torch.cat([v.reshape(-1) for v in vs])
    torch.testing.assert_close(results["autograd"], exact, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(results["batched_autograd"], exact, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(results["fd_central"], exact, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(results["fd_forward"], exact, rtol=1e-4, atol=1e-4)


def test_newton_cg_negative_curvature_gives_descent_direction():
    # negative curvature along the first CG direction: the update is the gradient itself;
    # npc_terminate=False runs plain CG, which heads for the saddle (an ascent direction)
    def first_update(**kw):
        ps = [torch.zeros(2, dtype=F64, requires_grad=True),
              torch.tensor([0.3, -0.2], dtype=F64, requires_grad=True)]
        opt = ob.Modular(ps, m.NewtonCG(**kw), m.LR(1.0))
        opt.step(_closure(ps, opt, _saddle))
        return torch.tensor([0.3, -0.2], dtype=F64) - ps[1].detach()
    y = torch.tensor([0.3, -0.2], dtype=F64)
    g = y**3 - y
    torch.testing.assert_close(first_update(), g, rtol=0, atol=0)
    assert float(first_update(npc_terminate=False) @ g) < 0
    ps = [torch.tensor([1.0, -2.0], dtype=F64, requires_grad=True),
          torch.tensor([0.3, -0.2], dtype=F64, requires_grad=True)]
    opt = ob.Modular(ps, m.NewtonCG(), m.LR(0.1))
    losses = [float(opt.step(_closure(ps, opt, _saddle)).detach()) for _ in range(30)]
    assert all(b <= a for a, b in zip(losses, losses[1:]))
    assert losses[-1] < losses[0] - 1.0


# ================================================================================= Nyström
def _spiked(n=40, top=8, seed=0):
    """SPD matrix: ``top`` eigenvalues in [1e2, 1e4], the rest in [1, 2] (condition 1e4)."""
    g = torch.Generator().manual_seed(seed)
    Q = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64))[0]
    lam = torch.cat([torch.logspace(2, 4, top, dtype=F64),
                     torch.linspace(1, 2, n - top, dtype=F64)])
    return Q @ torch.diag(lam) @ Q.T


def test_nystrom_pcg_converges_faster_than_cg():
    A = _spiked()
    q = Quadratic(A)
    pcg = m.NystromPCG(rank=10, tol=1e-10, reg=1e-12, seed=0)
    opt = ob.Modular(q.ps, pcg, m.LR(1.0))
    opt.step(q.closure(opt))
    assert q.error() < 1e-8
    assert (opt.evals.loss, opt.evals.loss_and_grad) == (1, 1)
    q2 = Quadratic(A)
    cg = m.NewtonCG(tol=1e-10, maxiter=500, reg=1e-12)
    opt = ob.Modular(q2.ps, cg, m.LR(1.0))
    opt.step(q2.closure(opt))
    assert pcg.global_state["iterations"] < cg.global_state["iterations"] / 2


def test_nystrom_sketch_and_solve_converges_on_ill_conditioned_quadratic():
    q = Quadratic(_spiked())
    mod = m.NystromSketchAndSolve(rank=16, reg=1.5, seed=0, update_freq=5)
    opt = ob.Modular(q.ps, mod, m.LR(1.0))
    errors = []
    for _ in range(30):
        opt.step(q.closure(opt))
        errors.append(q.error())
    assert errors[-1] < 1e-8
    assert (opt.evals.loss, opt.evals.loss_and_grad) == (6, 30)  # a sketch every 5 steps
    # full rank with tiny reg: one step is Newton's
    q = Quadratic(_spd(9, 1e2))
    opt = ob.Modular(q.ps, m.NystromSketchAndSolve(rank=9, reg=None, seed=1), m.LR(1.0))
    opt.step(q.closure(opt))
    assert q.error() < 1e-8


def test_nystrom_finite_difference_counts_and_seed_reproducibility():
    A = _spiked(n=20, top=4)
    outs = []
    for _ in range(2):
        q = Quadratic(A)
        mod = m.NystromPCG(rank=5, tol=1e-8, seed=3, hvp_method="fd_forward")
        opt = ob.Modular(q.ps, mod, m.LR(1.0))
        opt.step(q.closure(opt))
        assert opt.evals.loss_and_grad == 1 + 5 + mod.global_state["iterations"]
        assert q.error() < 1e-5
        outs.append(q.vec().detach().clone())
    assert torch.equal(outs[0], outs[1])


# ============================================================================ GaussNewton
T = torch.linspace(0, 2, 30, dtype=F64)
NOISE = torch.randn(30, generator=torch.Generator().manual_seed(0), dtype=F64)
Y = 2.0 * torch.exp(-1.3 * T) + 0.5 + 0.01 * NOISE


def _exp_residuals(p):
    return p[0] * torch.exp(p[1] * T) + p[2] - Y


def test_gauss_newton_matches_textbook_steps_and_converges():
    p = torch.tensor([1.5, -1.0, 0.2], dtype=F64, requires_grad=True)
    opt = ob.Modular([p], m.GaussNewton(reg=0.0), m.LR(1.0))
    ref = p.detach().clone()
    losses = []
    for _ in range(8):
        loss = opt.step(lambda backward=True: _exp_residuals(p))
        a, b, c = ref
        r = a * torch.exp(b * T) + c - Y
        J = torch.stack([torch.exp(b * T), a * T * torch.exp(b * T), torch.ones_like(T)], dim=1)
        assert float(loss) == pytest.approx(float((r**2).sum()), rel=1e-12)
        ref = ref - torch.linalg.solve(J.T @ J, J.T @ r)
        torch.testing.assert_close(p.detach(), ref, rtol=1e-10, atol=1e-12)
        losses.append(float(loss))
    assert losses[3] == pytest.approx(losses[-1], rel=1e-6) and losses[-1] < 4e-3
    assert (opt.evals.loss, opt.evals.loss_and_grad) == (8, 0)


def test_gauss_newton_underdetermined_min_norm_and_update_freq():
    g = torch.Generator().manual_seed(1)
    M = torch.randn(2, 5, generator=g, dtype=F64)
    t = torch.randn(2, generator=g, dtype=F64)
    x = torch.zeros(5, dtype=F64, requires_grad=True)
    opt = ob.Modular([x], m.GaussNewton(reg=0.0), m.LR(1.0))
    opt.step(lambda backward=True: M @ x - t)
    torch.testing.assert_close(x.detach(), torch.linalg.pinv(M) @ t)
    # update_freq: the Jacobian is reused, only residuals are evaluated
    p = torch.tensor([1.5, -1.0, 0.2], dtype=F64, requires_grad=True)
    opt = ob.Modular([p], m.GaussNewton(update_freq=3), m.LR(1.0))
    for _ in range(12):
        loss = opt.step(lambda backward=True: _exp_residuals(p))
    assert float(loss) < 4e-3 and opt.evals.loss == 12


def test_gauss_newton_exposes_sum_of_squares_closure_and_gradient():
    p = torch.tensor([1.5, -1.0, 0.2], dtype=F64, requires_grad=True)

    def check(ctx):
        r = _exp_residuals(p.detach())
        J = torch.autograd.functional.jacobian(_exp_residuals, p.detach())
        torch.testing.assert_close(ctx.grads[0], 2 * J.T @ r)
        assert float(ctx.closure(False)) == pytest.approx(float((r**2).sum()))
        ctx.closure(True)
        torch.testing.assert_close(p.grad, 2 * J.T @ r)
        return float(ctx.loss)
    probe = Probe(check)
    opt = ob.Modular([p], m.GaussNewton(), probe, m.LR(1.0))
    loss = opt.step(lambda backward=True: _exp_residuals(p))
    assert probe.out[0] == pytest.approx(float(loss))
    assert (opt.evals.loss, opt.evals.loss_and_grad) == (2, 1)


# ========================================================================= SubspaceNewton
@pytest.mark.parametrize("kind", ["orthonormal", "rows", "topk", "rademacher"])
def test_subspace_newton_full_dimension_is_newton(kind):
    q = Quadratic(_spd(9, 1e2))
    opt = ob.Modular(q.ps, m.SubspaceNewton(sketch_size=9, sketch_type=kind, seed=0), m.LR(1.0))
    opt.step(q.closure(opt))
    assert q.error() < 1e-9
    assert (opt.evals.loss, opt.evals.loss_and_grad) == (1, 1)


def test_subspace_newton_common_directions_and_small_sketch():
    q = Quadratic(_spd(9, 1e2))
    opt = ob.Modular(q.ps, m.SubspaceNewton(sketch_size=9), m.LR(1.0))
    for _ in range(9):
        opt.step(q.closure(opt))
    assert q.error() < 1e-8  # past gradients span the Krylov space
    # a small random subspace: the loss decreases every step (exact minimiser in the subspace)
    q = Quadratic(_spd(12, 1e2))
    opt = ob.Modular(q.ps, m.SubspaceNewton(sketch_size=3, sketch_type="orthonormal", seed=0,
                                            hvp_method="fd_central"), m.LR(1.0))
    losses = [float(opt.step(q.closure(opt)).detach()) for _ in range(20)]
    assert all(b < a for a, b in zip(losses, losses[1:]))
    assert opt.evals.loss_and_grad == 20 * (1 + 2 * 3)


# ============================================================================= AdaHessian
def _averaged(d, averaging, block):
    """Reference averaging, with explicit loops."""
    if not averaging or d.dim() < 2:
        return d
    out = d.abs().clone()
    if block is None:
        if d.dim() < 3:
            return d
        flat = out.reshape(d.shape[0], d.shape[1], -1)
        for i in range(flat.shape[0]):
            for j in range(flat.shape[1]):
                flat[i, j, :] = flat[i, j, :].mean()
        return flat.reshape(d.shape)
    for start in range(0, d.shape[0], block):
        stop = min(start + block, d.shape[0])
        out[start:stop] = d[start:stop].abs().mean(0, keepdim=True)
    return out


class RefHutchinson(torch.optim.Optimizer):
    """Float64 references of AdaHessian / SophiaH: Hutchinson vectors drawn as documented,
    one (S, n) draw over the parameters with a gradient, flattened in order."""

    def __init__(self, params, kind, lr, seed, S=1, dist="rademacher", freq=1, **hp):
        super().__init__(params, dict(lr=lr))
        self.kind, self.S, self.dist, self.freq, self.hp = kind, S, dist, freq, hp
        self.gen = torch.Generator().manual_seed(seed)
        self.t = 0
        self.m, self.v, self.hcount = {}, {}, 0

    def diag(self, closure, ps):
        n = sum(p.numel() for p in ps)
        if self.dist == "rademacher":
            Z = torch.randint(0, 2, (self.S, n), generator=self.gen, dtype=F64) * 2 - 1
        else:
            Z = torch.randn((self.S, n), generator=self.gen, dtype=F64)
        with torch.enable_grad():
            gs = torch.autograd.grad(closure(False), ps, create_graph=True)
            D = [torch.zeros_like(p) for p in ps]
            for s in range(self.S):
                zs = [piece.view_as(p) for piece, p in zip(Z[s].split([p.numel() for p in ps]), ps)]
                hz = torch.autograd.grad(gs, ps, grad_outputs=zs, retain_graph=True)
                for d, z, h in zip(D, zs, hz):
                    d += z * h / self.S
        return D

    @torch.no_grad()
    def step(self, closure):
        with torch.enable_grad():
            closure()
        ps = [p for p in self.param_groups[0]["params"] if p.grad is not None]
        lr, hp = self.param_groups[0]["lr"], self.hp
        fresh = self.t % self.freq == 0
        self.t += 1
        D = self.diag(closure, ps) if fresh else None
        if fresh:
            self.hcount += 1
        for i, p in enumerate(ps):
            g = p.grad
            m = self.m.setdefault(i, torch.zeros_like(p))
            v = self.v.setdefault(i, torch.zeros_like(p))
            m.mul_(hp["beta1"]).add_((1 - hp["beta1"]) * g)
            if self.kind == "adahessian":
                if fresh:
                    d = _averaged(D[i], hp["averaging"], hp["block_size"])
                    v.mul_(hp["beta2"]).add_((1 - hp["beta2"]) * d * d)
                mhat = m / (1 - hp["beta1"] ** self.t)
                vhat = v / (1 - hp["beta2"] ** self.hcount)
                p.sub_(lr * mhat / (vhat ** (hp["power"] / 2) + hp["eps"]))
            else:
                if fresh:
                    v.mul_(hp["beta2"]).add_((1 - hp["beta2"]) * D[i])
                u = m / torch.clamp(hp["gamma"] * v, min=hp["eps"])
                p.sub_(lr * torch.clamp(u, -hp["clip"], hp["clip"]))


@pytest.mark.parametrize("kw", [
    dict(),
    dict(n_samples=3, hvp_method="batched_autograd", beta1=0.5, beta2=0.9),
    dict(update_freq=3, hessian_power=0.5, block_size=2, eps=1e-3),
    dict(averaging=False, n_samples=2, hvp_method="autograd", beta1=0.0),
])
def test_adahessian_matches_reference(kw):
    d = dict(beta1=0.9, beta2=0.999, averaging=True, block_size=None, update_freq=1, eps=1e-8,
             hessian_power=1.0, n_samples=1)
    d.update(kw)
    assert_same_trajectory(
        lambda ps: RefHutchinson(ps, "adahessian", 0.05, 11, S=d["n_samples"],
                                 freq=d["update_freq"], beta1=d["beta1"], beta2=d["beta2"],
                                 averaging=d["averaging"], block_size=d["block_size"],
                                 eps=d["eps"], power=d["hessian_power"]),
        lambda ps: ob.Modular(ps, m.AdaHessian(seed=11, **kw), m.LR(0.05)),
        steps=50, dtype=F64, rtol=1e-9, atol=1e-11, closure=True)


@pytest.mark.parametrize("kw", [
    dict(),
    dict(distribution="rademacher", update_freq=1, precond_scale=0.05, clip=0.5),
    dict(n_samples=2, hvp_method="batched_autograd", update_freq=3, beta1=0.5, eps=1e-2),
])
def test_sophia_h_matches_reference(kw):
    d = dict(beta1=0.96, beta2=0.99, update_freq=10, precond_scale=1.0, clip=1.0, eps=1e-12,
             n_samples=1, distribution="gaussian")
    d.update(kw)
    assert_same_trajectory(
        lambda ps: RefHutchinson(ps, "sophia", 0.02, 5, S=d["n_samples"], dist=d["distribution"],
                                 freq=d["update_freq"], beta1=d["beta1"], beta2=d["beta2"],
                                 gamma=d["precond_scale"], clip=d["clip"], eps=d["eps"]),
        lambda ps: ob.Modular(ps, m.SophiaH(seed=5, **kw), m.LR(0.02)),
        steps=50, dtype=F64, rtol=1e-9, atol=1e-11, closure=True)


def test_adahessian_and_sophia_inner_precondition_child_output():
    for make in (lambda **kw: m.AdaHessian(beta1=0.0, seed=4, **kw),
                 lambda **kw: m.SophiaH(beta1=0.0, seed=4, update_freq=1, clip=1e30, eps=0.1,
                                        **kw)):
        outs = []
        for inner in (None, m.StepSize(3.0)):
            ps = make_params(0, dtype=F64)
            x0 = [p.detach().clone() for p in ps]
            opt = ob.Modular(ps, make(inner=inner), m.LR(0.01))
            opt.step(_closure(ps, opt))
            outs.append([a - p.detach() for a, p in zip(x0, ps[:4])])
        for a, b in zip(*outs):
            torch.testing.assert_close(b, 3 * a)


@pytest.mark.parametrize("make,per_step", [
    (lambda: m.AdaHessian(seed=0, update_freq=2), [(1, 1), (0, 1), (1, 1), (0, 1)]),
    (lambda: m.SophiaH(seed=0, update_freq=3), [(1, 1), (0, 1), (0, 1), (1, 1)]),
    (lambda: m.AdaHessian(seed=0, hvp_method="fd_central", n_samples=2), [(0, 5)] * 4),
    (lambda: m.SophiaH(seed=0, hvp_method="fd_forward", update_freq=2), [(0, 2), (0, 1)] * 2),
])
def test_hutchinson_evaluation_counts(make, per_step):
    ps = make_params(0, dtype=F64)
    opt = ob.Modular(ps, make(), m.LR(0.01))
    for expected in per_step:
        before = (opt.evals.loss, opt.evals.loss_and_grad)
        opt.step(_closure(ps, opt))
        assert (opt.evals.loss - before[0], opt.evals.loss_and_grad - before[1]) == expected
        assert all(torch.isfinite(p).all() for p in ps)


@pytest.mark.parametrize("make", [lambda: m.AdaHessian(), lambda: m.SophiaH(update_freq=2),
                                  lambda: m.Newton(update_freq=3, damping=1.0),
                                  lambda: m.NystromPCG(rank=4, maxiter=10),
                                  lambda: m.SubspaceNewton(sketch_size=3,
                                                           sketch_type="rademacher")])
def test_random_state_checkpoint_resumes_identically(make):
    torch.manual_seed(123)  # seed=None: drawn once from the global RNG
    ps = make_params(0, dtype=F64)
    opt = ob.Modular(ps, make(), m.LR(0.01))
    for _ in range(3):
        opt.step(_closure(ps, opt))
    sd = copy.deepcopy(opt.state_dict())
    saved = [p.detach().clone() for p in ps]
    for _ in range(4):
        opt.step(_closure(ps, opt))
    expected = [p.detach().clone() for p in ps]
    ps2 = [p.clone().requires_grad_() for p in saved]
    opt2 = ob.Modular(ps2, make(), m.LR(0.01))
    opt2.load_state_dict(sd)
    torch.manual_seed(999)  # the global RNG must not matter any more
    for _ in range(4):
        opt2.step(_closure(ps2, opt2))
    for a, b in zip(expected, ps2):
        assert torch.equal(a, b.detach())


# ============================================================================== bad input
ALL = [lambda: m.Newton(), lambda: m.NewtonCG(), lambda: m.NystromSketchAndSolve(rank=3),
       lambda: m.NystromPCG(rank=3), lambda: m.SubspaceNewton(sketch_size=3),
       lambda: m.AdaHessian(), lambda: m.SophiaH(), lambda: m.GaussNewton()]


@pytest.mark.parametrize("make", ALL)
def test_no_closure_raises_closure_error_naming_module(make):
    ps = make_params(0)
    mod = make()
    opt = ob.Modular(ps, mod, m.LR(0.1))
    loss_fn(ps).backward()
    with pytest.raises(ob.ClosureError, match=mod.name):
        opt.step()


class _OnceDifferentiable(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return (x**3).sum()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * 3 * x**2


@pytest.mark.parametrize("name", ["Newton", "NewtonCG", "AdaHessian", "SophiaH", "NystromPCG"])
def test_not_twice_differentiable_raises_clear_error(name):
    make = dict(Newton=m.Newton, NewtonCG=m.NewtonCG, AdaHessian=m.AdaHessian, SophiaH=m.SophiaH,
                NystromPCG=lambda: m.NystromPCG(rank=2))[name]
    x = torch.randn(4, dtype=F64, requires_grad=True)
    losses = {
        "no graph": lambda backward: (x**2).sum() if backward else (x**2).sum().detach(),
        "detached gradient": lambda backward: (x * x.detach()).sum(),
        "once differentiable": lambda backward: _OnceDifferentiable.apply(x),
    }
    for why, fn in losses.items():
        opt = ob.Modular([x], make(), m.LR(0.1))

        def closure(backward=True):
            with torch.set_grad_enabled(backward or why != "no graph"):
                loss = fn(backward)
            if backward:
                opt.zero_grad()
                loss.backward()
            return loss
        before = x.detach().clone()
        with pytest.raises(DerivativeError, match=name):
            opt.step(closure)
        assert torch.equal(before, x.detach()), why


def test_gauss_newton_bad_residuals():
    p = torch.tensor([1.0, 2.0], dtype=F64, requires_grad=True)
    opt = ob.Modular([p], m.GaussNewton(), m.LR(1.0))
    with pytest.raises(TypeError, match="GaussNewton"):
        opt.step(lambda backward=True: 3.0)
    with pytest.raises(DerivativeError, match="GaussNewton"):
        opt.step(lambda backward=True: (p * 2).detach())


@pytest.mark.parametrize("make,name_arg", [
    (lambda: m.Newton(damping=-1.0), "Newton: invalid damping="),
    (lambda: m.Newton(hessian_method="func"), "Newton: invalid hessian_method="),
    (lambda: m.Newton(fallback="none"), "Newton: invalid fallback="),
    (lambda: m.Newton(eigval_fn=3), "Newton: invalid eigval_fn="),
    (lambda: m.Newton(update_freq=0), "Newton: invalid update_freq="),
    (lambda: m.NewtonCG(tol=-1.0), "NewtonCG: invalid tol="),
    (lambda: m.NewtonCG(maxiter=0), "NewtonCG: invalid maxiter="),
    (lambda: m.NewtonCG(hvp_method="forward"), "NewtonCG: invalid hvp_method="),
    (lambda: m.NystromSketchAndSolve(rank=0), "NystromSketchAndSolve: invalid rank="),
    (lambda: m.NystromSketchAndSolve(reg=0.0), "NystromSketchAndSolve: invalid reg="),
    (lambda: m.NystromPCG(reg=0.0), "NystromPCG: invalid reg="),
    (lambda: m.NystromPCG(seed=-1), "NystromPCG: invalid seed="),
    (lambda: m.GaussNewton(reg=-1e-3), "GaussNewton: invalid reg="),
    (lambda: m.GaussNewton(batched="yes"), "GaussNewton: invalid batched="),
    (lambda: m.SubspaceNewton(sketch_type="mixed"), "SubspaceNewton: invalid sketch_type="),
    (lambda: m.SubspaceNewton(sketch_size=0), "SubspaceNewton: invalid sketch_size="),
    (lambda: m.AdaHessian(beta1=1.0), "AdaHessian: invalid beta1="),
    (lambda: m.AdaHessian(hessian_power=1.5), "AdaHessian: invalid hessian_power="),
    (lambda: m.AdaHessian(block_size=0), "AdaHessian: invalid block_size="),
    (lambda: m.AdaHessian(distribution="uniform"), "AdaHessian: invalid distribution="),
    (lambda: m.SophiaH(clip=0.0), "SophiaH: invalid clip="),
    (lambda: m.SophiaH(n_samples=0), "SophiaH: invalid n_samples="),
    (lambda: m.SophiaH(eps=0.0), "SophiaH: invalid eps="),
])
def test_invalid_hyperparameters(make, name_arg):
    with pytest.raises(ValueError, match=name_arg):
        make()


def test_groups_must_agree_on_global_settings():
    ps = make_params(0, dtype=F64)
    groups = [{"params": ps[:2], "damping": 1.0}, {"params": ps[2:]}]
    opt = ob.Modular(groups, m.Newton(), m.LR(1.0))
    with pytest.raises(ValueError, match="Newton: damping must be the same"):
        opt.step(_closure(ps, opt))
    with pytest.raises(ValueError, match="Newton: invalid damping"):
        ob.Modular([{"params": ps, "damping": -2.0}], m.Newton(), m.LR(1.0))
