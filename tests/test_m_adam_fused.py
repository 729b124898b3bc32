"""``m.Adam``'s fused CPU pass (``optbridge/m/adaptive/_fused_adam.py``): the same trajectories
as the eager formula, and the eager formula wherever the kernel's contract does not hold."""

from __future__ import annotations

import pytest
import torch

import optbridge
from optbridge import m
from optbridge.m.adaptive import _fused_adam
from optbridge.m.adaptive import adam as adam_module
from optbridge.native import cpu_kernels

from trajectory import assert_same_trajectory, loss_fn, make_params


@pytest.fixture(autouse=True)
def _kernels_built():
    assert cpu_kernels.library() is not None, cpu_kernels.backend()


def _eager(monkeypatch, make):
    """``make`` with the compiled kernels switched off while its steps run."""
    def make_eager(ps):
        opt = make(ps)
        step = opt.step

        def eager_step(closure=None):
            with monkeypatch.context() as mp:
                mp.setenv("OPTBRIDGE_NATIVE_CPU", "eager")
                return step(closure)

        opt.step = eager_step
        return opt
    return make_eager


def _ran_fused(opt) -> bool:
    return any(mod in _fused_adam._tables for mod in opt.modules)


CHAINS = {
    "adam_lr": lambda: [m.Adam(), m.LR(1e-2)],
    "eps_maximize": lambda: [m.Adam(beta1=0.8, beta2=0.99, eps=0.1, maximize=True), m.LR(1e-2)],
    "no_debias_adamw": lambda: [m.Adam(debias=False), m.WeightDecay(0.1), m.LR(3e-2)],
    "clip_first": lambda: [m.ClipNorm(0.5), m.Adam(), m.LR(1e-2)],
    "scaled_input": lambda: [m.Mul(3.0), m.Adam(), m.NormalizeByEMA(), m.LR(1e-2)],
    "beta1_high": lambda: [m.Adam(beta1=0.2), m.LR(1e-2)],  # lerp weight >= 0.5
}


@pytest.mark.parametrize("name", sorted(CHAINS))
def test_fused_matches_eager(name, monkeypatch):
    def make(ps):
        return optbridge.Modular(ps, *CHAINS[name]())

    assert_same_trajectory(make, _eager(monkeypatch, make), steps=60, rtol=1e-6, atol=1e-6)
    ps = make_params()
    opt = make(ps)
    loss_fn(ps).backward()
    opt.step()
    assert _ran_fused(opt)


def test_fused_adam_lr_matches_torch_adam():
    assert_same_trajectory(
        lambda ps: optbridge.Modular(ps, m.Adam(beta2=0.99), m.WeightDecay(0.05), m.LR(1e-2)),
        lambda ps: torch.optim.AdamW(ps, lr=1e-2, betas=(0.9, 0.99), weight_decay=0.05),
        steps=60)


def test_threaded_split_matches_one_thread():
    """Large tensors split between threads store the same bits as one thread."""
    def run(threads):
        old = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            g = torch.Generator().manual_seed(1)
            ps = [torch.randn(300_001, generator=g).requires_grad_(),
                  torch.randn(70, 1000, generator=g).requires_grad_()]
            opt = optbridge.Modular(ps, m.ClipNorm(1.0), m.Adam(), m.LR(1e-2))
            for _ in range(3):
                for p in ps:
                    p.grad = torch.randn(p.shape, generator=g)
                opt.step()
            assert _ran_fused(opt)
            return [p.detach().clone() for p in ps]
        finally:
            torch.set_num_threads(old)

    for a, b in zip(run(1), run(2)):
        assert torch.equal(a, b)


def _one_step(opt, ps):
    opt.zero_grad()
    loss_fn(ps).backward()
    opt.step()


def _contract_case(case):
    """Params and an optimizer for which the kernel's contract fails, and the Adam module."""
    dtype = torch.float64 if case == "float64" else torch.float32
    ps = make_params(dtype=dtype)
    if case == "non_contiguous":
        ps[0] = torch.randn(5, 6, generator=torch.Generator().manual_seed(3)).t().requires_grad_()
    adam = m.Adam(amsgrad=case == "amsgrad")
    chain = [adam, m.LR(1e-2)]
    if case == "per_tensor_factor":
        chain = [m.ClipNorm(0.5, dim=None), *chain]
    groups = [{"params": ps[:2]}, {"params": ps[2:]}]
    if case == "two_settings":
        groups[1]["beta1"] = 0.5
    opt = optbridge.Modular(groups if case in ("two_settings", "steps_differ") else ps, *chain)
    return ps, opt, adam


def _run_case(case, monkeypatch):
    """Four steps; returns the final params and whether each Adam step took the fused pass."""
    ps, opt, adam = _contract_case(case)
    fused = []
    real = adam_module.fused_adam_step

    def spy(module, ctx):
        fused.append(real(module, ctx))
        return fused[-1]

    monkeypatch.setattr(adam_module, "fused_adam_step", spy)
    for k in range(4):
        opt.zero_grad()
        loss_fn(ps).backward()
        if case == "steps_differ" and k == 0:
            for p in ps[2:]:  # the second group has no gradient on the first step
                p.grad = None
        opt.step()
    return [p.detach().clone() for p in ps], fused


@pytest.mark.parametrize("case", ["amsgrad", "float64", "non_contiguous", "two_settings",
                                  "steps_differ", "per_tensor_factor"])
def test_eager_where_the_kernel_contract_fails(case, monkeypatch):
    got, fused = _run_case(case, monkeypatch)
    # steps_differ: the first step has only the first group's parameters, all at step 1
    assert fused == ([True, False, False, False] if case == "steps_differ" else [False] * 4)
    monkeypatch.setenv("OPTBRIDGE_NATIVE_CPU", "eager")
    ref, _ = _run_case(case, monkeypatch)
    for a, b in zip(got, ref):
        assert torch.equal(a, b)


def test_state_dict_moves_between_fused_and_eager(monkeypatch, tmp_path):
    def make(ps):
        return optbridge.Modular(ps, m.ClipNorm(1.0), m.Adam(), m.LR(1e-2))

    ps = make_params()
    opt = make(ps)
    for _ in range(5):
        _one_step(opt, ps)
    torch.save(opt.state_dict(), tmp_path / "s.pt")
    saved = [p.detach().clone() for p in ps]

    def resume(eager: bool):
        qs = make_params()
        with torch.no_grad():
            for q, s in zip(qs, saved):
                q.copy_(s)
        o = make(qs)
        o.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
        with monkeypatch.context() as mp:
            if eager:
                mp.setenv("OPTBRIDGE_NATIVE_CPU", "eager")
            for _ in range(5):
                _one_step(o, qs)
        return qs

    for a, b in zip(resume(False), resume(True)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
