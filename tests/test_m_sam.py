"""SAM family: SAM, ASAM and MSAM against hand-written float64 loops, the rewritten closure
(loss-only and gradient calls, exact restoration, evaluation counts), WeightDropout and
PerturbWeights with the same random draws, and bad input."""

import math
import pickle

import pytest
import torch

import optbridge as ob
from optbridge import m
from optbridge.core.closure import ClosureError
from trajectory import loss_fn, make_params

STEPS = 30


def _closure(ps, opt, calls=None):
    def closure(backward=True):
        if calls is not None:
            calls.append(backward)
        loss = loss_fn(ps)
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss
    return closure


def _grad(xs):
    """Gradient of loss_fn w.r.t. the first four tensors at ``xs`` (values, float64)."""
    xs = [x.detach().clone().requires_grad_() for x in xs]
    loss = loss_fn(xs + [None])
    return float(loss.detach()), list(torch.autograd.grad(loss, xs[:4]))


def _sam_e(xs, gs, rho, p, adaptive):
    """SAM/ASAM perturbation, written per tensor from the papers' formula."""
    q = 1.0 if p == math.inf else p / (p - 1)
    ts = [g * x.abs() if adaptive else g for g, x in zip(gs, xs)]
    if q == 1.0:
        dirs = [torch.sign(t) for t in ts]
        denom = 1.0
    else:
        dirs = [torch.sign(t) * t.abs() ** (q - 1) for t in ts]
        denom = sum(float((t.abs() ** q).sum()) for t in ts) ** ((q - 1) / q)
    return [rho * (x.abs() if adaptive else 1.0) * d / denom for x, d in zip(xs, dirs)]


def _sam_reference(rho, p, lr, adaptive, steps=STEPS):
    xs = [x.detach() for x in make_params(0, torch.float64)[:4]]
    out, losses = [], []
    for _ in range(steps):
        _, g = _grad(xs)
        e = _sam_e(xs, g, rho, p, adaptive)
        f_sam, g_sam = _grad([x + ei for x, ei in zip(xs, e)])
        xs = [x - lr * gi for x, gi in zip(xs, g_sam)]
        out.append(xs)
        losses.append(f_sam)
    return out, losses


def _run(make_modules, steps=STEPS, closure_calls=None):
    ps = make_params(0, torch.float64)
    opt = ob.Modular(ps, *make_modules())
    closure = _closure(ps, opt, closure_calls)
    out, losses = [], []
    for _ in range(steps):
        losses.append(float(opt.step(closure).detach()))
        out.append([p.detach().clone() for p in ps])
    return ps, opt, out, losses


def _assert_close_traj(ours, ref, rtol=1e-10, atol=1e-12):
    for i, (a, b) in enumerate(zip(ours, ref)):
        for j, (x, y) in enumerate(zip(a, b)):
            torch.testing.assert_close(x, y, rtol=rtol, atol=atol,
                                       msg=lambda s: f"step {i} param {j}: {s}")


# -------------------------------------------------------------------------------- SAM, ASAM
@pytest.mark.parametrize("rho,p,lr", [(0.05, 2, 0.1), (0.3, 2, 0.05), (0.1, 3, 0.1),
                                      (0.05, math.inf, 0.1)])
def test_sam_matches_hand_written_loop(rho, p, lr):
    start = make_params(0, torch.float64)
    ps, opt, ours, losses = _run(lambda: [m.SAM(rho, p=p), m.LR(lr)])
    ref, ref_losses = _sam_reference(rho, p, lr, adaptive=False)
    _assert_close_traj([o[:4] for o in ours], ref)
    assert losses == pytest.approx(ref_losses, rel=1e-10)  # step() returns f(x + e(x))
    assert torch.equal(ps[4], start[4])  # no gradient: untouched
    assert (opt.evals.loss_and_grad, opt.evals.loss) == (2 * STEPS, 0)


@pytest.mark.parametrize("rho,p,lr", [(0.5, 2, 0.1), (1.0, 2, 0.05), (0.5, 3, 0.1)])
def test_asam_matches_hand_written_loop(rho, p, lr):
    _, opt, ours, _ = _run(lambda: [m.ASAM(rho, p=p), m.LR(lr)])
    ref, _ = _sam_reference(rho, p, lr, adaptive=True)
    _assert_close_traj([o[:4] for o in ours], ref)
    _, _, same, _ = _run(lambda: [m.SAM(rho, p=p, asam=True), m.LR(lr)])
    _assert_close_traj(same, ours, rtol=0, atol=0)
    assert opt.evals.loss_and_grad == 2 * STEPS


def test_sam_then_adam_matches_reference_with_torch_adam():
    ps, _, ours, _ = _run(lambda: [m.SAM(0.1), m.Adam(), m.LR(0.05)], steps=30)
    xs = [x.detach().clone().requires_grad_() for x in make_params(0, torch.float64)[:4]]
    adam = torch.optim.Adam(xs, lr=0.05)
    for i in range(30):
        _, g = _grad(xs)
        e = _sam_e([x.detach() for x in xs], g, 0.1, 2, False)
        _, g_sam = _grad([x.detach() + ei for x, ei in zip(xs, e)])
        for x, gi in zip(xs, g_sam):
            x.grad = gi
        adam.step()
        for j in range(4):
            torch.testing.assert_close(ours[i][j], xs[j].detach(), rtol=1e-10, atol=1e-12)


class ClosureProbe(ob.Module):
    """Test module placed after SAM: evaluates the rewritten closure at the start point and at a
    shifted point, loss-only and with gradients, and records what it saw."""

    def __init__(self, shift=0.1):
        super().__init__()
        self.shift = shift
        self.records = []

    def step(self, ctx):
        x = [p.clone() for p in ctx.params]
        rec = {"x": x, "update": [u.clone() for u in ctx.update], "loss": float(ctx.get_loss())}
        rec["f0"] = float(ctx.closure(False))
        assert all(torch.equal(a, b) for a, b in zip(ctx.params, x)), "not restored"
        torch._foreach_sub_(ctx.params, ctx.update, alpha=self.shift)
        y = [p.clone() for p in ctx.params]
        rec["y"] = y
        rec["fy"] = float(ctx.closure(False))
        rec["fy_backward"] = float(ctx.closure(True))
        rec["grad_y"] = [torch.zeros_like(k) if k.grad is None else k.grad.clone()
                         for k in ctx.keys]
        assert all(torch.equal(a, b) for a, b in zip(ctx.params, y)), "not restored"
        torch._foreach_copy_(ctx.params, x)
        self.records.append(rec)


def test_rewritten_closure_evaluates_the_sam_objective():
    rho, lr = 0.2, 0.05
    probe = ClosureProbe()
    ps = make_params(0, torch.float64)
    opt = ob.Modular(ps, m.SAM(rho), probe, m.LR(lr))
    calls = []
    closure = _closure(ps, opt, calls)
    for _ in range(5):
        opt.step(closure)
    # per step: engine's g(x), SAM's g(x+e) | probe: f(x+e), f(y+e(x)), g(y) and g(y+e(y))
    assert calls == [True, True, False, False, True, True] * 5
    assert (opt.evals.loss_and_grad, opt.evals.loss) == (20, 10)
    for rec in probe.records:
        x, y = rec["x"][:4], rec["y"][:4]
        _, g = _grad(x)
        e = _sam_e(x, g, rho, 2, False)
        f_sam, g_sam = _grad([a + b for a, b in zip(x, e)])
        assert rec["loss"] == pytest.approx(f_sam, rel=1e-12)
        assert rec["f0"] == pytest.approx(f_sam, rel=1e-12)
        for u, gs in zip(rec["update"], g_sam):
            torch.testing.assert_close(u, gs, rtol=1e-12, atol=1e-14)
        # loss-only: the perturbation of the start point, no backward pass
        f_y, _ = _grad([a + b for a, b in zip(y, e)])
        assert rec["fy"] == pytest.approx(f_y, rel=1e-12)
        # with gradients: the perturbation of y itself
        _, g_at_y = _grad(y)
        e_y = _sam_e(y, g_at_y, rho, 2, False)
        f_ye, g_ye = _grad([a + b for a, b in zip(y, e_y)])
        assert rec["fy_backward"] == pytest.approx(f_ye, rel=1e-12)
        for a, b in zip(rec["grad_y"], g_ye):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_sam_with_zero_argument_closure():
    ps = make_params(0, torch.float64)
    opt = ob.Modular(ps, m.SAM(0.05), m.LR(0.1))

    def closure():
        opt.zero_grad()
        loss = loss_fn(ps)
        loss.backward()
        return loss

    for _ in range(10):
        opt.step(closure)
    ref, _ = _sam_reference(0.05, 2, 0.1, adaptive=False, steps=10)
    _assert_close_traj([[p.detach() for p in ps[:4]]], [ref[-1]])

    ps = make_params(0, torch.float64)
    opt = ob.Modular(ps, m.SAM(0.05), ClosureProbe(), m.LR(0.1))
    with pytest.raises(ClosureError, match=r"^SAM: .*loss-only"):
        opt.step(closure)
    start = make_params(0, torch.float64)
    assert all(torch.equal(p, s) for p, s in zip(ps, start)), "parameters not restored"


def test_sam_needs_a_closure():
    ps = make_params(0)
    opt = ob.Modular(ps, m.SAM(), m.LR(0.1))
    loss_fn(ps).backward()
    with pytest.raises(ClosureError, match="SAM"):
        opt.step()


# ------------------------------------------------------------------------------------- MSAM
def test_msam_sgd_matches_the_paper_algorithm():
    """MSAM([HeavyBall(mu), LR(lr)], momentum=mu): w <- w - lr v, x = w - rho v/|v|."""
    mu, rho, lr = 0.9, 0.3, 0.02
    msam = m.MSAM([m.HeavyBall(mu), m.LR(lr)], momentum=mu, rho=rho)
    ps, opt, ours, _ = _run(lambda: [msam])
    w = [x.detach() for x in make_params(0, torch.float64)[:4]]
    v = [torch.zeros_like(x) for x in w]
    x = [t.clone() for t in w]
    for i in range(STEPS):
        _, g = _grad(x)
        v = [mu * vi + gi for vi, gi in zip(v, g)]
        w = [wi - lr * vi for wi, vi in zip(w, v)]
        norm = math.sqrt(sum(float((vi**2).sum()) for vi in v))
        x = [wi - rho * vi / norm for wi, vi in zip(w, v)]
        for j in range(4):
            torch.testing.assert_close(ours[i][j], x[j], rtol=1e-10, atol=1e-12)
    for a, b in zip(msam.unperturbed_params(), w):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert opt.evals.loss_and_grad == STEPS  # no extra evaluation


@pytest.mark.parametrize("kw", [dict(), dict(lerp=True), dict(nesterov=True),
                                dict(nesterov=True, lerp=True, weight_decay=0.01),
                                dict(weight_decay=0.1, momentum=0.5, rho=1.0)])
def test_msam_matches_its_formula(kw):
    lr = 0.03
    mu, rho, wd = kw.get("momentum", 0.9), kw.get("rho", 0.3), kw.get("weight_decay", 0.0)
    _, _, ours, _ = _run(lambda: [m.MSAM(m.LR(lr), **kw)])
    x = [t.detach() for t in make_params(0, torch.float64)[:4]]
    v = [torch.zeros_like(t) for t in x]
    a = [torch.zeros_like(t) for t in x]
    for i in range(STEPS):
        _, g = _grad(x)
        c = (1 - mu) if kw.get("lerp") else 1.0
        v = [mu * vi + c * gi for vi, gi in zip(v, g)]
        n = [c * gi + mu * vi for gi, vi in zip(g, v)] if kw.get("nesterov") else v
        norm = math.sqrt(sum(float((t**2).sum()) for t in n))
        a_new = [rho * t / norm for t in n]
        u = [lr * gi + an - ao + wd * (xi + ao) for gi, an, ao, xi in zip(g, a_new, a, x)]
        x = [xi - ui for xi, ui in zip(x, u)]
        a = a_new
        for j in range(4):
            torch.testing.assert_close(ours[i][j], x[j], rtol=1e-10, atol=1e-12)


def test_msam_with_adam_inside_matches_torch_adam_on_the_weights():
    lr, rho, mu = 0.01, 0.5, 0.8
    _, _, ours, _ = _run(lambda: [m.MSAM([m.Adam(), m.LR(lr)], momentum=mu, rho=rho)], steps=30)
    w = [t.detach().clone().requires_grad_() for t in make_params(0, torch.float64)[:4]]
    adam = torch.optim.Adam(w, lr=lr)
    v = [torch.zeros_like(t) for t in w]
    x = [t.detach().clone() for t in w]
    for i in range(30):
        _, g = _grad(x)
        for wi, gi in zip(w, g):
            wi.grad = gi
        adam.step()
        v = [mu * vi + gi for vi, gi in zip(v, g)]
        norm = math.sqrt(sum(float((t**2).sum()) for t in v))
        x = [wi.detach() - rho * vi / norm for wi, vi in zip(w, v)]
        for j in range(4):
            torch.testing.assert_close(ours[i][j], x[j], rtol=1e-9, atol=1e-11)


def test_msam_state_checkpoint_roundtrip():
    def make(ps):
        return ob.Modular(ps, m.MSAM([m.HeavyBall(0.9), m.LR(0.02)], rho=0.2))

    ps = make_params(0, torch.float64)
    opt = make(ps)
    closure = _closure(ps, opt)
    for _ in range(5):
        opt.step(closure)
    sd = opt.state_dict()
    ps2 = [p.detach().clone().requires_grad_() for p in ps]
    opt2 = make(ps2)
    opt2.load_state_dict(sd)
    closure2 = _closure(ps2, opt2)
    for _ in range(5):
        opt.step(closure)
        opt2.step(closure2)
    for a, b in zip(ps, ps2):
        assert torch.equal(a, b)


# ------------------------------------------------------------------- WeightDropout, Perturb
def _random_point_reference(seed, draw, lr, steps=STEPS):
    torch.manual_seed(seed)
    xs = [x.detach() for x in make_params(0, torch.float64)]
    out = []
    for _ in range(steps):
        moved = draw(xs)  # draws for all five tensors, in order, like the module
        _, g = _grad(moved[:4])
        xs = [x - lr * gi for x, gi in zip(xs, g)] + xs[4:]
        out.append(xs)
    return out


def _run_seeded(seed, modules, steps=STEPS):
    torch.manual_seed(seed)
    return _run(lambda: modules, steps=steps)


@pytest.mark.parametrize("p", [0.5, 0.1])
def test_weight_dropout_matches_reference_with_same_masks(p):
    lr = 0.05
    ps, opt, ours, _ = _run_seeded(3, [m.WeightDropout(p), m.LR(lr)])
    ref = _random_point_reference(
        3, lambda xs: [x * (torch.rand_like(x) >= p) for x in xs], lr)
    _assert_close_traj(ours, ref, rtol=1e-12, atol=1e-14)
    assert torch.equal(ps[4], make_params(0, torch.float64)[4])
    assert (opt.evals.loss_and_grad, opt.evals.loss) == (STEPS, 0)  # no wasted evaluation


@pytest.mark.parametrize("kw", [dict(), dict(alpha=0.3, relative=False),
                                dict(distribution="uniform"),
                                dict(distribution="sphere", alpha=0.5)])
def test_perturb_weights_matches_reference_with_same_draws(kw):
    lr = 0.05
    alpha, relative = kw.get("alpha", 0.1), kw.get("relative", True)
    dist = kw.get("distribution", "normal")

    def draw(xs):
        out = []
        for x in xs:
            if dist == "uniform":
                z = torch.rand_like(x) * 2 - 1
            else:
                z = torch.randn_like(x)
                if dist == "sphere":
                    z = z / torch.linalg.vector_norm(z)
            z = z * alpha * (x.abs().mean() if relative else 1.0)
            out.append(x + z)
        return out

    _, opt, ours, _ = _run_seeded(5, [m.PerturbWeights(**kw), m.LR(lr)])
    ref = _random_point_reference(5, draw, lr)
    _assert_close_traj(ours, ref, rtol=1e-12, atol=1e-14)
    assert opt.evals.loss_and_grad == STEPS


def test_random_points_are_shared_by_the_step_and_restored():
    """One draw per step: every evaluation of a step sees the same changed weights; the group
    switch keeps a group's weights unchanged."""
    probe = ClosureProbe(shift=0.0)
    ps = make_params(0, torch.float64)
    groups = [{"params": ps[:2]}, {"params": ps[2:], "use_dropout": False}]
    opt = ob.Modular(groups, m.WeightDropout(0.5), probe, m.LR(0.0))
    torch.manual_seed(0)
    closure = _closure(ps, opt)
    for _ in range(3):
        opt.step(closure)
    for rec in probe.records:
        assert rec["f0"] == rec["fy"] == rec["fy_backward"] == rec["loss"]
    torch.manual_seed(0)
    masks = [torch.rand_like(x) >= 0.5 for x in ps[:2]]
    dropped = [x.detach() * mk for x, mk in zip(ps[:2], masks)] + [x.detach() for x in ps[2:]]
    assert probe.records[0]["loss"] == pytest.approx(float(loss_fn(dropped)), rel=1e-12)
    start = make_params(0, torch.float64)
    assert all(torch.equal(p, s) for p, s in zip(ps, start))  # lr 0: restored exactly


def test_random_points_need_a_closure_and_name_themselves():
    for mod in (m.WeightDropout(), m.PerturbWeights()):
        ps = make_params(0)
        opt = ob.Modular(ps, mod, m.LR(0.1))
        loss_fn(ps).backward()
        with pytest.raises(ClosureError, match=mod.name):
            opt.step()


# -------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("make,arg", [
    (lambda: m.SAM(rho=-0.1), "rho"),
    (lambda: m.SAM(p=1), "p"),
    (lambda: m.SAM(p=float("nan")), "p"),
    (lambda: m.SAM(eps=0.0), "eps"),
    (lambda: m.SAM(asam=1), "asam"),
    (lambda: m.ASAM(rho=float("inf")), "rho"),
    (lambda: m.MSAM(m.LR(0.1), momentum=1.0), "momentum"),
    (lambda: m.MSAM(m.LR(0.1), rho=-1), "rho"),
    (lambda: m.MSAM(m.LR(0.1), weight_decay=-1), "weight_decay"),
    (lambda: m.MSAM(m.LR(0.1), nesterov="yes"), "nesterov"),
    (lambda: m.WeightDropout(p=1.0), "p"),
    (lambda: m.WeightDropout(p=-0.1), "p"),
    (lambda: m.PerturbWeights(alpha=-1), "alpha"),
    (lambda: m.PerturbWeights(distribution="cauchy"), "distribution"),
])
def test_bad_hyperparameters(make, arg):
    owners = "SAM|ASAM|MSAM|WeightDropout|PerturbWeights"
    with pytest.raises(ValueError, match=rf"^({owners}): invalid {arg}="):
        make()


def test_msam_requires_modules_and_group_overrides_are_checked():
    with pytest.raises(TypeError, match="MSAM"):
        m.MSAM(None)
    ps = make_params(0)
    with pytest.raises(ValueError, match="SAM: invalid rho"):
        ob.Modular([{"params": ps, "rho": -1.0}], m.SAM(), m.LR(0.1))


def test_sam_modules_pickle():
    for mod in (m.SAM(0.1), m.ASAM(), m.WeightDropout(0.2), m.PerturbWeights()):
        clone = pickle.loads(pickle.dumps(mod))
        assert clone.defaults == mod.defaults
