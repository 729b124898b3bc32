"""Trust-region modules: against a straightforward reference loop, convergence on Rosenbrock,
radius rules, rejected (NaN/inf) trials, evaluation counts, checkpoints and bad input."""

import math

import pytest
import torch

import optbridge as ob
from optbridge import m
from trajectory import loss_fn, make_params


@pytest.fixture(autouse=True)
def _one_thread():
    # small LAPACK calls are slow when OpenMP threads contend on a busy machine
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def rosenbrock(x):
    return (100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum()


# ---------------------------------------------------------------------- reference (plain loop)
def ref_cg(g, B, radius, reg=0.0):
    """Steihaug-Toint CG (Nocedal & Wright Alg. 7.2) on B d = g, forcing min(.5, sqrt|g|)|g|."""
    def boundary(d, p):
        a, b, c = p @ p, 2 * (d @ p), d @ d - radius**2
        return d + (-b + torch.sqrt(b * b - 4 * a * c)) / (2 * a) * p

    d, r = torch.zeros_like(g), g.clone()
    p, tol = r.clone(), min(0.5, math.sqrt(g.norm())) * g.norm()
    for _ in range(2 * len(g)):
        Bp = B @ p + reg * p
        if p @ Bp <= 0:
            return boundary(d, p)
        alpha = (r @ r) / (p @ Bp)
        if (d + alpha * p).norm() >= radius:
            return boundary(d, p)
        d = d + alpha * p
        r_new = r - alpha * Bp
        if r_new.norm() <= tol:
            return d
        p = r_new + (r_new @ r_new) / (r @ r) * p
        r = r_new
    return d


def ref_dogleg(g, B, radius):
    gn = g.norm()
    if g @ B @ g <= 0:
        return radius * g / gn
    pu = (g @ g) / (g @ B @ g) * g
    pb = torch.linalg.solve(B, g) if torch.linalg.eigvalsh(B)[0] > 0 else None
    if pb is None or g @ pb <= 0:
        return pu if pu.norm() <= radius else radius * g / gn
    if pb.norm() <= radius:
        return pb
    if pu.norm() >= radius:
        return radius * g / gn
    a = pb - pu
    # |pu + t a| = radius
    A, Bq, C = a @ a, 2 * (pu @ a), pu @ pu - radius**2
    return pu + (-Bq + torch.sqrt(Bq * Bq - 4 * A * C)) / (2 * A) * a


def ref_lm(g, B, radius, y=0.0):
    diag = torch.where(B.diagonal() < torch.finfo(B.dtype).tiny * 2, 1.0, B.diagonal())
    D = torch.diag(y * diag + (1 - y)) if y else torch.eye(len(g), dtype=g.dtype)
    A = B + D / radius
    if torch.linalg.eigvalsh(A)[0] <= 0:
        return None
    return torch.linalg.solve(A, g)


def ref_cubic(g, B, radius):
    """argmin -g.d + d'Bd/2 + M|d|^3/6: (B + M r/2) d = g, r = |d|, by plain bisection on r."""
    M = 1 / radius
    vals, vecs = torch.linalg.eigh(B)
    gh = vecs.T @ g
    lo = max(0.0, float(-2 * vals[0] / M))
    hi = lo + 1.0
    step = lambda r: vecs @ (gh / (vals + M * r / 2))
    while step(hi).norm() > hi:
        hi *= 2
    for _ in range(120):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if step(mid).norm() > mid else (lo, mid)
    return step(hi)


def ref_trust_region(f, x0, solve, steps, *, eta, nplus, nminus, rho_good, rho_bad, init,
                     max_attempts=10, boundary_tol=None, norm_bounded=True):
    """The trust-region loop, written out: exact Hessian, rho from the quadratic model."""
    x, radius, out = x0.clone(), init, []
    for _ in range(steps):
        xr = x.clone().requires_grad_()
        g = torch.autograd.grad(f(xr), xr)[0]
        B = torch.autograd.functional.hessian(f, x)
        f0 = float(f(x))
        for _ in range(max_attempts):
            d = solve(g, B, radius)
            pred = float(g @ d - 0.5 * d @ B @ d) if d is not None else math.nan
            if not pred > 0:
                size = float(d.norm()) if d is not None and norm_bounded else radius
                radius = min(size, radius) * nminus
                radius = init if radius < 1e-12 else min(radius, 1e24)
                continue
            f1 = float(f(x - d))
            rho = (f0 - f1) / pred
            r = float(d.norm()) if norm_bounded else radius
            if not math.isfinite(f1) or not rho >= rho_bad:
                radius = r * nminus
            elif rho > rho_good and (boundary_tol is None or (radius - r) / radius < boundary_tol):
                radius = max(radius, r * nplus)
            radius = init if radius < 1e-12 else min(radius, 1e24)
            if math.isfinite(f1) and rho > eta:
                x = x - d
                break
        out.append(x.clone())
    return out


DEFAULTS = {
    "TrustCG": dict(eta=0.0, nplus=3.5, nminus=0.25, rho_good=0.99, rho_bad=1e-4, init=1.0,
                    boundary_tol=1e-6),
    "Dogleg": dict(eta=0.0, nplus=2.0, nminus=0.25, rho_good=0.75, rho_bad=0.25, init=1.0),
    "LevenbergMarquardt": dict(eta=0.0, nplus=3.5, nminus=0.25, rho_good=0.99, rho_bad=1e-4,
                               init=1.0, norm_bounded=False),
    "CubicRegularization": dict(eta=0.0, nplus=3.5, nminus=0.25, rho_good=0.99, rho_bad=1e-4,
                                init=1.0, norm_bounded=False),
}

CASES = [
    ("TrustCG", lambda **kw: m.TrustCG(**kw), ref_cg, {}),
    ("TrustCG", lambda **kw: m.TrustCG(reg=0.5, init=0.3, **kw),
     lambda g, B, r: ref_cg(g, B, r, reg=0.5), dict(init=0.3)),
    ("Dogleg", lambda **kw: m.Dogleg(**kw), ref_dogleg, {}),
    ("Dogleg", lambda **kw: m.Dogleg(nplus=3.0, eta=0.1, init=2.0, **kw), ref_dogleg,
     dict(nplus=3.0, eta=0.1, init=2.0)),
    ("LevenbergMarquardt", lambda **kw: m.LevenbergMarquardt(**kw), ref_lm, {}),
    ("LevenbergMarquardt", lambda **kw: m.LevenbergMarquardt(y=0.7, nminus=0.5, **kw),
     lambda g, B, r: ref_lm(g, B, r, y=0.7), dict(nminus=0.5)),
    ("CubicRegularization", lambda **kw: m.CubicRegularization(eps=1e-14, **kw), ref_cubic, {}),
    ("CubicRegularization",
     lambda **kw: m.CubicRegularization(eps=1e-14, init=10.0, rho_good=0.9, **kw), ref_cubic,
     dict(init=10.0, rho_good=0.9)),
]


def _run(module, f, x, steps, stop=None):
    """Run ``Modular([x], module)``; returns parameter snapshots and per-step records (stops
    early once ``stop(x)`` holds)."""
    opt = ob.Modular([x], module)
    log = []

    def closure(backward=True):
        calls.append((backward, x.detach().clone()))
        loss = f(x)
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss

    out = []
    for _ in range(steps):
        calls = []
        before = (opt.evals.loss, opt.evals.loss_and_grad)
        loss = float(opt.step(closure).detach())
        log.append(dict(loss=loss, calls=calls, state=dict(module.global_state),
                        evals=(opt.evals.loss - before[0], opt.evals.loss_and_grad - before[1])))
        out.append(x.detach().clone())
        if stop is not None and stop(x.detach()):
            break
    return out, log, opt


@pytest.mark.parametrize("name,make,solve,over", CASES)
@pytest.mark.parametrize("start", [[-1.2, 1.0], [0.3 * i - 1.0 for i in range(10)]])
def test_matches_reference_loop(name, make, solve, over, start):
    kw = dict(DEFAULTS[name], **over)
    x0 = torch.tensor(start, dtype=torch.float64)
    ref = ref_trust_region(rosenbrock, x0, solve, 15, **kw)
    ours, log, _ = _run(make(), rosenbrock, x0.clone().requires_grad_(), 15)
    for i, (a, b) in enumerate(zip(ref, ours)):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-10, msg=lambda s: f"step {i}: {s}")
    assert not torch.equal(ours[-1], x0)


def test_multi_tensor_exact_hessian_matches_reference():
    # several tensors flattened in order, one without a gradient (excluded), float64
    ps = make_params(0, torch.float64)
    shapes = [p.shape for p in ps[:4]]
    x0 = torch.cat([p.detach().reshape(-1) for p in ps[:4]])

    def f_flat(x):
        parts, i = [], 0
        for s in shapes:
            n = math.prod(s)
            parts.append(x[i:i + n].reshape(s))
            i += n
        return loss_fn(parts + [None])

    ref = ref_trust_region(f_flat, x0, ref_cg, 8, **DEFAULTS["TrustCG"])
    opt = ob.Modular(ps, m.TrustCG())

    def closure(backward=True):
        loss = loss_fn(ps)
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss

    unused = ps[4].detach().clone()
    for i in range(8):
        opt.step(closure)
        torch.testing.assert_close(torch.cat([p.detach().reshape(-1) for p in ps[:4]]), ref[i],
                                   rtol=1e-9, atol=1e-10)
    assert torch.equal(ps[4], unused)


@pytest.mark.parametrize("make", [m.TrustCG, m.LevenbergMarquardt, m.Dogleg,
                                  m.CubicRegularization])
@pytest.mark.parametrize("n,start,steps", [(2, [-1.2, 1.0], 80), (10, [0.0] * 10, 120)])
def test_rosenbrock_converges_monotonically_with_exact_counts(make, n, start, steps):
    x = torch.tensor(start, dtype=torch.float64, requires_grad=True)
    _, log, opt = _run(make(), rosenbrock, x, steps, stop=lambda x: rosenbrock(x) < 1e-20)
    assert float((x.detach() - 1).abs().max()) < 1e-9, f"did not converge: {x}"
    losses = [r["loss"] for r in log]
    assert all(b <= a for a, b in zip(losses, losses[1:])), "the loss went up"
    for r, nxt in zip(log, losses[1:]):
        st = r["state"]
        if st["accepted"]:
            assert nxt < r["loss"]
        # engine: one closure(True); exact Hessian: one closure(False) at the start point;
        # one closure(False) per trial, each away from the start point
        start_pt = r["calls"][0][1]
        trials = [c for c in r["calls"][1:] if not torch.equal(c[1], start_pt)]
        assert r["calls"][0][0] is True and r["calls"][1][0] is False
        assert torch.equal(r["calls"][1][1], start_pt)
        assert all(c[0] is False for c in r["calls"][2:])
        assert len(trials) == st["trials"] and len(r["calls"]) == 2 + st["trials"]
        assert r["evals"] == (1 + st["trials"], 1)
        assert 0 <= st["trials"] <= 10


def _wall(x):
    """(x - 5)^2, plus a steep wall beyond x = 2."""
    return ((x - 5) ** 2 + 100 * torch.relu(x - 2) ** 2).sum()


def test_radius_shrinks_on_rejection_and_expands_on_boundary():
    x = torch.tensor([0.0], dtype=torch.float64, requires_grad=True)
    # Newton step 5 (inside radius 10) hits the wall: rejected, radius 5 * 0.25 = 1.25; the
    # boundary step 1.25 is exact for the quadratic (rho = 1): accepted, radius 1.25 * 3.5
    _, log, _ = _run(m.TrustCG(init=10.0), _wall, x, 1)
    st = log[0]["state"]
    assert st["trials"] == 2 and st["accepted"]
    assert st["radius"] == pytest.approx(1.25 * 3.5, rel=1e-12)
    assert x.item() == pytest.approx(1.25, rel=1e-12)
    # LM: lambda = 1 gives x = 10/3 (rejected, radius 0.25, lambda 4), then x = 10/6
    y = torch.tensor([0.0], dtype=torch.float64, requires_grad=True)
    _, log, _ = _run(m.LevenbergMarquardt(), _wall, y, 1)
    st = log[0]["state"]
    assert st["trials"] == 2 and st["accepted"]
    assert st["radius"] == pytest.approx(0.25 * 3.5, rel=1e-12)
    assert y.item() == pytest.approx(10 / 6, rel=1e-12)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("make,rule", [
    (lambda: m.TrustCG(max_attempts=3), "norm"),
    (lambda: m.Dogleg(max_attempts=3), "norm"),
    (lambda: m.LevenbergMarquardt(max_attempts=3, init=2.0), "damping"),
    (lambda: m.CubicRegularization(max_attempts=3, init=2.0), "damping"),
])
def test_non_finite_trials_are_rejected_and_parameters_restored(make, rule, bad):
    x = torch.tensor([0.1, -0.3], dtype=torch.float64, requires_grad=True)
    x0 = x.detach().clone()
    module = make()
    opt = ob.Modular([x], module)
    trial_points = []

    def closure(backward=True):
        if not torch.equal(x, x0):
            trial_points.append(x.detach().clone())
            return torch.tensor(bad, dtype=torch.float64)
        loss = rosenbrock(x)
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss

    radius0 = 1.0 if rule == "norm" else 2.0
    opt.step(closure)
    assert torch.equal(x.detach(), x0)  # bit-exact restore
    st = module.global_state
    assert st["trials"] == 3 and not st["accepted"] and len(trial_points) == 3
    assert (opt.evals.loss, opt.evals.loss_and_grad) == (4, 1)
    if rule == "damping":
        assert st["radius"] == radius0 * 0.25**3
    else:  # each rejection shrinks to |d| * nminus with |d| <= radius
        norms = [float((p - x0).norm()) for p in trial_points]
        assert norms[0] <= radius0 * (1 + 1e-12)
        assert st["radius"] == pytest.approx(norms[-1] * 0.25, rel=1e-12)
        assert all(b <= a * 0.25 * (1 + 1e-12) for a, b in zip(norms, norms[1:]))
    # the next step works again from the same point
    loss = opt.step(closure)
    assert float(loss.detach()) == float(rosenbrock(x0)) and torch.equal(x.detach(), x0)
    assert module.global_state["trials"] == 3


class QuadraticHessian(ob.Module):
    """Test Hessian model for ``0.5 x'Ax - b'x``: offers the trust-region interface."""

    def __init__(self, A, inverse=False):
        super().__init__()
        self.A, self.inverse, self.updates = A, inverse, 0
        if inverse:
            self.inverse_hessian = lambda ctx: torch.linalg.inv(self.A)
        else:
            self.hessian = lambda ctx: self.A

    def update_hessian(self, ctx):
        self.updates += 1


class DenseBFGS(ob.Module):
    """A minimal BFGS keeping B, through the interface (secant pair skipped when s'y <= 0)."""

    def update_hessian(self, ctx):
        x = torch.cat([p.reshape(-1) for p in ctx.params]).clone()
        g = torch.cat([u.reshape(-1) for u in ctx.update]).clone()
        gs = self.global_state
        if "B" in gs:
            s, y = x - gs["x"], g - gs["g"]
            if s @ y > 1e-12 * s.norm() * y.norm():
                Bs = gs["B"] @ s
                gs["B"] = gs["B"] - torch.outer(Bs, Bs) / (s @ Bs) + torch.outer(y, y) / (y @ s)
        else:
            gs["B"] = torch.eye(len(x), dtype=x.dtype)
        gs["x"], gs["g"] = x, g

    def hessian(self, ctx):
        return self.global_state["B"]


def test_hessian_module_interface():
    A = torch.tensor([[3.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
    b = torch.tensor([1.0, -1.0], dtype=torch.float64)
    sol = torch.linalg.solve(A, b)
    quad = lambda x: 0.5 * x @ A @ x - b @ x
    for make in (lambda h: m.TrustCG(hess_module=h, init=100.0),
                 lambda h: m.LevenbergMarquardt(hess_module=h, init=1e6),
                 lambda h: m.CubicRegularization(hess_module=h, init=1e6)):
        h = QuadraticHessian(A)
        x = torch.zeros(2, dtype=torch.float64, requires_grad=True)
        _, log, opt = _run(make(h), quad, x, 8)
        torch.testing.assert_close(x.detach(), sol, rtol=1e-7, atol=1e-8)
        assert h.updates == 8 and log[0]["evals"] == (1, 1)  # no Hessian evaluation
    # an inverse-only module: LM/cubic invert it with fallback=True, refuse otherwise
    x = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    _run(m.LevenbergMarquardt(hess_module=QuadraticHessian(A, inverse=True), fallback=True,
                              init=1e8), quad, x, 2)
    torch.testing.assert_close(x.detach(), sol, rtol=1e-6, atol=1e-7)
    with pytest.raises(RuntimeError, match="LevenbergMarquardt: .*inverse"):
        _run(m.LevenbergMarquardt(hess_module=QuadraticHessian(A, inverse=True)), quad,
             torch.zeros(2, dtype=torch.float64, requires_grad=True), 1)
    with pytest.raises(TypeError, match="TrustCG: hess_module QuadraticHessian"):
        m.TrustCG(hess_module=QuadraticHessian(A, inverse=True))
    with pytest.raises(TypeError, match="Dogleg: hess_module Adam"):
        m.Dogleg(hess_module=m.Adam())
    # a quasi-Newton model through the interface
    x = torch.tensor([-1.2, 1.0], dtype=torch.float64, requires_grad=True)
    _, log, _ = _run(m.TrustCG(hess_module=DenseBFGS()), rosenbrock, x, 150,
                     stop=lambda x: rosenbrock(x) < 1e-16)
    assert float((x.detach() - 1).abs().max()) < 1e-5
    losses = [r["loss"] for r in log]
    assert all(b <= a for a, b in zip(losses, losses[1:]))
    assert all(r["evals"] == (r["state"]["trials"], 1) for r in log)


@pytest.mark.parametrize("make", [lambda: m.TrustCG(update_freq=2), lambda: m.Dogleg(),
                                  lambda: m.LevenbergMarquardt(y=0.5),
                                  lambda: m.CubicRegularization(update_freq=3)])
def test_checkpoint_resume_is_exact(make):
    def run(split):
        x = torch.tensor([0.3 * i - 1.0 for i in range(6)], dtype=torch.float64,
                         requires_grad=True)
        opt = ob.Modular([x], make())
        for i in range(12):
            if i == split:
                sd = opt.state_dict()
                x = x.detach().clone().requires_grad_()
                opt = ob.Modular([x], make())
                opt.load_state_dict(sd)

            def closure(backward=True):
                loss = rosenbrock(x)
                if backward:
                    opt.zero_grad()
                    loss.backward()
                return loss

            opt.step(closure)
        return x, opt.evals

    (a, ea), (b, eb) = run(None), run(5)
    assert torch.equal(a, b) and ea == eb


def test_update_freq_reuses_the_hessian():
    x = torch.tensor([-1.2, 1.0], dtype=torch.float64, requires_grad=True)
    _, log, _ = _run(m.TrustCG(update_freq=3), rosenbrock, x, 6)
    hess = [r["evals"][0] - r["state"]["trials"] for r in log]
    assert hess == [1, 0, 0, 1, 0, 0]


def test_complex_parameter_matches_real_pair():
    target = torch.tensor([1.0 + 2.0j], dtype=torch.complex128)
    z = torch.tensor([0.5 - 0.5j], dtype=torch.complex128, requires_grad=True)
    f_c = lambda z: ((z - target).abs() ** 4).sum() + (z.real * z.imag).sum()
    f_r = lambda x: (((x[0] - 1) ** 2 + (x[1] - 2) ** 2) ** 2) + x[0] * x[1]
    _run(m.TrustCG(), f_c, z, 6)
    ref = ref_trust_region(f_r, torch.tensor([0.5, -0.5], dtype=torch.float64), ref_cg, 6,
                           **DEFAULTS["TrustCG"])
    torch.testing.assert_close(torch.view_as_real(z.detach())[0], ref[-1], rtol=1e-9, atol=1e-10)


def test_stationary_point_takes_no_step_and_no_evaluation():
    x = torch.ones(2, dtype=torch.float64, requires_grad=True)
    _, log, _ = _run(m.Dogleg(), rosenbrock, x, 2)
    assert log[0]["evals"] == (1, 1) and log[0]["state"]["trials"] == 0
    assert torch.equal(x.detach(), torch.ones(2, dtype=torch.float64))


@pytest.mark.parametrize("make,arg", [
    (lambda: m.TrustCG(eta=-0.1), "eta"),
    (lambda: m.TrustCG(eta=1.0), "eta"),
    (lambda: m.Dogleg(eta=0.5), "eta"),  # above rho_bad
    (lambda: m.TrustCG(init=0.0), "init"),
    (lambda: m.LevenbergMarquardt(init=-1.0), "init"),
    (lambda: m.CubicRegularization(init=math.inf), "init"),
    (lambda: m.Dogleg(nminus=1.0), "nminus"),
    (lambda: m.TrustCG(nplus=0.5), "nplus"),
    (lambda: m.TrustCG(max_attempts=0), "max_attempts"),
    (lambda: m.TrustCG(boundary_tol=-1.0), "boundary_tol"),
    (lambda: m.TrustCG(rho_bad=0.999), "rho_bad"),
    (lambda: m.LevenbergMarquardt(y=2.0), "y"),
    (lambda: m.CubicRegularization(maxiter=0), "maxiter"),
])
def test_bad_hyperparameters(make, arg):
    with pytest.raises(ValueError, match=rf"^\w+: invalid {arg}="):
        make()


def test_bad_group_override_and_missing_closure():
    x = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    with pytest.raises(ValueError, match="TrustCG: invalid init="):
        ob.Modular([{"params": [x], "init": 0.0}], m.TrustCG())
    opt = ob.Modular([x], m.TrustCG())
    x.grad = torch.ones(2, dtype=torch.float64)
    with pytest.raises(ob.ClosureError, match="TrustCG"):
        opt.step()
