"""optbridge.native elementwise optimizers: 60-step trajectories against torch.optim and against
the official update rules written out below (fp32 within 1e-6, fp64 within 1e-12), on both CPU
paths (compiled C kernels and the eager formula)."""

from __future__ import annotations

import math

import pytest
import torch

from optbridge import native
from optbridge.native import cpu_kernels

from trajectory import assert_same_trajectory

# relative error bound, elementwise and against the O(1) parameter scale
TOL = {torch.float32: (1e-6, 1e-6), torch.float64: (1e-12, 1e-12)}


#: (CPU path, dtype): the C kernels run fp32 only, fp64 always takes the eager formula
PATHS = pytest.mark.parametrize("path,dtype", [("c", torch.float32), ("eager", torch.float32),
                                               ("eager", torch.float64)])


def use_path(path, monkeypatch):
    """Select the compiled C kernels or force the eager fallback."""
    if path == "eager":
        monkeypatch.setenv("OPTBRIDGE_NATIVE_CPU", "eager")
    else:
        assert cpu_kernels.library() is not None, cpu_kernels.backend()


def same(make_ref, make_native, dtype=torch.float32, **kw):
    rtol, atol = TOL[dtype]
    assert_same_trajectory(make_ref, make_native, dtype=dtype, rtol=rtol, atol=atol, **kw)


class Reference(torch.optim.Optimizer):
    """A per-tensor reference: ``rule(p, g, state, t, group)`` with ``t`` counted from 1."""

    def __init__(self, params, rule, **hp):
        super().__init__(params, hp)
        self.rule = rule

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                st["t"] = st.get("t", 0) + 1
                self.rule(p, p.grad, st, st["t"], group)


def zeros(st, name, p):
    if name not in st:
        st[name] = torch.zeros_like(p)
    return st[name]


# ------------------------------------------------------------------ official rules, written out
def lion_rule(p, g, st, t, h):
    """google/automl lion_pytorch.py"""
    m = zeros(st, "m", p)
    p.mul_(1 - h["lr"] * h["wd"])
    update = m * h["b1"] + g * (1 - h["b1"])
    p.add_(torch.sign(update), alpha=-h["lr"])
    m.mul_(h["b2"]).add_(g, alpha=1 - h["b2"])


def adopt_rule(p, g, st, t, h):
    """iShohei220/adopt, decouple=True; the step counter before the increment clips."""
    m, v = zeros(st, "m", p), zeros(st, "v", p)
    if t == 1:
        v.addcmul_(g, g)
        return
    p.mul_(1 - h["lr"] * h["wd"])
    normed = g / torch.clamp(v.sqrt(), min=h["eps"])
    c = (t - 1) ** 0.25
    normed.clamp_(-c, c)
    m.lerp_(normed, 1 - h["b1"])
    p.add_(m, alpha=-h["lr"])
    v.mul_(h["b2"]).addcmul_(g, g, value=1 - h["b2"])


def laprop_rule(p, g, st, t, h):
    """Z-T-WANG/LaProp-Optimizer laprop.py (lr folded into the momentum)."""
    m, v = zeros(st, "m", p), zeros(st, "v", p)
    lr, b1, b2 = h["lr"], h["b1"], h["b2"]
    st["lr1"] = st.get("lr1", 0.0) * b1 + (1 - b1) * lr
    st["lr2"] = st.get("lr2", 0.0) * b2 + (1 - b2)
    v.mul_(b2).addcmul_(g, g, value=1 - b2)
    step_size = 1 / (st["lr1"] / lr)
    denom = v.div(st["lr2"]).sqrt_().add_(h["eps"])
    m.mul_(b1).add_(g / denom, alpha=(1 - b1) * lr)
    p.add_(m, alpha=-step_size)


def ademamix_rule(p, g, st, t, h):
    """apple/ml-ademamix (PyTorch), with its linear alpha and half-life beta3 schedulers."""
    m1, m2, nu = zeros(st, "m1", p), zeros(st, "m2", p), zeros(st, "nu", p)
    b1, b2, b3f, alpha_f = h["b1"], h["b2"], h["b3"], h["alpha"]
    T = h["T"]
    if T is None:
        alpha, b3 = alpha_f, b3f
    else:
        alpha = alpha_f * min(t / T, 1.0)

        def f(beta, eps=1e-8):
            return math.log(0.5) / math.log(beta + eps) - 1

        a = t / T
        b3 = math.pow(0.5, 1 / ((1 - a) * f(b1) + a * f(b3f) + 1)) if t < T else b3f
    m1.mul_(b1).add_(g, alpha=1 - b1)
    m2.mul_(b3).add_(g, alpha=1 - b3)
    nu.mul_(b2).addcmul_(g, g, value=1 - b2)
    denom = (nu.sqrt() / math.sqrt(1 - b2**t)).add_(h["eps"])
    update = (m1.div(1 - b1**t) + alpha * m2) / denom
    update.add_(p, alpha=h["wd"])
    p.add_(-h["lr"] * update)


def make_ref(rule, **hp):
    return lambda ps: Reference(ps, rule, **hp)


# ------------------------------------------------------------------ torch.optim references
@PATHS
@pytest.mark.parametrize("kw", [{}, {"amsgrad": True}, {"weight_decay": 0.1, "maximize": True},
                                {"betas": (0.8, 0.99), "eps": 1e-6}])
def test_adamw_matches_torch(path, dtype, kw, monkeypatch):
    use_path(path, monkeypatch)
    same(lambda ps: torch.optim.AdamW(ps, lr=0.05, **kw),
         lambda ps: native.AdamW(ps, lr=0.05, **kw), dtype)


@PATHS
@pytest.mark.parametrize("kw", [{}, {"momentum": 0.9}, {"momentum": 0.9, "nesterov": True},
                                {"momentum": 0.8, "dampening": 0.3}])
def test_sgd_matches_torch(path, dtype, kw, monkeypatch):
    use_path(path, monkeypatch)
    same(lambda ps: torch.optim.SGD(ps, lr=0.02, **kw), lambda ps: native.SGD(ps, lr=0.02, **kw),
         dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nadam_matches_torch(dtype):
    same(lambda ps: torch.optim.NAdam(ps, lr=0.03, weight_decay=0.1, decoupled_weight_decay=True),
         lambda ps: native.NAdam(ps, lr=0.03, weight_decay=0.1), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kw", [{}, {"momentum": 0.7}, {"centered": True, "momentum": 0.5}])
def test_rmsprop_matches_torch(dtype, kw):
    same(lambda ps: torch.optim.RMSprop(ps, lr=0.01, **kw),
         lambda ps: native.RMSprop(ps, lr=0.01, **kw), dtype)


@PATHS
def test_adagrad_matches_torch(path, dtype, monkeypatch):
    use_path(path, monkeypatch)
    kw = dict(lr=0.1, lr_decay=0.01, initial_accumulator_value=0.1)
    same(lambda ps: torch.optim.Adagrad(ps, **kw), lambda ps: native.Adagrad(ps, **kw), dtype)


# ------------------------------------------------------------------ official formulas
@PATHS
def test_lion_matches_paper(path, dtype, monkeypatch):
    use_path(path, monkeypatch)
    same(make_ref(lion_rule, lr=0.01, b1=0.9, b2=0.99, wd=0.1),
         lambda ps: native.Lion(ps, lr=0.01, weight_decay=0.1), dtype)


@PATHS
def test_adopt_matches_official(path, dtype, monkeypatch):
    use_path(path, monkeypatch)
    same(make_ref(adopt_rule, lr=0.02, b1=0.9, b2=0.9999, eps=1e-6, wd=0.05),
         lambda ps: native.ADOPT(ps, lr=0.02, weight_decay=0.05), dtype)


def test_adopt_without_clipping_and_defaults():
    ps = [torch.ones(3, requires_grad=True)]
    opt = native.ADOPT(ps, clip_lambda=None)
    assert opt.defaults["betas"] == (0.9, 0.9999) and opt.defaults["eps"] == 1e-6
    ps[0].grad = torch.full((3,), 100.0)
    opt.step()
    assert torch.equal(ps[0].detach(), torch.ones(3)), "the first step only seeds v"
    ps[0].grad = torch.full((3,), 1e4)
    opt.step()  # no clipping: g / sqrt(v) = 100, m = 0.1 * 100 = 10
    torch.testing.assert_close(ps[0].detach(), torch.full((3,), 1 - 1e-3 * 10.0))


@PATHS
def test_laprop_matches_official(path, dtype, monkeypatch):
    use_path(path, monkeypatch)
    same(make_ref(laprop_rule, lr=0.01, b1=0.9, b2=0.999, eps=1e-15),
         lambda ps: native.LaProp(ps, lr=0.01), dtype)


@PATHS
@pytest.mark.parametrize("T", [None, 40])
def test_ademamix_matches_official(path, dtype, T, monkeypatch):
    use_path(path, monkeypatch)
    same(make_ref(ademamix_rule, lr=0.01, b1=0.9, b2=0.999, b3=0.9999, alpha=2.0, eps=1e-8,
                  wd=0.1, T=T),
         lambda ps: native.AdEMAMix(ps, lr=0.01, weight_decay=0.1, alpha_warmup=T,
                                    beta3_warmup=T), dtype)


# ------------------------------------------------------------------ Schedule-Free AdamW
class SFReference(torch.optim.Optimizer):
    """facebookresearch/schedule_free AdamWScheduleFree, the per-tensor branch, written out."""

    def __init__(self, params, lr, betas, eps, wd, warmup, r, power):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, wd=wd, warmup=warmup, r=r,
                                      power=power, k=0, weight_sum=0.0, lr_max=-1.0))

    @torch.no_grad()
    def step(self):
        for g in self.param_groups:
            b1, b2 = g["betas"]
            k = g["k"]
            sched = (k + 1) / g["warmup"] if k < g["warmup"] else 1.0
            bc2 = 1 - b2 ** (k + 1)
            lr = g["lr"] * sched
            lr_max = g["lr_max"] = max(lr, g["lr_max"])
            weight = ((k + 1) ** g["r"]) * (lr_max ** g["power"])
            weight_sum = g["weight_sum"] = g["weight_sum"] + weight
            ckp1 = weight / weight_sum
            for p in g["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if "z" not in st:
                    st["z"] = p.clone()
                    st["v"] = torch.zeros_like(p)
                z, v = st["z"], st["v"]
                v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                gn = p.grad / v.div(bc2).sqrt_().add_(g["eps"])
                if g["wd"] != 0:
                    gn.add_(p, alpha=g["wd"])
                p.lerp_(z, ckp1)
                p.add_(gn, alpha=lr * (b1 * (1 - ckp1) - 1))
                z.sub_(gn, alpha=lr)
            g["k"] = k + 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sfadamw_matches_official(dtype):
    def make_native(ps):
        opt = native.SFAdamW(ps, lr=0.02, weight_decay=0.01, warmup_steps=10, r=0.5)
        opt.train()
        return opt

    same(lambda ps: SFReference(ps, 0.02, (0.9, 0.999), 1e-8, 0.01, 10, 0.5, 2.0), make_native,
         dtype)


def test_sfadamw_eval_train_swap():
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = native.SFAdamW([p], lr=0.1)
    with pytest.raises(RuntimeError, match="SFAdamW.step: the optimizer is in eval mode"):
        p.grad = torch.ones(2)
        opt.step()
    opt.train()
    for _ in range(5):
        p.grad = 2 * p.detach()
        opt.step()
    y = p.detach().clone()
    z = opt.state[p]["z"].clone()
    opt.eval()
    torch.testing.assert_close(p.detach(), y + (1 - 1 / 0.9) * (z - y))  # x
    opt.eval()  # idempotent
    torch.testing.assert_close(p.detach(), y + (1 - 1 / 0.9) * (z - y))
    opt.train()
    torch.testing.assert_close(p.detach(), y, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------ misc behaviour
def test_module_in_modular_chain():
    import optbridge as ob

    same(lambda ps: native.AdamW(ps, lr=0.05), lambda ps: ob.Modular(ps, native.AdamW.module(lr=0.05)))


@pytest.mark.parametrize("path", ["c", "eager"])
def test_parameters_updated_in_place_and_unused_skipped(path, monkeypatch):
    use_path(path, monkeypatch)
    ps = [torch.randn(5, requires_grad=True), torch.randn(3, requires_grad=True)]
    ptrs = [p.data_ptr() for p in ps]
    before = ps[1].detach().clone()
    opt = native.AdamW(ps, lr=0.1)
    ps[0].grad = torch.ones(5)
    opt.step()
    assert [p.data_ptr() for p in ps] == ptrs
    assert torch.equal(ps[1].detach(), before) and ps[1] not in opt.state


def test_bf16_params():
    """bf16 parameters run the fp32 formula and round once; close to the fp32 run."""
    p32 = torch.randn(64)
    pb = p32.bfloat16().requires_grad_()
    pf = pb.detach().float().requires_grad_()
    ob, of = native.AdamW([pb], lr=1e-2), native.AdamW([pf], lr=1e-2)
    for _ in range(10):
        g = torch.randn(64)
        pb.grad, pf.grad = g.bfloat16(), g.bfloat16().float()
        ob.step()
        of.step()
    assert pb.dtype == torch.bfloat16
    torch.testing.assert_close(pb.detach().float(), pf.detach(), rtol=2e-2, atol=2e-2)


def test_failing_compiler_falls_back_to_eager(tmp_path, monkeypatch):
    """No working C compiler: the optimizers run the eager formula, with the same results."""
    monkeypatch.setattr(cpu_kernels, "_lib", None)
    monkeypatch.setattr(cpu_kernels, "_tried", False)
    monkeypatch.setattr(cpu_kernels, "_error", None)
    monkeypatch.setenv("CC", "false")
    monkeypatch.setenv("OPTBRIDGE_CACHE", str(tmp_path))
    assert cpu_kernels.library() is None
    assert cpu_kernels.backend().startswith("eager (RuntimeError: false failed")
    same(lambda ps: torch.optim.AdamW(ps, lr=0.05), lambda ps: native.AdamW(ps, lr=0.05))


#: every optimizer with a C kernel, with arguments that keep all of it on the C path
KERNEL_CASES = [(native.AdamW, {"weight_decay": 0.1}), (native.ADOPT, {}), (native.Lion, {}),
                (native.LaProp, {}), (native.AdEMAMix, {"alpha_warmup": 3}),
                (native.SGD, {"momentum": 0.9, "nesterov": True}), (native.SGD, {"momentum": 0.9}),
                (native.SGD, {}), (native.Adagrad, {"lr_decay": 0.1})]


@pytest.mark.parametrize("storage", ["float32", "bfloat16"])
@pytest.mark.parametrize("cls,kw", KERNEL_CASES)
def test_pointer_table_equals_per_tensor_kernels(cls, kw, storage):
    """One C call per bucket over the cached pointer table stores exactly the bits of one C call
    per tensor (taken when the parameters' step counts differ), with 2 threads splitting tensors
    whose sizes are not multiples of 16; fresh gradient tensors every step (kept alive, so new
    addresses) must make the table follow them."""
    assert cpu_kernels.library() is not None, cpu_kernels.backend()
    shapes = [(70001,), (3,), (17, 33), (1,), (40000,), (129,)]
    gen = torch.Generator().manual_seed(0)
    init = [torch.randn(s, generator=gen) for s in shapes]
    table = [torch.nn.Parameter(x.clone()) for x in init]
    per_tensor = [torch.nn.Parameter(x.clone()) for x in init]
    lagging = torch.nn.Parameter(torch.randn(5, generator=gen))  # last: pids stay the same
    opt_table = cls(table, storage_dtype=storage, **kw)
    opt_single = cls(per_tensor + [lagging], storage_dtype=storage, **kw)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    keep = []
    try:
        for step in range(6):
            grads = [torch.randn(s, generator=gen) for s in shapes]
            keep.append(grads)
            for a, b, g in zip(table, per_tensor, grads):
                a.grad, b.grad = g.clone(), g.clone()
            lagging.grad = torch.randn(5, generator=gen) if step > 0 else None
            opt_table.step()
            opt_single.step()
            for a, b in zip(table, per_tensor):
                assert torch.equal(a, b), (cls.__name__, step)
                for k, v in opt_table.state[a].items():
                    assert torch.equal(v, opt_single.state[b][k]), (cls.__name__, k, step)
    finally:
        torch.set_num_threads(threads)
    assert not torch.equal(table[0], init[0])
    assert opt_single.state[lagging]["step"].item() == 5  # the per-tensor path really ran


@pytest.mark.parametrize("cls,kw", KERNEL_CASES)
def test_c_kernels_match_eager_on_large_tensors(cls, kw, monkeypatch):
    """Tensors large enough for the kernels' vector loops, their thread split and (Lion) their
    two interleaved halves plus tail: the C path equals the eager formula to rounding."""
    assert cpu_kernels.library() is not None, cpu_kernels.backend()
    shapes = [(70001,), (1000,), (33,), (17, 65)]

    def run(eager: bool):
        gen = torch.Generator().manual_seed(1)
        ps = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
        opt = cls(ps, **kw)
        threads = torch.get_num_threads()
        torch.set_num_threads(2)
        try:
            with monkeypatch.context() as mp:
                if eager:
                    mp.setenv("OPTBRIDGE_NATIVE_CPU", "eager")
                for _ in range(5):
                    for p in ps:
                        p.grad = torch.randn(p.shape, generator=gen)
                    opt.step()
        finally:
            torch.set_num_threads(threads)
        return ps

    for a, b in zip(run(False), run(True)):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("cls", [native.AdamW, native.Lion, native.AdEMAMix])
def test_state_dict_of_bf16_params_keeps_fp32_slots_exact(cls, tmp_path):
    """torch's load casts state to the parameter dtype; fp32 slots of bfloat16 parameters must
    come back with every bit, so training continues exactly."""
    gen = torch.Generator().manual_seed(2)
    init = [torch.randn(s, generator=gen).bfloat16() for s in [(7, 9), (33,)]]
    grads = [[torch.randn(x.shape, generator=gen).bfloat16() for x in init] for _ in range(6)]

    def run(ps, opt, steps):
        for gs in steps:
            for p, g in zip(ps, gs):
                p.grad = g.clone()
            opt.step()

    ps = [torch.nn.Parameter(x.clone()) for x in init]
    opt = cls(ps, lr=1e-2)
    run(ps, opt, grads[:3])
    torch.save(opt.state_dict(), tmp_path / "s.pt")
    qs = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    resumed = cls(qs, lr=1e-2)
    resumed.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    for p, q in zip(ps, qs):
        for k, v in opt.state[p].items():
            assert v.dtype == resumed.state[q][k].dtype and torch.equal(v, resumed.state[q][k]), k
    assert any(v.dtype == torch.float32 and not torch.equal(v, v.bfloat16().float())
               for st in opt.state.values() for k, v in st.items() if k != "step")
    run(ps, opt, grads[3:])
    run(qs, resumed, grads[3:])
    for p, q in zip(ps, qs):
        assert torch.equal(p, q)
