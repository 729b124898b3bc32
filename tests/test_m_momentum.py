"""The momentum family against torch.optim.SGD and against plain per-tensor references."""

import math
from collections import deque

import pytest
import torch

import optbridge as ob
from optbridge import m
from trajectory import assert_same_trajectory, loss_fn, make_params

F64 = dict(dtype=torch.float64, rtol=1e-10, atol=1e-12, steps=50)
F32_SGD = (torch.float32, 1e-6, 1e-7)
F64_SGD = (torch.float64, 1e-12, 1e-13)


# --------------------------------------------------------------------------- reference harness
class Ref:
    """A straightforward optimizer: each stage maps (updates, grads, per-param states) to new
    updates with plain per-tensor loops; then ``p -= lr * update``."""

    def __init__(self, ps, *stages, lr):
        self.ps, self.stages, self.lr = ps, stages, lr
        self.state = {}

    def zero_grad(self):
        for p in self.ps:
            p.grad = None

    @torch.no_grad()
    def step(self):
        live = [i for i, p in enumerate(self.ps) if p.grad is not None]
        grads = [self.ps[i].grad.clone() for i in live]
        us = [g.clone() for g in grads]
        for k, stage in enumerate(self.stages):
            us = stage(us, grads, [self.state.setdefault((i, k), {}) for i in live])
        for i, u in zip(live, us):
            self.ps[i].sub_(self.lr * u)


def ref_adam(b1=0.9, b2=0.999, eps=1e-8):
    def stage(us, gs, sts):
        out = []
        for u, st in zip(us, sts):
            if not st:
                st.update(m=torch.zeros_like(u), v=torch.zeros_like(u), t=0)
            st["t"] += 1
            st["m"] = b1 * st["m"] + (1 - b1) * u
            st["v"] = b2 * st["v"] + (1 - b2) * u * u
            mhat = st["m"] / (1 - b1 ** st["t"])
            vhat = st["v"] / (1 - b2 ** st["t"])
            out.append(mhat / (vhat.sqrt() + eps))
        return out
    return stage


def ref_ema(beta, dampening=0.0, lerp=True, init="zeros", debias=False):
    def stage(us, gs, sts):
        out = []
        for u, st in zip(us, sts):
            if "b" not in st:
                st["t"] = 0
                if init == "update":
                    st["b"] = u.clone()
                else:
                    st["b"] = torch.zeros_like(u)
            if st["t"] > 0 or init == "zeros":
                w = (1 - beta) * (1 - dampening) if lerp else (1 - dampening)
                st["b"] = beta * st["b"] + w * u
            st["t"] += 1
            out.append(st["b"] / (1 - beta ** st["t"]) if debias else st["b"].clone())
        return out
    return stage


def ref_nag(beta, dampening=0.0, lerp=False):
    inner = ref_ema(beta, dampening, lerp, init="update")

    def stage(us, gs, sts):
        return [u + beta * b for u, b in zip(us, inner(us, gs, sts))]
    return stage


def ref_cautious(normalize=False, eps=1e-6, mode="zero", stats=None, reference=None):
    """``reference(us, gs)`` gives the sign reference (default: the gradient)."""
    def stage(us, gs, sts):
        refs = gs if reference is None else reference
        masks = [(u * r > 0).to(u.dtype) for u, r in zip(us, refs)]
        if stats is not None:
            stats["masked"] = stats.get("masked", 0) + sum(int((mk == 0).sum()) for mk in masks)
        out = []
        if mode == "zero":
            frac = sum(float(mk.sum()) for mk in masks) / sum(mk.numel() for mk in masks)
            scale = 1 / max(frac, eps) if normalize else 1.0
            out = [u * mk * scale for u, mk in zip(us, masks)]
        elif mode == "grad":
            out = [torch.where(mk > 0, u, r) for u, mk, r in zip(us, masks, refs)]
        else:
            out = [torch.where(mk > 0, u, -u) for u, mk in zip(us, masks)]
        return out
    return stage


def cos_sim(a, b, eps):
    dot = sum(float((x * y).sum()) for x, y in zip(a, b))
    na = math.sqrt(sum(float((x * x).sum()) for x in a))
    nb = math.sqrt(sum(float((y * y).sum()) for y in b))
    return dot / max(na * nb, eps)


def ref_grad_cosine(eps=1e-6, stats=None):
    def stage(us, gs, sts):
        c = cos_sim(us, gs, eps)
        if stats is not None:
            stats.setdefault("cos", []).append(c)
        return [u * c for u in us]
    return stage


def sub_states(sts, name):
    return [st.setdefault(name, {}) for st in sts]


def ref_modules_cosine(main, compare, eps=1e-6):
    def stage(us, gs, sts):
        a = main(us, gs, sub_states(sts, "main"))
        b = compare(us, gs, sub_states(sts, "compare"))
        c = cos_sim(a, b, eps)
        return [x * c for x in a]
    return stage


def ref_intermodule_cautious(main, compare, stats=None, **kw):
    def stage(us, gs, sts):
        a = main(us, gs, sub_states(sts, "main"))
        b = compare(us, gs, sub_states(sts, "compare"))
        return ref_cautious(stats=stats, reference=b, **kw)(a, gs, sts)
    return stage


def ref_window(n, reduce):
    def stage(us, gs, sts):
        out = []
        for u, st in zip(us, sts):
            h = st.setdefault("h", deque(maxlen=n))
            h.append(u.clone())
            out.append(reduce(list(h)))
        return out
    return stage


def ref_averaging(n):
    return ref_window(n, lambda h: sum(h) / len(h))


def ref_median(n):
    return ref_window(n, lambda h: torch.quantile(torch.stack(h), 0.5, dim=0))


def ref_weighted(weights):
    def reduce(h):
        w = list(weights)[-len(h):]
        return sum(wi * hi for wi, hi in zip(w, h)) / len(h)
    return ref_window(len(weights), reduce)


def ref_mars(beta=0.9, scaling=0.025, max_norm=1.0, stats=None):
    def stage(us, gs, sts):
        out = []
        for u, st in zip(us, sts):
            prev = st.get("prev", u)
            c = u + scaling * beta / (1 - beta) * (u - prev)
            st["prev"] = u.clone()
            if max_norm is not None:
                norm = float(c.norm())
                if norm > max_norm:
                    c = c * (max_norm / norm)
                    if stats is not None:
                        stats["clipped"] = stats.get("clipped", 0) + 1
            out.append(c)
        return out
    return stage


# ------------------------------------------------------------------------- torch.optim.SGD
@pytest.mark.parametrize("dtype,rtol,atol", [F32_SGD, F64_SGD])
def test_lr_alone_is_sgd(dtype, rtol, atol):
    assert_same_trajectory(
        lambda ps: torch.optim.SGD(ps, lr=0.02),
        lambda ps: ob.Modular(ps, m.LR(0.02)),
        dtype=dtype, rtol=rtol, atol=atol,
    )


@pytest.mark.parametrize("kw,prec", [
    (dict(momentum=0.9), F32_SGD),
    (dict(momentum=0.9, dampening=0.5), F32_SGD),
    (dict(momentum=0.0), F32_SGD),
    (dict(momentum=0.99), F64_SGD),
    (dict(momentum=0.9, dampening=0.3), F64_SGD),
])
def test_heavyball_is_sgd_momentum(kw, prec):
    kw = dict(kw)
    mu = kw.pop("momentum")
    dtype, rtol, atol = prec
    assert_same_trajectory(
        lambda ps: torch.optim.SGD(ps, lr=0.01, momentum=mu, **kw),
        lambda ps: ob.Modular(ps, m.HeavyBall(mu, **kw), m.LR(0.01)),
        dtype=dtype, rtol=rtol, atol=atol,
    )


@pytest.mark.parametrize("mu,prec", [(0.9, F32_SGD), (0.5, F32_SGD), (0.99, F64_SGD), (0.9, F64_SGD)])
def test_nag_is_sgd_nesterov(mu, prec):
    dtype, rtol, atol = prec
    assert_same_trajectory(
        lambda ps: torch.optim.SGD(ps, lr=0.01, momentum=mu, nesterov=True),
        lambda ps: ob.Modular(ps, m.NAG(mu), m.LR(0.01)),
        dtype=dtype, rtol=rtol, atol=atol,
    )


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_maximize_by_negative_step_size(nesterov):
    # No module here has ``maximize``: ascending is a final factor of -1 (StepSize, not LR).
    # Both ascend -loss (which stays bounded, unlike ascending the harness loss).
    def run(make_opt):
        ps = make_params(0)
        opt = make_opt(ps)
        out = []
        for _ in range(60):
            opt.zero_grad()
            (-loss_fn(ps)).backward()
            opt.step()
            out.append([p.detach().clone() for p in ps])
        return out

    ref = run(lambda ps: torch.optim.SGD(ps, lr=0.01, momentum=0.9, nesterov=nesterov, maximize=True))
    mod = m.NAG(0.9) if nesterov else m.HeavyBall(0.9)
    ours = run(lambda ps: ob.Modular(ps, mod, m.LR(0.01), m.StepSize(-1.0)))
    for a, b in zip(ref, ours):
        for x, y in zip(a, b):
            torch.testing.assert_close(y, x, rtol=1e-6, atol=1e-7)
    assert loss_fn(ref[-1]) < loss_fn(make_params(0)) - 1.0


@pytest.mark.parametrize("nesterov", [False, True])
def test_param_group_momentum_overrides_match_sgd(nesterov):
    def groups(ps):
        return [dict(params=ps[:2], momentum=0.5, lr=0.02), dict(params=ps[2:])]

    def ours(ps):
        mod = m.NAG(0.9) if nesterov else m.HeavyBall(0.9, dampening=0.0)
        return ob.Modular(groups(ps), mod, m.LR(0.01))

    assert_same_trajectory(
        lambda ps: torch.optim.SGD(groups(ps), lr=0.01, momentum=0.9, nesterov=nesterov),
        ours, dtype=torch.float64, rtol=1e-12, atol=1e-13,
    )


# -------------------------------------------------------------------------------- EMA family
@pytest.mark.parametrize("kw", [
    dict(momentum=0.8, dampening=0.2),
    dict(momentum=0.9, debias=True),
    dict(momentum=0.7, lerp=False, dampening=0.1, ema_init="update"),
    dict(momentum=0.95, ema_init="update", debias=True, dampening=0.3),
])
def test_ema_matches_reference(kw):
    k = dict(momentum=0.9, dampening=0.0, lerp=True, ema_init="zeros", debias=False) | kw
    assert_same_trajectory(
        lambda ps: Ref(ps, ref_ema(k["momentum"], k["dampening"], k["lerp"], k["ema_init"], k["debias"]), lr=0.05),
        lambda ps: ob.Modular(ps, m.EMA(**kw), m.LR(0.05)),
        **F64,
    )


@pytest.mark.parametrize("kw", [dict(lerp=True, debias=True), dict(ema_init="zeros", dampening=0.5)])
def test_heavyball_options_match_reference(kw):
    k = dict(momentum=0.9, dampening=0.0, lerp=False, ema_init="update", debias=False) | kw
    assert_same_trajectory(
        lambda ps: Ref(ps, ref_ema(k["momentum"], k["dampening"], k["lerp"], k["ema_init"], k["debias"]), lr=0.01),
        lambda ps: ob.Modular(ps, m.HeavyBall(**kw), m.LR(0.01)),
        **F64,
    )


@pytest.mark.parametrize("kw", [dict(momentum=0.9, dampening=0.3), dict(momentum=0.6, lerp=True, dampening=0.5)])
def test_nag_options_match_reference(kw):
    k = dict(dampening=0.0, lerp=False) | kw
    assert_same_trajectory(
        lambda ps: Ref(ps, ref_nag(k["momentum"], k["dampening"], k["lerp"]), lr=0.01),
        lambda ps: ob.Modular(ps, m.NAG(**kw), m.LR(0.01)),
        **F64,
    )


# ----------------------------------------------------------------------------------- cautious
@pytest.mark.parametrize("kw", [
    dict(),
    dict(normalize=True),
    dict(normalize=True, eps=0.9),
    dict(mode="grad"),
    dict(mode="backtrack"),
])
def test_cautious_adam_matches_reference(kw):
    stats = {}
    assert_same_trajectory(
        lambda ps: Ref(ps, ref_adam(), ref_cautious(stats=stats, **kw), lr=0.05),
        lambda ps: ob.Modular(ps, m.Adam(), m.Cautious(**kw), m.LR(0.05)),
        **F64,
    )
    assert stats["masked"] > 0, "the mask never removed anything; the test is vacuous"


@pytest.mark.parametrize("mode", ["zero", "backtrack"])
def test_cautious_heavyball_keeps_momentum_buffer_intact(mode):
    stats = {}
    assert_same_trajectory(
        lambda ps: Ref(ps, ref_ema(0.9, lerp=False, init="update"), ref_cautious(mode=mode, stats=stats), lr=0.01),
        lambda ps: ob.Modular(ps, m.HeavyBall(0.9), m.Cautious(mode=mode), m.LR(0.01)),
        **F64,
    )
    assert stats["masked"] > 0


@pytest.mark.parametrize("kw", [dict(), dict(normalize=True), dict(mode="grad")])
def test_intermodule_cautious_matches_reference(kw):
    stats = {}
    assert_same_trajectory(
        lambda ps: Ref(ps, ref_intermodule_cautious(ref_adam(), ref_ema(0.5, lerp=False, init="update"),
                                                    stats=stats, **kw), lr=0.02),
        lambda ps: ob.Modular(ps, m.IntermoduleCautious(m.Adam(), m.HeavyBall(0.5), **kw), m.LR(0.02)),
        **F64,
    )
    assert stats["masked"] > 0


# ------------------------------------------------------------------------------------ cosine
@pytest.mark.parametrize("eps", [1e-6, 100.0])
def test_scale_by_grad_cosine_matches_reference(eps):
    stats = {}
    assert_same_trajectory(
        lambda ps: Ref(ps, ref_adam(), ref_grad_cosine(eps, stats), lr=0.05),
        lambda ps: ob.Modular(ps, m.Adam(), m.ScaleByGradCosineSimilarity(eps), m.LR(0.05)),
        **F64,
    )
    assert min(stats["cos"]) < 0.9


def test_scale_by_grad_cosine_after_heavyball():
    assert_same_trajectory(
        lambda ps: Ref(ps, ref_ema(0.9, lerp=False, init="update"), ref_grad_cosine(), lr=0.01),
        lambda ps: ob.Modular(ps, m.HeavyBall(0.9), m.ScaleByGradCosineSimilarity(), m.LR(0.01)),
        **F64,
    )


@pytest.mark.parametrize("eps", [1e-6, 50.0])
def test_scale_modules_by_cosine_matches_reference(eps):
    assert_same_trajectory(
        lambda ps: Ref(ps, ref_modules_cosine(ref_adam(), ref_ema(0.9, lerp=False, init="update"), eps), lr=0.05),
        lambda ps: ob.Modular(ps, m.ScaleModulesByCosineSimilarity(m.Adam(), m.HeavyBall(0.9), eps),
                              m.LR(0.05)),
        **F64,
    )


# --------------------------------------------------------------------------------- averaging
@pytest.mark.parametrize("n", [1, 3, 7])
def test_averaging_matches_reference(n):
    assert_same_trajectory(
        lambda ps: Ref(ps, ref_averaging(n), lr=0.05),
        lambda ps: ob.Modular(ps, m.Averaging(n), m.LR(0.05)),
        **F64,
    )


@pytest.mark.parametrize("n", [4, 5])
def test_median_averaging_matches_reference(n):
    assert_same_trajectory(
        lambda ps: Ref(ps, ref_median(n), lr=0.05),
        lambda ps: ob.Modular(ps, m.MedianAveraging(n), m.LR(0.05)),
        **F64,
    )


@pytest.mark.parametrize("weights", [[1.0, 1.0, 1.0], torch.tensor([0.1, 0.0, 0.5, 2.0]), [3.0]])
def test_weighted_averaging_matches_reference(weights):
    w = weights.tolist() if isinstance(weights, torch.Tensor) else weights
    assert_same_trajectory(
        lambda ps: Ref(ps, ref_weighted(w), lr=0.05),
        lambda ps: ob.Modular(ps, m.WeightedAveraging(weights), m.LR(0.05)),
        **F64,
    )


def test_window_sizes_per_param_group():
    def groups(ps):
        return [dict(params=ps[:2], history_size=2), dict(params=ps[2:])]

    ref_a, ref_b = ref_averaging(2), ref_averaging(5)

    def mixed(us, gs, sts):
        # the first two parameters average over 2 updates, the others over 5
        return ref_a(us[:2], gs[:2], sts[:2]) + ref_b(us[2:], gs[2:], sts[2:])

    assert_same_trajectory(
        lambda ps: Ref(ps, mixed, lr=0.05),
        lambda ps: ob.Modular(groups(ps), m.Averaging(5), m.LR(0.05)),
        **F64,
    )


# -------------------------------------------------------------------------------------- MARS
@pytest.mark.parametrize("kw,clips", [
    (dict(), True),
    (dict(max_norm=None), False),
    (dict(beta=0.95, scaling=0.1, max_norm=3.0), True),
])
def test_mars_adam_matches_reference(kw, clips):
    k = dict(beta=0.9, scaling=0.025, max_norm=1.0) | kw
    stats = {}
    assert_same_trajectory(
        lambda ps: Ref(ps, ref_mars(k["beta"], k["scaling"], k["max_norm"], stats), ref_adam(b1=k["beta"]), lr=0.02),
        lambda ps: ob.Modular(ps, m.MARSCorrection(**kw), m.Adam(beta1=k["beta"]), m.LR(0.02)),
        **F64,
    )
    assert (stats.get("clipped", 0) > 0) == clips


def test_mars_heavyball_matches_reference():
    assert_same_trajectory(
        lambda ps: Ref(ps, ref_mars(0.9, 0.5, 2.0), ref_ema(0.9, lerp=True), lr=0.05),
        lambda ps: ob.Modular(ps, m.MARSCorrection(0.9, 0.5, 2.0), m.EMA(0.9), m.LR(0.05)),
        **F64,
    )


# ----------------------------------------------------- param groups and late-starting params
def test_cautious_settings_per_param_group():
    groups = lambda ps: [dict(params=ps[:2], mode="backtrack"), dict(params=ps[2:], normalize=True)]
    adam, hb = ref_adam(), ref_ema(0.5, lerp=False, init="update")

    def transform_ref(us, gs, sts):
        a = adam(us, gs, sts)
        return (ref_cautious(mode="backtrack")(a[:2], gs[:2], sts[:2])
                + ref_cautious(normalize=True)(a[2:], gs[2:], sts[2:]))

    def intermodule_ref(us, gs, sts):
        a = adam(us, gs, sub_states(sts, "main"))
        b = hb(us, gs, sub_states(sts, "compare"))
        return (ref_cautious(mode="backtrack", reference=b[:2])(a[:2], gs[:2], sts[:2])
                + ref_cautious(normalize=True, reference=b[2:])(a[2:], gs[2:], sts[2:]))

    assert_same_trajectory(
        lambda ps: Ref(ps, transform_ref, lr=0.05),
        lambda ps: ob.Modular(groups(ps), m.Adam(), m.Cautious(), m.LR(0.05)),
        **F64,
    )
    adam, hb = ref_adam(), ref_ema(0.5, lerp=False, init="update")
    assert_same_trajectory(
        lambda ps: Ref(ps, intermodule_ref, lr=0.05),
        lambda ps: ob.Modular(groups(ps), m.IntermoduleCautious(m.Adam(), m.HeavyBall(0.5)), m.LR(0.05)),
        **F64,
    )


def test_scale_modules_by_cosine_eps_per_param_group():
    # (Adam declares eps too, so it would see the group's eps: EMA is the main chain here)
    ema, hb = ref_ema(0.5), ref_ema(0.9, lerp=False, init="update")

    def ref(us, gs, sts):
        a = ema(us, gs, sub_states(sts, "main"))
        b = hb(us, gs, sub_states(sts, "compare"))
        c1, c2 = cos_sim(a[:2], b[:2], 1e-6), cos_sim(a[2:], b[2:], 20.0)
        return [x * c1 for x in a[:2]] + [x * c2 for x in a[2:]]

    assert_same_trajectory(
        lambda ps: Ref(ps, ref, lr=0.05),
        lambda ps: ob.Modular([dict(params=ps[:2]), dict(params=ps[2:], eps=20.0)],
                              m.ScaleModulesByCosineSimilarity(m.EMA(0.5), m.HeavyBall(0.9)), m.LR(0.05)),
        **F64,
    )


LATE = {
    "heavyball": (lambda: [m.HeavyBall(0.9, dampening=0.2)], lambda: [ref_ema(0.9, 0.2, False, "update")]),
    "ema_debias": (lambda: [m.EMA(0.8, debias=True)], lambda: [ref_ema(0.8, debias=True)]),
    "averaging": (lambda: [m.Averaging(3)], lambda: [ref_averaging(3)]),
    "weighted": (lambda: [m.WeightedAveraging([1.0, 0.0, 2.0])], lambda: [ref_weighted([1.0, 0.0, 2.0])]),
}


@pytest.mark.parametrize("name", sorted(LATE))
def test_parameter_joining_later_gets_fresh_state(name):
    """The fifth tensor gets gradients from step 10 on: its state (and step count) starts then,
    while the others' continue."""
    ours, ref = LATE[name]

    def run(make_opt):
        ps = make_params(4, torch.float64)
        opt = make_opt(ps)
        out = []
        for t in range(50):
            opt.zero_grad()
            loss = loss_fn(ps)
            if t >= 10:
                loss = loss + (torch.sin(3 * ps[4]) * ps[4]).sum()
            loss.backward()
            opt.step()
            out.append([p.detach().clone() for p in ps])
        return out

    a = run(lambda ps: Ref(ps, *ref(), lr=0.05))
    b = run(lambda ps: ob.Modular(ps, *ours(), m.LR(0.05)))
    for sa, sb in zip(a, b):
        for x, y in zip(sa, sb):
            torch.testing.assert_close(y, x, rtol=1e-10, atol=1e-12)
    assert not torch.equal(a[-1][4], a[9][4])


# -------------------------------------------------------------------------------- checkpoints
CHAINS = {
    "heavyball": lambda: [m.HeavyBall(0.9), m.LR(0.01)],
    "ema_debias": lambda: [m.EMA(0.9, debias=True), m.LR(0.01)],
    "nag": lambda: [m.NAG(0.9), m.LR(0.01)],
    "averaging": lambda: [m.Averaging(4), m.LR(0.05)],
    "median": lambda: [m.MedianAveraging(4), m.LR(0.05)],
    "weighted": lambda: [m.WeightedAveraging([0.5, 1.0, 2.0]), m.LR(0.05)],
    "mars": lambda: [m.MARSCorrection(), m.Adam(), m.LR(0.02)],
    "cautious": lambda: [m.Adam(), m.Cautious(normalize=True), m.LR(0.02)],
}


def _run(opt, ps, steps):
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(ps).backward()
        opt.step()


@pytest.mark.parametrize("name", sorted(CHAINS))
def test_checkpoint_resume_is_exact(name):
    ps = make_params(1)
    opt = ob.Modular(ps, *CHAINS[name]())
    _run(opt, ps, 10)
    sd = opt.state_dict()
    ps2 = [p.detach().clone().requires_grad_() for p in ps]
    opt2 = ob.Modular(ps2, *CHAINS[name]())
    opt2.load_state_dict(sd)
    _run(opt, ps, 7)
    _run(opt2, ps2, 7)
    for a, b in zip(ps, ps2):
        assert torch.equal(a, b)


def test_history_size_change_restarts_window():
    ps = make_params(2)
    opt = ob.Modular(ps, m.Averaging(3), m.LR(0.05))
    _run(opt, ps, 5)
    opt.param_groups[0]["history_size"] = 2
    _run(opt, ps, 1)
    st = opt.state[ps[0]]
    (state,) = st.values()
    assert state["history"].shape[0] == 2 and state["step"] == 1


def test_stateful_outputs_are_not_corrupted_by_inplace_consumers():
    # ScaleByGradCosineSimilarity writes into its input; the EMA buffer it receives must be copied
    ps = make_params(3)
    ema = m.EMA(0.5)
    opt = ob.Modular(ps, ema, m.ScaleByGradCosineSimilarity(), m.LR(0.1))
    expected = [torch.zeros_like(p) for p in ps[:4]]
    for _ in range(4):
        opt.zero_grad()
        loss_fn(ps).backward()
        expected = [0.5 * e + 0.5 * p.grad for e, p in zip(expected, ps[:4])]
        opt.step()
    for e, p in zip(expected, ps[:4]):
        torch.testing.assert_close(opt.state[p][ema.key]["momentum_buffer"], e)


# -------------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("make,name,arg", [
    (lambda: m.EMA(momentum=1.0), "EMA", "momentum"),
    (lambda: m.EMA(dampening=1.5), "EMA", "dampening"),
    (lambda: m.EMA(ema_init="ones"), "EMA", "ema_init"),
    (lambda: m.EMA(debias=1), "EMA", "debias"),
    (lambda: m.HeavyBall(momentum=-0.1), "HeavyBall", "momentum"),
    (lambda: m.HeavyBall(lerp="yes"), "HeavyBall", "lerp"),
    (lambda: m.NAG(momentum=float("nan")), "NAG", "momentum"),
    (lambda: m.NAG(dampening=-1), "NAG", "dampening"),
    (lambda: m.Cautious(mode="flip"), "Cautious", "mode"),
    (lambda: m.Cautious(eps=0.0), "Cautious", "eps"),
    (lambda: m.Cautious(normalize=None), "Cautious", "normalize"),
    (lambda: m.IntermoduleCautious(m.Adam(), m.EMA(), mode="x"), "IntermoduleCautious", "mode"),
    (lambda: m.ScaleByGradCosineSimilarity(eps=-1.0), "ScaleByGradCosineSimilarity", "eps"),
    (lambda: m.ScaleModulesByCosineSimilarity(m.Adam(), m.EMA(), eps=0), "ScaleModulesByCosineSimilarity", "eps"),
    (lambda: m.Averaging(0), "Averaging", "history_size"),
    (lambda: m.Averaging(2.0), "Averaging", "history_size"),
    (lambda: m.MedianAveraging(-3), "MedianAveraging", "history_size"),
    (lambda: m.WeightedAveraging([]), "WeightedAveraging", "weights"),
    (lambda: m.WeightedAveraging([1.0, float("inf")]), "WeightedAveraging", "weights"),
    (lambda: m.WeightedAveraging(3), "WeightedAveraging", "weights"),
    (lambda: m.MARSCorrection(beta=1.0), "MARSCorrection", "beta"),
    (lambda: m.MARSCorrection(scaling=float("nan")), "MARSCorrection", "scaling"),
    (lambda: m.MARSCorrection(max_norm=0.0), "MARSCorrection", "max_norm"),
])
def test_invalid_hyperparameters_raise(make, name, arg):
    with pytest.raises(ValueError, match=rf"{name}: invalid {arg}="):
        make()


def test_invalid_group_override_raises():
    ps = make_params(0)
    with pytest.raises(ValueError, match=r"HeavyBall: invalid momentum="):
        ob.Modular([dict(params=ps, momentum=1.5)], m.HeavyBall(), m.LR(0.1))
    with pytest.raises(ValueError, match=r"Averaging: invalid history_size="):
        ob.Modular([dict(params=ps, history_size=0)], m.Averaging(3), m.LR(0.1))


def test_children_must_be_modules():
    with pytest.raises(TypeError):
        m.ScaleModulesByCosineSimilarity(m.Adam, m.EMA())
