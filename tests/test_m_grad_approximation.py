"""Gradient approximators: estimates against independent references (per-coordinate and
per-direction loops in float64, with the directions drawn by the documented seed scheme),
unbiasedness, exact evaluation counts, bit-exact parameter restoration, the replaced closure,
zeroth-order chains, checkpoints and bad input."""

import copy
import math

import pytest
import torch

import optbridge as ob
from optbridge import m
from optbridge.core.module import Module
from optbridge.m.grad_approximation._base import mix_seed
from trajectory import assert_same_trajectory

F64 = torch.float64


# ----------------------------------------------------------------------------- problems
def quadratic(seed=0, dtype=F64, shapes=((3, 2), (4,))):
    """``f(z) = 0.5 z^T A z + b^T z`` over the concatenation ``z`` of tensors of ``shapes``."""
    g = torch.Generator().manual_seed(seed)
    n = sum(math.prod(s) for s in shapes)
    q = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64))[0]
    A = q @ torch.diag(torch.logspace(0, 1, n, dtype=F64)) @ q.T
    b = torch.randn(n, generator=g, dtype=F64)
    ps = [torch.randn(s, generator=g, dtype=F64).to(dtype).requires_grad_() for s in shapes]

    def flat():
        if len(ps) == 1 and ps[0].dtype == F64:
            return ps[0].reshape(-1)
        return torch.cat([p.reshape(-1).to(F64) for p in ps])

    def closure(backward=True):
        z = flat()
        loss = 0.5 * z @ A @ z + b @ z
        if backward:
            for p in ps:
                p.grad = None
            loss.backward()
        return loss

    def grad():
        return A @ flat().detach() + b

    return ps, closure, A, b, grad


class Capture(Module):
    """Records the gradient estimate and loss the chain sees."""

    def __init__(self):
        super().__init__()
        self.grads, self.loss = None, None

    def step(self, ctx):
        self.grads = torch.cat([g.reshape(-1).to(F64) for g in ctx.grads])
        self.loss = ctx.loss


def estimate(module, ps, closure):
    cap = Capture()
    opt = ob.Modular(ps, module, cap, m.LR(0.0))
    opt.step(closure)
    return cap.grads, opt


def directions(seed, draw, n, total, distribution, dtype=F64, sample=None, group=0):
    """The documented draw: a generator seeded with ``mix_seed(seed, draw, group)``
    (``mix_seed(seed, draw, k, group)`` for MeZO's sample ``k``) fills an ``(n, total)`` buffer
    for each (device, dtype) group of parameters; Rademacher entries are ``2 b - 1`` with fair
    bits ``b`` from ``random_(0, 2)``."""
    parts = (seed, draw) if sample is None else (seed, draw, sample)
    g = torch.Generator().manual_seed(mix_seed(*parts, group))
    u = torch.empty(n, total, dtype=dtype)
    if distribution == "rademacher":
        u.random_(0, 2, generator=g)
        u = 2 * u - 1
    elif distribution == "uniform":
        u.uniform_(-math.sqrt(3), math.sqrt(3), generator=g)
    else:
        u.normal_(generator=g)
    if distribution == "sphere":
        u = u * (math.sqrt(total) / u.norm(dim=1, keepdim=True))
    return u


# ---------------------------------------------------------------------------- references
FD_RULES = {  # offsets, coefficients, coefficient of f(x), divisor
    "central": ((1, -1), (1, -1), 0, 2),
    "forward": ((1,), (1,), -1, 1),
    "backward": ((-1,), (-1,), 1, 1),
    "forward3": ((1, 2), (4, -1), -3, 2),
    "backward3": ((-1, -2), (-4, 1), 3, 2),
    "central4": ((1, 2, -1, -2), (8, -1, -8, 1), 0, 12),
}


class RefZO:
    """Straightforward zeroth-order SGD: per-tensor loops, ``p -= lr * estimate``."""

    def __init__(self, params, method, lr, h=1e-3, n=1, formula="central", distribution="gaussian",
                 seed=0):
        self.params, self.method, self.lr, self.h, self.n = list(params), method, lr, h, n
        self.formula, self.distribution, self.seed, self.draw = formula, distribution, seed, 0

    def zero_grad(self):
        pass

    def _slope(self, closure, x0, direction, f0):
        offs, coefs, c0, den = FD_RULES[self.formula]
        total = c0 * f0 if c0 else 0.0
        for o, c in zip(offs, coefs):
            with torch.no_grad():
                for p, x, d in zip(self.params, x0, direction):
                    p.copy_(x + o * self.h * d)
            with torch.no_grad():
                total = total + c * float(closure(False))
        with torch.no_grad():
            for p, x in zip(self.params, x0):
                p.copy_(x)
        return total / (den * self.h)

    def _split(self, flat):
        out, i = [], 0
        for p in self.params:
            out.append(flat[i:i + p.numel()].view_as(p))
            i += p.numel()
        return out

    def step(self, closure):
        x0 = [p.detach().clone() for p in self.params]
        total = sum(p.numel() for p in self.params)
        with torch.no_grad():
            f0 = float(closure(False)) if FD_RULES[self.formula][2] else None
        est = [torch.zeros_like(p) for p in self.params]
        if self.method == "fdm":
            offs, coefs, c0, den = FD_RULES[self.formula]
            for p, e in zip(self.params, est):
                flat = p.detach().view(-1)
                for j in range(p.numel()):
                    xj = float(flat[j])
                    acc = c0 * f0 if c0 else 0.0
                    for o, c in zip(offs, coefs):
                        flat[j] = xj + o * self.h
                        with torch.no_grad():
                            acc += c * float(closure(False))
                    flat[j] = xj
                    e.view(-1)[j] = acc / (den * self.h)
        elif self.method == "forward_ad":
            u = directions(self.seed, self.draw, self.n, total, self.distribution)
            with torch.enable_grad():
                grads = torch.autograd.grad(closure(False), self.params)
            for k in range(self.n):
                uk = self._split(u[k])
                slope = sum(float((g * d).sum()) for g, d in zip(grads, uk))
                for e, d in zip(est, uk):
                    e.add_(d, alpha=slope / self.n)
        else:
            for k in range(self.n):
                if self.method == "mezo":
                    u = directions(self.seed, self.draw, 1, total, self.distribution, sample=k)[0]
                else:
                    u = directions(self.seed, self.draw, self.n, total, self.distribution)[k]
                uk = self._split(u)
                slope = self._slope(closure, x0, uk, f0)
                for e, d in zip(est, uk):
                    e.add_(d, alpha=slope / self.n)
        self.draw += 1
        with torch.no_grad():
            for p, e in zip(self.params, est):
                p.sub_(e, alpha=self.lr)


# ------------------------------------------------------------------- trajectories (60 steps)
def _case(ref, make):
    return (ref, make)


TRAJECTORY_CASES = {
    "spsa": _case(dict(method="rfdm", distribution="rademacher", seed=3),
                  lambda: m.SPSA(seed=3)),
    "spsa_n3_backward3": _case(
        dict(method="rfdm", n=3, formula="backward3", distribution="rademacher", seed=1),
        lambda: m.SPSA(n_samples=3, formula="backward3", seed=1)),
    "rdsa": _case(dict(method="rfdm", distribution="gaussian", seed=5, h=1e-2),
                  lambda: m.RDSA(h=1e-2, seed=5)),
    "rfdm_sphere_forward3": _case(
        dict(method="rfdm", n=2, formula="forward3", distribution="sphere", seed=2),
        lambda: m.RandomizedFDM(n_samples=2, formula="forward3", distribution="sphere", seed=2)),
    "rfdm_uniform": _case(dict(method="rfdm", n=2, distribution="uniform", seed=4),
                          lambda: m.RandomizedFDM(n_samples=2, distribution="uniform", seed=4)),
    "gaussian_smoothing": _case(
        dict(method="rfdm", n=5, formula="forward", distribution="gaussian", h=1e-2, seed=6),
        lambda: m.GaussianSmoothing(n_samples=5, seed=6)),
    "mezo": _case(dict(method="mezo", n=2, distribution="rademacher", seed=7),
                  lambda: m.MeZO(n_samples=2, seed=7)),
    "mezo_gaussian_forward": _case(
        dict(method="mezo", n=3, formula="forward", distribution="gaussian", seed=8),
        lambda: m.MeZO(n_samples=3, formula="forward", distribution="gaussian", seed=8)),
    "forward_gradient": _case(dict(method="forward_ad", n=1, distribution="gaussian", seed=9),
                              lambda: m.ForwardGradient(seed=9)),
    "forward_gradient_rademacher_n2": _case(
        dict(method="forward_ad", n=2, distribution="rademacher", seed=10),
        lambda: m.ForwardGradient(n_samples=2, distribution="rademacher", seed=10)),
    "forward_gradient_central": _case(
        dict(method="rfdm", n=2, distribution="gaussian", seed=11),
        lambda: m.ForwardGradient(n_samples=2, jvp_method="central", seed=11)),
}


@pytest.mark.parametrize("case", list(TRAJECTORY_CASES))
def test_trajectory_matches_reference(case):
    kw, make = TRAJECTORY_CASES[case]
    lr = 0.01
    assert_same_trajectory(
        lambda ps: RefZO(ps, lr=lr, **kw),
        lambda ps: ob.Modular(ps, make(), m.LR(lr)),
        steps=60, dtype=F64, rtol=1e-7, atol=1e-9, with_unused=False, closure=True,
    )


def small_problem():
    """12 coordinates in 3 tensors, a smooth non-quadratic loss; a 4th tensor without
    ``requires_grad`` must be neither perturbed nor updated."""
    g = torch.Generator().manual_seed(0)
    ps = [torch.randn(s, generator=g, dtype=F64).requires_grad_() for s in [(3, 2), (4,), (2,)]]
    frozen = torch.randn(3, generator=g, dtype=F64)
    start = frozen.clone()

    def closure(backward=True):
        a, b, c = ps
        loss = (torch.sin(a).sum() + 0.5 * (a**2).sum() + ((b - 1) ** 2).sum()
                + (c.tanh() * c).sum()
                + (c**4).sum() + (a[:, 0] * b[:3]).sum() * 0.3 + (frozen * b[1:]).sum())
        if backward:
            for p in ps:
                p.grad = None
            loss.backward()
        return loss

    return ps + [frozen], closure, lambda: torch.equal(frozen, start)


@pytest.mark.parametrize("formula,h", [("central", 1e-3), ("forward", 1e-4), ("backward3", 1e-3)])
def test_fdm_trajectory_matches_reference(formula, h):
    lr, trajectories = 0.05, []
    for make in (lambda ps: RefZO(ps[:3], "fdm", lr, h=h, formula=formula),
                 lambda ps: ob.Modular(ps, m.FDM(h=h, formula=formula), m.LR(lr))):
        ps, closure, frozen_ok = small_problem()
        opt = make(ps)
        traj = []
        for _ in range(60):
            opt.step(closure)
            traj.append(torch.cat([p.detach().reshape(-1) for p in ps[:3]]))
        assert frozen_ok()
        trajectories.append(traj)
    for i, (a, b) in enumerate(zip(*trajectories)):
        torch.testing.assert_close(b, a, rtol=1e-8, atol=1e-10, msg=lambda s: f"step {i}: {s}")
    assert not torch.allclose(trajectories[0][0], trajectories[0][-1], rtol=0, atol=1e-2)


# ------------------------------------------------------------------- accuracy and unbiasedness
@pytest.mark.parametrize("formula", ["central", "central2", "central3", "central4", "forward3",
                                     "backward3"])
def test_fdm_exact_on_quadratics(formula):
    """These rules are exact for polynomials of degree 2: only the rounding of the loss values
    (~1e-16 * |f| / h ~ 1e-12) remains."""
    ps, closure, A, b, grad = quadratic()
    est, _ = estimate(m.FDM(formula=formula), ps, closure)
    torch.testing.assert_close(est, grad(), rtol=0, atol=1e-9)


@pytest.mark.parametrize("formula,sign", [("forward", 1), ("forward2", 1), ("backward", -1),
                                          ("backward2", -1)])
def test_fdm_one_sided_error_on_quadratics(formula, sign):
    """Two-point one-sided differences of a quadratic are off by exactly ``±h/2 A_ii``."""
    ps, closure, A, b, grad = quadratic()
    h = 1e-2
    est, _ = estimate(m.FDM(h=h, formula=formula), ps, closure)
    torch.testing.assert_close(est, grad() + sign * h / 2 * torch.diagonal(A), rtol=0, atol=1e-9)


def test_fdm_float32_exact_restoration_and_divisor():
    """float32 parameters: ``x + h`` is rounded; the divisor uses the step actually taken."""
    ps, closure, A, b, grad = quadratic(dtype=torch.float32)
    est, _ = estimate(m.FDM(h=1e-2), ps, closure)
    torch.testing.assert_close(est, grad(), rtol=0, atol=1e-4)


def test_fdm_per_group_h():
    ps, closure, A, b, grad = quadratic()
    opt_groups = [dict(params=[ps[0]], h=1e-2), dict(params=[ps[1]], h=2e-2)]
    cap = Capture()
    opt = ob.Modular(opt_groups, m.FDM(formula="forward"), cap, m.LR(0.0))
    opt.step(closure)
    h = torch.tensor([1e-2] * 6 + [2e-2] * 4, dtype=F64)
    torch.testing.assert_close(cap.grads, grad() + h / 2 * torch.diagonal(A), rtol=0, atol=1e-9)


@pytest.mark.parametrize("name", ["SPSA", "MeZO"])
def test_randomized_per_group_h(name):
    """Per-parameter h_i: the perturbation is ``h_i u_i`` and ``g_i = u_i (D_h) / h_i`` with
    ``D_h = sum_j h_j u_j g_j`` (exact on quadratics with the central rule)."""
    ps, closure, A, b, grad = quadratic()
    groups = [dict(params=[ps[0]], h=1e-3), dict(params=[ps[1]], h=4e-3)]
    cap = Capture()
    opt = ob.Modular(groups, getattr(m, name)(seed=12), cap, m.LR(0.0))
    opt.step(closure)
    u = directions(12, 0, 1, 10, "rademacher", sample=0 if name == "MeZO" else None)[0]
    h = torch.tensor([1e-3] * 6 + [4e-3] * 4, dtype=F64)
    expected = u * (h * u * grad()).sum() / h
    torch.testing.assert_close(cap.grads, expected, rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("make", [lambda: m.SPSA(n_samples=3, seed=1),
                                  lambda: m.RDSA(n_samples=2, formula="central4", seed=2),
                                  lambda: m.MeZO(n_samples=3, formula="backward3", seed=3),
                                  lambda: m.GaussianSmoothing(n_samples=4, seed=4)])
def test_large_problem_path_gives_the_same_estimate(make, monkeypatch):
    """Above POINTS_LIMIT the parameters are moved in place instead of receiving precomputed
    points; the estimate is the same up to rounding."""
    from optbridge.m.grad_approximation import mezo, rfdm

    ps, closure, *_ = quadratic()
    small, _ = estimate(make(), ps, closure)
    monkeypatch.setattr(rfdm, "POINTS_LIMIT", 0)
    monkeypatch.setattr(mezo, "POINTS_LIMIT", 0)
    start = [p.detach().clone() for p in ps]
    large, _ = estimate(make(), ps, closure)
    torch.testing.assert_close(large, small, rtol=1e-7, atol=1e-9)
    assert all(torch.equal(p, s) for p, s in zip(ps, start))


def test_torch_fallback_paths():
    """bfloat16 parameters (no numpy view), one of them non-contiguous: points are written with
    torch ops, coordinates through torch indexing. Values and h are multiples of 1/4 below 2,
    so every point is exact in bfloat16 and the estimates are exact up to their storage."""
    g = torch.Generator().manual_seed(0)
    a = (torch.randint(-4, 5, (3, 2), generator=g) / 4).to(torch.bfloat16).t().requires_grad_()
    b = (torch.randint(-4, 5, (4,), generator=g) / 4).to(torch.bfloat16).requires_grad_()

    def closure(backward=True):
        return (a.double() ** 2).sum() + ((b.double() - 0.5) ** 2).sum()

    sa, sb = a.detach().clone(), b.detach().clone()
    expected = torch.cat([2 * sa.double().reshape(-1), 2 * (sb.double() - 0.5)])
    for make, exact in [(lambda: m.FDM(h=0.25), lambda: expected),
                        (lambda: m.SPSA(h=0.25, seed=5), lambda: u * (u @ expected))]:
        u = directions(5, 0, 1, 10, "rademacher")[0]
        est, _ = estimate(make(), [a, b], closure)
        torch.testing.assert_close(est, exact(), rtol=2**-8, atol=1e-6)
        assert torch.equal(a, sa) and torch.equal(b, sb)


UNBIASED = {
    "spsa": lambda n: m.SPSA(n_samples=n, seed=0),
    "rdsa": lambda n: m.RDSA(n_samples=n, seed=1),
    "rdsa_sphere": lambda n: m.RDSA(n_samples=n, distribution="sphere", seed=2),
    "rfdm_uniform": lambda n: m.RandomizedFDM(n_samples=n, distribution="uniform", seed=3),
    "gaussian_smoothing": lambda n: m.GaussianSmoothing(n_samples=n, seed=4),
    "mezo": lambda n: m.MeZO(n_samples=n, seed=5),
}


@pytest.mark.parametrize("case", list(UNBIASED))
def test_random_estimates_are_unbiased(case):
    """Mean of M single-direction estimates vs the true gradient, per coordinate within 5
    standard errors. One estimate is ``u (u.g)`` (central differences and JVPs are exact on
    quadratics; Gaussian smoothing's forward rule adds ``h/2 (u^T A u) u``, zero-mean, and a
    variance ~(h/2)^2 |A|^2 that is negligible here); its variance is ``|g|^2 + (m4 - 2) g_i^2``
    with ``m4 = E[u_i^4]`` <= 3 for every distribution offered, so ``sigma_i^2 <= |g|^2 + g_i^2``.
    A wrong scale (e.g. uniform on [-1, 1], E[uu^T] = I/3) or sign would fail by far more."""
    ps, closure, A, b, grad = quadratic(shapes=((10,),))
    M = 2000
    est, opt = estimate(UNBIASED[case](M), ps, closure)
    g = grad()
    tol = 5 * torch.sqrt(g.square().sum() + g.square()) / math.sqrt(M)
    assert (tol < 0.4 * g.abs().max()).all()  # the check has power against scale errors
    err = (est - g).abs()
    assert (err <= tol).all(), (err / tol).max()


def test_forward_gradient_is_unbiased():
    """As above with fewer samples (forward-mode AD is slow in torch on CPU): a looser check,
    completed by the exact JVP test below (the directions are RDSA's, whose distribution is
    checked above)."""
    ps, closure, A, b, grad = quadratic(shapes=((10,),))
    M = 300
    est, _ = estimate(m.ForwardGradient(n_samples=M, seed=6), ps, closure)
    g = grad()
    tol = 5 * torch.sqrt(g.square().sum() + g.square()) / math.sqrt(M)
    assert ((est - g).abs() <= tol).all()


def test_forward_gradient_jvp_is_exact():
    """One direction: the estimate is (grad . v) v, with the JVP from forward-mode AD."""
    ps, closure, A, b, grad = quadratic()
    est, _ = estimate(m.ForwardGradient(seed=13), ps, closure)
    v = directions(13, 0, 1, 10, "gaussian")[0]
    torch.testing.assert_close(est, (grad() @ v) * v, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------- evaluations
COUNTS = {  # module, loss evaluations per estimate (10 coordinates), evaluates f(x)
    "fdm_central": (lambda: m.FDM(), 20, False),
    "fdm_central4": (lambda: m.FDM(formula="central4"), 40, False),
    "fdm_forward": (lambda: m.FDM(formula="forward"), 11, True),
    "fdm_backward": (lambda: m.FDM(formula="backward"), 11, True),
    "fdm_forward3": (lambda: m.FDM(formula="forward3"), 21, True),
    "fdm_backward3": (lambda: m.FDM(formula="backward3"), 21, True),
    "spsa": (lambda: m.SPSA(), 2, False),
    "spsa_n3": (lambda: m.SPSA(n_samples=3), 6, False),
    "rdsa_central4_n2": (lambda: m.RDSA(n_samples=2, formula="central4"), 8, False),
    "rfdm_forward3_n2": (lambda: m.RandomizedFDM(n_samples=2, formula="forward3"), 5, True),
    "gaussian_smoothing": (lambda: m.GaussianSmoothing(), 101, True),
    "gaussian_smoothing_n4_nopre": (
        lambda: m.GaussianSmoothing(n_samples=4, pre_generate=False), 5, True),
    "mezo": (lambda: m.MeZO(), 2, False),
    "mezo_forward_n3": (lambda: m.MeZO(n_samples=3, formula="forward"), 4, True),
    "forward_gradient": (lambda: m.ForwardGradient(), 1, True),
    "forward_gradient_n3": (lambda: m.ForwardGradient(n_samples=3), 3, True),
    "forward_gradient_fd_forward": (
        lambda: m.ForwardGradient(n_samples=2, jvp_method="forward"), 3, True),
    "forward_gradient_fd_central": (
        lambda: m.ForwardGradient(n_samples=2, jvp_method="central"), 4, False),
}


@pytest.mark.parametrize("case", list(COUNTS))
def test_evaluation_counts_per_step(case):
    make, per_step, uses_f0 = COUNTS[case]
    ps, closure, *_ = quadratic()
    opt = ob.Modular(ps, make(), m.LR(1e-3))
    for i in range(1, 4):
        expected_loss = closure(False)
        loss = opt.step(closure)
        assert opt.evals.loss == i * per_step
        assert opt.evals.loss_and_grad == 0
        if uses_f0:
            assert torch.equal(loss, expected_loss)
        else:
            assert loss is None


class Downstream(Module):
    """Asks the (replaced) closure for loss and gradient, like a line search does."""

    def __init__(self, reference=None):
        super().__init__()
        self.reference, self.record = reference, None

    def step(self, ctx):
        truth = self.reference(False) if self.reference is not None else None
        before = ctx.optimizer.evals.as_dict()
        start = [p.detach().clone() for p in ctx.params]
        step_grads = [g.clone() for g in ctx.grads]
        loss = ctx.evaluate(backward=True)
        after = ctx.optimizer.evals.as_dict()
        self.record = dict(
            loss=loss, truth=truth, step_grads=step_grads, grads=[k.grad for k in ctx.keys],
            ctx_grads=list(ctx.grads), evals=(after["loss"] - before["loss"],
                                              after["loss_and_grad"] - before["loss_and_grad"]),
            restored=all(torch.equal(p, s) for p, s in zip(ctx.params, start)),
        )


@pytest.mark.parametrize("case", ["fdm_central", "fdm_forward", "spsa_n3", "rfdm_forward3_n2",
                                  "mezo_forward_n3", "forward_gradient_n3",
                                  "forward_gradient_fd_central", "gaussian_smoothing_n4_nopre"])
def test_replaced_closure(case):
    """closure(True) after an approximator: re-estimates at the current point (same directions
    when pre-generated), writes p.grad for every parameter, returns f(x) (one more evaluation
    when the formula does not use it), evaluates no real gradient, restores the parameters."""
    make, per_estimate, uses_f0 = COUNTS[case]
    ps, closure, *_ = quadratic()
    down = Downstream(closure)
    module = make()
    opt = ob.Modular(ps, module, down, m.LR(1e-3))
    for _ in range(2):
        for p in ps:
            p.grad = None
        opt.step(closure)
        r = down.record
        assert r["evals"] == (per_estimate + (0 if uses_f0 else 1), 0)
        assert r["restored"]
        assert torch.equal(r["loss"], r["truth"])
        for k, g, cg in zip(ps, r["grads"], r["ctx_grads"]):
            assert g is not None and g.shape == k.shape and g.dtype == k.dtype
            assert torch.equal(g, cg)  # ctx.grads refreshed from p.grad
        same = all(torch.equal(a, b) for a, b in zip(r["step_grads"], r["grads"]))
        assert same == module.defaults.get("pre_generate", True)


# --------------------------------------------------------------------------- restoration
class Snapshot(Module):
    needs_grad = False

    def __init__(self):
        super().__init__()
        self.saved = None

    def step(self, ctx):
        self.saved = [p.detach().clone() for p in ctx.params]


class Same(Module):
    def __init__(self, snap):
        super().__init__()
        self.snap, self.checked = snap, 0

    def step(self, ctx):
        assert all(torch.equal(p, s) for p, s in zip(ctx.params, self.snap.saved))
        self.checked += 1


ALL = {
    "fdm": lambda: m.FDM(h=1e-3),
    "fdm_central4": lambda: m.FDM(h=1e-3, formula="central4"),
    "spsa": lambda: m.SPSA(n_samples=3, h=1e-3),
    "rdsa_forward3": lambda: m.RDSA(n_samples=2, formula="forward3"),
    "gaussian_smoothing": lambda: m.GaussianSmoothing(n_samples=3),
    "mezo": lambda: m.MeZO(n_samples=3),
    "forward_gradient": lambda: m.ForwardGradient(n_samples=2),
}


@pytest.mark.parametrize("case", list(ALL))
def test_parameters_restored_bit_exactly(case):
    """float32 parameters where x + h - h != x: the approximator leaves them bit-identical."""
    ps, closure, *_ = quadratic(dtype=torch.float32, shapes=((3, 2), (4,), (2, 3)))
    with torch.no_grad():
        for p in ps:
            p.mul_(1000).add_(0.123)
    snap = Snapshot()
    same = Same(snap)
    opt = ob.Modular(ps, snap, ALL[case](), same, m.LR(1e-3))
    for _ in range(3):
        opt.step(closure)
    assert same.checked == 3


@pytest.mark.parametrize("case", ["fdm", "fdm_central4", "spsa", "mezo", "forward_gradient"])
@pytest.mark.parametrize("fail_at", [1, 2, 5])
def test_parameters_restored_when_closure_raises(case, fail_at):
    ps, closure, *_ = quadratic()
    calls = []

    def failing(backward=True):
        calls.append(backward)
        if len(calls) == fail_at:
            raise RuntimeError("boom")
        return closure(backward)

    opt = ob.Modular(ps, ALL[case](), m.LR(1.0))
    with pytest.raises(RuntimeError, match="boom"):
        for _ in range(5):
            start = [p.detach().clone() for p in ps]
            opt.step(failing)
    assert all(torch.equal(p, s) for p, s in zip(ps, start))


def test_mixed_dtypes_and_non_contiguous_parameters():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 4, generator=g, dtype=F64).t().requires_grad_()  # non-contiguous leaf
    b = torch.randn(5, generator=g, dtype=torch.float32).requires_grad_()
    ta, tb = torch.randn(4, 3, dtype=F64, generator=g), torch.randn(5, generator=g)

    def closure(backward=True):
        return ((a - ta) ** 2).sum() + ((b.double() - tb.double()) ** 2).sum()

    sa, sb = a.detach().clone(), b.detach().clone()
    cap = Capture()
    opt = ob.Modular([a, b], m.FDM(h=1e-2), cap, m.LR(0.0))
    opt.step(closure)
    expected = torch.cat([(2 * (sa - ta)).reshape(-1), (2 * (sb.double() - tb.double()))])
    torch.testing.assert_close(cap.grads, expected, rtol=0, atol=1e-4)
    assert torch.equal(a, sa) and torch.equal(b, sb)
    # one direction per (device, dtype) group: group i drawn with mix_seed(draw seed, i)
    est, _ = estimate(m.SPSA(h=1e-2, seed=3), [a, b], closure)
    u = torch.cat([directions(3, 0, 1, 12, "rademacher")[0],
                   directions(3, 0, 1, 5, "rademacher", dtype=torch.float32, group=1)[0].double()])
    torch.testing.assert_close(est, u * (u @ expected), rtol=0, atol=1e-3)
    assert torch.equal(a, sa) and torch.equal(b, sb)


def test_complex_parameter():
    """Complex parameters are estimated on their real view; p.grad gets the complex gradient
    with torch's convention (d/dRe + i d/dIm)."""
    z = torch.tensor([1 + 2j, -0.5 + 0.25j], dtype=torch.complex128, requires_grad=True)
    c = torch.tensor([0.3 - 1j, 2 + 0j], dtype=torch.complex128)

    def closure(backward=True):
        loss = (z - c).abs().square().sum()
        if backward:
            z.grad = None
            loss.backward()
        return loss

    closure(True)
    true = z.grad.clone()
    down = Downstream()
    opt = ob.Modular([z], m.FDM(), down, m.LR(0.0))
    opt.step(closure)
    g = down.record["grads"][0]
    assert g.dtype == torch.complex128
    torch.testing.assert_close(g, true, rtol=0, atol=1e-8)


# ------------------------------------------------------------------------ zeroth-order chains
def _gap_problem():
    ps, closure, A, b, grad = quadratic(shapes=((10,),))
    with torch.no_grad():
        ps[0].zero_()
    xs = torch.linalg.solve(A, -b)
    fs = float(0.5 * xs @ A @ xs + b @ xs)
    return ps, closure, fs


@pytest.mark.parametrize("chain,steps,target", [
    (lambda: [m.SPSA(n_samples=4, seed=0), m.Adam(), m.LR(0.05)], 300, 1e-5),
    (lambda: [m.MeZO(seed=0), m.HeavyBall(0.9), m.LR(0.003)], 400, 1e-5),
    (lambda: [m.FDM(), m.HeavyBall(0.5), m.LR(0.05)], 150, 1e-6),
])
def test_zeroth_order_chain_converges(chain, steps, target):
    ps, closure, fs = _gap_problem()
    start = float(closure(False).detach()) - fs
    opt = ob.Modular(ps, *chain())
    for _ in range(steps):
        opt.step(closure)
    assert opt.evals.loss_and_grad == 0
    assert float(closure(False).detach()) - fs < target * start


def test_derivative_free_lbfgs():
    """[FDM, LBFGS, StrongWolfe] solves a quadratic from loss values only; with SPSA the
    line search sees one consistent estimator per step (pre-generated directions)."""
    ps, closure, fs = _gap_problem()
    start = float(closure(False).detach()) - fs
    opt = ob.Modular(ps, m.FDM(), m.LBFGS(), m.StrongWolfe())
    for _ in range(20):
        opt.step(closure)
    assert opt.evals.loss_and_grad == 0
    assert float(closure(False).detach()) - fs < 1e-9 * start
    ps, closure, fs = _gap_problem()
    opt = ob.Modular(ps, m.SPSA(n_samples=20, seed=0), m.LBFGS(), m.StrongWolfe())
    for _ in range(30):
        opt.step(closure)
    assert opt.evals.loss_and_grad == 0
    assert float(closure(False).detach()) - fs < 1e-2 * start


# ------------------------------------------------------------------------------- checkpoint
@pytest.mark.parametrize("make", [
    lambda: [m.SPSA(seed=3), m.Adam(), m.LR(0.01)],
    lambda: [m.RDSA(pre_generate=False), m.HeavyBall(), m.LR(0.01)],
    lambda: [m.GaussianSmoothing(n_samples=3), m.LR(0.01)],
    lambda: [m.MeZO(n_samples=2, seed=1), m.Adam(), m.LR(0.01)],
    lambda: [m.ForwardGradient(seed=2), m.LR(0.01)],
])
def test_checkpoint_resume_is_identical(make):
    ps, closure, *_ = quadratic()
    opt = ob.Modular(ps, *make())
    for _ in range(5):
        opt.step(closure)
    sd = copy.deepcopy(opt.state_dict())
    mid = [p.detach().clone() for p in ps]
    for _ in range(5):
        opt.step(closure)
    final = [p.detach().clone() for p in ps]

    torch.manual_seed(1234)  # a different global stream must not matter
    ps2, closure2, *_ = quadratic()
    with torch.no_grad():
        for p, x in zip(ps2, mid):
            p.copy_(x)
    opt2 = ob.Modular(ps2, *make())
    opt2.load_state_dict(sd)
    for _ in range(5):
        opt2.step(closure2)
    assert all(torch.equal(a, b) for a, b in zip(final, ps2))
    assert opt2.evals.as_dict() == opt.evals.as_dict()
    states = sd["optbridge"]["modules"]["0"]
    assert set(states) == {"seed", "draws"}


def test_seed_none_uses_torch_global_generator():
    def run():
        torch.manual_seed(7)
        ps, closure, *_ = quadratic()
        opt = ob.Modular(ps, m.SPSA(), m.LR(0.01))
        for _ in range(3):
            opt.step(closure)
        return torch.cat([p.detach().reshape(-1) for p in ps])

    assert torch.equal(run(), run())


def test_reset_keeps_the_random_stream():
    ps, closure, *_ = quadratic()
    spsa = m.SPSA(seed=1)
    opt = ob.Modular(ps, spsa, m.LR(0.01))
    opt.step(closure)
    spsa.reset()
    assert spsa.global_state == {"seed": 1, "draws": 1}


# -------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("make,name,arg", [
    (lambda: m.FDM(h=0.0), "FDM", "h"),
    (lambda: m.FDM(h=-1e-3), "FDM", "h"),
    (lambda: m.FDM(h=float("nan")), "FDM", "h"),
    (lambda: m.FDM(formula="fd_bogus"), "FDM", "formula"),
    (lambda: m.SPSA(n_samples=0), "SPSA", "n_samples"),
    (lambda: m.RDSA(n_samples=2.5), "RDSA", "n_samples"),
    (lambda: m.MeZO(h=float("inf")), "MeZO", "h"),
    (lambda: m.MeZO(n_samples=-1), "MeZO", "n_samples"),
    (lambda: m.GaussianSmoothing(distribution="cauchy"), "GaussianSmoothing", "distribution"),
    (lambda: m.RandomizedFDM(seed=-1), "RandomizedFDM", "seed"),
    (lambda: m.RandomizedFDM(pre_generate=1), "RandomizedFDM", "pre_generate"),
    (lambda: m.ForwardGradient(jvp_method="reverse"), "ForwardGradient", "jvp_method"),
    (lambda: m.ForwardGradient(n_samples=True), "ForwardGradient", "n_samples"),
    (lambda: m.ForwardGradient(h=0), "ForwardGradient", "h"),
])
def test_invalid_hyperparameters(make, name, arg):
    with pytest.raises(ValueError, match=rf"{name}: invalid {arg}="):
        make()


def test_invalid_group_override():
    ps, *_ = quadratic()
    with pytest.raises(ValueError, match=r"SPSA: invalid h="):
        ob.Modular([dict(params=ps, h=-1.0)], m.SPSA(), m.LR(0.1))
    with pytest.raises(ValueError, match=r"MeZO: invalid n_samples="):
        ob.Modular([dict(params=ps, n_samples=0)], m.MeZO(), m.LR(0.1))


def test_groups_must_agree_on_n_samples():
    ps, closure, *_ = quadratic()
    opt = ob.Modular([dict(params=[ps[0]], n_samples=2), dict(params=[ps[1]])], m.SPSA(), m.LR(0.1))
    with pytest.raises(ValueError, match="SPSA: n_samples must be the same"):
        opt.step(closure)


@pytest.mark.parametrize("case", list(ALL))
def test_closure_errors(case):
    ps, closure, *_ = quadratic()
    start = [p.detach().clone() for p in ps]
    name = type(ALL[case]()).__name__
    opt = ob.Modular(ps, ALL[case](), m.LR(0.1))
    with pytest.raises(ob.ClosureError, match=rf"{name}: requires a closure"):
        opt.step()

    def no_arg():
        return closure(True)

    with pytest.raises(ob.ClosureError, match=rf"{name}: needs a loss-only evaluation"):
        opt.step(no_arg)
    assert all(torch.equal(p, s) for p, s in zip(ps, start))
    assert opt.evals.as_dict() == {"loss": 0, "loss_and_grad": 0}


def test_forward_gradient_needs_differentiable_loss():
    ps, closure, *_ = quadratic()

    def opaque(backward=True):
        return torch.tensor(float(closure(False).detach()), dtype=F64)

    opt = ob.Modular(ps, m.ForwardGradient(), m.LR(0.1))
    with pytest.raises(RuntimeError, match="ForwardGradient: the loss carries no forward-mode"):
        opt.step(opaque)
    opt = ob.Modular(ps, m.ForwardGradient(jvp_method="central"), m.LR(0.1))
    opt.step(opaque)
