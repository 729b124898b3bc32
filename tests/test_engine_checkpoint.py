"""state_dict / load_state_dict: torch's format, weights_only loading, identical continuation."""

import copy
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import optbridge as ob
from optbridge import m
from trajectory import loss_fn, make_params

SCRIPT = textwrap.dedent(
    """
    import sys, torch
    sys.path.insert(0, {tests!r})
    import optbridge as ob
    from optbridge import m
    from trajectory import loss_fn, make_params

    mode, path, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    ps = make_params(0)
    opt = ob.Modular([{{"params": ps[:2]}}, {{"params": ps[2:], "lr": 0.02, "amsgrad": True}}],
                     m.Adam(beta1=0.8), m.LR(0.01))
    sched = torch.optim.lr_scheduler.StepLR(opt, 3, 0.7)
    if mode == "resume":
        ck = torch.load(path, weights_only=True)
        with torch.no_grad():
            for p, v in zip(ps, ck["params"]):
                p.copy_(v)
        opt.load_state_dict(ck["opt"])
        sched.load_state_dict(ck["sched"])
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(ps).backward()
        opt.step()
        sched.step()
    out = {{"params": [p.detach() for p in ps], "opt": opt.state_dict(), "sched": sched.state_dict()}}
    torch.save(out, path)
    """
)


def _run(tmp_path, mode, path, steps):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT.format(tests=os.path.dirname(__file__)))
    subprocess.run([sys.executable, str(script), mode, str(path), str(steps)], check=True)
    return torch.load(path, weights_only=True)


def test_fresh_process_resume_continues_identical_trajectory(tmp_path):
    full = _run(tmp_path, "fresh", tmp_path / "full.pt", 20)
    _run(tmp_path, "fresh", tmp_path / "half.pt", 8)
    resumed = _run(tmp_path, "resume", tmp_path / "half.pt", 12)
    for a, b in zip(full["params"], resumed["params"]):
        assert torch.equal(a, b)
    assert resumed["opt"]["optbridge"]["num_steps"] == 20
    # torch's format: state keyed by parameter index, param_groups with index lists
    sd = full["opt"]
    assert set(sd["state"]) == {0, 1, 2, 3}  # index 4 never had a gradient
    assert sd["param_groups"][1]["params"] == [2, 3, 4]


def _trained(steps=5, chain=None):
    ps = make_params(0)
    opt = ob.Modular(ps, *(chain or [m.Adam(), m.LR(0.01)]))
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(ps).backward()
        opt.step()
    return ps, opt


def test_state_dict_is_independent_copy_and_restores():
    ps, opt = _trained()
    sd = copy.deepcopy(opt.state_dict())
    before = [p.detach().clone() for p in ps]
    for _ in range(3):
        opt.zero_grad()
        loss_fn(ps).backward()
        opt.step()
    after_a = [p.detach().clone() for p in ps]
    with torch.no_grad():
        for p, b in zip(ps, before):
            p.copy_(b)
    opt.load_state_dict(sd)
    for _ in range(3):
        opt.zero_grad()
        loss_fn(ps).backward()
        opt.step()
    for a, p in zip(after_a, ps):
        assert torch.equal(a, p.detach())


def test_loading_state_of_different_chain_fails_and_changes_nothing():
    _, other = _trained(chain=[m.Adam(), m.Adam(), m.LR(0.01)])
    ps, opt = _trained()
    before = copy.deepcopy(opt.state_dict())
    with pytest.raises(ValueError, match="different chain"):
        opt.load_state_dict(other.state_dict())
    after = opt.state_dict()
    assert after["optbridge"] == before["optbridge"]
    for k in before["state"]:
        for mk, v in before["state"][k].items():
            for name, t in v.items():
                assert torch.equal(torch.as_tensor(t), torch.as_tensor(after["state"][k][mk][name]))


def test_loading_torch_optimizer_state_fails_clearly():
    ps, opt = _trained()
    ref = torch.optim.Adam(ps)
    with pytest.raises(ValueError, match="not saved by a Modular"):
        opt.load_state_dict(ref.state_dict())


def test_loading_state_of_other_parameter_layout_fails():
    _, opt = _trained()
    sd = opt.state_dict()
    opt2 = ob.Modular(make_params(0)[:3], m.Adam(), m.LR(0.01))
    with pytest.raises(ValueError, match="parameters"):
        opt2.load_state_dict(sd)
    assert len(opt2.state) == 0


def test_state_dtype_is_kept_on_load():
    ps = [torch.randn(3, dtype=torch.bfloat16, requires_grad=True)]
    opt = ob.Modular(ps, m.Adam(), m.LR(0.01))
    ps[0].grad = torch.ones_like(ps[0])
    opt.step()
    opt.state[ps[0]]["0"]["exp_avg"] = opt.state[ps[0]]["0"]["exp_avg"].float()
    opt2 = ob.Modular(ps, m.Adam(), m.LR(0.01))
    opt2.load_state_dict(opt.state_dict())
    assert opt2.state[ps[0]]["0"]["exp_avg"].dtype == torch.float32
