"""RMSprop, Adagrad, AdagradNorm, Rprop, NAdam and RAdam against torch.optim or, where torch has
no equivalent, against straightforward per-tensor implementations of the published formulas."""

import math

import pytest
import torch

import optbridge as ob
from optbridge import m
from optbridge.core import checks
from optbridge.core.module import Transform
from optbridge.m.adaptive.adagrad import Adagrad, AdagradNorm
from optbridge.m.adaptive.nadam import NAdam
from optbridge.m.adaptive.radam import RAdam
from optbridge.m.adaptive.rmsprop import RMSprop
from optbridge.m.adaptive.rprop import Rprop
from trajectory import assert_same_trajectory, trajectory

F32 = dict(dtype=torch.float32, rtol=1e-6, atol=1e-7)
F64 = dict(dtype=torch.float64, rtol=1e-12, atol=1e-13)
# NAdam: on this problem one coordinate oscillates around a minimum (steps 28-40), where the
# normalized step amplifies 1-ulp differences: torch's own foreach and single-tensor NAdam
# differ there by 2.1e-6 in float32. torch moves the parameters twice per step (gradient term,
# then momentum term) where the chain applies one fused update; we differ from torch's foreach
# path by at most 7e-6 there, so float32 gets an absolute tolerance of 1e-5. float64: 1e-12.
F32_LOOSE = dict(dtype=torch.float32, rtol=1e-6, atol=1e-5)


def same(ref, ours, tol, steps=60, **kw):
    assert_same_trajectory(ref, ours, steps=steps, **tol, **kw)


class _DefaultDtype:
    """torch.optim.NAdam keeps ``mu_product`` in the default dtype; float64 comparisons need it
    in float64 too."""

    def __init__(self, dtype):
        self.dtype = dtype

    def __enter__(self):
        self.old = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)

    def __exit__(self, *exc):
        torch.set_default_dtype(self.old)


class _L2(Transform):
    """Test helper: ``update += wd * param`` (what a weight-decay module does)."""

    def __init__(self, wd):
        super().__init__(dict(wd=wd), rules=dict(wd=checks.nonnegative))

    def transform(self, update, part):
        torch._foreach_add_(update, part.params, alpha=part.settings["wd"])
        return update


class _WithScheduler:
    """An optimizer whose ``step`` also steps a StepLR scheduler."""

    def __init__(self, opt):
        self.opt = opt
        self.sched = torch.optim.lr_scheduler.StepLR(opt, step_size=7, gamma=0.5)

    def zero_grad(self):
        self.opt.zero_grad()

    def step(self, closure=None):
        self.opt.step(closure)
        self.sched.step()


def two_groups(ps, a, b):
    """Two param groups with their own settings (the unused fifth tensor is in the second)."""
    return [dict(params=ps[:2], **a), dict(params=ps[2:], **b)]


def cases(*cases):
    """Each case: (settings of group 1, settings of group 2 or None for one group, tolerance).
    The float32 case runs the defaults; the float64 ones (tolerance 1e-12) mix settings."""
    ids = [f"case{i}-{'f32' if c[2]['dtype'] == torch.float32 else 'f64'}"
           for i, c in enumerate(cases)]
    return pytest.mark.parametrize("a, b, tol", cases, ids=ids)


def run_cases(a, b, make_torch, make_ours, rename, tol, **kw):
    """Compare torch (torch's names) and ours (``rename`` maps a torch group dict to ours)."""
    if b is None:
        same(lambda ps: make_torch(ps, a), lambda ps: make_ours(ps, rename(a)), tol, **kw)
    else:
        same(lambda ps: make_torch(two_groups(ps, a, b), {}),
             lambda ps: make_ours(two_groups(ps, rename(a), rename(b)), {}), tol, **kw)


# ---------------------------------------------------------------------------------- RMSprop
def rms_names(d):
    return {("smoothing" if k == "alpha" else k): v for k, v in d.items()}


@cases(
    ({}, None, F32),
    (dict(eps=0.1, alpha=0.9), dict(centered=True), F64),
    (dict(momentum=0.9, maximize=True),
     dict(centered=True, momentum=0.5, alpha=0.8, eps=1e-3, maximize=True), F64),
)
def test_rmsprop_matches_torch(a, b, tol):
    run_cases(a, b,
              lambda ps, kw: torch.optim.RMSprop(ps, lr=0.01, foreach=True, **kw),
              lambda ps, kw: ob.Modular(ps, RMSprop(**kw), m.LR(0.01)), rms_names, tol)


def test_rmsprop_momentum_with_lr_scheduler_single_tensor_path():
    # torch's momentum buffer excludes the lr, so LR at the end of the chain matches it even
    # when a scheduler changes the lr
    same(lambda ps: _WithScheduler(torch.optim.RMSprop(ps, lr=0.02, momentum=0.9,
                                                       centered=True, foreach=False)),
         lambda ps: _WithScheduler(ob.Modular(ps, RMSprop(momentum=0.9, centered=True),
                                              m.LR(0.02))), F64)


class _RefRMSprop(torch.optim.Optimizer):
    """Reference for the options torch lacks (debias, amsgrad, init="update")."""

    def __init__(self, params, lr):
        super().__init__(params, dict(lr=lr, smoothing=0.99, eps=1e-8, centered=False,
                                      momentum=0.0, debias=False, amsgrad=False, init="zeros",
                                      maximize=False))

    @torch.no_grad()
    def step(self, closure=None):
        for gr in self.param_groups:
            rho = gr["smoothing"]
            for p in gr["params"]:
                if p.grad is None:
                    continue
                g = -p.grad if gr["maximize"] else p.grad
                st = self.state[p]
                if not st:
                    st["t"] = 0
                    if gr["init"] == "update":
                        st["v"], st["gbar"] = g * g, g.clone()
                    else:
                        st["v"] = (1 - rho) * g * g
                        st["gbar"] = (1 - rho) * g
                    st["vmax"] = torch.zeros_like(p)
                    st["buf"] = torch.zeros_like(p)
                else:
                    st["v"] = rho * st["v"] + (1 - rho) * g * g
                    st["gbar"] = rho * st["gbar"] + (1 - rho) * g
                st["t"] += 1
                bc = 1 - rho ** st["t"] if gr["debias"] else 1.0
                v, gbar = st["v"] / bc, st["gbar"] / bc
                s = (v - gbar * gbar).clamp(min=0) if gr["centered"] else v
                if gr["amsgrad"]:
                    st["vmax"] = torch.maximum(st["vmax"], s)
                    s = st["vmax"]
                u = g / (s.sqrt() + gr["eps"])
                if gr["momentum"] > 0:
                    st["buf"] = gr["momentum"] * st["buf"] + u
                    u = st["buf"]
                p.sub_(gr["lr"] * u)


@cases(
    (dict(debias=True, amsgrad=True), dict(init="update", smoothing=0.9), F64),
    (dict(init="update", amsgrad=True), dict(debias=True, momentum=0.8, maximize=True), F64),
    # a centered variance of one sample is 0 up to rounding, so with debias or init="update"
    # the first step divides by eps plus the root of a rounding error: a looser tolerance
    (dict(centered=True, debias=True, eps=0.1),
     dict(centered=True, init="update", amsgrad=True, eps=0.1), dict(F64, rtol=1e-6, atol=1e-8)),
)
def test_rmsprop_extra_options_match_reference(a, b, tol):
    run_cases(a, b, lambda ps, kw: _RefRMSprop([dict(params=ps, **kw)] if kw else ps, lr=0.01),
              lambda ps, kw: ob.Modular(ps, RMSprop(**kw), m.LR(0.01)), lambda d: d, tol)


# ---------------------------------------------------------------------------------- Adagrad
@cases(
    ({}, None, F32),
    (dict(lr_decay=0.05), dict(eps=0.1, maximize=True, lr=0.05), F64),
    # torch reads initial_accumulator_value from its constructor only, not from param groups
    (dict(initial_accumulator_value=0.5, lr_decay=0.1, maximize=True, eps=0.0), None, F64),
)
def test_adagrad_matches_torch(a, b, tol):
    run_cases(a, b,
              lambda ps, kw: torch.optim.Adagrad(ps, lr=0.1, foreach=True, **kw),
              lambda ps, kw: ob.Modular(ps, Adagrad(**kw), m.LR(0.1)), lambda d: d, tol)


class _RefAdagrad(torch.optim.Optimizer):
    """Adagrad (``norm=False``) and AdaGrad-Norm of Ward et al. (``norm=True``, one scalar
    accumulator per tensor), with ``use_sqrt``."""

    def __init__(self, params, lr, norm):
        super().__init__(params, dict(lr=lr, lr_decay=0.0, initial_accumulator_value=0.0,
                                      eps=1e-10, use_sqrt=True, maximize=False))
        self.norm = norm

    @torch.no_grad()
    def step(self, closure=None):
        for gr in self.param_groups:
            for p in gr["params"]:
                if p.grad is None:
                    continue
                g = -p.grad if gr["maximize"] else p.grad
                st = self.state[p]
                if not st:
                    st["t"] = 0
                    init = gr["initial_accumulator_value"]
                    st["acc"] = (torch.tensor(init, dtype=p.dtype) if self.norm
                                 else torch.full_like(p, init))
                st["t"] += 1
                st["acc"] = st["acc"] + ((g * g).sum() if self.norm else g * g)
                den = st["acc"].sqrt() if gr["use_sqrt"] else st["acc"]
                clr = gr["lr"] / (1 + (st["t"] - 1) * gr["lr_decay"])
                p.sub_(clr * g / (den + gr["eps"]))


def _ref_adagrad(norm, lr):
    return lambda ps, kw: _RefAdagrad([dict(params=ps, **kw)] if kw else ps, lr, norm)


def test_adagrad_without_sqrt_matches_reference():
    run_cases(dict(use_sqrt=False, initial_accumulator_value=1.0),
              dict(use_sqrt=False, lr_decay=0.1, maximize=True, eps=1e-3),
              _ref_adagrad(False, 0.1),
              lambda ps, kw: ob.Modular(ps, Adagrad(**kw), m.LR(0.1)), lambda d: d, F64)


@cases(
    # float32 norms are reduced in another order than the reference's sum: atol 1e-6
    ({}, None, dict(F32, atol=1e-6)),
    (dict(initial_accumulator_value=1.0, eps=0.0), dict(lr_decay=0.05, eps=0.1, maximize=True),
     F64),
    (dict(use_sqrt=False, initial_accumulator_value=0.5), dict(lr_decay=0.2, lr=0.1), F64),
)
def test_adagrad_norm_matches_reference(a, b, tol):
    run_cases(a, b, _ref_adagrad(True, 0.5),
              lambda ps, kw: ob.Modular(ps, AdagradNorm(**kw), m.LR(0.5)), lambda d: d, tol)


def test_adagrad_norm_state_is_one_scalar_per_tensor():
    ps = [torch.randn(3, 4, requires_grad=True), torch.randn(5, requires_grad=True)]
    opt = ob.Modular(ps, AdagradNorm(initial_accumulator_value=0.5), m.LR(0.1))
    sum(((p - 1) ** 2).sum() for p in ps).backward()
    opt.step()
    for p in ps:
        (acc,) = [s["sum"] for s in opt.state[p].values()]
        assert acc.shape == () and acc.dtype == p.dtype
        torch.testing.assert_close(acc, 0.5 + (p.grad**2).sum())


# ------------------------------------------------------------------------------------ Rprop
def _rprop_names(d):
    out = {}
    for k, v in d.items():
        if k == "etas":
            out.update(nminus=v[0], nplus=v[1])
        elif k == "step_sizes":
            out.update(lb=v[0], ub=v[1])
        elif k == "lr":
            out["alpha"] = v
        else:
            out[k] = v
    return out


@cases(
    ({}, None, F32),
    (dict(lr=0.1, etas=(0.3, 1.5)), dict(step_sizes=(1e-3, 0.05), maximize=True), F64),
    (dict(lr=0.05, etas=(0.7, 1.1), step_sizes=(1e-4, 1.0), maximize=True), dict(lr=0.002), F64),
)
def test_rprop_matches_torch(a, b, tol):
    # no LR module: Rprop's alpha is the initial step size, torch's lr
    run_cases(a, b, lambda ps, kw: torch.optim.Rprop(ps, **{"lr": 0.01, "foreach": True, **kw}),
              lambda ps, kw: ob.Modular(ps, Rprop(**{"alpha": 0.01, "backtrack": False, **kw})),
              _rprop_names, tol)


def test_rprop_matches_torch_single_tensor_path_without_bounds():
    same(lambda ps: torch.optim.Rprop(ps, lr=0.02, step_sizes=(0.0, math.inf), foreach=False),
         lambda ps: ob.Modular(ps, Rprop(alpha=0.02, lb=None, ub=None, backtrack=False)), F32)


class _RefRprop(torch.optim.Optimizer):
    """Rprop with weight-backtracking as in Riedmiller & Braun (1993)."""

    def __init__(self, params, alpha=0.01, nplus=1.2, nminus=0.5, lb=1e-6, ub=50.0,
                 maximize=False):
        super().__init__(params, dict(alpha=alpha, nplus=nplus, nminus=nminus, lb=lb, ub=ub,
                                      maximize=maximize))

    @torch.no_grad()
    def step(self, closure=None):
        for gr in self.param_groups:
            for p in gr["params"]:
                if p.grad is None:
                    continue
                g = -p.grad if gr["maximize"] else p.grad
                st = self.state[p]
                if not st:
                    st["prev"] = torch.zeros_like(p)
                    st["size"] = torch.full_like(p, gr["alpha"])
                    st["dw"] = torch.zeros_like(p)
                prod = g * st["prev"]
                factor = torch.ones_like(p)
                factor[prod > 0] = gr["nplus"]
                factor[prod < 0] = gr["nminus"]
                st["size"] = (st["size"] * factor).clamp(gr["lb"], gr["ub"])
                flipped = prod < 0
                st["dw"] = torch.where(flipped, -st["dw"], g.sign() * st["size"])
                st["prev"] = torch.where(flipped, 0.0, g)
                p.sub_(st["dw"])


def test_rprop_backtrack_matches_reference():
    run_cases(dict(alpha=0.1, nplus=1.5, nminus=0.3), dict(maximize=True, ub=0.05),
              lambda ps, kw: _RefRprop(ps), lambda ps, kw: ob.Modular(ps, Rprop(alpha=0.01)),
              lambda d: d, F64)


def test_rprop_backtrack_changes_the_trajectory():
    a = trajectory(lambda ps: ob.Modular(ps, Rprop(alpha=0.1)), 30)[-1]
    b = trajectory(lambda ps: ob.Modular(ps, Rprop(alpha=0.1, backtrack=False)), 30)[-1]
    assert any(not torch.equal(x, y) for x, y in zip(a, b))


# ------------------------------------------------------------------------------------ NAdam
def _betas(d):
    out = dict(d)
    if "betas" in out:
        out["beta1"], out["beta2"] = out.pop("betas")
    return out


@cases(
    ({}, None, F32_LOOSE),
    (dict(eps=0.1, momentum_decay=0.05), dict(betas=(0.5, 0.9), maximize=True), F64),
    (dict(betas=(0.0, 0.99), momentum_decay=0.0, eps=1e-3), dict(betas=(0.8, 0.95)), F64),
)
def test_nadam_matches_torch(a, b, tol):
    with _DefaultDtype(tol["dtype"]):
        run_cases(a, b, lambda ps, kw: torch.optim.NAdam(ps, lr=0.01, foreach=True, **kw),
                  lambda ps, kw: ob.Modular(ps, NAdam(**kw), m.LR(0.01)), _betas, tol)


@pytest.mark.parametrize("decoupled", [False, True])
def test_nadam_weight_decay_by_composition(decoupled):
    chain = [NAdam(), _L2(0.1), m.LR(0.01)] if decoupled else [_L2(0.1), NAdam(), m.LR(0.01)]
    with _DefaultDtype(torch.float64):
        same(lambda ps: torch.optim.NAdam(ps, lr=0.01, weight_decay=0.1,
                                          decoupled_weight_decay=decoupled),
             lambda ps: ob.Modular(ps, *chain), dict(F64, rtol=1e-11, atol=1e-12))


def test_nadam_checkpoint_resume():
    def run(split):
        ps = [torch.randn(4, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
              .requires_grad_()]
        opt = ob.Modular(ps, NAdam(), m.LR(0.05))
        for i in range(20):
            if i == split:
                sd = opt.state_dict()
                ps = [ps[0].detach().clone().requires_grad_()]
                opt = ob.Modular(ps, NAdam(), m.LR(0.05))
                opt.load_state_dict(sd)
            opt.zero_grad()
            (ps[0].sin() * ps[0]).sum().backward()
            opt.step()
        return ps[0].detach()

    assert torch.equal(run(split=-1), run(split=9))


# ------------------------------------------------------------------------------------ RAdam
@cases(
    ({}, None, F32),
    (dict(eps=0.1, betas=(0.5, 0.9)), dict(betas=(0.9, 0.99), maximize=True), F64),
    # beta2=0.3: rho_inf < 5, never rectified
    (dict(betas=(0.9, 0.3)), dict(betas=(0.0, 0.95), eps=1e-3), F64),
)
def test_radam_matches_torch(a, b, tol):
    run_cases(a, b, lambda ps, kw: torch.optim.RAdam(ps, lr=0.01, foreach=True, **kw),
              lambda ps, kw: ob.Modular(ps, RAdam(**kw), m.LR(0.01)), _betas, tol)


def test_radam_params_at_different_steps():
    # the last tensor gets its first gradient at step 8, so within one step some tensors are
    # rectified and others not
    def run(make):
        ps = [torch.randn(5, generator=torch.Generator().manual_seed(i), dtype=torch.float64)
              .requires_grad_() for i in range(3)]
        opt = make(ps)
        for t in range(20):
            opt.zero_grad()
            used = ps if t >= 7 else ps[:2]
            sum((p.sin() * p).sum() for p in used).backward()
            opt.step()
        return [p.detach() for p in ps]

    ref = run(lambda ps: torch.optim.RAdam(ps, lr=0.01))
    ours = run(lambda ps: ob.Modular(ps, RAdam(), m.LR(0.01)))
    for x, y in zip(ref, ours):
        torch.testing.assert_close(y, x, rtol=1e-12, atol=1e-13)


def test_radam_decoupled_weight_decay_by_composition():
    same(lambda ps: torch.optim.RAdam(ps, lr=0.01, weight_decay=0.1, decoupled_weight_decay=True),
         lambda ps: ob.Modular(ps, RAdam(), _L2(0.1), m.LR(0.01)),
         dict(F64, rtol=1e-11, atol=1e-12))


# ------------------------------------------------------------------------- complex params
@pytest.mark.parametrize("make_torch, make_ours", [
    (lambda ps: torch.optim.RMSprop(ps, lr=0.01, centered=True, momentum=0.5),
     lambda ps: ob.Modular(ps, RMSprop(centered=True, momentum=0.5), m.LR(0.01))),
    (lambda ps: torch.optim.Adagrad(ps, lr=0.1, initial_accumulator_value=0.3),
     lambda ps: ob.Modular(ps, Adagrad(initial_accumulator_value=0.3), m.LR(0.1))),
    (lambda ps: torch.optim.Rprop(ps, lr=0.01),
     lambda ps: ob.Modular(ps, Rprop(alpha=0.01, backtrack=False))),
    (lambda ps: torch.optim.NAdam(ps, lr=0.01),
     lambda ps: ob.Modular(ps, NAdam(), m.LR(0.01))),
    (lambda ps: torch.optim.RAdam(ps, lr=0.01),
     lambda ps: ob.Modular(ps, RAdam(), m.LR(0.01))),
], ids=["RMSprop", "Adagrad", "Rprop", "NAdam", "RAdam"])
def test_complex_parameters_match_torch(make_torch, make_ours):
    def run(make):
        gen = torch.Generator().manual_seed(3)
        z = torch.randn(6, dtype=torch.complex128, generator=gen).requires_grad_()
        c = torch.randn(6, dtype=torch.complex128, generator=gen)
        opt = make([z])
        for _ in range(20):
            opt.zero_grad()
            ((z - c).abs() ** 2 + (z * z).real.sin()).sum().backward()
            opt.step()
        return z.detach()

    with _DefaultDtype(torch.float64):
        start = run(lambda ps: torch.optim.SGD(ps, lr=0.0))
        ref, ours = run(make_torch), run(make_ours)
    assert not torch.equal(ref, start)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-13)


# -------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("make, arg", [
    (lambda: RMSprop(smoothing=1.0), "smoothing"),
    (lambda: RMSprop(smoothing=-0.1), "smoothing"),
    (lambda: RMSprop(eps=0.0), "eps"),
    (lambda: RMSprop(momentum=-0.5), "momentum"),
    (lambda: RMSprop(centered=1), "centered"),
    (lambda: RMSprop(init="ones"), "init"),
    (lambda: Adagrad(lr_decay=-1.0), "lr_decay"),
    (lambda: Adagrad(initial_accumulator_value=-0.1), "initial_accumulator_value"),
    (lambda: Adagrad(eps=float("nan")), "eps"),
    (lambda: Adagrad(maximize="yes"), "maximize"),
    (lambda: AdagradNorm(eps=-1e-3), "eps"),
    (lambda: AdagradNorm(use_sqrt=None), "use_sqrt"),
    (lambda: Rprop(nplus=1.0), "nplus"),
    (lambda: Rprop(nminus=1.0), "nminus"),
    (lambda: Rprop(nminus=0.0), "nminus"),
    (lambda: Rprop(alpha=0.0), "alpha"),
    (lambda: Rprop(lb=-1.0), "lb"),
    (lambda: Rprop(ub=0.0), "ub"),
    (lambda: Rprop(lb=1.0, ub=0.5), "lb"),
    (lambda: NAdam(beta1=1.0), "beta1"),
    (lambda: NAdam(beta2=-0.1), "beta2"),
    (lambda: NAdam(momentum_decay=-1e-3), "momentum_decay"),
    (lambda: NAdam(eps=0.0), "eps"),
    (lambda: RAdam(beta1=1.5), "beta1"),
    (lambda: RAdam(beta2=1.0), "beta2"),
    (lambda: RAdam(eps=-1.0), "eps"),
])
def test_bad_hyperparameters_raise(make, arg):
    names = "RMSprop|Adagrad|AdagradNorm|Rprop|NAdam|RAdam"
    with pytest.raises(ValueError, match=rf"^({names}): invalid {arg}="):
        make()


@pytest.mark.parametrize("module, key, value", [
    (RMSprop, "smoothing", 1.5),
    (Adagrad, "lr_decay", -0.5),
    (AdagradNorm, "initial_accumulator_value", -1.0),
    (Rprop, "nminus", 2.0),
    (NAdam, "momentum_decay", float("inf")),
    (RAdam, "beta2", 1.0),
])
def test_bad_param_group_override_raises(module, key, value):
    p = torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError, match=rf"{module.__name__}: invalid {key}="):
        ob.Modular([{"params": [p], key: value}], module(), m.LR(0.1))


def test_rprop_group_bounds_checked_before_state_changes():
    p = torch.ones(3, requires_grad=True)
    opt = ob.Modular([{"params": [p], "lb": 2.0}], Rprop(ub=1.0))
    p.grad = torch.ones(3)
    with pytest.raises(ValueError, match=r"Rprop: invalid lb=2.0, ub=1.0"):
        opt.step()
    assert torch.equal(p.detach(), torch.ones(3))
    assert all(not s for s in opt.state[p].values())
