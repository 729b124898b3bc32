"""``optbridge.adapters.Optax`` against torch.optim, optbridge modules and optax called directly."""

from __future__ import annotations

import io
import math
import subprocess
import sys

import jax
import jax.numpy as jnp
import optax
import pytest
import torch

import optbridge as ob
from optbridge import m
from optbridge.adapters import Optax
from optbridge.adapters import optax as optax_adapter

from trajectory import assert_same_trajectory, loss_fn, make_params

TOL = dict(rtol=1e-5, atol=1e-6)


class _Scheduled:
    """An optimizer plus a scheduler stepped after each optimizer step."""

    def __init__(self, opt, sched):
        self.opt, self.sched = opt, sched

    def zero_grad(self):
        self.opt.zero_grad()

    def step(self):
        self.opt.step()
        self.sched.step()


@pytest.mark.parametrize("per_leaf_max", [32, 0])  # update per parameter / concatenated
def test_adam_matches_torch(monkeypatch, per_leaf_max):
    monkeypatch.setattr(optax_adapter, "PER_LEAF_MAX", per_leaf_max)
    assert_same_trajectory(lambda ps: torch.optim.Adam(ps, lr=1e-3),
                           lambda ps: ob.Modular(ps, Optax(optax.adam(1e-3))), steps=100, **TOL)


def test_adam_matches_optax_directly():
    """Same gradients into optax by hand: the module adds nothing but the sign."""
    ps = make_params(0, with_unused=False)
    opt = ob.Modular(ps, Optax(optax.adam(1e-2)))
    tx = optax.adam(1e-2)
    jp = [jnp.asarray(p.detach().numpy()) for p in ps]
    st = tx.init(jp)
    for _ in range(30):
        opt.zero_grad()
        loss_fn(ps).backward()
        g = [jnp.asarray(p.grad.numpy()) for p in ps]
        opt.step()
        u, st = tx.update(g, st, jp)
        jp = optax.apply_updates(jp, u)
        for p, q in zip(ps, jp):
            torch.testing.assert_close(p.detach(), torch.from_dlpack(q), rtol=1e-6, atol=1e-6)


def test_sgd_momentum_matches_torch():
    assert_same_trajectory(lambda ps: torch.optim.SGD(ps, lr=1e-2, momentum=0.9),
                           lambda ps: ob.Modular(ps, Optax(optax.sgd(1e-2, momentum=0.9))),
                           steps=100, **TOL)


def test_ademamix_matches_module():
    # constant b3/alpha: optax's count_m2 (schedules see 0 first) does not enter
    assert_same_trajectory(
        lambda ps: ob.Modular(ps, m.AdEMAMix(beta3=0.999, alpha=5.0), m.LR(1e-3)),
        lambda ps: ob.Modular(ps, Optax(optax.contrib.ademamix(1e-3, b3=0.999, alpha=5.0))),
        steps=100, **TOL)


def test_ademamix_warmup_step_count_convention():
    """optax evaluates b3/alpha schedules at ``count_m2`` = t - 1 (0 on the first step);
    ``m.AdEMAMix(T_alpha_beta3=T)`` uses t (from 1): the schedules agree shifted by one."""
    T, alpha, b1, b3 = 20, 5.0, 0.9, 0.999
    lb1, lb3 = math.log(b1), math.log(b3)

    def alpha_s(c):
        return jnp.minimum((c + 1) * alpha / T, alpha)

    def b3_s(c):
        a = (c + 1) / T
        warm = jnp.minimum(jnp.exp(lb1 * lb3 / ((1 - a) * lb3 + a * lb1)), b3)
        return jnp.where(c + 1 >= T, b3, warm)

    assert_same_trajectory(
        lambda ps: ob.Modular(ps, m.AdEMAMix(beta3=b3, alpha=alpha, T_alpha_beta3=T), m.LR(1e-3)),
        lambda ps: ob.Modular(ps, Optax(optax.contrib.ademamix(1e-3, b3=b3_s, alpha=alpha_s))),
        steps=40, **TOL)


def test_scheduler_drives_injected_lr_without_recompiling():
    mods = []

    def ours(ps):
        mod = Optax(optax.inject_hyperparams(optax.adam)(learning_rate=1e-2))
        mods.append(mod)
        o = ob.Modular(ps, mod)
        return _Scheduled(o, torch.optim.lr_scheduler.StepLR(o, 10, 0.5))

    def ref(ps):
        o = torch.optim.Adam(ps, lr=1e-2)
        return _Scheduled(o, torch.optim.lr_scheduler.StepLR(o, 10, 0.5))

    assert_same_trajectory(ref, ours, steps=40, **TOL)
    assert mods[0].defaults["lr"] == pytest.approx(1e-2)
    assert mods[0].trace_count == 1


def test_scheduler_equals_optax_schedule():
    """torch StepLR through the group lr == optax's own piecewise schedule."""
    sched = optax.exponential_decay(1e-2, transition_steps=10, decay_rate=0.5, staircase=True)

    def ours(ps):
        o = ob.Modular(ps, Optax(optax.inject_hyperparams(optax.adam)(learning_rate=1e-2)))
        return _Scheduled(o, torch.optim.lr_scheduler.StepLR(o, 10, 0.5))

    assert_same_trajectory(lambda ps: ob.Modular(ps, Optax(optax.adam(sched))), ours, steps=35,
                           **TOL)


def test_no_recompilation_and_grad_none_skipped():
    ps = make_params(0)
    mod = Optax(optax.adamw(1e-2, weight_decay=1e-2))
    opt = ob.Modular(ps, mod)
    before = ps[4].detach().clone()
    for _ in range(20):
        opt.zero_grad(set_to_none=True)  # fresh grad tensors every step
        loss_fn(ps).backward()
        opt.step()
    assert mod.trace_count == 1
    assert torch.equal(ps[4].detach(), before)


def test_unaligned_and_non_contiguous_params_copy_path():
    """Such tensors are copied into JAX each step (never a stale cached copy)."""
    def params():
        g = torch.Generator().manual_seed(3)
        a = torch.randn(11, generator=g)[1:].detach().requires_grad_()  # offset 4 bytes
        b = torch.randn(4, 6, generator=g).t().detach().requires_grad_()  # non-contiguous
        return [a, b]

    def loss(ps):
        return (ps[0].sin() ** 2).sum() + (ps[1] ** 2 * ps[1].cos()).sum()

    pa, pb = params(), params()
    assert pa[0].storage_offset() == 1 and not pa[1].is_contiguous()
    ref = torch.optim.Adam(pa, lr=1e-3)
    opt = ob.Modular(pb, Optax(optax.adam(1e-3)))
    for _ in range(30):
        for o, ps in ((ref, pa), (opt, pb)):
            o.zero_grad(set_to_none=False)  # same grad tensors, written in place
            loss(ps).backward()
            o.step()
        for x, y in zip(pa, pb):
            torch.testing.assert_close(y, x, **TOL)
    assert pb[0].storage_offset() == 1 and not pb[1].is_contiguous()  # updated in place


def test_checkpoint_resume(tmp_path):
    def run(steps, sd=None):
        ps = make_params(1, with_unused=False)
        opt = ob.Modular(ps, Optax(optax.adam(1e-2)))
        if sd is not None:
            for p, q in zip(ps, sd["params"]):
                p.data.copy_(q)
            opt.load_state_dict(sd["opt"])
        for _ in range(steps):
            opt.zero_grad()
            loss_fn(ps).backward()
            opt.step()
        return ps, opt

    full, _ = run(20)
    half, opt = run(10)
    buf = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "params": [p.detach().clone() for p in half]}, buf)
    buf.seek(0)
    sd = torch.load(buf, weights_only=True)
    leaves = next(iter(sd["opt"]["optbridge"]["modules"].values()))["optax"]["leaves"]
    assert all(isinstance(x, torch.Tensor) for x in leaves) and len(leaves) == 9
    resumed, _ = run(10, sd)
    for a, b in zip(full, resumed):
        assert torch.equal(a, b)


def test_bfloat16_runs_and_matches_optax():
    p = torch.randn(50, dtype=torch.bfloat16, generator=torch.Generator().manual_seed(0))
    p.requires_grad_()
    opt = ob.Modular([p], Optax(optax.adam(1e-2)))
    tx = optax.adam(1e-2)
    jp = jnp.asarray(p.detach().float().numpy()).astype(jnp.bfloat16)
    st = tx.init(jp)
    for _ in range(10):
        opt.zero_grad()
        (p.float() ** 2).sum().backward()
        g = jnp.asarray(p.grad.float().numpy()).astype(jnp.bfloat16)
        opt.step()
        u, st = tx.update(g, st, jp)
        jp = optax.apply_updates(jp, u)
    assert p.dtype == torch.bfloat16
    # the engine subtracts the bf16 update (p - (-u)) where optax adds it: equal up to bf16 rounding
    torch.testing.assert_close(p.detach(), torch.from_dlpack(jp), rtol=1e-2, atol=1e-2)
    assert not torch.equal(p.detach().float(), torch.randn(50, dtype=torch.bfloat16,
                           generator=torch.Generator().manual_seed(0)).float())


def test_mixed_dtypes_concatenated_update(monkeypatch):
    """float32 and bfloat16 parameters: one concatenated buffer per dtype, same result as one
    buffer per parameter."""
    def run(per_leaf_max):
        monkeypatch.setattr(optax_adapter, "PER_LEAF_MAX", per_leaf_max)
        g = torch.Generator().manual_seed(5)
        ps = [torch.randn(3, 4, generator=g, dtype=dt).requires_grad_()
              for dt in (torch.float32, torch.bfloat16, torch.float32, torch.bfloat16)]
        opt = ob.Modular(ps, Optax(optax.adam(1e-2)))
        for _ in range(5):
            opt.zero_grad()
            sum((p.float() ** 2 * (i + 1)).sum() for i, p in enumerate(ps)).backward()
            opt.step()
        return ps

    a, b = run(0), run(32)
    for x, y in zip(a, b):
        assert x.dtype == y.dtype
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-6)
    start = torch.randn(3, 4, generator=torch.Generator().manual_seed(5))
    assert not torch.equal(a[0].detach(), start)  # it moved


def test_float64_requires_x64():
    """Without x64 mode the step raises before anything changes; with it float64 is exact."""
    p = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = ob.Modular([p], Optax(optax.sgd(0.1)))
    p.grad = torch.ones(3, dtype=torch.float64)
    assert not jax.config.jax_enable_x64
    with pytest.raises(ValueError, match="jax_enable_x64"):
        opt.step()
    assert torch.equal(p.detach(), torch.zeros(3, dtype=torch.float64))
    jax.config.update("jax_enable_x64", True)
    try:
        p.grad = torch.full((3,), 1 / 3, dtype=torch.float64)
        opt.step()
        ref = torch.zeros(3, dtype=torch.float64) - 0.1 * torch.full((3,), 1 / 3, dtype=torch.float64)
        assert torch.equal(p.detach(), ref)
    finally:
        jax.config.update("jax_enable_x64", False)


def _rosen(x):
    return (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2


def test_lbfgs_on_torch_closure_converges_on_rosenbrock():
    x = torch.tensor([-1.2, 1.0], requires_grad=True)
    mod = Optax(optax.lbfgs())
    opt = ob.Modular([x], mod)

    def closure(backward=True):
        loss = _rosen(x)
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss

    for _ in range(40):
        opt.step(closure)
    torch.testing.assert_close(x.detach(), torch.ones(2), rtol=0, atol=1e-4)
    assert mod.trace_count == 1
    assert opt.evals.loss_and_grad > 40  # the zoom line search evaluated the torch closure


def test_backtracking_linesearch_value_fn_restores_params():
    x = torch.tensor([-1.2, 1.0], requires_grad=True)
    tx = optax.chain(optax.sgd(1.0), optax.scale_by_backtracking_linesearch(20))
    opt = ob.Modular([x], Optax(tx))
    seen = []

    def closure(backward=True):
        seen.append(x.detach().clone())
        loss = _rosen(x)
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss

    # optax directly on the same function: the accepted points must be identical
    f = lambda p: (1 - p[0]) ** 2 + 100 * (p[1] - p[0] ** 2) ** 2  # noqa: E731
    st = tx.init(jnp.array([-1.2, 1.0]))
    jp = jnp.array([-1.2, 1.0])
    for _ in range(5):
        start = x.detach().clone()
        opt.step(closure)
        v, g = jax.value_and_grad(f)(jp)
        u, st = tx.update(g, st, jp, value=v, grad=g, value_fn=f)
        jp = optax.apply_updates(jp, u)
        torch.testing.assert_close(x.detach(), torch.from_dlpack(jp), rtol=1e-6, atol=1e-6)
        assert any(not torch.equal(s, start) for s in seen)  # trial points were evaluated
    assert opt.evals.loss > 0
    assert _rosen(x) < _rosen(torch.tensor([-1.2, 1.0]))


def test_bad_input():
    with pytest.raises(TypeError, match="Optax: transform must be an optax.GradientTransformation"):
        Optax(optax.adam)
    with pytest.raises(TypeError, match="GradientTransformation"):
        Optax(torch.optim.Adam)
    with pytest.raises(ValueError, match="extra_args"):
        Optax(optax.adam(1e-3), extra_args="yes")


def test_import_is_lazy_and_jax_missing_raises_importerror_naming_extra():
    code = (
        "import sys\n"
        "import optbridge, optbridge.adapters as A\n"
        "assert 'jax' not in sys.modules and 'optax' not in sys.modules\n"
        "sys.modules['jax'] = None\n"
        "sys.modules['optax'] = None\n"
        "try:\n"
        "    A.Optax(object())\n"
        "except ImportError as e:\n"
        "    assert 'optbridge[jax]' in str(e) and 'Optax' in str(e), e\n"
        "    print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]
