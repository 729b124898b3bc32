"""LBFGS and LSR1: torch.optim.LBFGS equivalence, dense references, checkpoints, restarts."""

import io

import pytest
import torch

import optbridge as ob
from optbridge import m
from trajectory import assert_same_trajectory, loss_fn, make_params


def rosenbrock(xs):
    x = xs[0]
    return (100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum()


def mlp_problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(64, 5, generator=g, dtype=torch.float64)
    noise = torch.randn(64, 1, generator=g, dtype=torch.float64)
    Y = torch.sin(X.sum(1, keepdim=True)) + 0.1 * noise
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    ps = [p.detach().to(torch.float64).requires_grad_() for p in model.parameters()]

    def f(ps):
        w1, b1, w2, b2 = ps
        return torch.nn.functional.mse_loss(torch.tanh(X @ w1.T + b1) @ w2.T + b2, Y)

    return f, ps


def ours_like_torch(ps, max_eval, history_size, lr=1.0):
    """The documented torch.optim.LBFGS(line_search_fn="strong_wolfe", max_iter=1) equivalent."""
    return ob.Modular(ps, m.LBFGS(history_size=history_size, sy_tol=1e-10, tol_grad=1e-7),
                      m.StrongWolfe(maxiter=max_eval, init_value=lr, fallback=True, adaptive=False,
                                    maxzoom=None))


def run(make_opt, f, ps, steps):
    opt = make_opt(ps)
    points, counts = [], []
    for _ in range(steps):
        n = [0]

        def closure(backward=True):
            n[0] += 1
            loss = f(ps)
            if backward:
                opt.zero_grad()
                loss.backward()
            return loss
        opt.step(closure)
        points.append([p.detach().clone() for p in ps])
        counts.append(n[0])
    return points, counts


def assert_equivalent(f, make_ps, steps, max_eval, history_size, lr=1.0):
    kw = dict(line_search_fn="strong_wolfe", max_iter=1, history_size=history_size, lr=lr)
    if max_eval is not None:
        kw["max_eval"] = max_eval
    ta, ca = run(lambda ps: torch.optim.LBFGS(ps, **kw), f, make_ps(), steps)
    tb, cb = run(lambda ps: ours_like_torch(ps, max_eval or 1, history_size, lr), f, make_ps(),
                 steps)
    assert ca == cb, "closure evaluations per step differ"
    for i, (a, b) in enumerate(zip(ta, tb)):
        for x, y in zip(a, b):
            torch.testing.assert_close(y, x, rtol=0, atol=1e-6, msg=lambda s: f"step {i}: {s}")
    assert max(ca) > 2, "no step needed more than one line-search evaluation; weak test"
    return ta


@pytest.mark.parametrize("dim, max_eval, history_size, lr, steps", [
    (2, 25, 10, 1.0, 40),
    (2, 10, 3, 0.8, 30),
    (10, 25, 10, 1.0, 60),
    (10, None, 5, 1.0, 40),
    (10, 6, 2, 1.0, 40),
])
def test_matches_torch_lbfgs_on_rosenbrock(dim, max_eval, history_size, lr, steps):
    g = torch.Generator().manual_seed(dim)
    x0 = torch.randn(dim, generator=g, dtype=torch.float64) * 0.5 - 1
    if max_eval is None:  # torch's default max_eval with max_iter=1 is 1: one trial per step
        kw = dict(line_search_fn="strong_wolfe", max_iter=1, history_size=history_size)
        ta, ca = run(lambda ps: torch.optim.LBFGS(ps, **kw), rosenbrock,
                     [x0.clone().requires_grad_()], steps)
        tb, cb = run(lambda ps: ours_like_torch(ps, 1, history_size), rosenbrock,
                     [x0.clone().requires_grad_()], steps)
        assert ca == cb == [2] * steps
        for a, b in zip(ta, tb):
            torch.testing.assert_close(b[0], a[0], rtol=0, atol=1e-6)
        return
    traj = assert_equivalent(rosenbrock, lambda: [x0.clone().requires_grad_()], steps, max_eval,
                             history_size, lr)
    assert float(rosenbrock(traj[-1])) < float(rosenbrock([x0])) * 1e-3


@pytest.mark.parametrize("max_eval, history_size", [(25, 10), (8, 4)])
def test_matches_torch_lbfgs_on_mlp(max_eval, history_size):
    f, ps = mlp_problem()
    assert_equivalent(f, lambda: [p.detach().clone().requires_grad_() for p in ps], 40, max_eval,
                      history_size)


def test_matches_torch_lbfgs_with_unused_parameter():
    # the shared harness: several tensors, one of which never gets a gradient
    assert_same_trajectory(
        lambda ps: torch.optim.LBFGS(ps, line_search_fn="strong_wolfe", max_iter=1, max_eval=25,
                                     history_size=6),
        lambda ps: ours_like_torch(ps, 25, 6),
        steps=50, dtype=torch.float64, rtol=1e-6, atol=1e-7, closure=True,
    )


# ------------------------------------------------------------------------ dense references
class RefQuasiNewton(torch.optim.Optimizer):
    """Fixed-step quasi-Newton with a dense inverse Hessian rebuilt from the stored pairs."""

    def __init__(self, params, lr, history_size, kind="bfgs", sy_tol=1e-32, scale_first=True):
        super().__init__(params, {})
        self.cfg = (lr, history_size, kind, sy_tol, scale_first)
        self.S, self.Y, self.prev, self.gamma = [], [], None, 1.0

    @torch.no_grad()
    def step(self):
        lr, history_size, kind, sy_tol, scale_first = self.cfg
        ps = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        x = torch.cat([p.reshape(-1) for p in ps])
        g = torch.cat([p.grad.reshape(-1) for p in ps])
        first = self.prev is None
        if not first:
            s, y = x - self.prev[0], g - self.prev[1]
            sy = float(s @ y)
            keep = s.abs().max() > 0 and y.abs().max() > 0
            keep = keep and (sy > sy_tol if kind == "bfgs" else True)
            if keep:
                self.S.append(s)
                self.Y.append(y)
                if len(self.S) > history_size:
                    self.S.pop(0)
                    self.Y.pop(0)
                if sy > 0:
                    self.gamma = sy / float(y @ y)
        self.prev = (x, g)
        n = x.numel()
        eye = torch.eye(n, dtype=x.dtype)
        if kind == "bfgs" and first and scale_first:
            d = g * min(1.0, 1.0 / float(g.abs().sum()))
        else:
            H = self.gamma * eye
            for s, y in zip(self.S, self.Y):
                if kind == "bfgs":
                    rho = 1.0 / float(s @ y)
                    V = eye - rho * torch.outer(y, s)
                    H = V.T @ H @ V + rho * torch.outer(s, s)
                else:
                    v = s - H @ y
                    vy = float(v @ y)
                    if vy != 0 and abs(vy) >= 1e-8 * float(v.norm()) * float(y.norm()):
                        H = H + torch.outer(v, v) / vy
            d = H @ g
            if kind == "sr1" and float(g @ d) <= 0:
                d = self.gamma * g
        offset = 0
        for p in ps:
            p.sub_(lr * d[offset:offset + p.numel()].view_as(p))
            offset += p.numel()


@pytest.mark.parametrize("history_size, lr, kw", [
    (10, 0.5, {}), (3, 0.3, dict(sy_tol=1e-3)), (1, 0.2, dict(scale_first=False)),
])
def test_lbfgs_matches_dense_bfgs_reference(history_size, lr, kw):
    assert_same_trajectory(
        lambda ps: RefQuasiNewton(ps, lr, history_size, "bfgs", **kw),
        lambda ps: ob.Modular(ps, m.LBFGS(history_size=history_size, **kw), m.LR(lr)),
        steps=60, dtype=torch.float64, rtol=1e-8, atol=1e-10,
    )


def dense_sr1_directions(xs, gs, history_size):
    """L-SR1 directions for a given sequence of points and gradients (dense matrices)."""
    S, Y, gamma, out = [], [], 1.0, []
    for k, (x, g) in enumerate(zip(xs, gs)):
        if k:
            s, y = x - xs[k - 1], g - gs[k - 1]
            if s.abs().max() > 0 and y.abs().max() > 0:
                S.append(s)
                Y.append(y)
                if len(S) > history_size:
                    S.pop(0)
                    Y.pop(0)
                if float(s @ y) > 0:
                    gamma = float(s @ y) / float(y @ y)
        H = gamma * torch.eye(x.numel(), dtype=x.dtype)
        for s, y in zip(S, Y):
            v = s - H @ y
            vy = float(v @ y)
            if vy != 0 and abs(vy) >= 1e-8 * float(v.norm()) * float(y.norm()):
                H = H + torch.outer(v, v) / vy
        d = H @ g
        out.append(d if float(g @ d) > 0 else gamma * g)
    return out


@pytest.mark.parametrize("history_size, lr", [(10, 0.2), (3, 0.1), (5, 0.2), (1, 0.3)])
def test_lsr1_matches_dense_sr1_reference(history_size, lr):
    # SR1 amplifies rounding differences along a trajectory (near-singular rank-one terms), so
    # the reference gets the same points and gradients as the module and the directions are
    # compared step by step
    ps = make_params(0, torch.float64)
    unused = ps[4].detach().clone()
    opt = ob.Modular(ps, m.LSR1(history_size=history_size), m.LR(lr))
    xs, gs, dirs = [], [], []
    for _ in range(60):
        opt.zero_grad()
        loss_fn(ps).backward()
        x = torch.cat([p.detach().reshape(-1) for p in ps[:4]])
        xs.append(x)
        gs.append(torch.cat([p.grad.reshape(-1) for p in ps[:4]]))
        opt.step()
        dirs.append((x - torch.cat([p.detach().reshape(-1) for p in ps[:4]])) / lr)
    for k, (d, r) in enumerate(zip(dirs, dense_sr1_directions(xs, gs, history_size))):
        assert float((d - r).norm()) <= 1e-7 * float(r.norm()), f"step {k}"
    assert torch.equal(ps[4].detach(), unused)
    assert float(loss_fn(ps).detach()) < float(loss_fn(make_params(0, torch.float64)).detach()) - 1


@pytest.mark.parametrize("chain, steps, tol", [
    (lambda: [m.LSR1(history_size=20), m.StrongWolfe()], 40, 1e-9),
    (lambda: [m.LSR1(), m.Backtracking()], 100, 1e-7),
])
def test_lsr1_converges_on_quadratic(chain, steps, tol):
    g = torch.Generator().manual_seed(1)
    Q = torch.randn(20, 20, generator=g, dtype=torch.float64)
    A = Q @ Q.T / 20 + 0.05 * torch.eye(20, dtype=torch.float64)
    b = torch.randn(20, generator=g, dtype=torch.float64)
    x_star = torch.linalg.solve(A, b)
    x = torch.zeros(20, dtype=torch.float64, requires_grad=True)
    opt = ob.Modular([x], *chain())

    def closure(backward=True):
        loss = 0.5 * x @ A @ x - b @ x
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss
    for _ in range(steps):
        opt.step(closure)
    assert float((x.detach() - x_star).norm()) < tol * float(x_star.norm())


# --------------------------------------------------------------- checkpoints and restarts
@pytest.mark.parametrize("chain", [
    lambda: [m.LBFGS(history_size=3), m.StrongWolfe(a_init="quadratic")],
    lambda: [m.LSR1(history_size=4), m.Backtracking()],
    lambda: [m.LBFGS(update_freq=2, ptol=None), m.AdaptiveBacktracking()],
])
def test_checkpoint_continues_identically(chain):
    def train(split):
        ps = make_params(0, torch.float64)
        opt = ob.Modular(ps, *chain())

        def closure(backward=True):
            loss = loss_fn(ps)
            if backward:
                opt.zero_grad()
                loss.backward()
            return loss
        for i in range(14):
            if i == split:
                buf = io.BytesIO()
                torch.save({"opt": opt.state_dict(), "ps": [p.detach() for p in ps]}, buf)
                buf.seek(0)
                ck = torch.load(buf, weights_only=True)
                ps = [p.clone().requires_grad_() for p in ck["ps"]]
                opt = ob.Modular(ps, *chain())
                opt.load_state_dict(ck["opt"])
            opt.step(closure)
        return ps, opt

    a, opt_a = train(-1)
    b, opt_b = train(7)
    for x, y in zip(a, b):
        assert torch.equal(x.detach(), y.detach())
    assert opt_a.evals.as_dict() == opt_b.evals.as_dict()
    assert len(opt_b.modules[0].global_state["s"]) > 0


def test_restart_on_non_finite_values():
    f, ps = mlp_problem(1)
    poison = [False]

    def make(ps):
        return ob.Modular(ps, m.LBFGS(history_size=5), m.StrongWolfe())

    opt = make(ps)

    def closure(backward=True):
        loss = f(ps)
        if poison[0]:
            loss = loss * float("nan")
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss
    for _ in range(6):
        opt.step(closure)
    lbfgs, ls = opt.modules
    assert len(lbfgs.global_state["s"]) == 5
    before = [p.detach().clone() for p in ps]
    poison[0] = True
    opt.step(closure)
    poison[0] = False
    assert all(torch.equal(p, q) for p, q in zip(ps, before))
    assert ls.global_state["reason"] == "non-finite loss at the starting point"
    assert "s" not in lbfgs.global_state and "prev_x" not in lbfgs.global_state
    # after the restart the method behaves exactly like a fresh one started here
    fresh_ps = [p.detach().clone().requires_grad_() for p in ps]
    fresh = make(fresh_ps)

    def fresh_closure(backward=True):
        loss = f(fresh_ps)
        if backward:
            fresh.zero_grad()
            loss.backward()
        return loss
    for _ in range(8):
        opt.step(closure)
        fresh.step(fresh_closure)
        for p, q in zip(ps, fresh_ps):
            assert torch.equal(p, q)


def test_tol_grad_gives_zero_direction_and_keeps_state():
    x = torch.tensor([1.0, 1.0], dtype=torch.float64, requires_grad=True)
    opt = ob.Modular([x], m.LBFGS(tol_grad=1e-7), m.StrongWolfe())

    def closure(backward=True):
        loss = rosenbrock([x])
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss
    opt.step(closure)
    assert opt.modules[0].global_state == {}
    assert opt.evals.loss_and_grad == 1
    assert torch.equal(x.detach(), torch.ones(2, dtype=torch.float64))


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("make, arg", [
    (lambda: m.LBFGS(history_size=0), "history_size"),
    (lambda: m.LBFGS(update_freq=0), "update_freq"),
    (lambda: m.LBFGS(ptol=-1.0), "ptol"),
    (lambda: m.LBFGS(sy_tol=float("nan")), "sy_tol"),
    (lambda: m.LBFGS(scale_first=1), "scale_first"),
    (lambda: m.LSR1(history_size=0), "history_size"),
    (lambda: m.LSR1(history_size=2.5), "history_size"),
    (lambda: m.LSR1(gtol=-1e-3), "gtol"),
])
def test_bad_hyperparameters(make, arg):
    with pytest.raises(ValueError, match=rf"(LBFGS|LSR1).*{arg}"):
        make()


@pytest.mark.parametrize("make", [m.LBFGS, m.LSR1])
def test_mixed_dtypes_rejected(make):
    a = torch.ones(2, requires_grad=True)
    b = torch.ones(2, dtype=torch.float64, requires_grad=True)
    a.grad, b.grad = torch.ones(2), torch.ones(2, dtype=torch.float64)
    mod = make()
    opt = ob.Modular([a, b], mod, m.LR(0.1))
    with pytest.raises(ValueError, match=f"{mod.name}.*dtype"):
        opt.step()


def test_matches_torch_lbfgs_with_complex_parameter():
    g = torch.Generator().manual_seed(3)
    c = torch.randn(6, generator=g, dtype=torch.complex128)
    z0 = torch.randn(6, generator=g, dtype=torch.complex128)
    w0 = torch.randn(3, generator=g, dtype=torch.float64)

    def f(ps):
        z, w = ps
        return ((z - c).abs() ** 4).sum() + (z.real * w.repeat(2)).sum() ** 2 + (w ** 2).sum()

    assert_equivalent(f, lambda: [z0.clone().requires_grad_(), w0.clone().requires_grad_()], 25,
                      25, 5)
