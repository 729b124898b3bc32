"""Lion, Adan, LaProp, ADOPT, AdEMAMix, SignSGD and Signum against float64 per-tensor
re-implementations of the official code of each method."""

import math

import pytest
import torch

import optbridge as ob
from optbridge import m
from optbridge.m.adaptive.adan import Adan
from optbridge.m.adaptive.ademamix import AdEMAMix, ademamix_alpha, ademamix_beta3
from optbridge.m.adaptive.adopt import ADOPT
from optbridge.m.adaptive.laprop import LaProp
from optbridge.m.adaptive.lion import Lion
from optbridge.m.adaptive.sign import Signum, SignSGD
from trajectory import assert_same_trajectory, loss_fn, make_params

F64 = dict(dtype=torch.float64, rtol=1e-9, atol=1e-11, steps=50)


class Reference(torch.optim.Optimizer):
    """Per-tensor loop over parameters with a gradient; hyperparameters read from the group."""

    def __init__(self, params, **defaults):
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self.update(p, p.grad, self.state[p], group)

    def update(self, p, g, state, group):
        raise NotImplementedError


class RefLion(Reference):
    """google/automl lion_pytorch.py."""

    def update(self, p, g, st, h):
        if not st:
            st["exp_avg"] = torch.zeros_like(p)
        m_ = st["exp_avg"]
        u = m_ * h["beta1"] + g * (1 - h["beta1"])
        p.add_(torch.sign(u), alpha=-h["lr"])
        m_.mul_(h["beta2"]).add_(g, alpha=1 - h["beta2"])


class RefAdan(Reference):
    """sail-sg/Adan _single_tensor_adan, weight_decay=0, per-parameter step."""

    def update(self, p, g, st, h):
        b1, b2, b3, lr, eps = h["beta1"], h["beta2"], h["beta3"], h["lr"], h["eps"]
        if not st:
            st.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p),
                      exp_avg_diff=torch.zeros_like(p), neg_pre_grad=-g.clone())
        st["step"] += 1
        t = st["step"]
        bc1, bc2, bc3 = 1 - b1**t, 1 - b2**t, 1 - b3**t
        neg = st["neg_pre_grad"]
        neg.add_(g)
        st["exp_avg"].mul_(b1).add_(g, alpha=1 - b1)
        st["exp_avg_diff"].mul_(b2).add_(neg, alpha=1 - b2)
        neg.mul_(b2).add_(g)
        st["exp_avg_sq"].mul_(b3).addcmul_(neg, neg, value=1 - b3)
        denom = (st["exp_avg_sq"].sqrt() / math.sqrt(bc3)).add_(eps)
        p.addcdiv_(st["exp_avg"], denom, value=-lr / bc1)
        p.addcdiv_(st["exp_avg_diff"], denom, value=-lr * b2 / bc2)
        neg.zero_().add_(g, alpha=-1.0)


class RefLaProp(Reference):
    """Z-T-WANG/LaProp-Optimizer laprop.py (lr folded into the momentum), weight_decay=0, with
    its centered branch written as intended."""

    def update(self, p, g, st, h):
        b1, b2, lr, eps = h["beta1"], h["beta2"], h["lr"], h["eps"]
        if not st:
            st.update(step=0, exp_avg=torch.zeros_like(p), lr1=0.0, lr2=0.0,
                      exp_avg_sq=torch.zeros_like(p), mean=torch.zeros_like(p),
                      vmax=torch.zeros_like(p))
        st["step"] += 1
        st["exp_avg_sq"].mul_(b2).addcmul_(g, g, value=1 - b2)
        st["lr1"] = st["lr1"] * b1 + (1 - b1) * lr
        st["lr2"] = st["lr2"] * b2 + (1 - b2)
        step_size = 1 / (st["lr1"] / lr)
        denom = st["exp_avg_sq"]
        if h["centered"]:
            st["mean"].mul_(b2).add_(g, alpha=1 - b2)
            if st["step"] > 10:
                denom = denom - st["mean"] ** 2
        if h["amsgrad"] and not (h["centered"] and st["step"] <= 10):
            torch.max(st["vmax"], denom, out=st["vmax"])
            denom = st["vmax"]
        denom = denom.div(st["lr2"]).sqrt_().add_(eps)
        st["exp_avg"].mul_(b1).add_(g / denom, alpha=(1 - b1) * lr)
        p.add_(st["exp_avg"], alpha=-step_size)


class RefADOPT(Reference):
    """iShohei220/adopt _single_tensor_adopt."""

    def update(self, p, g, st, h):
        b1, b2, lr, eps, clip = h["beta1"], h["beta2"], h["lr"], h["eps"], h["clip_lambda"]
        wd, decouple = h["weight_decay"], h["decouple"]
        if not st:
            st.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
        if wd != 0 and not decouple:
            g = g.add(p, alpha=wd)
        step = float(st["step"])
        if step == 0:
            st["exp_avg_sq"].addcmul_(g, g)
            st["step"] += 1
            return
        if wd != 0 and decouple:
            p.add_(p, alpha=-lr * wd)
        denom = torch.clamp(st["exp_avg_sq"].sqrt(), eps)
        normed = g.div(denom)
        if clip is not None:
            c = clip(step)
            normed.clamp_(-c, c)
        st["exp_avg"].lerp_(normed, 1 - b1)
        p.add_(st["exp_avg"], alpha=-lr)
        st["exp_avg_sq"].mul_(b2).addcmul_(g, g, value=1 - b2)
        st["step"] += 1


def _hl_warmup(step, beta_end, beta_start, warmup):
    """apple/ml-ademamix linear_hl_warmup_scheduler (without the 1e-8 inside the log)."""
    def f(beta):
        return math.log(0.5) / math.log(beta) - 1

    def f_inv(t):
        return math.pow(0.5, 1 / (t + 1))

    if step < warmup:
        a = step / float(warmup)
        return f_inv((1.0 - a) * f(beta_start) + a * f(beta_end))
    return beta_end


class RefAdEMAMix(Reference):
    """apple/ml-ademamix pytorch/ademamix.py, weight_decay=0, alpha_warmup=beta3_warmup=T."""

    def update(self, p, g, st, h):
        b1, b2, b3, lr, eps, T = h["beta1"], h["beta2"], h["beta3"], h["lr"], h["eps"], h["T"]
        if not st:
            st.update(step=0, fast=torch.zeros_like(p), slow=torch.zeros_like(p),
                      sq=torch.zeros_like(p))
        st["step"] += 1
        t = st["step"]
        bc1, bc2 = 1 - b1**t, 1 - b2**t
        alpha = h["alpha"] if T is None or t >= T else t / T * h["alpha"]
        beta3 = b3 if T is None else _hl_warmup(t, b3, b1, T)
        st["fast"].mul_(b1).add_(g, alpha=1 - b1)
        st["slow"].mul_(beta3).add_(g, alpha=1 - beta3)
        st["sq"].mul_(b2).addcmul_(g, g, value=1 - b2)
        denom = (st["sq"].sqrt() / math.sqrt(bc2)).add_(eps)
        u = (st["fast"].div(bc1) + alpha * st["slow"]) / denom
        p.add_(-lr * u)


class RefSignum(Reference):
    def update(self, p, g, st, h):
        if not st:
            st["buf"] = torch.zeros_like(p)
        st["buf"].mul_(h["beta"]).add_(g, alpha=1 - h["beta"])
        p.add_(torch.sign(st["buf"]), alpha=-h["lr"])


# ----------------------------------------------------------------------------- trajectories
@pytest.mark.parametrize("kw", [dict(), dict(beta1=0.5, beta2=0.9), dict(beta1=0.0, beta2=0.0)])
def test_lion(kw):
    h = dict(beta1=0.9, beta2=0.99) | kw
    assert_same_trajectory(lambda ps: RefLion(ps, lr=0.01, **h),
                           lambda ps: ob.Modular(ps, Lion(**kw), m.LR(0.01)), **F64)


@pytest.mark.parametrize("kw", [dict(), dict(eps=0.1), dict(beta1=0.9, beta2=0.5, beta3=0.999)])
def test_adan(kw):
    h = dict(beta1=0.98, beta2=0.92, beta3=0.99, eps=1e-8) | kw
    assert_same_trajectory(lambda ps: RefAdan(ps, lr=0.02, **h),
                           lambda ps: ob.Modular(ps, Adan(**kw), m.LR(0.02)), **F64)


@pytest.mark.parametrize("kw", [
    dict(), dict(eps=0.1), dict(amsgrad=True), dict(centered=True),
    dict(centered=True, amsgrad=True, beta1=0.5, beta2=0.9),
])
def test_laprop(kw):
    h = dict(beta1=0.9, beta2=0.999, eps=1e-15, amsgrad=False, centered=False) | kw
    assert_same_trajectory(lambda ps: RefLaProp(ps, lr=0.01, **h),
                           lambda ps: ob.Modular(ps, LaProp(**kw), m.LR(0.01)), **F64)


def test_laprop_defaults_are_official():
    assert LaProp().defaults == dict(beta1=0.9, beta2=0.999, eps=1e-15, amsgrad=False,
                                     centered=False)


@pytest.mark.parametrize("kw", [
    dict(), dict(eps=0.1), dict(clip_lambda=None), dict(clip_lambda=lambda step: 0.5),
    dict(clip_lambda=lambda step: 0.05 * step),
    dict(weight_decay=0.1), dict(weight_decay=0.1, decouple=True),
    dict(beta1=0.5, beta2=0.9, weight_decay=0.05, decouple=True, clip_lambda=None),
])
def test_adopt(kw):
    h = dict(beta1=0.9, beta2=0.9999, eps=1e-6, clip_lambda=lambda s: s**0.25,
             weight_decay=0.0, decouple=False) | kw
    assert_same_trajectory(lambda ps: RefADOPT(ps, lr=0.01, **h),
                           lambda ps: ob.Modular(ps, ADOPT(**kw), m.LR(0.01)), **F64)


def test_adopt_first_step_only_seeds():
    for kw in (dict(), dict(weight_decay=0.5, decouple=True)):
        ps = make_params(0)
        start = [p.detach().clone() for p in ps]
        opt = ob.Modular(ps, ADOPT(**kw), m.LR(0.1))
        loss_fn(ps).backward()
        opt.step()
        for p, s in zip(ps, start):
            assert torch.equal(p.detach(), s)
        state = opt.state[ps[0]]["0"]
        torch.testing.assert_close(state["exp_avg_sq"], ps[0].grad**2)
        assert state["step"] == 1 and not state["exp_avg"].any()
        opt.zero_grad()
        loss_fn(ps).backward()
        opt.step()
        assert not torch.equal(ps[0].detach(), start[0])


def test_adopt_clip_receives_steps_so_far():
    seen = []

    def clip(step):
        seen.append(step)
        return 1.0

    ps = make_params(0)
    opt = ob.Modular(ps, ADOPT(clip_lambda=clip), m.LR(0.01))
    for _ in range(4):
        opt.zero_grad()
        loss_fn(ps).backward()
        opt.step()
    assert seen == [1, 2, 3]


@pytest.mark.parametrize("kw", [
    dict(), dict(eps=0.1), dict(T_alpha_beta3=30), dict(T_alpha_beta3=100, alpha=5.0),
    dict(beta1=0.5, beta2=0.9, beta3=0.99, alpha=1.0, T_alpha_beta3=20),
])
def test_ademamix(kw):
    kw = dict(kw)
    h = dict(beta1=0.9, beta2=0.999, beta3=0.9999, alpha=2.0, eps=1e-8,
             T=kw.get("T_alpha_beta3")) | {k: v for k, v in kw.items() if k != "T_alpha_beta3"}
    assert_same_trajectory(lambda ps: RefAdEMAMix(ps, lr=0.01, **h),
                           lambda ps: ob.Modular(ps, AdEMAMix(**kw), m.LR(0.01)), **F64)


def test_ademamix_schedulers():
    b1, b3, T = 0.9, 0.9999, 50
    for t in (1, 10, 25, 49, 50, 80):
        a = t / T
        paper = min(math.exp(math.log(b1) * math.log(b3)
                             / ((1 - a) * math.log(b3) + a * math.log(b1))), b3)
        assert ademamix_beta3(t, b1, b3, T) == pytest.approx(paper, rel=1e-14)
        assert ademamix_alpha(t, 8.0, T) == pytest.approx(min(t * 8.0 / T, 8.0))
    assert ademamix_beta3(1, b1, b3, 10**8) == pytest.approx(b1, rel=1e-3)
    assert ademamix_beta3(3, b1, b3, None) == b3 and ademamix_alpha(3, 8.0, None) == 8.0


def test_signsgd():
    class RefSignSGD(Reference):
        def update(self, p, g, st, h):
            p.add_(torch.sign(g), alpha=-h["lr"])

    assert_same_trajectory(lambda ps: RefSignSGD(ps, lr=0.01),
                           lambda ps: ob.Modular(ps, SignSGD(), m.LR(0.01)), **F64)


@pytest.mark.parametrize("beta", [0.9, 0.5, 0.0])
def test_signum(beta):
    assert_same_trajectory(lambda ps: RefSignum(ps, lr=0.01, beta=beta),
                           lambda ps: ob.Modular(ps, Signum(beta), m.LR(0.01)), **F64)


# -------------------------------------------------- parameters that start late, param groups
def _late_trajectory(make_opt, steps=50, start=10):
    """The fifth tensor gets a gradient only from step ``start`` on (per-parameter steps differ)."""
    ps = make_params(1, torch.float64)
    opt = make_opt(ps)
    out = []
    for k in range(steps):
        opt.zero_grad()
        loss = loss_fn(ps)
        if k >= start:
            loss = loss + ((ps[4] - 0.5) ** 2).sum() + (ps[4] * ps[1][:4]).sum()
        loss.backward()
        opt.step()
        out.append([p.detach().clone() for p in ps])
    return out


@pytest.mark.parametrize("make_ref, make_ours", [
    (lambda ps: RefAdan(ps, lr=0.02, beta1=0.98, beta2=0.92, beta3=0.99, eps=1e-8),
     lambda ps: ob.Modular(ps, Adan(), m.LR(0.02))),
    (lambda ps: RefADOPT(ps, lr=0.02, beta1=0.9, beta2=0.9999, eps=1e-6,
                         clip_lambda=lambda s: s**0.25, weight_decay=0.1, decouple=True),
     lambda ps: ob.Modular(ps, ADOPT(weight_decay=0.1, decouple=True), m.LR(0.02))),
    (lambda ps: RefLaProp(ps, lr=0.02, beta1=0.9, beta2=0.99, eps=1e-15, amsgrad=True,
                          centered=True),
     lambda ps: ob.Modular(ps, LaProp(beta2=0.99, amsgrad=True, centered=True), m.LR(0.02))),
    (lambda ps: RefAdEMAMix(ps, lr=0.02, beta1=0.9, beta2=0.999, beta3=0.999, alpha=2.0,
                            eps=1e-8, T=30),
     lambda ps: ob.Modular(ps, AdEMAMix(beta3=0.999, T_alpha_beta3=30), m.LR(0.02))),
])
def test_late_parameter_has_its_own_step_count(make_ref, make_ours):
    ref, ours = _late_trajectory(make_ref), _late_trajectory(make_ours)
    for i, (a, b) in enumerate(zip(ref, ours)):
        for x, y in zip(a, b):
            torch.testing.assert_close(y, x, rtol=1e-9, atol=1e-11, msg=lambda s: f"step {i}: {s}")
    assert not torch.equal(ref[-1][4], ref[9][4])


@pytest.mark.parametrize("ours, ref, override", [
    (Lion, RefLion, dict(beta1=0.5)),
    (ADOPT, RefADOPT, dict(eps=0.1, decouple=True, weight_decay=0.1)),
    (AdEMAMix, RefAdEMAMix, dict(alpha=5.0, beta1=0.8)),
])
def test_param_group_overrides(ours, ref, override):
    defaults = dict(ours().defaults)
    if "T_alpha_beta3" in defaults:
        defaults["T"] = defaults.pop("T_alpha_beta3")

    def groups(ps):
        return [dict(params=ps[:2], **override), dict(params=ps[2:])]

    assert_same_trajectory(lambda ps: ref(groups(ps), lr=0.01, **defaults),
                           lambda ps: ob.Modular(groups(ps), ours(), m.LR(0.01)), **F64)


# ------------------------------------------------------------------------------ bad inputs
@pytest.mark.parametrize("cls, kw, name", [
    (Lion, dict(beta1=1.0), "beta1"),
    (Lion, dict(beta2=-0.1), "beta2"),
    (Adan, dict(beta3=1.5), "beta3"),
    (Adan, dict(eps=0.0), "eps"),
    (LaProp, dict(eps=-1.0), "eps"),
    (LaProp, dict(centered="yes"), "centered"),
    (LaProp, dict(amsgrad=1), "amsgrad"),
    (ADOPT, dict(clip_lambda=3.0), "clip_lambda"),
    (ADOPT, dict(weight_decay=-0.1), "weight_decay"),
    (ADOPT, dict(decouple=1), "decouple"),
    (ADOPT, dict(beta2=float("nan")), "beta2"),
    (AdEMAMix, dict(alpha=-1.0), "alpha"),
    (AdEMAMix, dict(T_alpha_beta3=0), "T_alpha_beta3"),
    (AdEMAMix, dict(T_alpha_beta3=2.5), "T_alpha_beta3"),
    (AdEMAMix, dict(beta3=1.0), "beta3"),
    (Signum, dict(beta=1.0), "beta"),
])
def test_bad_hyperparameters(cls, kw, name):
    with pytest.raises(ValueError, match=rf"^{cls.__name__}: invalid {name}="):
        cls(**kw)


def test_bad_group_override():
    ps = make_params(0)
    with pytest.raises(ValueError, match=r"^Lion: invalid beta1="):
        ob.Modular([dict(params=ps[:2], beta1=2.0), dict(params=ps[2:])], Lion(), m.LR(0.1))


# ------------------------------------------------------------------ weight decay, checkpoints
def test_ademamix_official_decay_is_weight_decay_after_it():
    class RefAdEMAMixWD(RefAdEMAMix):
        def update(self, p, g, st, h):
            p0 = p.clone()
            super().update(p, g, st, h)
            p.add_(p0, alpha=-h["lr"] * h["wd"])  # official: update += wd * p, then p -= lr*update

    h = dict(beta1=0.9, beta2=0.999, beta3=0.999, alpha=2.0, eps=1e-8, T=20, wd=0.1)
    assert_same_trajectory(
        lambda ps: RefAdEMAMixWD(ps, lr=0.02, **h),
        lambda ps: ob.Modular(ps, AdEMAMix(beta3=0.999, T_alpha_beta3=20), m.WeightDecay(0.1),
                              m.LR(0.02)),
        **F64,
    )


@pytest.mark.parametrize("make", [
    lambda: [Adan()], lambda: [ADOPT(weight_decay=0.1, decouple=True)],
    lambda: [LaProp(centered=True, amsgrad=True)], lambda: [AdEMAMix(T_alpha_beta3=8)],
    lambda: [Lion()], lambda: [Signum()],
])
def test_state_dict_round_trip(make):
    def run(split):
        ps = make_params(2, torch.float64)
        opt = ob.Modular(ps, *make(), m.LR(0.01))
        for k in range(24):
            if k == split:
                sd = opt.state_dict()
                ps = [p.detach().clone().requires_grad_() for p in ps]
                opt = ob.Modular(ps, *make(), m.LR(0.01))
                opt.load_state_dict(sd)
            opt.zero_grad()
            loss_fn(ps).backward()
            opt.step()
        return ps

    for a, b in zip(run(None), run(12)):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-14)
