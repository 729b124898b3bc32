"""TorchOptimizer: wrapped optimizers follow the same trajectory as used directly.

Trajectories are compared bit for bit (``atol=rtol=0``): the adapter leaves the parameters
exactly at the wrapped optimizer's result, and the wrapped closure evaluates exactly the
wrapped optimizer's points.
"""

from __future__ import annotations

import io
import subprocess
import sys
import warnings

import numpy as np
import pytest
import pytorch_optimizer
import torch

import optbridge as ob
from optbridge.adapters import TorchOptimizer
from optbridge.adapters import torch_special as special
from optbridge.core.closure import ClosureError

from trajectory import loss_fn, make_params

warnings.filterwarnings("ignore")

SPECIAL = set(special.NEEDS_CLOSURE) | set(special.NEEDS_KWARGS) | set(special.NEEDS_LAYOUT) \
    | set(special.UNSUPPORTED)
PLAIN = sorted(set(pytorch_optimizer.get_supported_optimizers()) - SPECIAL)
#: d-adaptation SGD and SaRA barely move at lr=1e-2 in a few steps
LR = {"dadaptsgd": 1.0, "sara": 1.0}
#: AdaShift starts moving after keep_num=10 steps
STEPS = {"adashift": 12}


def _run(make, steps, closure=False, ps=None, lf=loss_fn, sched=None):
    torch.manual_seed(0)  # optimizers with randomness (Kron, MAGMA) draw the same numbers
    np.random.seed(0)  # Kron's balancing draws from numpy
    ps = make_params(0) if ps is None else ps
    opt = make(ps)
    s = sched(opt) if sched is not None else None
    out = []
    for _ in range(steps):
        opt.zero_grad()
        lf(ps).backward()  # SAM-style optimizers read the gradient at the start point
        if closure:
            def cl(backward=True):
                loss = lf(ps)
                if backward:
                    opt.zero_grad()
                    loss.backward()
                return loss
            opt.step(cl)
        else:
            opt.step()
        if s is not None:
            s.step()
        out.append([p.detach().clone() for p in ps])
    return out, opt


def _same(make_direct, make_wrapped, steps=8, atol=0.0, rtol=0.0, **kw):
    ta, _ = _run(make_direct, steps, **kw)
    tb, opt = _run(make_wrapped, steps, **kw)
    for i, (sa, sb) in enumerate(zip(ta, tb)):
        for j, (x, y) in enumerate(zip(sa, sb)):
            torch.testing.assert_close(y, x, atol=atol, rtol=rtol, msg=lambda m: f"step {i} param {j}: {m}")
    start = kw.get("ps") or make_params(0)
    assert any(not torch.equal(x, s.detach()) for x, s in zip(ta[-1], start)), "did not move"
    if kw.get("ps") is None:  # the harness's fifth parameter never has a gradient
        assert torch.equal(tb[-1][4], make_params(0)[4].detach())
    return opt


def test_special_lists_are_registry_names():
    names = set(pytorch_optimizer.get_supported_optimizers())
    assert SPECIAL <= names
    assert len(PLAIN) >= 100


@pytest.mark.parametrize("name", PLAIN)
def test_pytorch_optimizer_plain(name):
    cls = pytorch_optimizer.load_optimizer(name)
    lr = LR.get(name, 1e-2)
    _same(lambda ps: cls(ps, lr=lr),
          lambda ps: ob.Modular(ps, TorchOptimizer(f"pytorch_optimizer:{name}", lr=lr)),
          steps=STEPS.get(name, 8))


def test_needs_closure_lbfgs_and_bsam():
    for name, kw in (("lbfgs", {}), ("bsam", dict(num_data=10))):
        cls = pytorch_optimizer.load_optimizer(name)
        _same(lambda ps: cls(ps, lr=1e-2, **kw),
              lambda ps: ob.Modular(ps, TorchOptimizer(f"pytorch_optimizer:{name}", lr=1e-2, **kw)),
              steps=3, closure=True, atol=0.0)


def test_alig_with_loss_closure():
    # AliG's closure returns the loss (no backward): step(lambda: loss)
    cls = pytorch_optimizer.load_optimizer("alig")
    ps_a, ps_b = make_params(0), make_params(0)
    direct = cls(ps_a, max_lr=0.1)
    wrapped = ob.Modular(ps_b, TorchOptimizer("pytorch_optimizer:alig", max_lr=0.1))
    for _ in range(5):
        direct.zero_grad()
        loss = loss_fn(ps_a)
        loss.backward()
        direct.step(lambda: loss.detach())

        def cl(backward=True):
            loss = loss_fn(ps_b)
            if backward:
                wrapped.zero_grad()
                loss.backward()
            return loss
        wrapped.step(cl)
    for a, b in zip(ps_a, ps_b):
        torch.testing.assert_close(b, a, atol=0.0, rtol=0.0)
    assert not torch.equal(ps_a[0], make_params(0)[0])


def test_needs_closure_raises_without_one():
    ps = make_params(0)
    opt = ob.Modular(ps, TorchOptimizer("pytorch_optimizer:bsam", num_data=10))
    loss_fn(ps).backward()
    with pytest.raises(ClosureError, match="TorchOptimizer: BSAM needs a closure"):
        opt.step()
    opt = ob.Modular(ps, TorchOptimizer(torch.optim.LBFGS))
    with pytest.raises(ClosureError, match="LBFGS needs a closure"):
        opt.step()
    assert torch.equal(ps[0], make_params(0)[0])


def test_needs_kwargs_ranger21():
    cls = pytorch_optimizer.load_optimizer("ranger21")
    _same(lambda ps: cls(ps, lr=1e-2, num_iterations=20),
          lambda ps: ob.Modular(ps, TorchOptimizer("pytorch_optimizer:ranger21", lr=1e-2,
                                                   num_iterations=20)))
    with pytest.raises(TypeError, match="TorchOptimizer: constructing Ranger21 failed.*num_iterations"):
        _run(lambda ps: ob.Modular(ps, TorchOptimizer("pytorch_optimizer:ranger21")), 1)


def test_needs_layout_spectralsphere():
    cls = pytorch_optimizer.load_optimizer("spectralsphere")

    def two_d():
        g = torch.Generator().manual_seed(3)
        return [torch.randn(s, generator=g).requires_grad_() for s in ((4, 3), (5, 4))]

    def lf(ps):
        return sum((p.sin() * p).sum() + (p**2).sum() for p in ps)

    ta, _ = _run(lambda ps: cls(ps, lr=1e-2), 6, ps=two_d(), lf=lf)
    tb, _ = _run(lambda ps: ob.Modular(ps, TorchOptimizer("pytorch_optimizer:spectralsphere",
                                                          lr=1e-2)), 6, ps=two_d(), lf=lf)
    for sa, sb in zip(ta, tb):
        for x, y in zip(sa, sb):
            torch.testing.assert_close(y, x, atol=0.0, rtol=0.0)
    assert not torch.equal(ta[-1][0], two_d()[0])


@pytest.mark.parametrize("name", sorted(special.UNSUPPORTED))
def test_unsupported_raise_with_reason(name):
    with pytest.raises(ValueError, match="TorchOptimizer: .* cannot be wrapped: it "):
        TorchOptimizer(f"pytorch_optimizer:{name}")


TORCH_CASES = [
    (torch.optim.SGD, dict(lr=0.05)),
    (torch.optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-2)),
    (torch.optim.Adam, dict(lr=1e-2)),
    (torch.optim.Adam, dict(lr=1e-2, amsgrad=True, foreach=False)),
    (torch.optim.AdamW, dict(lr=1e-2, weight_decay=0.1)),
    (torch.optim.RMSprop, dict(lr=1e-2, momentum=0.5, centered=True)),
]


@pytest.mark.parametrize("cls,kw", TORCH_CASES)
def test_torch_optim(cls, kw):
    _same(lambda ps: cls(ps, **kw), lambda ps: ob.Modular(ps, TorchOptimizer(cls, **kw)), steps=10)


def test_torch_lbfgs_closure_and_eval_count():
    kw = dict(lr=0.5, max_iter=4, history_size=5)
    opt = _same(lambda ps: torch.optim.LBFGS(ps, **kw),
                lambda ps: ob.Modular(ps, TorchOptimizer("torch:LBFGS", **kw)),
                steps=3, closure=True, atol=0.0)
    # the first wrapped-closure call reuses the engine's evaluation at the start point
    assert opt.evals.loss_and_grad <= 3 * 4 + 3


def test_param_groups_and_scheduler_drive_wrapped_lr():
    def groups(ps):
        return [{"params": ps[:2]}, {"params": ps[2:], "lr": 0.02}]

    def sched(opt):
        return torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)

    opt = _same(lambda ps: torch.optim.Adam(groups(ps), lr=0.05),
                lambda ps: ob.Modular(groups(ps), TorchOptimizer(torch.optim.Adam, lr=0.05)),
                steps=7, sched=sched)
    wrapped = opt.modules[0].optimizer
    assert [g["lr"] for g in wrapped.param_groups] == [0.05 * 0.5**3, 0.02 * 0.5**3]
    assert [len(g["params"]) for g in wrapped.param_groups] == [2, 3]


def test_lr_default_from_class_and_declared():
    m = TorchOptimizer(torch.optim.Adam)
    assert m.defaults == {"lr": 1e-3}
    assert ob.Modular(make_params(0), TorchOptimizer(torch.optim.Adam)).param_groups[0]["lr"] == 1e-3


def test_checkpoint_resume_weights_only():
    def make(ps):
        return ob.Modular(ps, TorchOptimizer("pytorch_optimizer:adamp", lr=1e-2))

    full, _ = _run(make, 6)
    ps = make_params(0)
    torch.manual_seed(0)
    opt = make(ps)
    for _ in range(3):
        opt.zero_grad()
        loss_fn(ps).backward()
        opt.step()
    buf = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "ps": [p.detach() for p in ps]}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    assert saved["opt"]["optbridge"]["modules"]["0"]["torch_optimizer"]["state"]
    ps2 = [p.clone().requires_grad_() for p in saved["ps"]]
    opt2 = make(ps2)
    opt2.load_state_dict(saved["opt"])
    for _ in range(3):
        opt2.zero_grad()
        loss_fn(ps2).backward()
        opt2.step()
    for x, y in zip(full[-1], ps2):
        torch.testing.assert_close(y.detach(), x, atol=0.0, rtol=0.0)
    # not vacuous: without the loaded state the last three steps differ
    ps3 = [p.clone().requires_grad_() for p in saved["ps"]]
    opt3 = make(ps3)
    for _ in range(3):
        opt3.zero_grad()
        loss_fn(ps3).backward()
        opt3.step()
    assert not torch.allclose(ps3[0], ps2[0], atol=1e-4)


def test_unknown_name_lists_closest_matches():
    with pytest.raises(ValueError, match="unknown pytorch_optimizer optimizer 'adamq'.*closest matches: .*adam"):
        TorchOptimizer("pytorch_optimizer:adamq")
    with pytest.raises(ValueError, match="unknown torch.optim optimizer 'Adamw'.*AdamW"):
        TorchOptimizer("torch:Adamw")
    with pytest.raises(ValueError, match="must start with 'pytorch_optimizer:'"):
        TorchOptimizer("lion")


def test_bad_class_and_kwargs():
    with pytest.raises(TypeError, match="TorchOptimizer: cls_or_name must be a torch.optim.Optimizer subclass"):
        TorchOptimizer(torch.nn.Linear)
    with pytest.raises(TypeError, match="got an instance of SGD"):
        TorchOptimizer(torch.optim.SGD(make_params(0), lr=0.1))
    with pytest.raises(TypeError, match="TorchOptimizer: SGD does not accept betas"):
        TorchOptimizer(torch.optim.SGD, lr=0.1, betas=(0.9, 0.9))
    with pytest.raises(ValueError, match="lr"):
        TorchOptimizer(torch.optim.SGD, lr=-1.0)


def test_missing_pytorch_optimizer(monkeypatch):
    monkeypatch.setitem(sys.modules, "pytorch_optimizer", None)
    with pytest.raises(ImportError, match=r"pip install optbridge\[pytorch-optimizer\]"):
        TorchOptimizer("pytorch_optimizer:lion")


def test_import_does_not_load_pytorch_optimizer():
    code = "import sys, optbridge, optbridge.adapters; print('pytorch_optimizer' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_chain_update_is_the_gradient():
    # ClipValue before the adapter: the wrapped SGD sees the clipped gradient
    from optbridge import m

    def clipped_sgd(ps):
        sgd = torch.optim.SGD(ps, lr=0.05, momentum=0.9)
        step = sgd.step

        def clipping_step():
            for p in ps:
                if p.grad is not None:
                    p.grad.clamp_(-0.5, 0.5)
            step()
        sgd.step = clipping_step
        return sgd

    _same(clipped_sgd, lambda ps: ob.Modular(
        ps, m.ClipValue(0.5), TorchOptimizer(torch.optim.SGD, lr=0.05, momentum=0.9)), steps=6)


def test_lr_module_after_compounds():
    # documented misuse: LR after TorchOptimizer multiplies the wrapped step by lr once more
    from optbridge import m

    _same(lambda ps: torch.optim.SGD(ps, lr=0.01, momentum=0.9),
          lambda ps: ob.Modular(ps, TorchOptimizer(torch.optim.SGD, lr=0.1, momentum=0.9),
                                m.LR(0.1)), steps=6, atol=1e-6, rtol=1e-6)


def test_parameters_changed_between_steps_are_picked_up():
    def run(make):
        ps = make_params(0)
        opt = make(ps)
        for i in range(6):
            opt.zero_grad()
            loss_fn(ps).backward()
            opt.step()
            if i == 2:
                with torch.no_grad():
                    ps[0].mul_(0.5)
        return [p.detach().clone() for p in ps]

    a = run(lambda ps: torch.optim.Adam(ps, lr=0.05))
    b = run(lambda ps: ob.Modular(ps, TorchOptimizer(torch.optim.Adam, lr=0.05)))
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def test_complex_parameters():
    def make():
        g = torch.Generator().manual_seed(0)
        return [torch.randn(3, 2, dtype=torch.complex64, generator=g).requires_grad_()]

    def run(make_opt):
        ps = make()
        opt = make_opt(ps)
        for _ in range(5):
            opt.zero_grad()
            (ps[0].abs() ** 2 + ps[0].real).sum().backward()
            opt.step()
        return ps[0].detach()

    a = run(lambda ps: torch.optim.Adam(ps, lr=0.05))
    b = run(lambda ps: ob.Modular(ps, TorchOptimizer(torch.optim.Adam, lr=0.05)))
    assert torch.equal(a, b) and not torch.equal(a, make()[0].detach())
