"""ops family: operations between sub-chains, reductions, grafting, ownership of state buffers,
checkpoints and argument validation."""

import copy
import math

import pytest
import torch

import optbridge as ob
from optbridge import m
from optbridge.core import checks
from test_m_ops import adam_ref, check, check_loss, ew
from trajectory import loss_fn, make_params


def _norm(ts, ord=2.0):
    return torch.linalg.vector_norm(torch.cat([t.reshape(-1) for t in ts]), ord)


def _graft_ref(ds, ms, tensorwise, ord=2.0, eps=1e-6, strength=1.0):
    """``d * (s|m| + (1-s)|d|) / max(|d|, eps)``, per tensor or over all tensors."""
    if tensorwise:
        pairs = [([d], [mm]) for d, mm in zip(ds, ms)]
    else:
        pairs = [(ds, ms)]
    out = []
    for dd, mm in pairs:
        nd, nm = _norm(dd, ord), _norm(mm, ord)
        target = strength * nm + (1 - strength) * nd
        out += [d * target / max(nd, torch.tensor(eps, dtype=nd.dtype)) for d in dd]
    return out


# ------------------------------------------------------------------------- multi operands
def _adam(f):
    """A reference ``f(a, g)`` of Adam's direction of the gradient and the gradient."""
    return lambda xs, gs, mem: [f(a, g) for a, g in zip(adam_ref(mem, "a", gs), gs)]


MULTI_CASES = {
    "div_modules_brief": (
        lambda: [m.DivModules(m.Adam(), [m.Abs(), m.Add(1.0)])],
        _adam(lambda a, g: a / (g.abs() + 1)),
    ),
    "div_modules_number_input": (
        lambda: [m.DivModules(2.0, [m.Abs(), m.Add(1.0)])],
        ew(lambda g: 2.0 / (g.abs() + 1)),
    ),
    "div_modules_number_other": (lambda: [m.DivModules(m.Mul(3.0), 2.0)], ew(lambda g: 3 * g / 2)),
    "sub_modules": (
        lambda: [m.SubModules(m.Adam(), m.Mul(0.5), alpha=2.0)],
        _adam(lambda a, g: a - g),
    ),
    "sub_modules_number_input": (
        lambda: [m.SubModules(1.0, m.Abs(), alpha=0.5)],
        ew(lambda g: 1.0 - 0.5 * g.abs()),
    ),
    "sub_modules_number_input_alpha1": (
        lambda: [m.SubModules(1.0, m.Identity())],
        ew(lambda g: 1.0 - g),
    ),
    "sub_modules_number_other": (
        lambda: [m.SubModules(m.Sign(), 0.5, alpha=2.0)],
        ew(lambda g: g.sign() - 1.0),
    ),
    "pow_modules": (
        lambda: [m.PowModules([m.Abs(), m.Add(1.0)], m.Fill(0.5))],
        ew(lambda g: (g.abs() + 1) ** 0.5),
    ),
    "pow_modules_number_base": (
        lambda: [m.PowModules(2.0, m.Mul(0.1))],
        ew(lambda g: 2.0 ** (0.1 * g)),
    ),
    "pow_modules_number_exponent": (
        lambda: [m.PowModules(m.Abs(), 3.0)],
        ew(lambda g: g.abs() ** 3),
    ),
    "lerp_modules": (
        lambda: [m.LerpModules(m.Adam(), m.Sign(), 0.3)],
        _adam(lambda a, g: a + 0.3 * (g.sign() - a)),
    ),
    "clip_modules": (
        lambda: [m.ClipModules(m.Adam(), min=-0.5, max=[m.Abs(), m.Mul(0.5)])],
        _adam(lambda a, g: torch.minimum(a.clamp(min=-0.5), 0.5 * g.abs())),
    ),
    "clip_modules_no_bounds": (lambda: [m.ClipModules(m.Mul(2.0))], ew(lambda g: 2 * g)),
}


@pytest.mark.parametrize("case", sorted(MULTI_CASES))
def test_multi_operand_ops(case):
    make_chain, fn = MULTI_CASES[case]
    check(make_chain, fn)


def test_div_modules_on_the_loss_trajectory():
    check_loss(lambda: [m.DivModules(m.Adam(), [m.Abs(), m.Add(1.0)])],
               lambda xs, gs, mem: [a / (g.abs() + 1) for a, g in zip(adam_ref(mem, "a", gs), gs)])


def test_operands_see_the_same_input():
    """Each operand runs on the incoming update, whatever the other operands do."""
    check(lambda: [m.Abs(), m.SubModules(m.Mul(3.0), m.Add(1.0))],
          lambda xs, gs, mem: [3 * g.abs() - (g.abs() + 1) for g in gs])


class _Recorder(ob.Module):
    """Test module: appends its tag to a shared log when it runs (leaves the update alone)."""

    def __init__(self, tag, log):
        super().__init__()
        self.tag, self.log = tag, log

    def step(self, ctx):
        self.log.append(self.tag)


@pytest.mark.parametrize("other_first,expected",
                         [(False, ["input", "other"]), (True, ["other", "input"])])
def test_div_modules_other_first_sets_the_order(other_first, expected):
    log = []
    p = torch.ones(2, requires_grad=True)
    div = m.DivModules(_Recorder("input", log), _Recorder("other", log), other_first=other_first)
    opt = ob.Modular([p], div)
    p.grad = torch.full((2,), 2.0)
    opt.step()
    assert log == expected
    torch.testing.assert_close(p.detach(), torch.zeros(2))  # 1 - 2/2


# ------------------------------------------------------------------------------ reductions
REDUCE_CASES = {
    "sum": (lambda: [m.Sum(m.Adam(), m.Sign(), 0.1)], _adam(lambda a, g: a + g.sign() + 0.1)),
    "sum_borrowed_only": (lambda: [m.Sum(m.Identity(), m.Identity())], ew(lambda g: 2 * g)),
    "sum_single": (lambda: [m.Sum([m.Abs(), m.Sqrt()])], ew(lambda g: g.abs().sqrt())),
    "mean": (
        lambda: [m.Mean(m.Adam(), m.Sign(), 0.1)],
        _adam(lambda a, g: (a + g.sign() + 0.1) / 3),
    ),
    "weighted_sum": (
        lambda: [m.WeightedSum(m.Adam(), m.Identity(), 0.5, weights=[1.0, 2.0, -1.0])],
        _adam(lambda a, g: a + 2 * g - 0.5),
    ),
    "weighted_sum_single": (
        lambda: [m.WeightedSum(m.Abs(), weights=[0.5])],
        ew(lambda g: 0.5 * g.abs()),
    ),
    "weighted_sum_borrowed": (
        lambda: [m.WeightedSum(m.Identity(), m.Identity(), weights=[0.5, 0.25])],
        ew(lambda g: 0.75 * g),
    ),
    "weighted_mean": (
        lambda: [m.WeightedMean(m.Adam(), m.Identity(), 0.5, weights=[1.0, 2.0, 3.0])],
        _adam(lambda a, g: (a + 2 * g + 1.5) / 6),
    ),
    "prod": (lambda: [m.Prod(m.Abs(), m.Sign(), 0.5, 4.0)], ew(lambda g: 2 * g)),
    "prod_borrowed": (lambda: [m.Prod(m.Identity(), m.Identity())], ew(lambda g: g * g)),
    "maximum_modules": (
        lambda: [m.MaximumModules(m.Identity(), m.Negate(), 0.05, -1.0)],
        ew(lambda g: g.abs().clamp(min=0.05)),
    ),
    "minimum_modules": (
        lambda: [m.MinimumModules(m.Mul(2.0), m.Sign(), 0.7)],
        ew(lambda g: torch.minimum(2 * g, g.sign()).clamp(max=0.7)),
    ),
}


@pytest.mark.parametrize("case", sorted(REDUCE_CASES))
def test_reductions(case):
    make_chain, fn = REDUCE_CASES[case]
    check(make_chain, fn)


def test_weighted_sum_per_group_weights():
    def chain():
        return [m.WeightedSum(m.Identity(), m.Sign(), 1.0, weights=[1.0, 1.0, 1.0])]

    gen = torch.Generator().manual_seed(0)
    ps = make_params(0, torch.float64, with_unused=False)
    ref = [p.detach().clone() for p in ps]
    groups = [{"params": ps[:2], "weights": [2.0, -1.0, 0.5]}, {"params": ps[2:]}]
    opt = ob.Modular(groups, *chain(), m.LR(0.1))
    for _ in range(50):
        gs = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in ps]
        for p, g in zip(ps, gs):
            p.grad = g
        opt.step()
        for i, (x, g) in enumerate(zip(ref, gs)):
            x.sub_(0.1 * (2 * g - g.sign() + 0.5 if i < 2 else g + g.sign() + 1.0))
    for p, x in zip(ps, ref):
        torch.testing.assert_close(p.detach(), x, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------------- grafts
def _graft_adam(magnitude, **kw):
    """Reference graft of Adam's direction to ``magnitude(xs, gs)``."""
    return lambda xs, gs, mem: _graft_ref(adam_ref(mem, "a", gs), magnitude(xs, gs), **kw)


def _signs(xs, gs):
    return [g.sign() for g in gs]


def _grads(xs, gs):
    return gs


GRAFT_CASES = {
    "graft": (lambda: [m.Graft(m.Adam(), m.Sign())], _graft_adam(_signs, tensorwise=True)),
    "graft_global_strength": (
        lambda: [m.Graft(m.Adam(), m.Sign(), tensorwise=False, strength=0.5)],
        _graft_adam(_signs, tensorwise=False, strength=0.5),
    ),
    "graft_inf": (
        lambda: [m.Graft(m.Adam(), m.Identity(), ord=float("inf"))],
        _graft_adam(_grads, tensorwise=True, ord=float("inf")),
    ),
    "input_to_output": (
        lambda: [m.GraftInputToOutput(m.Adam())],
        lambda xs, gs, mem: _graft_ref(gs, adam_ref(mem, "a", gs), True),
    ),
    "input_to_output_owned": (
        lambda: [m.Abs(), m.GraftInputToOutput(m.Mul(3.0), tensorwise=False, ord=1)],
        lambda xs, gs, mem: _graft_ref([g.abs() for g in gs], [3 * g.abs() for g in gs], False,
                                       ord=1.0),
    ),
    "output_to_input": (
        lambda: [m.GraftOutputToInput(m.Adam())],
        _graft_adam(_grads, tensorwise=True),
    ),
    "to_grad": (lambda: [m.Adam(), m.GraftToGrad()], _graft_adam(_grads, tensorwise=False)),
    "to_grad_tensorwise_p3": (
        lambda: [m.Adam(), m.GraftToGrad(tensorwise=True, ord=3)],
        _graft_adam(_grads, tensorwise=True, ord=3.0),
    ),
    "grad_to_update": (
        lambda: [m.Adam(), m.GraftGradToUpdate()],
        lambda xs, gs, mem: _graft_ref(gs, adam_ref(mem, "a", gs), False),
    ),
    "grad_to_update_owned": (
        lambda: [m.Sign(), m.GraftGradToUpdate(tensorwise=True)],
        lambda xs, gs, mem: _graft_ref(gs, [g.sign() for g in gs], True),
    ),
    "to_params": (
        lambda: [m.Adam(), m.GraftToParams()],
        _graft_adam(lambda xs, gs: xs, tensorwise=False, eps=0.0),
    ),
    "to_params_eps_floor": (
        lambda: [m.GraftToParams(tensorwise=True, eps=10.0)],
        ew(lambda g: g * 10.0 / g.norm()),
    ),
}


@pytest.mark.parametrize("case", sorted(GRAFT_CASES))
def test_grafts(case):
    make_chain, fn = GRAFT_CASES[case]
    check(make_chain, fn)


@pytest.mark.parametrize("tensorwise", [True, False])
@pytest.mark.parametrize("ord", [1.0, 2.0, float("inf")])
def test_graft_output_has_the_magnitude_norm(tensorwise, ord):
    """One step of ``Graft(direction, magnitude)``: the step has the magnitude's norms (per
    tensor or global) and the direction's direction."""
    torch.manual_seed(1)
    shapes = [(4, 3), (7,), (2, 2, 2)]
    ps = [torch.randn(s, requires_grad=True, dtype=torch.float64) for s in shapes]
    start = [p.detach().clone() for p in ps]
    grads = [torch.randn_like(p) for p in ps]
    for p, g in zip(ps, grads):
        p.grad = g.clone()
    opt = ob.Modular(ps, m.Graft(m.Sign(), m.Mul(5.0), tensorwise=tensorwise, ord=ord), m.LR(1.0))
    opt.step()
    steps = [s - p.detach() for p, s in zip(ps, start)]
    if tensorwise:
        for st, g in zip(steps, grads):
            assert math.isclose(torch.linalg.vector_norm(st, ord).item(),
                                5 * torch.linalg.vector_norm(g, ord).item(), rel_tol=1e-12)
            assert torch.equal(st.sign(), g.sign())
            # a scaled sign vector
            assert torch.allclose(st.abs(), st.abs().flatten()[0].expand_as(st))
    else:
        assert math.isclose(_norm(steps, ord).item(), 5 * _norm(grads, ord).item(), rel_tol=1e-12)
        ratio = steps[0].abs().flatten()[0]
        for st, g in zip(steps, grads):
            assert torch.allclose(st, g.sign() * ratio)


@pytest.mark.parametrize("tensorwise", [True, False])
def test_graft_eps_bounds_the_denominator(tensorwise):
    p = torch.zeros(3, requires_grad=True, dtype=torch.float64)
    graft = m.Graft(m.Mul(1e-9), m.Fill(1.0), eps=1e-3, tensorwise=tensorwise)
    opt = ob.Modular([p], graft, m.LR(1.0))
    p.grad = torch.tensor([1.0, -2.0, 2.0], dtype=torch.float64)
    opt.step()
    # direction norm 3e-9 is below eps: the step is d * sqrt(3) / 1e-3
    torch.testing.assert_close(-p.detach(), p.grad * 1e-9 * math.sqrt(3) / 1e-3)


def test_graft_per_group_tensorwise():
    """Groups that disagree on ``tensorwise``: per-tensor norms for one, a norm over the other
    group's parameters for the other."""
    ps = [torch.randn(s, requires_grad=True, dtype=torch.float64) for s in [(3,), (4,), (5,), (2,)]]
    start = [p.detach().clone() for p in ps]
    grads = [torch.randn_like(p) for p in ps]
    for p, g in zip(ps, grads):
        p.grad = g.clone()
    opt = ob.Modular([{"params": ps[:2], "tensorwise": False}, {"params": ps[2:]}],
                     m.Graft(m.Sign(), m.Identity()), m.LR(1.0))
    opt.step()
    steps = [s - p.detach() for p, s in zip(ps, start)]
    expected = _graft_ref([g.sign() for g in grads[:2]], grads[:2], False) + \
        _graft_ref([g.sign() for g in grads[2:]], grads[2:], True)
    for st, e in zip(steps, expected):
        torch.testing.assert_close(st, e)


def test_graft_to_grad_on_the_loss_trajectory():
    check_loss(lambda: [m.Adam(), m.GraftToGrad(tensorwise=True)],
               lambda xs, gs, mem: _graft_ref(adam_ref(mem, "a", gs), gs, True))


# ------------------------------------------------------------------- ownership of buffers
class BufferEMA(ob.Transform):
    """Test module: an EMA of its input, handed out as the update without a copy."""

    inplace = False

    def __init__(self, beta=0.5):
        super().__init__(dict(beta=beta), rules=dict(beta=checks.unit_interval))

    def transform(self, update, part):
        buf = part.buffers("buf")
        torch._foreach_lerp_(buf, update, 1 - part.settings["beta"])
        return ob.Borrowed(buf)


class Scribble(ob.Module):
    """Test module: overwrites the update in place (after taking ownership the proper way)."""

    def step(self, ctx):
        torch._foreach_mul_(ctx.mutable_update(), 0.0)


def _after_buffer():
    """Ops placed after a module whose output is its state buffer."""
    return {
        "abs": m.Abs(), "sign": m.Sign(), "sqrt": m.Sqrt(), "exp": m.Exp(), "negate": m.Negate(),
        "reciprocal": m.Reciprocal(eps=3.0), "nan_to_num": m.NanToNum(),
        "custom_inplace": m.CustomUnaryOperation("abs_"),
        "custom_foreach": m.CustomUnaryOperation("tanh"),
        "custom_loop": m.CustomUnaryOperation("square"),
        "lambda_inplace": m.UnaryLambda(lambda ts: torch._foreach_mul_(ts, 3.0) or ts),
        "pw_lambda_inplace": m.UnaryParameterwiseLambda(lambda t: t.mul_(3.0)),
        "add": m.Add(1.0), "sub": m.Sub(1.0), "rsub": m.RSub(1.0), "mul": m.Mul(2.0),
        "div": m.Div(2.0),
        "rdiv": m.RDiv(1.0), "pow": m.Pow(2.0), "rpow": m.RPow(2.0), "maximum": m.Maximum(0.0),
        "minimum": m.Minimum(0.0), "clip": m.Clip(-0.1, 0.1), "add_module": m.Add(m.Sign()),
        "mul_module": m.Mul(m.Abs()), "rsub_identity": m.RSub(m.Identity()),
        "clip_identity": m.Clip(m.Identity(), 0.1),
        "lerp": m.Lerp(m.Sign(), 0.5), "clone": m.Clone(), "identity": m.Identity(),
        "grad_sign": m.GradSign(),
        "update_sign": m.UpdateSign(), "copysign": m.CopySign(m.Negate()),
        "rcopysign": m.RCopySign(m.Fill(2.0)),
        "graft_to_grad": m.GraftToGrad(), "graft_grad_to_update": m.GraftGradToUpdate(),
        "graft_to_params": m.GraftToParams(), "graft_in_to_out": m.GraftInputToOutput(m.Sign()),
        "graft_out_to_in": m.GraftOutputToInput(m.Identity()),
        "sum": m.Sum(m.Identity(), 1.0), "weighted_sum": m.WeightedSum(m.Identity(), weights=[2.0]),
        "max_modules": m.MaximumModules(m.Identity(), m.Identity()),
        "prod": m.Prod(m.Identity(), m.Identity()),
        "div_modules": m.DivModules(1.0, m.Identity()),
        "sub_modules": m.SubModules(1.0, m.Identity()),
        "pow_modules": m.PowModules(m.Identity(), 2.0),
        "lerp_modules": m.LerpModules(m.Identity(), m.Sign(), 0.5),
        "clip_modules": m.ClipModules(m.Identity(), -0.1, 0.1),
        "graft": m.Graft(m.Identity(), m.Sign()),
    }


def _with_buffer_child():
    """Ops whose module operand returns its state buffer."""
    return {
        "add": lambda b: m.Add(b), "sub": lambda b: m.Sub(b), "rsub": lambda b: m.RSub(b),
        "mul": lambda b: m.Mul(b), "div": lambda b: m.Div(b), "rdiv": lambda b: m.RDiv(b),
        "pow": lambda b: m.Pow(b), "rpow": lambda b: m.RPow(b), "maximum": lambda b: m.Maximum(b),
        "minimum": lambda b: m.Minimum(b), "clip_min": lambda b: m.Clip(min=b),
        "clip_max": lambda b: m.Clip(max=b),
        "lerp": lambda b: m.Lerp(b, 0.5), "copysign": lambda b: m.CopySign(b),
        "rcopysign": lambda b: m.RCopySign(b),
        "graft_out_to_in": lambda b: m.GraftOutputToInput(b),
        "graft_in_to_out": lambda b: m.GraftInputToOutput(b),
        "sum": lambda b: m.Sum(b, 1.0), "mean": lambda b: m.Mean(b, m.Sign()),
        "weighted_sum": lambda b: m.WeightedSum(b, m.Sign(), weights=[2.0, 1.0]),
        "prod": lambda b: m.Prod(b, 2.0),
        "max_modules": lambda b: m.MaximumModules(b, 0.0),
        "min_modules": lambda b: m.MinimumModules(b, m.Sign()),
        "sub_modules": lambda b: m.SubModules(b, 1.0, alpha=2.0),
        "sub_modules_rev": lambda b: m.SubModules(1.0, b, alpha=2.0),
        "div_modules": lambda b: m.DivModules(b, 2.0),
        "div_modules_rev": lambda b: m.DivModules(1.0, b),
        "pow_modules": lambda b: m.PowModules(b, 2.0),
        "pow_modules_exp": lambda b: m.PowModules(m.Abs(), b),
        "lerp_modules": lambda b: m.LerpModules(b, m.Sign(), 0.5),
        "clip_modules": lambda b: m.ClipModules(b, -0.1, 0.1),
        "graft": lambda b: m.Graft(b, m.Sign()), "graft_mag": lambda b: m.Graft(m.Sign(), b),
    }


def _assert_buffer_intact(opt, ps, buffer_module, inputs_of):
    """Run 5 steps and compare ``buffer_module``'s buffer to an EMA of its inputs computed here."""
    gen = torch.Generator().manual_seed(0)
    ema = [torch.zeros_like(p) for p in ps]
    for _ in range(5):
        gs = [torch.randn(p.shape, generator=gen) for p in ps]
        for p, g in zip(ps, gs):
            p.grad = g
        opt.step()
        for e, x in zip(ema, inputs_of(gs)):
            e.lerp_(x, 0.5)
    for p, e in zip(ps, ema):
        torch.testing.assert_close(opt.state[p][buffer_module.key]["buf"], e, rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(_after_buffer()))
def test_ops_after_a_borrowed_buffer_leave_it_intact(name):
    op = _after_buffer()[name]
    ps = [torch.randn(s, requires_grad=True) for s in [(3, 2), (4,)]]
    buf = BufferEMA()
    opt = ob.Modular(ps, buf, op, Scribble(), m.LR(0.1))
    _assert_buffer_intact(opt, ps, buf, lambda gs: gs)


@pytest.mark.parametrize("first", ["grad", "owned"])
@pytest.mark.parametrize("name", sorted(_with_buffer_child()))
def test_ops_with_a_buffer_operand_leave_it_intact(name, first):
    ps = [torch.randn(s, requires_grad=True) for s in [(3, 2), (4,)]]
    buf = BufferEMA()
    pre = [m.Abs()] if first == "owned" else []
    opt = ob.Modular(ps, *pre, _with_buffer_child()[name](buf), Scribble(), m.LR(0.1))
    inputs = (lambda gs: [g.abs() for g in gs]) if pre else (lambda gs: gs)
    _assert_buffer_intact(opt, ps, buf, inputs)


# ------------------------------------------------------------------------------ checkpoints
def _run(opt, ps, n):
    for _ in range(n):
        opt.zero_grad()
        loss_fn(ps).backward()
        opt.step()


RESUME_CHAINS = {
    "add_adam": lambda: [m.Add(m.Adam(), alpha=0.5)],
    "sum_subchains": lambda: [m.Sum(m.Adam(), [m.Sign(), m.Adam(beta1=0.5)], 0.1)],
    "div_modules": lambda: [m.DivModules(m.Adam(), [m.Abs(), m.Add(1.0), m.Adam()])],
    "graft": lambda: [m.Graft(m.Adam(), [m.Adam(beta1=0.0), m.Sign()], tensorwise=False)],
    "random": lambda: [m.Add(m.RandomSample("rademacher", variance=0.01, seed=5)),
                       m.Mul(m.Randn(seed=2))],
    "random_unseeded": lambda: [m.Add(m.Randn())],
}


@pytest.mark.parametrize("name", sorted(RESUME_CHAINS))
def test_checkpoint_resume_is_exact(name):
    """Save after 6 steps, restore into a fresh optimizer and parameters, run 6 more: identical
    to 12 uninterrupted steps (child state and generator state are checkpointed)."""
    make = RESUME_CHAINS[name]
    torch.manual_seed(0)
    ps_a = make_params(0)
    _run(ob.Modular(ps_a, *make(), m.LR(0.01)), ps_a, 12)

    torch.manual_seed(0)
    ps_b = make_params(0)
    opt_b = ob.Modular(ps_b, *make(), m.LR(0.01))
    _run(opt_b, ps_b, 6)
    saved = copy.deepcopy(opt_b.state_dict())
    saved_params = [p.detach().clone() for p in ps_b]
    _run(opt_b, ps_b, 3)  # the live optimizer moves on; the checkpoint must not follow

    torch.manual_seed(1)  # an unseeded generator must come from the checkpoint, not from here
    ps_c = [x.clone().requires_grad_() for x in saved_params]
    opt_c = ob.Modular(ps_c, *make(), m.LR(0.01))
    opt_c.load_state_dict(saved)
    _run(opt_c, ps_c, 6)
    for a, c in zip(ps_a, ps_c):
        assert torch.equal(a, c)


def test_child_state_is_keyed_by_path():
    ps = make_params(0)
    opt = ob.Modular(ps, m.Sum(m.Adam(), [m.Sign(), m.Adam()]), m.LR(0.01))
    _run(opt, ps, 2)
    keys = set(opt.state[ps[0]])
    assert keys == {"0.input_0", "0.input_1.1"}
    assert set(opt.state[ps[0]]["0.input_0"]) >= {"exp_avg", "exp_avg_sq"}


def test_random_state_is_in_global_state_and_reset_restarts_it():
    ps = [torch.zeros(4, requires_grad=True)]
    mod = m.Randn(seed=11)
    opt = ob.Modular(ps, mod, m.LR(1.0))

    def draw():
        before = ps[0].detach().clone()
        ps[0].grad = torch.zeros(4)
        opt.step()
        return before - ps[0].detach()

    first = draw()
    draw()
    assert set(opt.state_dict()["optbridge"]["modules"]["0"]) >= {"seed", "rng_state"}
    mod.reset()
    torch.testing.assert_close(draw(), first)  # measured through the parameters: rounding only
    torch.testing.assert_close(first, torch.randn(4, generator=torch.Generator().manual_seed(11)))
    assert not torch.allclose(first, torch.randn(4, generator=torch.Generator().manual_seed(12)))


# ------------------------------------------------------------------------------- no params
ALL_CHAINS = [
    lambda: m.Add(m.Adam()), lambda: m.Add(1.0), lambda: m.Sub(1.0), lambda: m.RSub(m.Sign()),
    lambda: m.Mul(2.0),
    lambda: m.Div(m.Abs()), lambda: m.RDiv(1.0), lambda: m.Pow(2.0), lambda: m.RPow(2.0),
    lambda: m.Maximum(0.0),
    lambda: m.Minimum(0.0), lambda: m.Clip(0.0, 1.0), lambda: m.Lerp(m.Sign(), 0.5),
    lambda: m.Abs(),
    lambda: m.Sign(), lambda: m.Sqrt(), lambda: m.Exp(), lambda: m.Negate(), lambda: m.Reciprocal(),
    lambda: m.NanToNum(), lambda: m.CustomUnaryOperation("tanh"),
    lambda: m.UnaryLambda(lambda ts: ts),
    lambda: m.UnaryParameterwiseLambda(lambda t: t), lambda: m.Identity(), lambda: m.Noop(),
    lambda: m.Clone(),
    lambda: m.Grad(), lambda: m.Params(), lambda: m.Zeros(), lambda: m.Ones(), lambda: m.Fill(1.0),
    lambda: m.RandomSample(), lambda: m.Randn(), lambda: m.Uniform(0.0, 1.0),
    lambda: m.CopySign(m.Sign()),
    lambda: m.RCopySign(m.Sign()), lambda: m.CopyMagnitude(m.Sign()), lambda: m.GradSign(),
    lambda: m.UpdateSign(),
    lambda: m.SubModules(m.Sign(), 1.0), lambda: m.DivModules(m.Sign(), 1.0),
    lambda: m.PowModules(m.Sign(), 2.0),
    lambda: m.LerpModules(m.Sign(), m.Abs(), 0.5), lambda: m.ClipModules(m.Sign()),
    lambda: m.Sum(m.Sign()),
    lambda: m.Mean(m.Sign()), lambda: m.WeightedSum(m.Sign(), weights=[1.0]),
    lambda: m.WeightedMean(m.Sign(), weights=[1.0]), lambda: m.Prod(m.Sign()),
    lambda: m.MaximumModules(m.Sign()),
    lambda: m.MinimumModules(m.Sign()), lambda: m.Graft(m.Sign(), m.Abs()),
    lambda: m.GraftInputToOutput(m.Abs()),
    lambda: m.GraftOutputToInput(m.Abs()), lambda: m.GraftToGrad(), lambda: m.GraftGradToUpdate(),
    lambda: m.GraftToParams(),
]


def test_every_op_is_exported_and_covered_here():
    names = {type(make()).__name__ for make in ALL_CHAINS}
    assert names == set(m.ops.__all__)


@pytest.mark.parametrize("make", ALL_CHAINS, ids=lambda f: type(f()).__name__)
def test_step_without_any_gradient(make):
    p = torch.ones(3, requires_grad=True)
    opt = ob.Modular([p], make(), m.LR(0.1))
    opt.step()
    assert torch.equal(p.detach(), torch.ones(3))


# ------------------------------------------------------------------------ bad arguments
@pytest.mark.parametrize("make", [
    lambda: m.Add(m.Adam), lambda: m.Sub(m.Abs), lambda: m.Mul(m.Sign), lambda: m.Div(m.Abs),
    lambda: m.RSub(m.Abs), lambda: m.RDiv(m.Abs), lambda: m.Pow(m.Abs), lambda: m.RPow(m.Abs),
    lambda: m.Maximum(m.Abs), lambda: m.Minimum(m.Abs), lambda: m.Clip(min=m.Abs),
    lambda: m.Clip(max=m.Abs),
    lambda: m.Lerp(m.Sign, 0.5), lambda: m.Add([m.Abs(), m.Sign]), lambda: m.CopySign(m.Sign),
    lambda: m.RCopySign(m.Sign), lambda: m.CopyMagnitude(m.Sign), lambda: m.DivModules(m.Adam, 1.0),
    lambda: m.SubModules(m.Abs(), m.Sign), lambda: m.PowModules(m.Abs, 2.0),
    lambda: m.LerpModules(m.Abs, m.Sign(), 0.5),
    lambda: m.ClipModules(m.Abs), lambda: m.Sum(m.Adam, m.Abs()), lambda: m.Mean(m.Abs(), m.Adam),
    lambda: m.WeightedSum(m.Adam, weights=[1.0]), lambda: m.Prod(m.Abs),
    lambda: m.MaximumModules(m.Abs),
    lambda: m.Graft(m.Adam, m.Sign()), lambda: m.Graft(m.Adam(), m.Sign),
    lambda: m.GraftInputToOutput(m.Adam),
    lambda: m.GraftOutputToInput(m.Adam),
])
def test_module_class_instead_of_instance_raises_type_error(make):
    with pytest.raises(TypeError, match="not an instance"):
        make()


@pytest.mark.parametrize("make,match", [
    (lambda: m.Add("1.0"), "Add: other"), (lambda: m.Mul(None), "Mul: other"),
    (lambda: m.Clip(min="a"), "Clip: min"),
    (lambda: m.Lerp(0.5, 0.5), "Lerp: end"), (lambda: m.CopySign(1.0), "CopySign: other"),
    (lambda: m.Graft(m.Adam(), 1.0), "Graft: magnitude"),
    (lambda: m.Sum(m.Abs(), "x"), r"Sum: inputs\[1\]"),
    (lambda: m.LerpModules(1.0, m.Abs(), 0.5), "LerpModules: input"),
])
def test_operand_of_the_wrong_type_raises_type_error(make, match):
    with pytest.raises(TypeError, match=match):
        make()


@pytest.mark.parametrize("make,match", [
    (lambda: m.Add(float("nan")), "Add: invalid other"),
    (lambda: m.Add(1.0, alpha=float("inf")), "Add: invalid alpha"),
    (lambda: m.Sub(m.Abs(), alpha=True), "Sub: invalid alpha"),
    (lambda: m.Mul(True), "Mul: invalid other"),
    (lambda: m.Div(0), "Div: invalid other"),
    (lambda: m.Pow(float("nan")), "Pow: invalid exponent"),
    (lambda: m.Clip(1.0, -1.0), "Clip: invalid min"),
    (lambda: m.Clip(min=float("inf")), "Clip: invalid min"),
    (lambda: m.Lerp(m.Abs(), float("nan")), "Lerp: invalid weight"),
    (lambda: m.Reciprocal(eps=float("nan")), "Reciprocal: invalid eps"),
    (lambda: m.NanToNum(nan=float("inf")), "NanToNum: invalid nan"),
    (lambda: m.CustomUnaryOperation("no_such_method"), "CustomUnaryOperation: invalid name"),
    (lambda: m.CustomUnaryOperation(3), "CustomUnaryOperation: invalid name"),
    (lambda: m.UnaryLambda(3), "UnaryLambda: invalid fn"),
    (lambda: m.Fill(float("inf")), "Fill: invalid value"),
    (lambda: m.RandomSample("cauchy"), "RandomSample: invalid distribution"),
    (lambda: m.RandomSample(variance=-1.0), "RandomSample: invalid variance"),
    (lambda: m.Randn(seed=-1), "Randn: invalid seed"),
    (lambda: m.Randn(seed=1.5), "Randn: invalid seed"),
    (lambda: m.Uniform(1.0, 0.0), "Uniform: invalid low"),
    (lambda: m.Uniform(0.0, float("nan")), "Uniform: invalid high"),
    (lambda: m.SubModules(m.Abs(), 1.0, alpha=float("nan")), "SubModules: invalid alpha"),
    (lambda: m.DivModules(m.Abs(), 0.0), "DivModules: invalid other"),
    (lambda: m.DivModules(m.Abs(), m.Sign(), other_first=1), "DivModules: invalid other_first"),
    (lambda: m.DivModules(1.0, 2.0), "DivModules: at least one operand must be a module"),
    (lambda: m.LerpModules(m.Abs(), m.Sign(), weight=float("inf")), "LerpModules: invalid weight"),
    (lambda: m.ClipModules(m.Abs(), 2.0, 1.0), "ClipModules: invalid min"),
    (lambda: m.Sum(), "Sum: needs at least one input"),
    (lambda: m.Sum(1.0, 2.0), "Sum: at least one input"),
    (lambda: m.Mean(m.Abs(), float("nan")), r"Mean: invalid inputs\[1\]"),
    (lambda: m.WeightedSum(m.Abs(), m.Sign(), weights=[1.0]), "WeightedSum: invalid weights"),
    (lambda: m.WeightedSum(m.Abs(), weights=[float("nan")]), "WeightedSum: invalid weights"),
    (lambda: m.WeightedMean(m.Abs(), m.Sign(), weights=[1.0, -1.0]),
     "WeightedMean: invalid weights"),
    (lambda: m.Graft(m.Abs(), m.Sign(), eps=0.0), "Graft: invalid eps"),
    (lambda: m.Graft(m.Abs(), m.Sign(), ord=0), "Graft: invalid ord"),
    (lambda: m.Graft(m.Abs(), m.Sign(), tensorwise=1), "Graft: invalid tensorwise"),
    (lambda: m.Graft(m.Abs(), m.Sign(), strength=float("nan")), "Graft: invalid strength"),
    (lambda: m.GraftInputToOutput(m.Abs(), ord=-2), "GraftInputToOutput: invalid ord"),
    (lambda: m.GraftOutputToInput(m.Abs(), eps=-1.0), "GraftOutputToInput: invalid eps"),
    (lambda: m.GraftToGrad(ord="fro"), "GraftToGrad: invalid ord"),
    (lambda: m.GraftGradToUpdate(tensorwise="yes"), "GraftGradToUpdate: invalid tensorwise"),
    (lambda: m.GraftToParams(eps=float("nan")), "GraftToParams: invalid eps"),
])
def test_invalid_hyperparameters_raise_value_error(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_invalid_group_override_raises_value_error():
    ps = make_params(0)
    with pytest.raises(ValueError, match="Mul: invalid other"):
        ob.Modular([{"params": ps, "other": float("nan")}], m.Mul(2.0))
    with pytest.raises(ValueError, match="Graft: invalid ord"):
        ob.Modular([{"params": ps, "ord": 0}], m.Graft(m.Abs(), m.Sign()))


def test_repr_shows_operands():
    r = repr(m.Add(m.Adam(), alpha=0.5))
    assert r.startswith("Add(other=Adam(") and r.endswith("alpha=0.5)")
    assert repr(m.Sum(m.Sign(), 0.5)) == "Sum(Sign(), 0.5)"
    assert repr(m.Clip(max=1.0)) == "Clip(max=1.0)"
