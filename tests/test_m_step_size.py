import copy
import math

import pytest
import torch

import optbridge as ob
from optbridge import m
from trajectory import assert_same_trajectory, loss_fn, make_params

F64 = dict(dtype=torch.float64, rtol=1e-12, atol=1e-13)


class Reference(torch.optim.Optimizer):
    """Straightforward optimizer for tests: ``rule(params, grads, state, loss)`` with per-tensor
    loops; ``state`` has one dict per parameter and ``state["global"]``."""

    def __init__(self, params, rule):
        super().__init__(params, {})
        self.rule = rule
        self.shared: dict = {}

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        ps = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        self.rule(ps, [p.grad for p in ps], self.shared, loss)
        return loss


def dot(a, b):
    return sum((x * y).sum() for x, y in zip(a, b))


def ramp(t, steps, start, end):
    return start + (end - start) * min(t, steps) / steps


class WithScheduler:
    """A torch optimizer whose LambdaLR scheduler steps after every optimizer step."""

    def __init__(self, opt, lambdas):
        self.opt = opt
        self.sched = torch.optim.lr_scheduler.LambdaLR(opt, lambdas)

    def zero_grad(self):
        self.opt.zero_grad()

    def step(self, closure=None):
        self.opt.step(closure)
        self.sched.step()


# ------------------------------------------------------------------------------------ Warmup
@pytest.mark.parametrize("steps,start,end,dtype", [
    (10, 1e-5, 1.0, torch.float32),
    (100, 0.1, 2.0, torch.float64),
])
def test_warmup_matches_adam_with_lambda_lr(steps, start, end, dtype):
    tol = F64 if dtype == torch.float64 else dict(rtol=1e-6, atol=1e-7)
    assert_same_trajectory(
        lambda ps: WithScheduler(torch.optim.Adam(ps, lr=0.02),
                                 lambda t: ramp(t, steps, start, end)),
        lambda ps: ob.Modular(ps, m.Adam(), m.LR(0.02), m.Warmup(steps, start, end)),
        **{**tol, "dtype": dtype},
    )


def test_warmup_per_param_group_settings():
    def groups(ps):
        return [dict(params=ps[:2], start_lr=0.5, steps=5), dict(params=ps[2:])]

    assert_same_trajectory(
        lambda ps: WithScheduler(torch.optim.SGD([{"params": ps[:2]}, {"params": ps[2:]}], lr=0.05),
                                 [lambda t: ramp(t, 5, 0.5, 1.0), lambda t: ramp(t, 20, 0.1, 1.0)]),
        lambda ps: ob.Modular(groups(ps), m.Warmup(20, 0.1, 1.0), m.LR(0.05)),
        **F64,
    )


# ---------------------------------------------------------------------------- WarmupNormClip
@pytest.mark.parametrize("steps,start,end", [(30, 0.05, 5.0), (10, 1e-5, 1.0)])
def test_warmup_norm_clip_matches_reference(steps, start, end):
    scale, lr = 3.0, 0.05
    clipped = []

    def rule(ps, gs, shared, loss):
        t = shared.get("t", 0)
        shared["t"] = t + 1
        u = [scale * g for g in gs]
        if t <= steps:
            cap = ramp(t, steps, start, end)
            norm = math.sqrt(sum(float((x * x).sum()) for x in u))
            clipped.append(norm > cap)
            if norm > cap:
                u = [x * (cap / norm) for x in u]
        for p, x in zip(ps, u):
            p.sub_(lr * x)

    assert_same_trajectory(
        lambda ps: Reference(ps, rule),
        lambda ps: ob.Modular(ps, m.StepSize(scale), m.WarmupNormClip(steps, start, end), m.LR(lr)),
        steps=50, **F64,
    )
    assert any(clipped)


# ---------------------------------------------------------------------------- PolyakStepSize
def _quadratic(n=20, seed=0, f_star=1.5):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(n, generator=g, dtype=torch.float64) * 9 + 1
    c = torch.randn(n, generator=g, dtype=torch.float64)
    return (lambda x: 0.5 * (a * (x - c) ** 2).sum() + f_star), (lambda x: a * (x - c))


def _run_closure(opt, x, f, steps):
    out = []
    for _ in range(steps):
        def closure(backward=True):
            loss = f(x)
            if backward:
                opt.zero_grad()
                loss.backward()
            return loss
        opt.step(closure)
        out.append(x.detach().clone())
    return out


def test_polyak_on_quadratic_matches_textbook_and_converges():
    f_star = 1.5
    f, grad = _quadratic(f_star=f_star)
    x = torch.zeros(20, dtype=torch.float64, requires_grad=True)
    opt = ob.Modular([x], m.PolyakStepSize(f_star=f_star))
    ours = _run_closure(opt, x, f, 50)
    ref = torch.zeros(20, dtype=torch.float64)
    for k in range(50):
        g = grad(ref)
        ref = ref - (f(ref) - f_star) / g.dot(g) * g
        torch.testing.assert_close(ours[k], ref, rtol=1e-12, atol=1e-13)
    assert f(x.detach()) - f_star < 1e-12 * (f(torch.zeros(20, dtype=torch.float64)) - f_star)
    assert opt.evals.loss == 0 and opt.evals.loss_and_grad == 50


# Polyak with a fixed f* on this non-convex loss is chaotic (rounding differences grow to O(1)
# within 50 steps whatever the implementation); the fixed-f* formula is pinned on the quadratic
# above, the trajectory cases here use the adaptive target level.
@pytest.mark.parametrize("kw,pre", [
    (dict(f_star=None, y=2.0, y_decay=0.1), 1.0),
    (dict(f_star=None, y=1.0, y_decay=0.05, max=0.005, alpha=0.8), 1.0),
    (dict(f_star=None, y=3.0, y_decay=0.05, max=0.1), 1.0),
    (dict(f_star=None, y=1.0, y_decay=0.02, use_grad=False), 2.0),
])
def test_polyak_matches_reference(kw, pre):
    s = dict(dict(f_star=0.0, y=1.0, y_decay=1e-3, max=None, use_grad=True, alpha=1.0), **kw)
    capped = []

    def rule(ps, gs, shared, loss):
        loss = float(loss)
        u = [pre * g for g in gs]
        shared["best"] = min(shared.get("best", loss), loss)
        gap = shared.get("gap", s["y"])
        shared["gap"] = gap * (1 - s["y_decay"])
        f_star = shared["best"] - gap
        den = float(dot(u, gs if s["use_grad"] else u))
        eta = max(0.0, (loss - f_star) / den) if den > 0 else 0.0
        if s["max"] is not None:
            capped.append(eta > s["max"])
            eta = min(eta, s["max"])
        for p, x in zip(ps, u):
            p.sub_(s["alpha"] * eta * x)

    chain = [m.PolyakStepSize(**kw)] if pre == 1.0 else [m.StepSize(pre), m.PolyakStepSize(**kw)]
    assert_same_trajectory(
        lambda ps: Reference(ps, rule),
        lambda ps: ob.Modular(ps, *chain),
        steps=50, closure=True, **F64,
    )
    if capped:
        assert 0 < sum(capped[:50]) < 50  # the cap and the formula both decide some steps


def test_polyak_without_closure_names_itself():
    ps = make_params(0)
    opt = ob.Modular(ps, m.PolyakStepSize())
    loss_fn(ps).backward()
    with pytest.raises(ob.ClosureError, match="PolyakStepSize.*closure"):
        opt.step()


# ---------------------------------------------------------------------------- BarzilaiBorwein
def _bb_textbook(s, y, kind):
    sy, ss, yy = s.dot(y), s.dot(s), y.dot(y)
    return {"long": ss / sy, "short": sy / yy, "geom": (ss / yy).sqrt()}[kind]


@pytest.mark.parametrize("kind", ["long", "short", "geom"])
def test_barzilai_borwein_on_quadratic_matches_textbook_and_converges(kind):
    f, grad = _quadratic(seed=1)
    x = torch.zeros(20, dtype=torch.float64, requires_grad=True)
    alpha_0 = 0.05
    opt = ob.Modular([x], m.BarzilaiBorwein(type=kind, alpha_0=alpha_0))
    ours = _run_closure(opt, x, f, 50)
    ref, prev = torch.zeros(20, dtype=torch.float64), None
    for k in range(50):
        g = grad(ref)
        if prev is None:
            eta = alpha_0
        else:  # once converged, s = y = 0 and the fallback step size (1e-3) multiplies g = 0
            s, y = ref - prev[0], g - prev[1]
            eta = _bb_textbook(s, y, kind) if s.dot(y) > 0 else 1e-3
        prev = (ref, g)
        ref = ref - eta * g
        torch.testing.assert_close(ours[k], ref, rtol=1e-12, atol=1e-13)
    assert grad(x.detach()).norm() < 1e-8 * grad(torch.zeros(20, dtype=torch.float64)).norm()


def _bb_rule(kind, alpha_0, fallback, pre=1.0, use_grad=True, post=1.0):
    def rule(ps, gs, shared, loss):
        vs = gs if use_grad else [pre * g for g in gs]
        if "prev" not in shared:
            eta = alpha_0
        else:
            s = [p - q for p, q in zip(ps, shared["prev"][0])]
            y = [g - q for g, q in zip(vs, shared["prev"][1])]
            sy, ss, yy = float(dot(s, y)), float(dot(s, s)), float(dot(y, y))
            eta = {"long": lambda: ss / sy, "short": lambda: sy / yy,
                   "geom": lambda: math.sqrt(ss / yy)}[kind]() if sy > 0 else fallback
            shared["fallbacks"] = shared.get("fallbacks", 0) + (sy <= 0)
        shared["prev"] = ([p.clone() for p in ps], [v.clone() for v in vs])
        for p, g in zip(ps, gs):
            p.sub_(eta * post * pre * g)
    return rule


# On this non-convex loss the "long" and "short" variants are chaotic (rounding differences grow
# to O(1e-4) within 50 steps); they are pinned on the quadratic above.
@pytest.mark.parametrize("kind,alpha_0,fallback", [("geom", 0.05, 1e-3), ("geom", 0.01, 0.02)])
def test_barzilai_borwein_matches_reference(kind, alpha_0, fallback):
    rule = _bb_rule(kind, alpha_0, fallback)
    assert_same_trajectory(
        lambda ps: Reference(ps, rule),
        lambda ps: ob.Modular(ps, m.BarzilaiBorwein(kind, alpha_0=alpha_0, fallback=fallback)),
        steps=50, **F64,
    )


def test_barzilai_borwein_fallback_on_negative_curvature():
    # f = -x^2/2 + x^4/4 starting near the local maximum: s^T y < 0 on the first pairs
    x = torch.tensor([0.1, -0.2], dtype=torch.float64, requires_grad=True)
    opt = ob.Modular([x], m.BarzilaiBorwein("long", alpha_0=0.5, fallback=0.25))
    ref = x.detach().clone()
    prev = None
    used_fallback = False
    for _ in range(50):
        opt.zero_grad()
        (-(x**2) / 2 + x**4 / 4).sum().backward()
        opt.step()
        g = -ref + ref**3
        if prev is None:
            eta = 0.5
        else:
            s, y = ref - prev[0], g - prev[1]
            used_fallback |= bool(s.dot(y) <= 0)
            eta = s.dot(s) / s.dot(y) if s.dot(y) > 0 else 0.25
        prev = (ref, g)
        ref = ref - eta * g
        torch.testing.assert_close(x.detach(), ref, rtol=1e-10, atol=1e-12)
    assert used_fallback
    torch.testing.assert_close(x.detach().abs(), torch.ones(2, dtype=torch.float64))


def test_barzilai_borwein_inner_and_update_differences():
    rule = _bb_rule("geom", 0.01, 1e-3, pre=2.0, use_grad=False, post=0.5)
    assert_same_trajectory(
        lambda ps: Reference(ps, rule),
        lambda ps: ob.Modular(ps, m.StepSize(2.0), m.BarzilaiBorwein(
            alpha_0=0.01, use_grad=False, inner=m.StepSize(0.5))),
        steps=50, dtype=torch.float64, rtol=1e-9, atol=1e-11,
    )


# -------------------------------------------------------------------------- checkpoint, errors
@pytest.mark.parametrize("make", [
    lambda: [m.BarzilaiBorwein("long", alpha_0=0.01)],
    lambda: [m.PolyakStepSize(f_star=None, y=0.5)],
    lambda: [m.Adam(), m.WarmupNormClip(20, 0.01, 1.0), m.LR(0.05), m.Warmup(15)],
])
def test_resume_from_state_dict(make):
    def run(opt, ps, n):
        for _ in range(n):
            def closure(backward=True):
                loss = loss_fn(ps)
                if backward:
                    opt.zero_grad()
                    loss.backward()
                return loss
            opt.step(closure)

    ps = make_params(0, torch.float64)
    opt = ob.Modular(ps, *make())
    run(opt, ps, 8)
    saved = copy.deepcopy(opt.state_dict())  # torch's state_dict shares the state tensors
    start = [p.detach().clone() for p in ps]
    run(opt, ps, 8)
    qs = [p.detach().clone().requires_grad_() for p in start]
    opt2 = ob.Modular(qs, *make())
    opt2.load_state_dict(saved)
    run(opt2, qs, 8)
    for p, q in zip(ps, qs):
        torch.testing.assert_close(q.detach(), p.detach(), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("cls,kw,arg", [
    (m.Warmup, dict(steps=0), "steps"),
    (m.Warmup, dict(steps=2.5), "steps"),
    (m.Warmup, dict(start_lr=-1.0), "start_lr"),
    (m.Warmup, dict(end_lr=float("nan")), "end_lr"),
    (m.WarmupNormClip, dict(start_norm=0.0), "start_norm"),
    (m.WarmupNormClip, dict(end_norm=-1.0), "end_norm"),
    (m.WarmupNormClip, dict(steps=-3), "steps"),
    (m.PolyakStepSize, dict(f_star="zero"), "f_star"),
    (m.PolyakStepSize, dict(y=0.0), "y"),
    (m.PolyakStepSize, dict(y_decay=1.0), "y_decay"),
    (m.PolyakStepSize, dict(max=0.0), "max"),
    (m.PolyakStepSize, dict(use_grad="yes"), "use_grad"),
    (m.PolyakStepSize, dict(alpha=-1.0), "alpha"),
    (m.BarzilaiBorwein, dict(type="bb1"), "type"),
    (m.BarzilaiBorwein, dict(alpha_0=0.0), "alpha_0"),
    (m.BarzilaiBorwein, dict(fallback=-1e-3), "fallback"),
    (m.BarzilaiBorwein, dict(use_grad=1), "use_grad"),
])
def test_bad_hyperparameters_raise(cls, kw, arg):
    with pytest.raises(ValueError, match=f"^{cls.__name__}: invalid {arg}="):
        cls(**kw)


def test_bad_param_group_override_raises():
    ps = make_params(0)
    with pytest.raises(ValueError, match="BarzilaiBorwein.*alpha_0"):
        ob.Modular([dict(params=ps, alpha_0=-1.0)], m.BarzilaiBorwein())


@pytest.mark.parametrize("make,key", [
    (lambda: m.BarzilaiBorwein(), "alpha_0"),
    (lambda: m.WarmupNormClip(), "end_norm"),
    (lambda: m.PolyakStepSize(), "f_star"),
])
def test_global_settings_must_agree_across_groups(make, key):
    ps = make_params(0)
    opt = ob.Modular([dict(params=ps[:2], **{key: 0.5}), dict(params=ps[2:])], make())
    loss_fn(ps).backward()
    with pytest.raises(ValueError, match=f"{make().name}: {key} must be the same"):
        opt.step(lambda backward=True: loss_fn(ps))


def _no_python_sync(monkeypatch):
    """Make every Python-level conversion of a tensor to a host value raise (a CPU stand-in for
    a device-to-host sync)."""
    def refuse(*args, **kwargs):
        raise AssertionError("host sync: a tensor was converted to a Python value")
    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, refuse)


@pytest.mark.parametrize("make", [
    lambda: [m.PolyakStepSize()],
    lambda: [m.PolyakStepSize(f_star=None, max=0.1, use_grad=False)],
    lambda: [m.BarzilaiBorwein("long")],
    lambda: [m.Adam(), m.BarzilaiBorwein("short", inner=m.StepSize(0.5))],
    lambda: [m.Adam(), m.WarmupNormClip(3, 0.01, 1.0), m.LR(0.1), m.Warmup(2)],
])
def test_tensor_step_sizes_do_not_sync(make, monkeypatch):
    ps = make_params(0)
    opt = ob.Modular(ps, *make())

    def closure(backward=True):
        loss = loss_fn(ps)
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss

    with monkeypatch.context() as mp:
        _no_python_sync(mp)
        for _ in range(5):
            opt.step(closure)
    assert all(torch.isfinite(p).all() for p in ps)
