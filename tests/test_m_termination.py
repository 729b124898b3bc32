"""Termination criteria: each fires at the exact step predicted from a reference run, the
optimizer then stops (no more closure calls, parameters frozen), combinations, checkpoints
and bad input."""

import pytest
import torch

import optbridge as ob
from optbridge import m
from optbridge.core.closure import ClosureError
from trajectory import loss_fn, make_params

LR = 0.05
REF_STEPS = 60


def _between(values, i):
    """A threshold just above ``values[i]`` and clear of every other value (so rounding in
    either implementation cannot move the firing step)."""
    v = values[i]
    gap = min(abs(w - v) for j, w in enumerate(values) if w != v) / 2
    assert gap > 1e-9 * abs(v), "values too close for a robust threshold"
    return v + gap


def _closure(ps, opt, calls):
    def closure(backward=True):
        calls.append(backward)
        loss = loss_fn(ps)
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss
    return closure


def _sgd_reference(steps, lr=LR):
    """Losses, gradient norms and parameters at each step's start for torch.optim.SGD."""
    ps = make_params(0, torch.float64)
    opt = torch.optim.SGD(ps, lr=lr)
    losses, gnorms, points = [], [], []
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn(ps)
        loss.backward()
        losses.append(float(loss.detach()))
        flat = torch.cat([p.grad.reshape(-1) for p in ps[:4]])
        gnorms.append(float(torch.linalg.vector_norm(flat)))
        points.append([p.detach().clone() for p in ps])
        opt.step()
    return losses, gnorms, points


def _first_streak(flags, n):
    """0-based index of the step where ``flags`` first held ``n`` times in a row."""
    run = 0
    for i, f in enumerate(flags):
        run = run + 1 if f else 0
        if run >= n:
            return i
    raise AssertionError("the criterion never fires in the reference run; the test is vacuous")


def _run_until_terminated(criterion, max_steps=REF_STEPS, extra=()):
    """Steps ``[criterion, *extra, LR]`` until it terminates, then steps 3 more times."""
    ps = make_params(0, torch.float64)
    opt = ob.Modular(ps, criterion, *extra, m.LR(LR))
    calls = []
    closure = _closure(ps, opt, calls)
    fired = None
    for i in range(max_steps):
        assert not opt.terminated
        opt.step(closure)
        if opt.terminated:
            fired = i
            break
    assert fired is not None, "never terminated"
    frozen = [p.detach().clone() for p in ps]
    n_calls, n_steps = len(calls), opt.num_steps
    for _ in range(3):
        assert opt.step(closure) is None
    assert len(calls) == n_calls and opt.num_steps == n_steps
    assert all(torch.equal(a, b) for a, b in zip(ps, frozen))
    assert criterion.name in opt.stop_reason
    return fired, ps, opt


def test_after_n_steps_fires_on_the_nth_step_and_keeps_its_update():
    fired, ps, opt = _run_until_terminated(m.TerminateAfterNSteps(7))
    assert fired == 6 and opt.num_steps == 7
    _, _, points = _sgd_reference(8)
    for a, b in zip(ps, points[7]):  # seven SGD steps were applied
        torch.testing.assert_close(a.detach(), b, rtol=1e-12, atol=1e-14)
    assert opt.stop_reason == "TerminateAfterNSteps: 7 steps"


class LossProbe(ob.Module):
    def step(self, ctx):
        ctx.closure(False)


def test_after_n_evaluations_counts_all_evaluations():
    # two evaluations per step (the gradient, then the probe's loss); checked when the module
    # runs first in the chain: 2k - 1 evaluations at step k
    fired, _, opt = _run_until_terminated(m.TerminateAfterNEvaluations(7), extra=[LossProbe()])
    assert fired == 3 and opt.evals.total == 8
    fired, _, opt = _run_until_terminated(m.TerminateAfterNEvaluations(5))
    assert fired == 4 and opt.evals.total == 5


def test_after_n_seconds_uses_the_given_clock():
    ticks = iter(range(0, 1000, 3))
    fired, _, _ = _run_until_terminated(m.TerminateAfterNSeconds(10, sec_fn=lambda: next(ticks)))
    assert fired == 4  # clock 0, 3, 6, 9, 12: 12 - 0 >= 10 on the fifth step
    crit = m.TerminateAfterNSeconds(0.02)
    fired, _, _ = _run_until_terminated(crit, max_steps=10**6)
    assert fired >= 1


@pytest.mark.parametrize("n", [1, 3])
def test_by_gradient_norm_fires_at_the_predicted_step(n):
    _, gnorms, _ = _sgd_reference(REF_STEPS)
    tol = _between(gnorms, 20)
    expected = _first_streak([g <= tol for g in gnorms], n)
    fired, _, _ = _run_until_terminated(m.TerminateByGradientNorm(tol, n=n))
    assert fired == expected


def test_by_gradient_norm_inf_order():
    _, _, points = _sgd_reference(REF_STEPS)
    norms = []
    for pt in points:
        xs = [p.clone().requires_grad_() for p in pt]
        g = torch.autograd.grad(loss_fn(xs), xs[:4])
        norms.append(float(max(t.abs().max() for t in g)))
    tol = _between(norms, 15)
    expected = _first_streak([v <= tol for v in norms], 2)
    fired, _, _ = _run_until_terminated(m.TerminateByGradientNorm(tol, n=2, ord=float("inf")))
    assert fired == expected


@pytest.mark.parametrize("n", [1, 2])
def test_by_update_norm_fires_at_the_predicted_step(n):
    _, _, points = _sgd_reference(REF_STEPS)
    moves = [None] + [
        float(torch.linalg.vector_norm(torch.cat([(a - b).reshape(-1) for a, b in zip(x1, x0)])))
        for x0, x1 in zip(points, points[1:])
    ]
    tol = _between(moves[1:], 25)
    expected = _first_streak([v is not None and v <= tol for v in moves], n)
    fired, _, _ = _run_until_terminated(m.TerminateByUpdateNorm(tol, n=n))
    assert fired == expected


@pytest.mark.parametrize("tol,n", [(0.05, 3), (0.2, 1)])
def test_on_no_improvement_fires_at_the_predicted_step(tol, n):
    losses, _, _ = _sgd_reference(REF_STEPS)
    fails, f_min = [False], losses[0]
    for f in losses[1:]:
        fails.append(f_min - f <= tol)
        f_min = min(f_min, f)
    expected = _first_streak(fails, n)
    fired, _, _ = _run_until_terminated(m.TerminateOnNoImprovement(tol, n=n))
    assert fired == expected


def test_on_no_improvement_default_tol_with_a_stalled_chain():
    ps = make_params(0, torch.float64)
    opt = ob.Modular(ps, m.TerminateOnNoImprovement(n=4), m.LR(0.0))
    calls = []
    closure = _closure(ps, opt, calls)
    for _ in range(10):
        opt.step(closure)
    assert opt.num_steps == 5 and len(calls) == 5  # first step records, then 4 failures


def test_on_loss_reached_fires_at_the_predicted_step():
    losses, _, _ = _sgd_reference(REF_STEPS)
    value = _between(losses, 12)
    expected = next(i for i, f in enumerate(losses) if f <= value)
    fired, _, _ = _run_until_terminated(m.TerminateOnLossReached(value))
    assert fired == expected


def test_any_and_all():
    losses, _, _ = _sgd_reference(REF_STEPS)
    value = _between(losses, 10)
    k_loss = next(i for i, f in enumerate(losses) if f <= value)
    crit = m.TerminateAny(m.TerminateAfterNSteps(8), m.TerminateOnLossReached(value))
    fired, _, opt = _run_until_terminated(crit)
    assert fired == min(7, k_loss) == 7
    assert "TerminateAfterNSteps" in opt.stop_reason
    assert "TerminateOnLossReached" not in opt.stop_reason
    crit = m.TerminateAny(m.TerminateAfterNSteps(100), m.TerminateOnLossReached(value))
    fired, _, opt = _run_until_terminated(crit)
    assert fired == k_loss and "TerminateOnLossReached" in opt.stop_reason
    crit = m.TerminateAll(m.TerminateAfterNSteps(5), m.TerminateOnLossReached(value))
    fired, _, opt = _run_until_terminated(crit)
    assert fired == max(4, k_loss)
    assert "TerminateAfterNSteps" in opt.stop_reason and "TerminateOnLossReached" in opt.stop_reason


def test_never():
    ps = make_params(0, torch.float64)
    opt = ob.Modular(ps, m.TerminateNever(), m.LR(LR))
    closure = _closure(ps, opt, [])
    for _ in range(20):
        opt.step(closure)
    assert not opt.terminated and opt.stop_reason is None and opt.num_steps == 20


def test_checkpoint_keeps_counters_and_termination():
    def make(ps):
        return ob.Modular(ps, m.TerminateAfterNSteps(5), m.HeavyBall(0.9), m.LR(LR))

    ps = make_params(0, torch.float64)
    opt = make(ps)
    calls = []
    closure = _closure(ps, opt, calls)
    for _ in range(3):
        opt.step(closure)
    ps2 = [p.detach().clone().requires_grad_() for p in ps]
    opt2 = make(ps2)
    opt2.load_state_dict(opt.state_dict())
    calls2 = []
    closure2 = _closure(ps2, opt2, calls2)
    for _ in range(5):
        opt.step(closure)
        opt2.step(closure2)
    assert opt2.terminated and len(calls2) == 2 and opt2.stop_reason == opt.stop_reason
    assert all(torch.equal(a, b) for a, b in zip(ps, ps2))
    opt3 = make([p.detach().clone().requires_grad_() for p in ps])
    opt3.load_state_dict(opt.state_dict())
    assert opt3.terminated and opt3.step(closure) is None


def test_loss_criteria_need_a_closure():
    for crit in (m.TerminateOnLossReached(0.0), m.TerminateOnNoImprovement()):
        ps = make_params(0)
        opt = ob.Modular(ps, crit, m.LR(0.1))
        loss_fn(ps).backward()
        with pytest.raises(ClosureError, match=crit.name):
            opt.step()


def test_gradient_criterion_works_without_closure():
    ps = make_params(0, torch.float64)
    opt = ob.Modular(ps, m.TerminateByGradientNorm(1e3, n=2), m.LR(LR))
    for _ in range(5):
        opt.zero_grad()
        loss_fn(ps).backward()
        opt.step()
    assert opt.terminated and opt.num_steps == 2


@pytest.mark.parametrize("make,owner,arg", [
    (lambda: m.TerminateAfterNSteps(0), "TerminateAfterNSteps", "steps"),
    (lambda: m.TerminateAfterNSteps(2.5), "TerminateAfterNSteps", "steps"),
    (lambda: m.TerminateAfterNEvaluations(-1), "TerminateAfterNEvaluations", "maxevals"),
    (lambda: m.TerminateAfterNSeconds(0), "TerminateAfterNSeconds", "seconds"),
    (lambda: m.TerminateByGradientNorm(tol=-1.0), "TerminateByGradientNorm", "tol"),
    (lambda: m.TerminateByGradientNorm(n=0), "TerminateByGradientNorm", "n"),
    (lambda: m.TerminateByUpdateNorm(ord=0), "TerminateByUpdateNorm", "ord"),
    (lambda: m.TerminateOnNoImprovement(tol=-1e-3), "TerminateOnNoImprovement", "tol"),
    (lambda: m.TerminateOnLossReached(float("nan")), "TerminateOnLossReached", "value"),
])
def test_bad_hyperparameters(make, owner, arg):
    with pytest.raises(ValueError, match=rf"^{owner}: invalid {arg}="):
        make()


def test_bad_combinations_and_clock():
    with pytest.raises(ValueError, match="TerminateAny: needs at least one"):
        m.TerminateAny()
    with pytest.raises(TypeError, match="TerminateAll: criterion 1 .* got LR"):
        m.TerminateAll(m.TerminateNever(), m.LR(0.1))
    with pytest.raises(TypeError, match="TerminateAfterNSeconds: sec_fn"):
        m.TerminateAfterNSeconds(1.0, sec_fn=3)
