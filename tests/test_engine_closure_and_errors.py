"""Closure protocol, evaluation counts, in-place updates, dtypes, AMP and bad input."""

import pytest
import torch

import optbridge as ob
from optbridge import m
from trajectory import assert_same_trajectory, loss_fn, make_params


class LossProbe(ob.Module):
    """Test module: evaluates the loss only (closure(False)) and records it."""

    def __init__(self):
        super().__init__()
        self.values = []

    def step(self, ctx):
        ctx.require_closure("it probes the loss")
        self.values.append(float(ctx.closure(False)))


def _closure_for(ps, opt, calls):
    def closure(backward=True):
        calls.append(backward)
        loss = loss_fn(ps)
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss
    return closure


def test_closure_step_matches_torch_and_counts_evaluations():
    assert_same_trajectory(lambda ps: torch.optim.Adam(ps, lr=0.01),
                           lambda ps: ob.Modular(ps, m.Adam(), m.LR(0.01)), closure=True)
    ps = make_params(0)
    opt = ob.Modular(ps, m.Adam(), LossProbe(), m.LR(0.01))
    calls = []
    for _ in range(3):
        loss = opt.step(_closure_for(ps, opt, calls))
        assert isinstance(loss, torch.Tensor) and loss.ndim == 0
    assert calls == [True, False] * 3
    assert (opt.evals.loss_and_grad, opt.evals.loss, opt.evals.total) == (3, 3, 6)


def test_loss_only_evaluation_does_not_touch_grads():
    ps = make_params(0)
    opt = ob.Modular(ps, LossProbe(), m.LR(0.0))
    for p in ps[:4]:
        p.grad = torch.full_like(p, 7.0)
    calls = []
    opt.step(_closure_for(ps, opt, calls))
    # the probe is first but needs_grad is True for it, so the step evaluates with backward first
    assert calls == [True, False]
    assert opt.chain.modules[0].values[0] == pytest.approx(float(loss_fn(ps).detach()))


def test_zero_argument_closure_is_always_backward():
    ps = make_params(0)
    opt = ob.Modular(ps, m.Adam(), m.LR(0.01))

    def closure():
        opt.zero_grad()
        loss = loss_fn(ps)
        loss.backward()
        return loss

    ref_ps = make_params(0)
    ref = torch.optim.Adam(ref_ps, lr=0.01)

    def ref_closure():
        ref.zero_grad()
        loss = loss_fn(ref_ps)
        loss.backward()
        return loss

    for _ in range(10):
        opt.step(closure)
        ref.step(ref_closure)
    for a, b in zip(ref_ps, ps):
        torch.testing.assert_close(b, a)
    assert opt.evals.loss_and_grad == 10


def test_zero_argument_closure_where_loss_only_needed_names_the_module():
    ps = make_params(0)
    opt = ob.Modular(ps, LossProbe(), m.LR(0.1))

    def closure():
        opt.zero_grad()
        loss = loss_fn(ps)
        loss.backward()
        return loss

    before = [p.detach().clone() for p in ps]
    with pytest.raises(ob.ClosureError, match="LossProbe: needs a loss-only evaluation"):
        opt.step(closure)
    for a, p in zip(before, ps):
        assert torch.equal(a, p)


def test_module_needing_closure_without_one():
    ps = make_params(0)
    opt = ob.Modular(ps, LossProbe(), m.LR(0.1))
    loss_fn(ps).backward()
    with pytest.raises(ob.ClosureError, match="LossProbe: requires a closure"):
        opt.step()


@pytest.mark.parametrize("bad, exc, msg", [
    (lambda ps: torch.stack([p.sum() for p in ps[:2]]), ValueError, "scalar loss"),
    (lambda ps: "loss", TypeError, "returned str"),
])
def test_bad_loss(bad, exc, msg):
    ps = make_params(0)
    opt = ob.Modular(ps, m.Adam(), m.LR(0.1))
    with pytest.raises(exc, match=msg):
        opt.step(lambda backward=True: bad(ps))


def test_params_updated_in_place_views_and_tied_weights():
    lin = torch.nn.Linear(4, 4)
    tied = torch.nn.ModuleDict({"a": lin, "b": lin})  # the same weight twice
    params = list(tied.parameters())
    assert len(params) == 2
    ptrs = [p.data_ptr() for p in params]
    objs = [id(p) for p in params]
    view = lin.weight[0]  # a view into the weight
    opt = ob.Modular(params, m.Adam(), m.LR(0.1))
    for _ in range(3):
        opt.zero_grad()
        tied["a"](torch.ones(2, 4)).sum().backward()
        opt.step()
    assert [p.data_ptr() for p in params] == ptrs and [id(p) for p in params] == objs
    assert torch.equal(view, lin.weight[0])


def test_bfloat16_and_float64_match_torch():
    assert_same_trajectory(lambda ps: torch.optim.Adam(ps, lr=0.01),
                           lambda ps: ob.Modular(ps, m.Adam(), m.LR(0.01)),
                           dtype=torch.bfloat16, rtol=1e-2, atol=1e-2, steps=30)
    assert_same_trajectory(lambda ps: torch.optim.Adam(ps, lr=0.01, amsgrad=True),
                           lambda ps: ob.Modular(ps, m.Adam(amsgrad=True), m.LR(0.01)),
                           dtype=torch.float64, rtol=1e-12, atol=1e-13)


def test_complex_parameters_match_torch():
    def run(make):
        g = torch.Generator().manual_seed(1)
        z = torch.randn(5, dtype=torch.complex64, generator=g).requires_grad_()
        w = torch.randn(3, generator=g).requires_grad_()
        opt = make([z, w])
        for _ in range(50):
            opt.zero_grad()
            (torch.abs(z - 1j) ** 2).sum().add((w ** 2).sum()).backward()
            opt.step()
        return z.detach(), w.detach()

    za, wa = run(lambda ps: torch.optim.Adam(ps, lr=0.05))
    zb, wb = run(lambda ps: ob.Modular(ps, m.Adam(), m.LR(0.05)))
    torch.testing.assert_close(zb, za)
    torch.testing.assert_close(wb, wa)


def test_grad_scaler_matches_torch_and_skips_inf_steps():
    def run(make, poison_step=None):
        ps = make_params(0)
        opt = make(ps)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=3)
        for i in range(25):
            opt.zero_grad()
            loss = loss_fn(ps)
            scaler.scale(loss).backward()
            if i == poison_step:
                ps[0].grad[0, 0] = float("inf")
            scaler.step(opt)
            scaler.update()
        return ps, scaler.get_scale()

    ref, s_ref = run(lambda ps: torch.optim.Adam(ps, lr=0.01), poison_step=7)
    ours, s_ours = run(lambda ps: ob.Modular(ps, m.Adam(), m.LR(0.01)), poison_step=7)
    assert s_ref == s_ours
    for a, b in zip(ref, ours):
        torch.testing.assert_close(b, a)


def test_sub_chain_lists():
    assert_same_trajectory(lambda ps: torch.optim.Adam(ps, lr=0.01),
                           lambda ps: ob.Modular(ps, [m.Adam(), [m.LR(0.01)]]))


def test_bad_construction():
    ps = make_params(0)
    with pytest.raises(TypeError, match="got the class Adam, not an instance"):
        ob.Modular(ps, m.Adam, m.LR(0.1))
    with pytest.raises(TypeError, match="got the class LR"):
        ob.Modular(ps, [m.Adam(), m.LR])
    with pytest.raises(ValueError, match="Modular: got an empty parameter list"):
        ob.Modular([], m.Adam())
    with pytest.raises(ValueError, match="Modular: params must be leaf tensors"):
        ob.Modular([ps[0] * 2], m.Adam())
    with pytest.raises(ValueError, match="at least one module"):
        ob.Modular(ps)
    adam = m.Adam()
    with pytest.raises(ValueError, match="appears twice"):
        ob.Modular(ps, adam, adam)
    ob.Modular(ps, adam)
    with pytest.raises(ValueError, match="already belongs to another optimizer"):
        ob.Modular(make_params(1), adam)


@pytest.mark.parametrize("make, msg", [
    (lambda: m.LR(-0.1), "LR: invalid lr=-0.1"),
    (lambda: m.Adam(beta1=1.0), "Adam: invalid beta1=1.0"),
    (lambda: m.Adam(beta2=-0.1), "Adam: invalid beta2=-0.1"),
    (lambda: m.Adam(eps=0.0), "Adam: invalid eps=0.0"),
    (lambda: m.Adam(eps=float("nan")), "Adam: invalid eps=nan"),
    (lambda: m.Adam(amsgrad="yes"), "Adam: invalid amsgrad='yes'"),
])
def test_invalid_hyperparameters(make, msg):
    with pytest.raises(ValueError, match=msg):
        make()


def test_sparse_gradients_are_rejected():
    emb = torch.nn.Embedding(5, 3, sparse=True)
    opt = ob.Modular(emb.parameters(), m.Adam(), m.LR(0.1))
    emb(torch.tensor([1, 2])).sum().backward()
    before = emb.weight.detach().clone()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()
    assert torch.equal(before, emb.weight)


class DoubleLoss(ob.Module):
    """Test module: hands the modules after it a closure whose loss is doubled."""

    def step(self, ctx):
        inner = ctx.closure

        def doubled(backward=True):
            return inner(backward) * 2

        ctx.closure = doubled


def test_replaced_closure_reaches_downstream_modules_only():
    ps = make_params(0)
    probe_before, probe_after = LossProbe(), LossProbe()
    opt = ob.Modular(ps, probe_before, DoubleLoss(), probe_after, m.LR(0.0))
    calls = []
    opt.step(_closure_for(ps, opt, calls))
    assert probe_after.values[0] == pytest.approx(2 * probe_before.values[0])
    assert opt.evals.loss == 2  # the replaced closure still counts through the original


class MoveAndEvaluate(ob.Module):
    """Test module: moves the parameters by -0.1*update, then evaluates there with backward
    (like a line search accepting its last trial)."""

    def step(self, ctx):
        torch._foreach_add_(ctx.params, ctx.update, alpha=-0.1)
        ctx.evaluate(backward=True)
        ctx.skip_update = True


def test_reuse_evaluation_skips_the_repeated_start_evaluation():
    def run(reuse, new_closure_each_step=False):
        ps = make_params(0)
        opt = ob.Modular(ps, MoveAndEvaluate(), reuse_evaluation=reuse)
        calls = []
        closure = _closure_for(ps, opt, calls)
        for _ in range(5):
            opt.step(_closure_for(ps, opt, calls) if new_closure_each_step else closure)
        return [p.detach().clone() for p in ps], opt.evals.loss_and_grad

    ref, n_ref = run(False)
    ours, n_ours = run(True)
    assert (n_ref, n_ours) == (10, 6)
    for a, b in zip(ref, ours):
        assert torch.equal(a, b)
    _, n_new = run(True, new_closure_each_step=True)  # another closure object: no reuse
    assert n_new == 10


def test_reuse_evaluation_not_used_after_parameters_change():
    ps = make_params(0)
    opt = ob.Modular(ps, MoveAndEvaluate(), reuse_evaluation=True)
    calls = []
    closure = _closure_for(ps, opt, calls)
    opt.step(closure)
    with torch.no_grad():
        ps[0].add_(1.0)  # the user moved a parameter: the recorded gradient is stale
    opt.step(closure)
    assert opt.evals.loss_and_grad == 4


class ToTarget(ob.Module):
    """Test module: the parameters should end at 0.5 * params (a target point)."""

    def __init__(self):
        super().__init__()
        self.target = None

    def step(self, ctx):
        self.target = [p * 0.5 for p in ctx.params]
        ctx.set_target(self.target)


def test_set_target_is_applied_as_a_copy_or_materialised_for_readers():
    ps = make_params(0)
    for p in ps[:4]:
        p.grad = torch.ones_like(p)
    start = [p.detach().clone() for p in ps[:4]]
    mod = ToTarget()
    opt = ob.Modular(ps[:4], mod)
    opt.step()
    for p, s in zip(ps[:4], start):
        assert torch.equal(p.detach(), s * 0.5)
    assert opt.params_at_target(mod.target, ps[:4])
    with torch.no_grad():
        ps[0].add_(1.0)
    assert not opt.params_at_target(mod.target, ps[:4])
    # a module after it reads the update: params - target, then LR scales it
    ps2 = make_params(0)[:4]
    for p in ps2:
        p.grad = torch.ones_like(p)
    opt2 = ob.Modular([{"params": ps2, "lr": 0.5}], ToTarget(), m.LR(0.5))
    opt2.step()
    for p, s in zip(ps2, start):
        torch.testing.assert_close(p.detach(), s - 0.5 * (s - s * 0.5))
