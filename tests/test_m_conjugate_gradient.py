"""Nonlinear conjugate gradient modules and restart criteria against textbook float64 code."""

import pytest
import torch

import optbridge as ob
from optbridge import m
from optbridge.core.module import Module
from trajectory import assert_same_trajectory


# ------------------------------------------------- textbook beta with the descent direction p
# p_k = -g_k + beta_k p_{k-1}  (Hager & Zhang's survey, table 1)
def fr(g, gp, p):
    return (g @ g) / (gp @ gp)


def pr(g, gp, p):
    return g @ (g - gp) / (gp @ gp)


def hs(g, gp, p):
    y = g - gp
    return (g @ y) / (p @ y)


def dy(g, gp, p):
    return (g @ g) / (p @ (g - gp))


def ls(g, gp, p):
    return -(g @ (g - gp)) / (p @ gp)


def cd(g, gp, p):
    return -(g @ g) / (p @ gp)


def hz(g, gp, p):
    y = g - gp
    py = p @ y
    return (y - 2 * p * (y @ y) / py) @ g / py


def dyhs(g, gp, p):
    return max(0.0, min(float(hs(g, gp, p)), float(dy(g, gp, p))))


METHODS = {
    "PolakRibiere": (m.PolakRibiere, pr, True),
    "FletcherReeves": (m.FletcherReeves, fr, False),
    "HestenesStiefel": (m.HestenesStiefel, hs, False),
    "DaiYuan": (m.DaiYuan, dy, False),
    "LiuStorey": (m.LiuStorey, ls, False),
    "ConjugateDescent": (m.ConjugateDescent, cd, False),
    "HagerZhang": (m.HagerZhang, hz, False),
    "DYHS": (m.DYHS, dyhs, False),
    "HybridHS_DY": (m.HybridHS_DY, dyhs, False),
}


class RefCG:
    """Straightforward nonlinear CG with a fixed step: ``x += lr * p``."""

    def __init__(self, params, beta, lr, clip=False, restart_interval="auto"):
        self.params, self.beta, self.lr, self.clip = list(params), beta, lr, clip
        self.restart_interval = restart_interval
        self.st = {}

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self):
        ps = [p for p in self.params if p.grad is not None]
        g = torch.cat([p.grad.reshape(-1) for p in ps])
        st = self.st
        if st.get("k", 0) == 0:
            d = -g
        else:
            b = float(self.beta(g, st["g"], st["p"]))
            if self.clip:
                b = max(b, 0.0)
            d = -g + b * st["p"]
        st["g"], st["p"] = g.clone(), d
        st["k"] = st.get("k", 0) + 1
        interval = g.numel() + 1 if self.restart_interval == "auto" else self.restart_interval
        if interval is not None and st["k"] >= interval:
            st["k"] = 0
        for p, piece in zip(ps, d.split([p.numel() for p in ps])):
            p.add_(self.lr * piece.view_as(p))


@pytest.mark.parametrize("name,kw", [(name, {}) for name in METHODS] + [
    ("PolakRibiere", dict(clip_beta=False, restart_interval=None)),
    ("HestenesStiefel", dict(restart_interval=7, clip_beta=True)),
    ("HagerZhang", dict(restart_interval=7, clip_beta=True)),
    ("DaiYuan", dict(restart_interval=None)),
    ("LiuStorey", dict(restart_interval=13, clip_beta=True)),
])
def test_matches_textbook_trajectory(name, kw):
    cls, beta, clip_default = METHODS[name]
    clip = kw.get("clip_beta", clip_default)
    interval = kw.get("restart_interval", "auto")
    assert_same_trajectory(
        lambda ps: RefCG(ps, beta, 0.01, clip=clip, restart_interval=interval),
        lambda ps: ob.Modular(ps, cls(**kw), m.LR(0.01)),
        steps=50, dtype=torch.float64, rtol=1e-7, atol=1e-10,
    )


# ------------------------------------------------------------------------ convex quadratic
def quadratic(n=8, seed=1):
    gen = torch.Generator().manual_seed(seed)
    Q = torch.randn(n, n, generator=gen, dtype=torch.float64)
    A = Q @ Q.T / n + torch.diag(torch.linspace(0.5, 5.0, n, dtype=torch.float64))
    b = torch.randn(n, generator=gen, dtype=torch.float64)
    return A, b


class ExactLineSearch(Module):
    """Test-only exact line search on ``0.5 x'Ax - b'x``: ``x -= t u``, ``t = u'g / u'Au``."""

    def __init__(self, A):
        super().__init__()
        self.A = A

    def step(self, ctx):
        u = torch.cat([t.reshape(-1) for t in ctx.update])
        g = torch.cat([t.reshape(-1) for t in ctx.grads])
        t = (u @ g) / (u @ self.A @ u)
        torch._foreach_add_(ctx.params, [v * -t for v in ctx.update])
        ctx.skip_update = True


def problem(n):
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


def linear_cg(A, b, steps):
    """Hestenes-Stiefel linear CG from x = 0; the iterates."""
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    out = []
    for _ in range(steps):
        Ap = A @ p
        alpha = (r @ r) / (p @ Ap)
        x = x + alpha * p
        r_new = r - alpha * Ap
        p = r_new + (r_new @ r_new) / (r @ r) * p
        r = r_new
        out.append(x.clone())
    return out


@pytest.mark.parametrize("make", [
    m.FletcherReeves, m.PolakRibiere, m.HestenesStiefel, m.DaiYuan, m.LiuStorey,
    m.ConjugateDescent, m.HagerZhang, m.DYHS, m.ProjectedGradientMethod,
    lambda: m.PowellRestart(m.FletcherReeves()), lambda: m.BirginMartinezRestart(m.DaiYuan()),
])
def test_exact_line_search_is_linear_cg(make):
    """With exact line searches on a quadratic every method reproduces linear CG and
    terminates in n steps (no restart criterion fires)."""
    A, b = quadratic()
    n = A.shape[0]
    ps = problem(n)
    mod = make()
    opt = ob.Modular(ps, mod, ExactLineSearch(A))
    closure = make_closure(opt, ps, A, b)
    expected = linear_cg(A, b, n)
    for k in range(n):
        opt.step(closure)
        torch.testing.assert_close(xvec(ps), expected[k], rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(xvec(ps), torch.linalg.solve(A, b), rtol=1e-9, atol=1e-10)
    assert opt.evals.loss_and_grad == n and opt.evals.loss == 0
    assert mod.global_state.get("restarts", 0) == 0


def rosen(x):
    return (100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum()


@pytest.mark.parametrize("make", [m.PolakRibiere, m.FletcherReeves, m.HestenesStiefel,
                                  m.DaiYuan])
def test_strong_wolfe_converges_on_rosenbrock(make):
    x = torch.tensor([-1.2, 1.0] * 5, dtype=torch.float64, requires_grad=True)
    opt = ob.Modular([x], make(), m.StrongWolfe(c2=0.1, a_init="first-order"))

    def closure(backward=True):
        f = rosen(x)
        if backward:
            opt.zero_grad()
            f.backward()
        return f

    for _ in range(250):
        opt.step(closure)
        if rosen(x.detach()) < 1e-8:
            break
    assert rosen(x.detach()) < 1e-8
    assert opt.evals.total < 800


@pytest.mark.parametrize("make", [m.PolakRibiere, m.FletcherReeves, m.HagerZhang])
def test_strong_wolfe_converges_on_quadratic(make):
    A, b = quadratic(n=20, seed=3)
    ps = problem(20)
    opt = ob.Modular(ps, make(), m.StrongWolfe(c2=0.1, tol_change=1e-14))
    closure = make_closure(opt, ps, A, b)
    for _ in range(40):
        opt.step(closure)
    torch.testing.assert_close(xvec(ps), torch.linalg.solve(A, b), rtol=1e-7, atol=1e-8)


# ------------------------------------------------------------------------------ restarts
def test_restart_interval_cycles():
    """restart_interval=3: steepest descent, two conjugate steps, steepest descent, ..."""
    A, b = quadratic()
    ps = problem(8)
    mod = m.FletcherReeves(restart_interval=3)
    opt = ob.Modular(ps, mod, m.LR(0.1))
    closure = make_closure(opt, ps, A, b)
    for step in range(7):
        x = xvec(ps)
        closure()
        g = torch.cat([ps[0].grad, ps[1].grad]).clone()
        opt.step(closure)
        d = (x - xvec(ps)) / 0.1
        if step % 3 == 0:
            torch.testing.assert_close(d, g)
        else:
            assert not torch.allclose(d, g)
        assert mod.global_state["k"] == (step + 1) % 3
        assert mod.global_state.get("restarts", 0) == (step + 1) // 3


def test_clip_beta():
    """PR+ clips beta at 0; the stored beta is the one used."""
    betas = {}
    for clip in (False, True):
        x = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64, requires_grad=True)
        mod = m.PolakRibiere(clip_beta=clip, restart_interval=None)
        opt = ob.Modular([x], mod, m.LR(0.05))
        seen = []
        for _ in range(12):
            opt.zero_grad()
            ((x**4).sum() + x[0] * x[1]).backward()
            opt.step()
            if "beta" in mod.global_state:
                seen.append(float(mod.global_state["beta"]))
        betas[clip] = seen
    assert min(betas[False]) < 0
    assert min(betas[True]) == 0.0 and max(betas[True]) > 0


def test_powell_restart_fires_on_parallel_gradients():
    """Small fixed steps keep successive gradients nearly parallel: criterion 1 fires every
    step, so the wrapped FR is restarted each time and the run is gradient descent."""
    A, b = quadratic()
    ps = problem(8)
    restart = m.PowellRestart(m.FletcherReeves(restart_interval=None))
    opt = ob.Modular(ps, restart, m.LR(0.01))
    closure = make_closure(opt, ps, A, b)
    x = torch.zeros(8, dtype=torch.float64)
    for step in range(6):
        opt.step(closure)
        x = x - 0.01 * (A @ x - b)
        torch.testing.assert_close(xvec(ps), x, rtol=1e-12, atol=1e-14)
        assert restart.global_state.get("restarts", 0) == step
        if step:
            assert restart.global_state["last_restart"] == step


def test_powell_restart_downhill_criterion():
    """A direction with u'g outside [(1 - c2) g'g, (1 + c2) g'g] restarts the module (cond1
    disabled)."""
    A, b = quadratic()
    ps = problem(8)
    restart = m.PowellRestart(m.FletcherReeves(restart_interval=None), cond1=None, cond2=0.2)
    opt = ob.Modular(ps, restart, m.LR(0.2))
    closure = make_closure(opt, ps, A, b)
    for _ in range(8):
        x = xvec(ps)
        closure()
        g = torch.cat([ps[0].grad, ps[1].grad]).clone()
        before = restart.global_state.get("restarts", 0)
        opt.step(closure)
        d = (x - xvec(ps)) / 0.2
        ratio = float(d @ g / (g @ g))
        if restart.global_state.get("restarts", 0) > before:
            torch.testing.assert_close(d, g)  # restarted: a steepest-descent step
        else:
            assert 0.8 <= ratio <= 1.2
    assert restart.global_state["restarts"] >= 1


def test_powell_restart_without_modules_resets_the_chain():
    A, b = quadratic()
    ps = problem(8)
    cg = m.FletcherReeves(restart_interval=None)
    restart = m.PowellRestart()
    opt = ob.Modular(ps, cg, restart, m.LR(0.01))
    closure = make_closure(opt, ps, A, b)
    x = torch.zeros(8, dtype=torch.float64)
    for step in range(5):
        opt.step(closure)
        x = x - 0.01 * (A @ x - b)
        torch.testing.assert_close(xvec(ps), x, rtol=1e-12, atol=1e-14)
        if step:
            assert cg.global_state == {} and restart.global_state["restarts"] == step


class FlipThird(Module):
    """Test module: outputs -g on its third call since its last reset, g otherwise."""

    def step(self, ctx):
        n = self.global_state["calls"] = self.global_state.get("calls", 0) + 1
        if n == 3:
            ctx.set_update(torch._foreach_neg(ctx.update))


def test_birgin_martinez_restart():
    A, b = quadratic()
    ps = problem(8)
    flip = FlipThird()
    bm = m.BirginMartinezRestart(flip)
    opt = ob.Modular(ps, bm, m.LR(0.1))
    closure = make_closure(opt, ps, A, b)
    x = torch.zeros(8, dtype=torch.float64)
    for step in range(6):
        opt.step(closure)
        x = x - 0.1 * (A @ x - b)  # never the uphill direction
        torch.testing.assert_close(xvec(ps), x, rtol=1e-12, atol=1e-14)
    assert bm.global_state["restarts"] == 2
    assert bm.global_state["last_restart"] == 4
    assert flip.global_state["calls"] == 2


def test_checkpoint_resume_continues_identically():
    A, b = quadratic()

    def chain():
        return [m.PowellRestart(m.HagerZhang(restart_interval=5)), m.LR(0.1)]

    ps = problem(8)
    opt = ob.Modular(ps, *chain())
    closure = make_closure(opt, ps, A, b)
    for _ in range(4):
        opt.step(closure)
    ps2 = [p.detach().clone().requires_grad_() for p in ps]
    opt2 = ob.Modular(ps2, *chain())
    opt2.load_state_dict(opt.state_dict())
    closure2 = make_closure(opt2, ps2, A, b)
    for _ in range(6):
        opt.step(closure)
        opt2.step(closure2)
        assert torch.equal(xvec(ps), xvec(ps2))


def test_update_is_borrowed_state():
    """The direction is handed out borrowed: a later in-place module cannot corrupt it."""
    assert_same_trajectory(
        lambda ps: ob.Modular(ps, m.PolakRibiere(), m.LR(0.02)),
        lambda ps: ob.Modular(ps, m.PolakRibiere(), m.ClipValue(1e9), m.LR(0.02)),
        steps=50, dtype=torch.float64, rtol=0, atol=0,
    )


# ------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("make,name,arg", [
    (lambda: m.PolakRibiere(clip_beta="yes"), "PolakRibiere", "clip_beta"),
    (lambda: m.FletcherReeves(restart_interval=0), "FletcherReeves", "restart_interval"),
    (lambda: m.HagerZhang(restart_interval="never"), "HagerZhang", "restart_interval"),
    (lambda: m.PowellRestart(cond1=-0.5), "PowellRestart", "cond1"),
    (lambda: m.BirginMartinezRestart(m.DaiYuan(), cond=-1.0), "BirginMartinezRestart", "cond"),
    (lambda: m.ProjectedGradientMethod(init_scale=0.0), "ProjectedGradientMethod", "init_scale"),
])
def test_bad_hyperparameters(make, name, arg):
    with pytest.raises(ValueError, match=rf"^{name}: invalid {arg}="):
        make()


def test_groups_must_agree():
    a = torch.zeros(3, requires_grad=True)
    c = torch.zeros(2, requires_grad=True)
    opt = ob.Modular([{"params": [a]}, {"params": [c], "clip_beta": True}], m.DaiYuan(), m.LR(0.1))
    a.grad, c.grad = torch.ones(3), torch.ones(2)
    with pytest.raises(ValueError, match="DaiYuan: clip_beta must be the same in every param"):
        opt.step()
