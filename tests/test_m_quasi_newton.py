"""Full-matrix and diagonal quasi-Newton modules against textbook float64 implementations."""

import inspect
import math

import numpy as np
import pytest
import scipy.optimize
import torch

import optbridge as ob
from optbridge import m
from optbridge.core.module import Module
from trajectory import assert_same_trajectory

TOL = 1e-32


# ------------------------------------------------------------------ textbook update formulas
# Each returns the new matrix (out of place), in the factored form of the references, with the
# skip rule documented by the module. `st` holds extra state (Thomas's and PNR's R).
def outer(a, b):
    return torch.outer(a, b)


def eye_like(M):
    return torch.eye(M.shape[0], dtype=M.dtype)


def bfgs_H(H, s, y, g, gp, st, tol=TOL):
    sy = s @ y
    if sy <= tol:
        return H
    rho, I = 1 / sy, eye_like(H)
    return (I - rho * outer(s, y)) @ H @ (I - rho * outer(y, s)) + rho * outer(s, s)


def bfgs_B(B, s, y, g, gp, st, tol=TOL):
    sy = s @ y
    if sy <= tol:
        return B
    return B - B @ outer(s, s) @ B / (s @ B @ s) + outer(y, y) / sy


def dfp_H(H, s, y, g, gp, st, tol=TOL):
    sy = s @ y
    if sy <= tol:
        return H
    return H - H @ outer(y, y) @ H / (y @ H @ y) + outer(s, s) / sy


def dfp_B(B, s, y, g, gp, st, tol=TOL):
    sy = s @ y
    if sy <= tol:
        return B
    rho, I = 1 / sy, eye_like(B)
    return (I - rho * outer(y, s)) @ B @ (I - rho * outer(s, y)) + rho * outer(y, y)


def _sr1(M, a, b, tol):
    z = a - M @ b
    den = z @ b
    if abs(den) <= tol * z.norm() * b.norm():
        return M
    return M + outer(z, z) / den


def sr1_H(H, s, y, g, gp, st, tol=1e-8):
    return _sr1(H, s, y, tol)


def sr1_B(B, s, y, g, gp, st, tol=1e-8):
    return _sr1(B, y, s, tol)


def _c_update(H, s, y, c, tol=TOL):
    cy = c @ y
    if abs(cy) <= tol:
        return H
    return H + outer(s - H @ y, c) / cy


def broyden_good_H(H, s, y, g, gp, st):
    return _c_update(H, s, y, s @ H)


def broyden_good_B(B, s, y, g, gp, st):
    return B + outer(y - B @ s, s) / (s @ s)


def broyden_bad_H(H, s, y, g, gp, st):
    return _c_update(H, s, y, y)


def broyden_bad_B(B, s, y, g, gp, st):
    return B + outer(y - B @ s, y @ B) / (y @ B @ s)


def greenstadt1_H(H, s, y, g, gp, st):
    return _c_update(H, s, y, gp)


def greenstadt2_H(H, s, y, g, gp, st):
    return _c_update(H, s, y, H @ H @ y)


def pearson_H(H, s, y, g, gp, st):
    return _c_update(H, s, y, H @ y)


def mccormick_H(H, s, y, g, gp, st):
    return _c_update(H, s, y, s)


def thomas_H(H, s, y, g, gp, st):
    R = st.setdefault("R", eye_like(H))
    nu, I = s.norm(), eye_like(H)
    d = (R + nu / 2 * I) @ s
    st["R"] = (1 + nu) * (R + nu * I - outer(d, d) / (d @ s))
    return _c_update(H, s, y, H.T @ d)


def psb_B(B, s, y, g, gp, st):
    r, ss = y - B @ s, s @ s
    return B + (outer(r, s) + outer(s, r)) / ss - (r @ s) * outer(s, s) / ss**2


def pnr_H(H, s, y, g, gp, st):
    R = st.setdefault("R", eye_like(H))
    yHy = y @ H @ y
    st["R"] = R + outer(s - R @ y, y @ H) / yHy
    return H - H @ outer(y, y) @ H / yHy


def ssvm_H(H, s, y, g, gp, st, switch=3):
    sigma, tau = float(s @ y), float(y @ H @ y)
    if sigma <= TOL:
        return H
    eps = float(g @ s) / float(g @ H @ y)
    if isinstance(switch, tuple):
        phi, theta = switch
    elif eps <= sigma:
        phi, theta = eps / sigma, 0.0
    elif sigma >= tau:
        phi, theta = sigma / tau, 1.0
    else:
        phi, theta = 1.0, sigma * (tau - sigma) / (eps * tau - sigma**2)
    u = phi * eps + (1 - phi) * sigma / tau
    v = math.sqrt(tau) * (s / sigma - H @ y / tau)
    return u * (H - H @ outer(y, y) @ H / tau + theta * outer(v, v)) + outer(s, s) / sigma


def diag_of(rule):
    def diag_rule(h, s, y, g, gp, st):
        return torch.diagonal(rule(torch.diag(h), s, y, g, gp, st)).clone()
    return diag_rule


# name -> (module class, rule for H (inverse) or None, rule for B or None, diagonal)
METHODS = {
    "BFGS": (m.BFGS, bfgs_H, bfgs_B, False),
    "DFP": (m.DFP, dfp_H, dfp_B, False),
    "SR1": (m.SR1, sr1_H, sr1_B, False),
    "BroydenGood": (m.BroydenGood, broyden_good_H, broyden_good_B, False),
    "BroydenBad": (m.BroydenBad, broyden_bad_H, broyden_bad_B, False),
    "Greenstadt1": (m.Greenstadt1, greenstadt1_H, None, False),
    "Greenstadt2": (m.Greenstadt2, greenstadt2_H, None, False),
    "Pearson": (m.Pearson, pearson_H, None, False),
    "McCormick": (m.McCormick, mccormick_H, None, False),
    "ThomasOptimalMethod": (m.ThomasOptimalMethod, thomas_H, None, False),
    "PSB": (m.PSB, None, psb_B, False),
    "ProjectedNewtonRaphson": (m.ProjectedNewtonRaphson, pnr_H, None, False),
    "SSVM": (m.SSVM, ssvm_H, None, False),
    "DiagonalBFGS": (m.DiagonalBFGS, diag_of(bfgs_H), None, True),
    "DiagonalSR1": (m.DiagonalSR1, diag_of(sr1_H), diag_of(sr1_B), True),
}
SECANT = ["BFGS", "DFP", "SR1", "BroydenGood", "BroydenBad", "Greenstadt1", "Greenstadt2",
          "Pearson", "McCormick", "ThomasOptimalMethod", "PSB", "SSVM"]


class RefQN:
    """Straightforward quasi-Newton over the flattened parameters that have a gradient:
    ``x -= lr * M g`` (or ``lr * solve(M, g)``), ``M`` updated by ``rule`` from ``s, y``."""

    def __init__(self, params, rule, lr, inverse=True, diagonal=False, init_scale="auto",
                 per_param=False, restart_interval=None, beta=None, update_freq=1,
                 scale_first=False, restart_to_R=False):
        self.params, self.rule, self.lr = list(params), rule, lr
        self.inverse, self.diagonal, self.init_scale = inverse, diagonal, init_scale
        self.per_param, self.restart_interval, self.beta = per_param, restart_interval, beta
        self.update_freq, self.scale_first = update_freq, scale_first
        self.restart_to_R = restart_to_R
        self.state = {}
        self.last_directions = []

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    def _init(self, n, x):
        M = torch.ones(n, dtype=x.dtype) if self.diagonal else torch.eye(n, dtype=x.dtype)
        if self.init_scale != "auto":
            M = M / self.init_scale if self.inverse else M * self.init_scale
        return M

    def _auto(self, M, s, y):
        ys, yy = s @ y, y @ y
        if ys > 0 and yy > 0:
            return M * (ys / yy) if self.inverse else M * (yy / ys)
        return M

    @torch.no_grad()
    def step(self):
        ps = [p for p in self.params if p.grad is not None]
        blocks = [[p] for p in ps] if self.per_param else [ps]
        self.last_directions = []
        for bi, block in enumerate(blocks):
            x = torch.cat([p.reshape(-1) for p in block]).clone()
            g = torch.cat([p.grad.reshape(-1) for p in block]).clone()
            n = x.numel()
            st = self.state.get(bi)
            if st is None:
                st = self.state[bi] = dict(M=self._init(n, x), x=x, g=g, updates=1, calls=1,
                                           scaled=False)
            else:
                st["calls"] += 1
                if (st["calls"] - 1) % self.update_freq == 0:
                    st["updates"] += 1
                    s, y, gp = x - st["x"], g - st["g"], st["g"]
                    st["x"], st["g"] = x, g
                    interval = n + 1 if self.restart_interval == "auto" else self.restart_interval
                    if interval and st["updates"] % interval == 0:
                        if self.restart_to_R:
                            st["M"] = st.setdefault("R", torch.eye(n, dtype=x.dtype)).clone()
                        else:
                            st.pop("R", None)
                            st["M"] = self._init(n, x)
                            if self.init_scale == "auto":
                                st["M"] = self._auto(st["M"], s, y)
                        st["scaled"] = True
                    else:
                        if not st["scaled"] and self.init_scale == "auto":
                            st["scaled"] = True
                            st["M"] = self._auto(st["M"], s, y)
                        new = self.rule(st["M"], s, y, g, gp, st)
                        if self.beta is not None:
                            new = self.beta * st["M"] + (1 - self.beta) * new
                        st["M"] = new
            v = g / max(1.0, float(g.abs().sum())) if self.scale_first and st["updates"] == 1 else g
            M = st["M"]
            if self.diagonal:
                d = M * v if self.inverse else v / M
            else:
                d = M @ v if self.inverse else torch.linalg.solve(M, v)
            self.last_directions.append(d)
            for p, piece in zip(block, d.split([p.numel() for p in block])):
                p.sub_(self.lr * piece.view_as(p))


def _cases():
    out = []
    for name, (cls, rule_H, rule_B, diagonal) in METHODS.items():
        if rule_H is not None:
            out.append((name, True))
        if rule_B is not None:
            out.append((name, False))
    return out


def _kw(name, inverse):
    cls = METHODS[name][0]
    return {"inverse": inverse} if "inverse" in inspect.signature(cls).parameters else {}


def _ref_kw(name):
    if name == "ProjectedNewtonRaphson":
        return dict(restart_interval="auto", restart_to_R=True)
    if name in ("SR1", "DiagonalSR1"):
        return dict(init_scale=1.0)
    return {}


@pytest.mark.parametrize("name,inverse", _cases())
def test_matches_textbook_trajectory(name, inverse):
    """60 steps of ``[Method(), LR(lr)]`` on the shared non-quadratic problem (several tensors,
    one without gradient) against the textbook formulas in float64."""
    cls, rule_H, rule_B, diagonal = METHODS[name]
    rule = rule_H if inverse else rule_B
    lr = 0.05 if name in ("SR1", "PSB", "SSVM") else 0.1
    assert_same_trajectory(
        lambda ps: RefQN(ps, rule, lr, inverse=inverse, diagonal=diagonal, **_ref_kw(name)),
        lambda ps: ob.Modular(ps, cls(**_kw(name, inverse)), m.LR(lr)),
        steps=50, dtype=torch.float64, rtol=1e-6, atol=1e-9,
    )


@pytest.mark.parametrize("kw,ref_kw", [
    (dict(init_scale=2.0), dict(init_scale=2.0)),
    (dict(init_scale=0.5, inverse=False), dict(init_scale=0.5, inverse=False)),
    (dict(concat_params=False), dict(per_param=True)),
    (dict(restart_interval=7, beta=0.5), dict(restart_interval=7, beta=0.5)),
    (dict(update_freq=3, scale_first=True), dict(update_freq=3, scale_first=True)),
    (dict(restart_interval="auto", inverse=False, concat_params=False),
     dict(restart_interval="auto", inverse=False, per_param=True)),
])
def test_bfgs_options_match_reference(kw, ref_kw):
    rule = bfgs_H if kw.get("inverse", True) else bfgs_B
    assert_same_trajectory(
        lambda ps: RefQN(ps, rule, 0.1, **ref_kw),
        lambda ps: ob.Modular(ps, m.BFGS(**kw), m.LR(0.1)),
        steps=50, dtype=torch.float64, rtol=1e-6, atol=1e-9,
    )


def test_ssvm_fixed_phi_theta():
    rule = lambda *a: ssvm_H(*a, switch=(0.5, 0.25))  # noqa: E731
    assert_same_trajectory(
        lambda ps: RefQN(ps, rule, 0.05),
        lambda ps: ob.Modular(ps, m.SSVM(switch=(0.5, 0.25)), m.LR(0.05)),
        steps=50, dtype=torch.float64, rtol=1e-6, atol=1e-9,
    )


# ------------------------------------------------------------------------ convex quadratic
def quadratic(n=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    Q = torch.randn(n, n, generator=gen, dtype=torch.float64)
    A = Q @ Q.T / n + torch.diag(torch.linspace(0.5, 5.0, n, dtype=torch.float64))
    b = torch.randn(n, generator=gen, dtype=torch.float64)
    return A, b


class ExactLineSearch(Module):
    """Test-only exact line search on ``0.5 x'Ax - b'x``: ``x -= t u`` with
    ``t = u'g / u'Au``."""

    def __init__(self, A):
        super().__init__()
        self.A = A

    def step(self, ctx):
        u = torch.cat([t.reshape(-1) for t in ctx.update])
        g = torch.cat([t.reshape(-1) for t in ctx.grads])
        t = (u @ g) / (u @ self.A @ u)
        torch._foreach_add_(ctx.params, [v * -t for v in ctx.update])
        ctx.skip_update = True


def quad_problem(A, b):
    """Parameters split in two tensors plus one without gradient; closure of the quadratic."""
    n = A.shape[0]
    x1 = torch.zeros(n - 3, dtype=torch.float64, requires_grad=True)
    x2 = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    unused = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    return [x1, x2, unused]


def make_closure(opt, ps, A, b):
    def closure(backward=True):
        x = torch.cat([ps[0], ps[1]])
        f = 0.5 * x @ A @ x - b @ x
        if backward:
            opt.zero_grad()
            f.backward()
        return f
    return closure


def xvec(ps):
    return torch.cat([ps[0], ps[1]]).detach().clone()


@pytest.mark.parametrize("name,inverse", _cases())
def test_first_updates_on_quadratic(name, inverse):
    """Matrix after each of 6 updates and each direction equal the textbook formulas."""
    cls, rule_H, rule_B, diagonal = METHODS[name]
    rule = rule_H if inverse else rule_B
    A, b = quadratic()
    ps = quad_problem(A, b)
    mod = cls(**_kw(name, inverse))
    opt = ob.Modular(ps, mod, m.LR(0.3))
    closure = make_closure(opt, ps, A, b)
    ref = RefQN([], rule, 0.0, inverse=inverse, diagonal=diagonal, **_ref_kw(name))
    key = "H" if inverse else "B"
    for k in range(7):
        x = xvec(ps)
        closure()
        g = torch.cat([ps[0].grad, ps[1].grad])
        ref.params = [x.clone().requires_grad_()]
        ref.params[0].grad = g.clone()
        ref.step()
        d_ref = ref.last_directions[0]
        opt.step(closure)
        d = (x - xvec(ps)) / 0.3
        torch.testing.assert_close(mod.global_state[key], ref.state[0]["M"], rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(d, d_ref, rtol=1e-9, atol=1e-12)
        assert opt.evals.loss_and_grad == k + 1 and opt.evals.loss == 0
    assert mod.global_state["updates"] == 7


@pytest.mark.parametrize("name", SECANT)
def test_secant_equation_after_update(name):
    cls, rule_H, rule_B, diagonal = METHODS[name]
    A, b = quadratic()
    ps = quad_problem(A, b)
    mod = cls()
    opt = ob.Modular(ps, mod, m.LR(0.2))
    closure = make_closure(opt, ps, A, b)
    prev = None
    for _ in range(5):
        x = xvec(ps)
        closure()
        g = torch.cat([ps[0].grad, ps[1].grad]).clone()
        opt.step(closure)
        if prev is not None:
            s, y = x - prev[0], g - prev[1]
            if "H" in mod.global_state:
                torch.testing.assert_close(mod.global_state["H"] @ y, s, rtol=1e-8, atol=1e-11)
            else:
                torch.testing.assert_close(mod.global_state["B"] @ s, y, rtol=1e-8, atol=1e-11)
        prev = (x, g)


@pytest.mark.parametrize("make,recovers_inverse", [
    (lambda: m.BFGS(), True), (lambda: m.BFGS(inverse=False), True), (lambda: m.DFP(), True),
    (lambda: m.DFP(inverse=False), True), (lambda: m.SR1(), True),
    (lambda: m.SR1(inverse=False), True), (lambda: m.SSVM(), False),
])
def test_finite_termination_with_exact_line_search(make, recovers_inverse):
    """Broyden-class methods with exact line searches minimise an n-D quadratic in n steps,
    and (without self-scaling) the n-th update recovers the inverse Hessian."""
    A, b = quadratic(n=8)
    n = A.shape[0]
    ps = quad_problem(A, b)
    mod = make()
    opt = ob.Modular(ps, mod, ExactLineSearch(A))
    closure = make_closure(opt, ps, A, b)
    for _ in range(n):
        opt.step(closure)
    x_star = torch.linalg.solve(A, b)
    torch.testing.assert_close(xvec(ps), x_star, rtol=1e-9, atol=1e-10)
    opt.step(closure)  # incorporates the n-th secant pair
    assert opt.evals.loss_and_grad == n + 1
    if recovers_inverse:
        M = mod.global_state.get("H")
        target = torch.linalg.inv(A)
        if M is None:
            M, target = mod.global_state["B"], A
        torch.testing.assert_close(M, target, rtol=1e-6, atol=1e-8)


def test_broyden_class_iterates_coincide_with_exact_line_search():
    A, b = quadratic(n=6)
    traces = []
    for make in (m.BFGS, m.DFP, m.SR1):
        ps = quad_problem(A, b)
        opt = ob.Modular(ps, make(), ExactLineSearch(A))
        closure = make_closure(opt, ps, A, b)
        trace = []
        for _ in range(5):
            opt.step(closure)
            trace.append(xvec(ps))
        traces.append(torch.stack(trace))
    torch.testing.assert_close(traces[1], traces[0], rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(traces[2], traces[0], rtol=1e-9, atol=1e-11)


def test_inverse_and_direct_forms_give_the_same_iterates():
    A, b = quadratic()
    for cls in (m.BFGS, m.DFP, m.BroydenGood, m.BroydenBad):
        traces = []
        for inverse in (True, False):
            ps = quad_problem(A, b)
            opt = ob.Modular(ps, cls(inverse=inverse), m.LR(0.3))
            closure = make_closure(opt, ps, A, b)
            for _ in range(8):
                opt.step(closure)
            traces.append(xvec(ps))
        torch.testing.assert_close(traces[1], traces[0], rtol=1e-8, atol=1e-10)


def test_diagonal_matches_diagonal_of_full_update():
    """One update of DiagonalBFGS / DiagonalSR1 equals the diagonal of the full update of
    diag(h), with h the start (auto-scaled for DiagonalBFGS, ones for DiagonalSR1)."""
    A, b = quadratic()
    for cls, full, auto in ((m.DiagonalBFGS, bfgs_H, True), (m.DiagonalSR1, sr1_H, False)):
        ps = quad_problem(A, b)
        mod = cls()
        opt = ob.Modular(ps, mod, m.LR(0.3))
        closure = make_closure(opt, ps, A, b)
        x0 = xvec(ps)
        opt.step(closure)
        g0 = torch.cat([ps[0].grad, ps[1].grad]).clone()
        x1 = xvec(ps)
        opt.step(closure)
        g1 = torch.cat([ps[0].grad, ps[1].grad]).clone()
        s, y = x1 - x0, g1 - g0
        h0 = torch.full_like(s, float(s @ y / (y @ y)) if auto else 1.0)
        expected = torch.diagonal(full(torch.diag(h0), s, y, g1, g0, {}))
        torch.testing.assert_close(mod.global_state["H"], expected, rtol=1e-10, atol=1e-13)
        assert mod.global_state["H"].shape == s.shape


def test_projected_newton_raphson_restarts_to_R():
    A, b = quadratic(n=6)
    ps = quad_problem(A, b)
    mod = m.ProjectedNewtonRaphson()
    opt = ob.Modular(ps, mod, ExactLineSearch(A))
    closure = make_closure(opt, ps, A, b)
    for _ in range(6):
        opt.step(closure)
    R = mod.global_state["R"].clone()
    opt.step(closure)  # 7th update: restart_interval "auto" = n + 1 replaces H by R
    torch.testing.assert_close(mod.global_state["H"], R)


# --------------------------------------------------------------------- Rosenbrock vs scipy
def rosen(x):
    return (100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum()


def test_bfgs_strong_wolfe_rosenbrock_evaluations_vs_scipy():
    """BFGS + StrongWolfe on 10-D Rosenbrock reaches f < 1e-8 within 1.5x the closure
    evaluations of scipy's BFGS from the same start (scipy stops at a local minimum, f = 3.99).

    With ``reuse_evaluation=True`` a step starts from the line search's accepted evaluation
    instead of evaluating the same point again, as scipy does."""
    n = 10
    x0 = np.array([-1.2, 1.0] * (n // 2))
    res = scipy.optimize.minimize(
        lambda v: (scipy.optimize.rosen(v), scipy.optimize.rosen_der(v)), x0, jac=True,
        method="BFGS")
    x = torch.tensor(x0, dtype=torch.float64, requires_grad=True)
    opt = ob.Modular([x], m.BFGS(), m.StrongWolfe(), reuse_evaluation=True)
    points = []

    def closure(backward=True):
        points.append(x.detach().clone())
        f = rosen(x)
        if backward:
            opt.zero_grad()
            f.backward()
        return f

    steps = 0
    while rosen(x.detach()) >= 1e-8:
        opt.step(closure)
        steps += 1
        assert steps < 200
    assert opt.evals.total == len(points)
    assert opt.evals.total <= 1.5 * res.nfev, (opt.evals.total, res.nfev)
    # no point is evaluated twice in a row: the repeated start evaluation is gone
    assert not any(torch.equal(a, b) for a, b in zip(points, points[1:]))


# --------------------------------------------------------------------- state and safeguards
def _run_with_checkpoint(make_chain, steps=10, split=4):
    A, b = quadratic()
    ps = quad_problem(A, b)
    opt = ob.Modular(ps, *make_chain(A))
    closure = make_closure(opt, ps, A, b)
    for _ in range(split):
        opt.step(closure)
    sd = opt.state_dict()
    ps2 = [p.detach().clone().requires_grad_() for p in ps]
    opt2 = ob.Modular(ps2, *make_chain(A))
    opt2.load_state_dict(sd)
    closure2 = make_closure(opt2, ps2, A, b)
    for _ in range(steps - split):
        opt.step(closure)
        opt2.step(closure2)
        assert torch.equal(xvec(ps), xvec(ps2))
    return opt


@pytest.mark.parametrize("make_chain", [
    lambda A: [m.BFGS(), m.LR(0.2)],
    lambda A: [m.SR1(concat_params=False, inverse=False), m.LR(0.2)],
    lambda A: [m.ThomasOptimalMethod(), m.LR(0.2)],
    lambda A: [m.DiagonalSR1(update_freq=2), m.LR(0.2)],
])
def test_checkpoint_resume_continues_identically(make_chain):
    _run_with_checkpoint(make_chain)


def test_breakdown_restarts_the_approximation():
    A, b = quadratic()
    ps = quad_problem(A, b)
    mod = m.BFGS(init_scale=2.0)
    opt = ob.Modular(ps, mod, m.LR(0.1))
    closure = make_closure(opt, ps, A, b)
    for _ in range(3):
        opt.step(closure)
    mod.global_state["H"][0, 0] = math.inf
    x = xvec(ps)
    closure()
    g = torch.cat([ps[0].grad, ps[1].grad]).clone()
    opt.step(closure)
    torch.testing.assert_close(mod.global_state["H"], torch.eye(8, dtype=torch.float64) / 2)
    torch.testing.assert_close(xvec(ps), x - 0.1 * g / 2)
    assert mod.global_state["updates"] == 1


def test_layout_change_restarts():
    A, b = quadratic()
    ps = quad_problem(A, b)
    mod = m.BFGS()
    opt = ob.Modular(ps, mod, m.LR(0.1))
    closure = make_closure(opt, ps, A, b)
    for _ in range(3):
        opt.step(closure)
    assert mod.global_state["updates"] == 3
    ps[1].grad = None
    opt.step()  # only ps[0] has a gradient now
    assert mod.global_state["numels"] == [5] and mod.global_state["updates"] == 1


def test_curvature_skip_keeps_H():
    """BFGS skips the update when s'y <= 0 (here on a concave quadratic)."""
    x = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    mod = m.BFGS(init_scale=1.0)
    opt = ob.Modular([x], mod, m.LR(0.1))
    for _ in range(4):
        opt.zero_grad()
        (-(x**2).sum()).backward()
        opt.step()
    torch.testing.assert_close(mod.global_state["H"], torch.eye(2, dtype=torch.float64))


def test_inner_preconditions_the_inner_output():
    assert_same_trajectory(
        lambda ps: ob.Modular(ps, m.BFGS(), m.LR(0.2)),
        lambda ps: ob.Modular(ps, m.BFGS(inner=m.StepSize(2.0)), m.LR(0.1)),
        dtype=torch.float64, rtol=1e-10, atol=1e-12,
    )


def test_float32_runs_and_keeps_dtype():
    A, b = quadratic()
    x = torch.zeros(8, requires_grad=True)
    mod = m.BFGS()
    opt = ob.Modular([x], mod, m.LR(0.5))
    A32, b32 = A.float(), b.float()
    for _ in range(30):
        opt.zero_grad()
        (0.5 * x @ A32 @ x - b32 @ x).backward()
        opt.step()
    assert mod.global_state["H"].dtype == torch.float32
    torch.testing.assert_close(x.detach().double(), torch.linalg.solve(A, b), rtol=1e-4, atol=1e-4)


def test_zero_step_is_skipped():
    """A step that did not move the parameters (s = 0) carries no curvature: no update, even for
    SR1 whose denominator would be -y'Hy."""
    x = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    mod = m.SR1(inverse=False)
    opt = ob.Modular([x], mod, m.LR(0.0))
    for t in range(1, 5):
        opt.zero_grad()
        (t * (x**2).sum()).backward()
        opt.step()
    torch.testing.assert_close(mod.global_state["B"], torch.eye(2, dtype=torch.float64))
    assert mod.global_state["updates"] == 4


def test_trust_region_interface():
    assert m.BFGS().hessian is None and callable(m.BFGS().inverse_hessian)
    assert callable(m.BFGS(inverse=False).hessian) and m.BFGS(inverse=False).inverse_hessian is None
    x = torch.tensor([-1.2, 1.0] * 5, dtype=torch.float64, requires_grad=True)
    bfgs = m.BFGS(inverse=False)
    opt = ob.Modular([x], m.Dogleg(bfgs))

    def closure(backward=True):
        f = rosen(x)
        if backward:
            opt.zero_grad()
            f.backward()
        return f

    for _ in range(150):
        opt.step(closure)
        if rosen(x.detach()) < 1e-8:
            break
    assert rosen(x.detach()) < 1e-8
    assert bfgs.global_state["updates"] > 10
    y = torch.ones(3, requires_grad=True)
    opt = ob.Modular([y], m.LevenbergMarquardt(m.BFGS(inverse=False, concat_params=False)))

    def closure2(backward=True):
        f = (y**2).sum()
        if backward:
            opt.zero_grad()
            f.backward()
        return f

    with pytest.raises(ValueError, match="BFGS: a trust region needs one approximation"):
        opt.step(closure2)


# ------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("make,arg", [
    (lambda: m.BFGS(tol=-1.0), "tol"),
    (lambda: m.BFGS(init_scale=-1.0), "init_scale"),
    (lambda: m.BFGS(init_scale="big"), "init_scale"),
    (lambda: m.SR1(restart_interval=0), "restart_interval"),
    (lambda: m.DFP(beta=1.0), "beta"),
    (lambda: m.BFGS(update_freq=0), "update_freq"),
    (lambda: m.BFGS(ptol=-1e-3), "ptol"),
    (lambda: m.Greenstadt1(inverse=False), "inverse"),
    (lambda: m.PSB(inverse=True), "inverse"),
    (lambda: m.DiagonalBFGS(inverse=False), "inverse"),
    (lambda: m.SSVM(switch=5), "switch"),
    (lambda: m.BFGS(max_dim=0), "max_dim"),
    (lambda: m.ProjectedNewtonRaphson(scale_first="yes"), "scale_first"),
])
def test_bad_hyperparameters(make, arg):
    with pytest.raises(ValueError) as e:
        make()
    owner = str(e.value).split(":")[0]
    assert f"invalid {arg}=" in str(e.value)
    assert owner in {"BFGS", "SR1", "DFP", "Greenstadt1", "PSB", "DiagonalBFGS", "SSVM",
                     "ProjectedNewtonRaphson"}


def test_max_dim_cap():
    a, c = torch.zeros(30, requires_grad=True), torch.zeros(30, requires_grad=True)
    a.grad, c.grad = torch.ones(30), torch.ones(30)
    opt = ob.Modular([a, c], m.BFGS(max_dim=49), m.LR(0.1))
    with pytest.raises(ValueError, match=r"BFGS: 60 variables need a 60 x 60 matrix.*max_dim=49"):
        opt.step()
    mod = m.BFGS(max_dim=49, concat_params=False)
    opt = ob.Modular([a, c], mod, m.LR(0.1))
    opt.step()  # one 30 x 30 matrix per parameter
    assert opt.state[a][mod.key]["H"].shape == (30, 30) and not mod.global_state
    torch.testing.assert_close(a.detach(), torch.full((30,), -0.1))


def test_groups_must_agree():
    a = torch.zeros(3, requires_grad=True)
    c = torch.zeros(2, requires_grad=True)
    opt = ob.Modular([{"params": [a]}, {"params": [c], "tol": 1e-3}], m.BFGS(), m.LR(0.1))
    a.grad, c.grad = torch.ones(3), torch.ones(2)
    with pytest.raises(ValueError, match="BFGS: tol must be the same in every param group"):
        opt.step()
    with pytest.raises(ValueError, match="BFGS: invalid tol"):
        ob.Modular([{"params": [a], "tol": -1.0}], m.BFGS())
