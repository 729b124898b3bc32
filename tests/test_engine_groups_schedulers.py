"""Param-group overrides and torch LR schedulers drive Modular like any torch optimizer."""

import pytest
import torch

import optbridge as ob
from optbridge import m
from trajectory import loss_fn, make_params


def _run(make_opt, make_sched, steps=40, plateau=False):
    ps = make_params(0)
    opt = make_opt(ps)
    sched = make_sched(opt) if make_sched else None
    lrs = []
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn(ps)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step(loss.item()) if plateau else sched.step()
        lrs.extend(g["lr"] for g in opt.param_groups)
    return [p.detach().clone() for p in ps], lrs


def _groups(ps):
    return [{"params": ps[:2]}, {"params": ps[2:], "lr": 0.03}]


SCHEDULERS = {
    "StepLR": lambda o: torch.optim.lr_scheduler.StepLR(o, 7, 0.5),
    "MultiStepLR": lambda o: torch.optim.lr_scheduler.MultiStepLR(o, [5, 20], 0.3),
    "ExponentialLR": lambda o: torch.optim.lr_scheduler.ExponentialLR(o, 0.95),
    "CosineAnnealingLR": lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, 30),
    "CosineAnnealingWarmRestarts": lambda o: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(o, 8),
    "LambdaLR": lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda e: 1 / (1 + e)),
    "MultiplicativeLR": lambda o: torch.optim.lr_scheduler.MultiplicativeLR(o, lambda e: 0.97),
    "LinearLR": lambda o: torch.optim.lr_scheduler.LinearLR(o, 0.1, 1.0, 10),
    "ConstantLR": lambda o: torch.optim.lr_scheduler.ConstantLR(o, 0.5, 10),
    "PolynomialLR": lambda o: torch.optim.lr_scheduler.PolynomialLR(o, 30, 2.0),
    "CyclicLR": lambda o: torch.optim.lr_scheduler.CyclicLR(o, 0.001, 0.05, 5),
    "OneCycleLR": lambda o: torch.optim.lr_scheduler.OneCycleLR(o, 0.05, total_steps=40),
    "SequentialLR": lambda o: torch.optim.lr_scheduler.SequentialLR(
        o, [torch.optim.lr_scheduler.LinearLR(o, 0.2, 1.0, 5),
            torch.optim.lr_scheduler.ExponentialLR(o, 0.9)], [5]),
    "ChainedScheduler": lambda o: torch.optim.lr_scheduler.ChainedScheduler(
        [torch.optim.lr_scheduler.ConstantLR(o, 0.5, 4), torch.optim.lr_scheduler.ExponentialLR(o, 0.9)]),
}


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_scheduler_matches_torch_adam(name):
    make = SCHEDULERS[name]
    ref, ref_lrs = _run(lambda ps: torch.optim.Adam(_groups(ps), lr=0.01), make)
    ours, our_lrs = _run(lambda ps: ob.Modular(_groups(ps), m.Adam(), m.LR(0.01)), make)
    assert our_lrs == pytest.approx(ref_lrs)
    for a, b in zip(ref, ours):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)
    assert len(set(ref_lrs)) > 2  # the schedule really changed the lr


def test_cyclic_momentum_drives_betas():
    """OneCycleLR cycles Adam's beta1 through the group's ``betas`` as for torch.optim.Adam."""
    make = lambda o: torch.optim.lr_scheduler.OneCycleLR(o, 0.05, total_steps=40, base_momentum=0.6)
    ref, _ = _run(lambda ps: torch.optim.Adam(ps, lr=0.01), make)
    ours, _ = _run(lambda ps: ob.Modular(ps, m.Adam(), m.LR(0.01)), make)
    for a, b in zip(ref, ours):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)


def test_reduce_on_plateau():
    make = lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(o, factor=0.5, patience=0, threshold=0.5)
    ref, ref_lrs = _run(lambda ps: torch.optim.Adam(ps, lr=0.05), make, plateau=True)
    ours, our_lrs = _run(lambda ps: ob.Modular(ps, m.Adam(), m.LR(0.05)), make, plateau=True)
    assert our_lrs == pytest.approx(ref_lrs) and ref_lrs[-1] < 0.05
    for a, b in zip(ref, ours):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)


def test_chain_without_lr_module_uses_group_lr_as_final_factor():
    make = SCHEDULERS["StepLR"]
    ref, _ = _run(lambda ps: torch.optim.Adam(ps, lr=0.02), make)
    ours, _ = _run(lambda ps: ob.Modular([{"params": ps, "lr": 0.02}], m.Adam()), make)
    for a, b in zip(ref, ours):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)
    # default lr is 1.0: a chain without LR steps by the raw update
    opt = ob.Modular(make_params(0), m.Adam())
    assert opt.param_groups[0]["lr"] == 1.0


def test_group_overrides_apply_per_group():
    def ref(ps):
        return torch.optim.Adam([{"params": ps[:2], "betas": (0.5, 0.9), "eps": 0.1},
                                 {"params": ps[2:], "lr": 0.05}], lr=0.01)

    def ours(ps):
        return ob.Modular([{"params": ps[:2], "beta1": 0.5, "beta2": 0.9, "eps": 0.1},
                           {"params": ps[2:], "lr": 0.05}], m.Adam(), m.LR(0.01))

    a, _ = _run(ref, None)
    b, _ = _run(ours, None)
    for x, y in zip(a, b):
        torch.testing.assert_close(y, x, rtol=1e-6, atol=1e-7)


def test_group_betas_alias_and_amsgrad_per_group():
    def ref(ps):
        return torch.optim.Adam([{"params": ps[:2], "betas": (0.7, 0.95), "amsgrad": True},
                                 {"params": ps[2:]}], lr=0.01)

    def ours(ps):
        return ob.Modular([{"params": ps[:2], "betas": (0.7, 0.95), "amsgrad": True},
                           {"params": ps[2:]}], m.Adam(), m.LR(0.01))

    a, _ = _run(ref, None)
    b, _ = _run(ours, None)
    for x, y in zip(a, b):
        torch.testing.assert_close(y, x, rtol=1e-6, atol=1e-7)


def test_override_only_reaches_declaring_modules():
    class Probe(ob.Transform):
        def __init__(self, factor=1.0):
            super().__init__(dict(factor=factor))
            self.seen = None

        def transform(self, update, part):
            self.seen = part.settings
            return update

    probe = Probe()
    ps = make_params(0)
    opt = ob.Modular([{"params": ps, "eps": 0.5}], probe, m.Adam(), m.LR(0.1))
    loss_fn(ps).backward()
    opt.step()
    assert probe.seen == {"factor": 1.0}


def test_unknown_group_key_is_an_error():
    with pytest.raises(ValueError, match="'momentum'.*no module"):
        ob.Modular([{"params": make_params(0), "momentum": 0.9}], m.Adam(), m.LR(0.1))


def test_invalid_group_override_is_rejected_before_anything_changes():
    opt = ob.Modular(make_params(0), m.Adam(), m.LR(0.1))
    with pytest.raises(ValueError, match="Adam: invalid beta1=1.5"):
        opt.add_param_group({"params": [torch.zeros(2, requires_grad=True)], "beta1": 1.5})
    assert len(opt.param_groups) == 1
    with pytest.raises(ValueError, match="LR: invalid lr=-1"):
        ob.Modular([{"params": make_params(0), "lr": -1}], m.Adam(), m.LR(0.1))


def test_disagreeing_lr_defaults_keep_their_own_values_unless_the_group_sets_one():
    ps = make_params(0)
    for p in ps[:4]:
        p.grad = torch.ones_like(p)
    start = [p.detach().clone() for p in ps]
    opt = ob.Modular(ps, m.LR(0.1), m.LR(0.2))
    assert "lr" not in opt.param_groups[0]
    opt.step()
    for p, s in zip(ps[:4], start):
        torch.testing.assert_close(p.detach(), s - 0.02)
    opt = ob.Modular([{"params": ps, "lr": 0.3}], m.LR(0.1), m.LR(0.2))
    assert opt.param_groups[0]["lr"] == 0.3
    start = [p.detach().clone() for p in ps]
    opt.step()
    for p, s in zip(ps[:4], start):
        torch.testing.assert_close(p.detach(), s - 0.09)
