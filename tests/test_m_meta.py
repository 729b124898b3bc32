"""Meta modules against hand-built equivalents: Alternate/Switch = torch optimizers taking
turns, Multistep/Sequential = inner torch steps, Split = two torch optimizers on parameter
subsets, GradientAccumulation = SGD on averaged mini-batch gradients, Online = Barzilai-Borwein
with one-batch pairs, SaveBest, restarts = fresh torch optimizers; checkpoints, pickling and bad
input."""

import math
import pickle

import pytest
import torch

import optbridge as ob
from optbridge import m
from optbridge.core.closure import ClosureError
from trajectory import assert_same_trajectory, loss_fn, make_params

STEPS = 50


class Turns:
    """torch optimizers taking turns on the same parameters: ``schedule(t)`` picks the one
    that takes step ``t``; ``fresh`` lists steps before which every optimizer is recreated."""

    def __init__(self, makers, schedule, fresh=()):
        self.makers, self.schedule, self.fresh = makers, schedule, set(fresh)
        self.opts = [mk() for mk in makers]
        self.t = 0

    def zero_grad(self):
        for o in self.opts:
            o.zero_grad()

    def step(self, closure=None):
        if self.t in self.fresh:
            self.opts = [mk() for mk in self.makers]
        self.opts[self.schedule(self.t)].step()
        self.t += 1


def _adam(ps, lr=1e-2):
    return lambda: torch.optim.Adam(ps, lr=lr)


def _sgd(ps, lr=1e-3, momentum=0.9):
    return lambda: torch.optim.SGD(ps, lr=lr, momentum=momentum)


def _closure(ps, opt, calls=None, loss=loss_fn):
    def closure(backward=True):
        if calls is not None:
            calls.append(backward)
        value = loss(ps)
        if backward:
            opt.zero_grad()
            value.backward()
        return value
    return closure


# -------------------------------------------------------------------------- Alternate, Switch
@pytest.mark.parametrize("steps,pattern", [(1, [0, 1]), ([2, 3], [0, 0, 1, 1, 1])])
def test_alternate_equals_torch_optimizers_taking_turns(steps, pattern):
    assert_same_trajectory(
        lambda ps: Turns([_adam(ps), _sgd(ps)], lambda t: pattern[t % len(pattern)]),
        lambda ps: ob.Modular(ps, m.Alternate([m.Adam(), m.StepSize(1e-2)],
                                              [m.HeavyBall(0.9), m.StepSize(1e-3)], steps=steps)),
        steps=STEPS,
    )


def test_switch_equals_torch_optimizers_in_sequence():
    assert_same_trajectory(
        lambda ps: Turns([_adam(ps), _sgd(ps, 1e-2), _adam(ps, 3e-3)],
                         lambda t: 0 if t < 10 else (1 if t < 25 else 2)),
        lambda ps: ob.Modular(ps, m.Switch([m.Adam(), m.StepSize(1e-2)],
                                           [m.HeavyBall(0.9), m.StepSize(1e-2)],
                                           [m.Adam(), m.StepSize(3e-3)], steps=[10, 25])),
        steps=STEPS,
    )
    # one int: every k steps to the next chain, the last one stays
    sw = m.Switch(m.Identity(), m.Identity(), m.Identity(), steps=7)
    assert sw.steps == [7, 14]
    assert [sw.index(t) for t in (0, 6, 7, 13, 14, 100)] == [0, 0, 1, 1, 2, 2]


def test_alternate_state_survives_a_checkpoint_mid_cycle():
    def make(ps):
        return ob.Modular(ps, m.Alternate([m.Adam(), m.StepSize(1e-2)],
                                          [m.HeavyBall(0.9), m.StepSize(1e-3)], steps=[2, 3]))
    ps = make_params(0, torch.float64)
    opt = make(ps)
    for _ in range(4):
        opt.zero_grad()
        loss_fn(ps).backward()
        opt.step()
    ps2 = [p.detach().clone().requires_grad_() for p in ps]
    opt2 = make(ps2)
    opt2.load_state_dict(opt.state_dict())
    for _ in range(6):
        for o, q in ((opt, ps), (opt2, ps2)):
            o.zero_grad()
            loss_fn(q).backward()
            o.step()
    assert all(torch.equal(a, b) for a, b in zip(ps, ps2))


# ----------------------------------------------------------------------- Multistep, Sequential
class InnerSteps:
    """Reference: each outer step runs ``steps`` inner torch steps, re-evaluating the
    gradient at every inner point, then applies ``scale`` times the total displacement."""

    def __init__(self, ps, makers, steps, scale=1.0):
        self.ps, self.opts, self.steps, self.scale = ps, [mk() for mk in makers], steps, scale

    def zero_grad(self):
        for o in self.opts:
            o.zero_grad()

    def step(self, closure=None):
        start = [p.detach().clone() for p in self.ps]
        for j in range(self.steps):
            opt = self.opts[j % len(self.opts)]
            if j > 0 or closure is not None:
                opt.zero_grad()
                loss_fn(self.ps).backward()
            opt.step()
        with torch.no_grad():
            for p, s in zip(self.ps, start):
                p.copy_(s - self.scale * (s - p))


def test_multistep_equals_inner_torch_steps_and_counts_evaluations():
    assert_same_trajectory(
        lambda ps: InnerSteps(ps, [_sgd(ps, 1e-2)], 3),
        lambda ps: ob.Modular(ps, m.Multistep([m.HeavyBall(0.9), m.LR(1e-2)], steps=3)),
        steps=STEPS, closure=True, dtype=torch.float64, rtol=1e-10, atol=1e-12,
    )
    assert_same_trajectory(
        lambda ps: InnerSteps(ps, [_adam(ps)], 2, scale=0.5),
        lambda ps: ob.Modular(ps, m.Multistep([m.Adam(), m.StepSize(1e-2)], steps=2),
                              m.StepSize(0.5)),
        steps=STEPS, closure=True, dtype=torch.float64, rtol=1e-10, atol=1e-12,
    )
    ps = make_params(0, torch.float64)
    opt = ob.Modular(ps, m.Multistep([m.HeavyBall(0.9), m.LR(1e-2)], steps=3))
    calls = []
    for _ in range(4):
        opt.step(_closure(ps, opt, calls))
    assert calls == [True] * 12 and (opt.evals.loss_and_grad, opt.evals.loss) == (12, 0)


def test_sequential_equals_alternating_inner_torch_steps():
    assert_same_trajectory(
        lambda ps: InnerSteps(ps, [_adam(ps), _sgd(ps)], 4),
        lambda ps: ob.Modular(ps, m.Sequential([[m.Adam(), m.StepSize(1e-2)],
                                                [m.HeavyBall(0.9), m.StepSize(1e-3)]], steps=2)),
        steps=STEPS, closure=True, dtype=torch.float64, rtol=1e-10, atol=1e-12,
    )


def test_multistep_needs_a_closure_but_not_loss_only_calls():
    ps = make_params(0)
    opt = ob.Modular(ps, m.Multistep([m.HeavyBall(0.9), m.LR(1e-2)], steps=2))
    loss_fn(ps).backward()
    with pytest.raises(ClosureError, match="Multistep"):
        opt.step()

    def closure():  # zero-argument closures are fine: only gradient evaluations
        opt.zero_grad()
        value = loss_fn(ps)
        value.backward()
        return value

    opt.step(closure)
    assert opt.evals.loss_and_grad == 2


# ------------------------------------------------------------------------------------- Split
def _matrices(p):
    return p.ndim >= 2


def _split_reference(ps):
    mats = [p for p in ps if p.ndim >= 2]
    vecs = [p for p in ps if p.ndim < 2]
    return Turns([_adam(mats), _sgd(vecs)], lambda t: 0), Turns([_sgd(vecs)], lambda t: 0)


class Both:
    def __init__(self, *opts):
        self.opts = opts

    def zero_grad(self):
        for o in self.opts:
            o.zero_grad()

    def step(self, closure=None):
        for o in self.opts:
            o.step()


def _adam_mats_sgd_vecs(ps):
    mats = [p for p in ps if p.ndim >= 2]
    vecs = [p for p in ps if p.ndim < 2]
    return Both(torch.optim.Adam(mats, lr=1e-2), torch.optim.SGD(vecs, lr=1e-3, momentum=0.9))


@pytest.mark.parametrize("filt", ["ndim>=2", "spec_list", "function", "params", "names"])
def test_split_equals_two_torch_optimizers(filt):
    def make(ps):
        groups = ps
        if filt == "spec_list":
            f = ["ndim==2", "ndim==3"]
        elif filt == "function":
            f = _matrices
        elif filt == "params":
            f = [ps[0], ps[2]]
        elif filt == "names":
            f = ["w0", "w2"]
            groups = [{"params": ps, "param_names": [f"w{i}" for i in range(len(ps))]}]
        else:
            f = filt
        return ob.Modular(groups, m.Split(f, true=[m.Adam(), m.StepSize(1e-2)],
                                          false=[m.HeavyBall(0.9), m.StepSize(1e-3)]))

    assert_same_trajectory(_adam_mats_sgd_vecs, make, steps=STEPS)


def test_split_missing_branch_passes_the_update_through():
    def ref(ps):
        mats = [p for p in ps if p.ndim >= 2]
        vecs = [p for p in ps if p.ndim < 2]
        return Both(torch.optim.Adam(mats, lr=1e-2), torch.optim.SGD(vecs, lr=1e-2))

    assert_same_trajectory(ref, lambda ps: ob.Modular(ps, m.Split("ndim>=2", true=m.Adam()),
                                                      m.LR(1e-2)),
                           steps=STEPS)
    assert_same_trajectory(ref, lambda ps: ob.Modular(ps, m.Split("ndim<2", false=m.Adam()),
                                                      m.LR(1e-2)),
                           steps=STEPS)


def test_split_state_dict_roundtrip_and_pickle():
    def make(ps, split=None):
        split = split or m.Split("ndim>=2", true=[m.Adam(), m.StepSize(1e-2)],
                                 false=[m.HeavyBall(0.9), m.StepSize(1e-3)])
        return ob.Modular(ps, split)

    def run(opt, ps, n):
        for _ in range(n):
            opt.zero_grad()
            loss_fn(ps).backward()
            opt.step()

    ps = make_params(0)
    opt = make(ps)
    run(opt, ps, 5)
    sd = opt.state_dict()
    assert any(k.startswith("0.true") for st in sd["state"].values() for k in st)
    ps2 = [p.detach().clone().requires_grad_() for p in ps]
    opt2 = make(ps2)
    opt2.load_state_dict(sd)
    run(opt, ps, 5)
    run(opt2, ps2, 5)
    assert all(torch.equal(a, b) for a, b in zip(ps, ps2))

    # the module pickles when its filter (and its children) do, and the copy works; children
    # are chosen whose validators are plain functions (see the report on checks.one_of)
    for f in ("ndim>=2", _matrices):
        fresh = m.Split(f, true=[m.Adam(), m.StepSize(1e-2)], false=[m.Adam(0.5), m.StepSize(1e-3)])
        clone = pickle.loads(pickle.dumps(fresh))
        qa, qb = make_params(0), make_params(0)
        oa, ob_ = make(qa, fresh), make(qb, clone)
        run(oa, qa, 3)
        run(ob_, qb, 3)
        assert all(torch.equal(a, b) for a, b in zip(qa, qb))
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        pickle.dumps(m.Split(lambda p: p.ndim >= 2, true=m.Adam()))


@pytest.mark.parametrize("filt,msg", [
    (42, "invalid filter"),
    ("ndim>>2", "invalid filter spec"),
    ("rank>=2", "invalid filter spec"),
    ([], "filter is empty"),
    ([3.5], "invalid filter element"),
])
def test_split_bad_filters(filt, msg):
    with pytest.raises(ValueError, match=f"^Split: {msg}"):
        m.Split(filt, true=m.Adam())


def test_split_needs_a_branch_and_param_names():
    with pytest.raises(ValueError, match="Split: needs true"):
        m.Split("ndim>=2")
    ps = make_params(0)
    opt = ob.Modular(ps, m.Split(["weight"], true=m.Adam()), m.LR(0.1))
    loss_fn(ps).backward()
    with pytest.raises(ValueError, match="Split: .*param_names"):
        opt.step()


# ------------------------------------------------------------------------ GradientAccumulation
def _batch_loss(k):
    """The loss on mini-batch ``k``: loss_fn plus a batch-dependent linear term."""
    g = torch.Generator().manual_seed(100 + k)
    shapes = [(6, 5), (5,), (3, 4, 2), (1,)]
    cs = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
    return lambda ps: loss_fn(ps) + sum((c * p).sum() for c, p in zip(cs, ps[:4]))


def _batch_grads(xs, k):
    xs = [x.detach().clone().requires_grad_() for x in xs]
    return list(torch.autograd.grad(_batch_loss(k)(xs), xs[:4]))


@pytest.mark.parametrize("n,mean", [(3, True), (2, False), (1, True)])
def test_gradient_accumulation_equals_sgd_on_accumulated_gradients(n, mean):
    lr, mu, steps = 0.02, 0.9, 30
    ps = make_params(0, torch.float64)
    opt = ob.Modular(ps, m.GradientAccumulation([m.HeavyBall(mu), m.LR(lr)], n=n, mean=mean))
    ref = [p.detach().clone().requires_grad_() for p in ps]
    sgd = torch.optim.SGD(ref, lr=lr, momentum=mu)
    acc = None
    for k in range(steps):
        opt.step(_closure(ps, opt, loss=_batch_loss(k)))
        g = _batch_grads(ref, k)
        acc = g if acc is None else [a + b for a, b in zip(acc, g)]
        if (k + 1) % n == 0:
            for p, a in zip(ref, acc):
                p.grad = a / n if mean else a
            sgd.step()
            acc = None
        for a, b in zip(ps, ref):
            torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-12, atol=1e-14)
    assert opt.evals.loss_and_grad == steps


def test_gradient_accumulation_without_stop_applies_the_incoming_update():
    ps = make_params(0, torch.float64)
    opt = ob.Modular(ps, m.GradientAccumulation(m.StepSize(0.1), n=2, stop=False), m.StepSize(0.05))
    xs = [p.detach().clone() for p in ps[:4]]
    acc = None
    for k in range(20):
        opt.step(_closure(ps, opt, loss=_batch_loss(k)))
        g = _batch_grads(xs, k)
        acc = g if acc is None else [a + b for a, b in zip(acc, g)]
        if k % 2 == 0:
            xs = [x - 0.05 * gi for x, gi in zip(xs, g)]
        else:
            xs = [x - 0.05 * 0.1 * a / 2 for x, a in zip(xs, acc)]
            acc = None
        for a, b in zip(ps, xs):
            torch.testing.assert_close(a.detach(), b, rtol=1e-12, atol=1e-14)


def test_gradient_accumulation_checkpoint_mid_cycle():
    def make(ps):
        return ob.Modular(ps, m.GradientAccumulation([m.Adam(), m.LR(1e-2)], n=3))

    ps = make_params(0, torch.float64)
    opt = make(ps)
    for k in range(4):
        opt.step(_closure(ps, opt, loss=_batch_loss(k)))
    ps2 = [p.detach().clone().requires_grad_() for p in ps]
    opt2 = make(ps2)
    opt2.load_state_dict(opt.state_dict())
    for k in range(4, 10):
        opt.step(_closure(ps, opt, loss=_batch_loss(k)))
        opt2.step(_closure(ps2, opt2, loss=_batch_loss(k)))
    assert all(torch.equal(a, b) for a, b in zip(ps, ps2))


# ------------------------------------------------------------------------------------ Online
class OnlineBB(m.BarzilaiBorwein):
    """BarzilaiBorwein declaring the state that records its previous point."""

    online_keys = ("prev_p", "prev_g")


def _bb_reference(kind, steps, momentum=None, alpha_0=1e-3, fallback=1e-3):
    """BB on mini-batches with both gradients of each pair from the same batch."""
    xs = [x.detach() for x in make_params(0, torch.float64)[:4]]
    prev, buf, out = None, None, []
    for k in range(steps):
        g = _batch_grads(xs, k)
        if prev is None:
            eta = alpha_0
        else:
            g_prev = _batch_grads(prev, k)
            s = torch.cat([(a - b).reshape(-1) for a, b in zip(xs, prev)])
            y = torch.cat([(a - b).reshape(-1) for a, b in zip(g, g_prev)])
            sy = float(s @ y)
            eta = float(s @ s) / sy if kind == "long" else float(s.norm() / y.norm())
            if not (sy > torch.finfo(torch.float64).tiny * 2 and math.isfinite(eta)):
                eta = fallback
        d = g
        if momentum is not None:
            buf = list(g) if buf is None else [momentum * b + gi for b, gi in zip(buf, g)]
            d = buf
        prev = xs
        xs = [x - eta * di for x, di in zip(xs, d)]
        out.append(xs)
    return out


@pytest.mark.parametrize("kind,momentum", [("long", None), ("geom", None), ("geom", 0.5)])
def test_online_bb_uses_one_batch_pairs(kind, momentum):
    steps = 25
    ps = make_params(0, torch.float64)
    inner = [OnlineBB(kind)] if momentum is None else [m.HeavyBall(momentum), OnlineBB(kind)]
    opt = ob.Modular(ps, m.Online(*inner))
    for k in range(steps):
        opt.step(_closure(ps, opt, loss=_batch_loss(k)))
        # the online pairs differ from what plain BB would use: the reference is the check
    ref = _bb_reference(kind, steps, momentum)
    for a, b in zip(ps, ref[-1]):
        torch.testing.assert_close(a.detach(), b, rtol=1e-9, atol=1e-11)
    assert (opt.evals.loss_and_grad, opt.evals.loss) == (2 * steps - 1, 0)


class GlobalBB(ob.Module):
    """Test module: BB (long) keeping its previous point in global_state."""

    online_keys = ("x", "g")

    def step(self, ctx):
        x = torch.cat([p.reshape(-1) for p in ctx.params])
        g = torch.cat([t.reshape(-1) for t in ctx.grads])
        gs, eta = self.global_state, 1e-3
        if "x" in gs:
            s, y = x - gs["x"], g - gs["g"]
            sy = float(s @ y)
            if sy > torch.finfo(torch.float64).tiny * 2:
                eta = float(s @ s) / sy
        gs["x"], gs["g"] = x, g.clone()
        ctx.scale_update(eta)


def test_online_with_global_state_keys():
    steps = 15
    ps = make_params(0, torch.float64)
    opt = ob.Modular(ps, m.Online(GlobalBB()))
    for k in range(steps):
        opt.step(_closure(ps, opt, loss=_batch_loss(k)))
    for a, b in zip(ps, _bb_reference("long", steps)[-1]):
        torch.testing.assert_close(a.detach(), b, rtol=1e-9, atol=1e-11)


def test_online_with_in_place_zeroing_closure():
    steps = 10
    ps = make_params(0, torch.float64)
    opt = ob.Modular(ps, m.Online(OnlineBB("long")))
    for k in range(steps):
        def closure(backward=True, k=k):
            value = _batch_loss(k)(ps)
            if backward:
                opt.zero_grad(set_to_none=False)
                value.backward()
            return value
        opt.step(closure)
    for a, b in zip(ps, _bb_reference("long", steps)[-1]):
        torch.testing.assert_close(a.detach(), b, rtol=1e-9, atol=1e-11)


def test_online_bad_input():
    with pytest.raises(ValueError, match="Online: needs the modules"):
        m.Online()
    with pytest.raises(ValueError, match="Online: none of the wrapped modules declares"):
        m.Online(m.Adam())
    ps = make_params(0)
    opt = ob.Modular(ps, m.Online(OnlineBB()))
    loss_fn(ps).backward()
    with pytest.raises(ClosureError, match="Online"):
        opt.step()


# ---------------------------------------------------------------------------------- SaveBest
def _oscillating(ps, extra_first=()):
    return ob.Modular(ps, *extra_first, m.HeavyBall(0.99), m.LR(0.1), m.SaveBest())


def test_save_best_restores_the_lowest_loss_point():
    ps = make_params(0, torch.float64)
    opt = _oscillating(ps)
    save = opt.modules[-1]
    closure = _closure(ps, opt)
    starts, losses = [], []
    for _ in range(40):
        starts.append([p.detach().clone() for p in ps])
        losses.append(float(opt.step(closure).detach()))
    best = min(range(40), key=lambda i: losses[i])
    assert 0 < best < 39 and losses[-1] > losses[best]  # the run overshoots: a real test
    assert save.best_loss == losses[best]
    sd = opt.state_dict()
    save.restore_best()
    assert all(torch.equal(p, s) for p, s in zip(ps, starts[best]))
    ps2 = make_params(1, torch.float64)
    opt2 = _oscillating(ps2)
    opt2.load_state_dict(sd)
    opt2.modules[-1].restore_best()
    assert all(torch.equal(p, s) for p, s in zip(ps2[:4], starts[best][:4]))
    assert not torch.equal(ps2[4], ps[4])  # never stepped (no gradient): nothing saved for it


def test_save_best_restores_on_termination():
    ps = make_params(0, torch.float64)
    opt = _oscillating(ps, extra_first=[m.TerminateAfterNSteps(30)])
    closure = _closure(ps, opt)
    starts, losses = [], []
    while not opt.terminated:
        starts.append([p.detach().clone() for p in ps])
        losses.append(float(opt.step(closure).detach()))
    assert len(losses) == 30
    best = min(range(30), key=lambda i: losses[i])
    assert best < 29
    assert all(torch.equal(p, s) for p, s in zip(ps, starts[best]))


def test_save_best_needs_a_closure():
    ps = make_params(0)
    opt = ob.Modular(ps, m.LR(0.1), m.SaveBest())
    loss_fn(ps).backward()
    with pytest.raises(ClosureError, match="SaveBest"):
        opt.step()


# ---------------------------------------------------------------------------------- restarts
def test_restart_every_equals_fresh_torch_optimizers():
    assert_same_trajectory(
        lambda ps: Turns([_adam(ps)], lambda t: 0, fresh=range(5, STEPS, 5)),
        lambda ps: ob.Modular(ps, m.RestartEvery([m.Adam(), m.LR(1e-2)], 5)),
        steps=STEPS,
    )
    # modules=None first in the chain: every other module is reset before the step
    assert_same_trajectory(
        lambda ps: Turns([_sgd(ps, 1e-2)], lambda t: 0, fresh=range(4, STEPS, 4)),
        lambda ps: ob.Modular(ps, m.RestartEvery(None, 4), m.HeavyBall(0.9), m.LR(1e-2)),
        steps=STEPS,
    )


def test_restart_every_ndim():
    ps = [torch.randn(3, requires_grad=True)]
    r = m.RestartEvery([m.HeavyBall(0.9), m.LR(0.1)], "ndim")
    opt = ob.Modular(ps, r)
    seen = []
    for _ in range(7):
        opt.zero_grad()
        (ps[0] ** 2).sum().backward()
        opt.step()
        seen.append("momentum_buffer" in opt.state[ps[0]].get("0.modules.0", {}))
    hb_key = r.children["modules"].children["0"].key
    assert hb_key == "0.modules.0" and all(seen)
    assert r.global_state["step"] == 7


class Stall(ob.Transform):
    """Test module: passes the update for ``k`` steps of its own state, then outputs zeros."""

    def __init__(self, k):
        super().__init__()
        self.k = k

    def transform(self, update, part):
        t = part.next_step()
        if t > self.k:
            torch._foreach_zero_(update)
        return update


@pytest.mark.parametrize("wrapped", [True, False])
def test_restart_on_stuck_resets_after_n_tol_stalled_steps(wrapped):
    lr, steps = 0.05, 23
    if wrapped:
        chain = [m.RestartOnStuck([Stall(3), m.LR(lr)], n_tol=2)]
    else:
        chain = [m.RestartOnStuck(None, n_tol=2), Stall(3), m.LR(lr)]
    ps = make_params(0, torch.float64)
    opt = ob.Modular(ps, *chain)
    moved = []
    for _ in range(steps):
        before = [p.detach().clone() for p in ps]
        opt.zero_grad()
        loss_fn(ps).backward()
        opt.step()
        moved.append(not all(torch.equal(a, b) for a, b in zip(before, ps)))
    # 3 moving steps, 2 stalled ones detected at the next two starts, reset, and again
    assert moved == ([True] * 3 + [False] * 2) * 4 + [True] * 3


def test_nan_to_num_sanitizes_a_chain():
    """NanToNum (an ops module) used as a meta safeguard: non-finite entries of the update are
    replaced before the step."""
    def loss(ps):
        return (ps[0] ** 2).sum() + ps[1].abs().sqrt().sum()  # d/dx sqrt|x| is inf at 0

    ps = [torch.tensor([1.0, -2.0], requires_grad=True),
          torch.tensor([0.0, 4.0], requires_grad=True)]
    opt = ob.Modular(ps, m.NanToNum(nan=0.0, posinf=1.0, neginf=-1.0), m.LR(0.1))
    g = torch.autograd.grad(loss(ps), ps)
    expected = [p.detach() - 0.1 * torch.nan_to_num(gi, 0.0, 1.0, -1.0) for p, gi in zip(ps, g)]
    assert not torch.isfinite(g[1]).all() or torch.isnan(g[1]).any()
    opt.step(_closure(ps, opt, loss=loss))
    for p, e in zip(ps, expected):
        assert torch.isfinite(p).all()
        torch.testing.assert_close(p.detach(), e)


def test_all_meta_state_is_plain_data():
    """state_dict of a chain using every stateful meta module loads with weights_only=True
    (tensors, numbers, strings, lists and dicts only: no callables)."""
    import io

    ps = make_params(0, torch.float64)
    opt = ob.Modular(
        ps,
        m.TerminateAny(m.TerminateAfterNSteps(100), m.TerminateAfterNSeconds(1e6)),
        m.RestartOnStuck([m.Online(OnlineBB())], n_tol=3),
        m.Alternate([m.Adam(), m.StepSize(1e-3)], m.StepSize(1e-3), steps=[2, 1]),
        m.Switch(m.Identity(), m.GradientAccumulation(m.Identity(), n=2), steps=3),
        m.Split("ndim>=2", true=m.HeavyBall(0.9)),
        m.RestartEvery(None, 3),
        m.SaveBest(),
    )
    for k in range(7):
        opt.step(_closure(ps, opt, loss=_batch_loss(k)))
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf, weights_only=True)
    opt2 = ob.Modular(
        [p.detach().clone().requires_grad_() for p in ps],
        m.TerminateAny(m.TerminateAfterNSteps(100), m.TerminateAfterNSeconds(1e6)),
        m.RestartOnStuck([m.Online(OnlineBB())], n_tol=3),
        m.Alternate([m.Adam(), m.StepSize(1e-3)], m.StepSize(1e-3), steps=[2, 1]),
        m.Switch(m.Identity(), m.GradientAccumulation(m.Identity(), n=2), steps=3),
        m.Split("ndim>=2", true=m.HeavyBall(0.9)),
        m.RestartEvery(None, 3),
        m.SaveBest(),
    )
    opt2.load_state_dict(sd)
    assert opt2.num_steps == 7


# -------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("make,match", [
    (lambda: m.Alternate(), "^Alternate: needs at least one chain"),
    (lambda: m.Alternate(m.Adam(), m.Adam(), steps=[1]),
     "^Alternate: steps has 1 entries for 2 chains"),
    (lambda: m.Alternate(m.Adam(), steps=0), "^Alternate: invalid steps=0"),
    (lambda: m.Switch(steps=[1]), "^Switch: needs at least one chain"),
    (lambda: m.Switch(m.Adam(), m.Adam(), steps=[3, 5]), "^Switch: steps has 2 switch points"),
    (lambda: m.Switch(m.Adam(), m.Adam(), m.Adam(), steps=[5, 3]),
     "^Switch: steps must be increasing"),
    (lambda: m.Switch(m.Adam(), m.Adam(), steps="x"), "^Switch: invalid steps"),
    (lambda: m.Sequential([]), "^Sequential: needs at least one module"),
    (lambda: m.Sequential([m.Adam()], steps=0), "^Sequential: invalid steps=0"),
    (lambda: m.Multistep(m.Adam(), steps=0), "^Multistep: invalid steps=0"),
    (lambda: m.GradientAccumulation(m.Adam(), n=0), "^GradientAccumulation: invalid n=0"),
    (lambda: m.GradientAccumulation(m.Adam(), n=2, mean="yes"),
     "^GradientAccumulation: invalid mean="),
    (lambda: m.RestartEvery(m.Adam(), 0), "^RestartEvery: invalid steps=0"),
    (lambda: m.RestartEvery(m.Adam(), "dims"), "^RestartEvery: invalid steps='dims'"),
    (lambda: m.RestartOnStuck(m.Adam(), n_tol=0), "^RestartOnStuck: invalid n_tol=0"),
    (lambda: m.RestartOnStuck(m.Adam(), tol=-1.0), "^RestartOnStuck: invalid tol=-1.0"),
])
def test_bad_input_names_the_module(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_chain_elements():
    with pytest.raises(TypeError, match="Alternate"):
        m.Alternate(m.Adam, m.Adam())
    with pytest.raises(TypeError, match="GradientAccumulation"):
        m.GradientAccumulation(None, n=2)
    with pytest.raises(TypeError, match="Sequential"):
        m.Sequential(3)
