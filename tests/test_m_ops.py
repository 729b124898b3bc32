"""ops family: arithmetic with numbers and sub-chains, unary functions, sources and sign ops.

Every chain is checked against a direct float64 computation of its formula, written per tensor in
the test (``Ref``), over a 60-step trajectory of the shared harness.
"""

import math

import pytest
import torch

import optbridge as ob
from optbridge import m
from trajectory import assert_same_trajectory, make_params


# ------------------------------------------------------------------------------ references
class Ref(torch.optim.Optimizer):
    """``p -= lr * fn(params, grads, memory)``, with ``fn`` evaluated in float64 per tensor on the
    parameters that have a gradient."""

    def __init__(self, params, fn, lr):
        super().__init__(params, dict(lr=lr))
        self.fn, self.mem = fn, {}

    @torch.no_grad()
    def step(self):
        ps = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        xs = [p.double() for p in ps]
        gs = [p.grad.double() for p in ps]
        for p, d in zip(ps, self.fn(xs, gs, self.mem)):
            p.sub_((self.param_groups[0]["lr"] * d).to(p.dtype))


def ew(f):
    """A reference direction applied to each gradient independently."""
    return lambda xs, gs, mem: [f(g) for g in gs]


def adam_ref(mem, key, us, b1=0.9, b2=0.999, eps=1e-8):
    """Adam's direction (Kingma & Ba) of the inputs ``us``, state kept under ``mem[key]``."""
    st = mem.setdefault(key, {"t": 0, "m": [torch.zeros_like(u) for u in us],
                              "v": [torch.zeros_like(u) for u in us]})
    st["t"] += 1
    t = st["t"]
    out = []
    for i, u in enumerate(us):
        st["m"][i] = b1 * st["m"][i] + (1 - b1) * u
        st["v"][i] = b2 * st["v"][i] + (1 - b2) * u * u
        mhat = st["m"][i] / (1 - b1**t)
        vhat = st["v"][i] / (1 - b2**t)
        out.append(mhat / (vhat.sqrt() + eps))
    return out


def check(make_chain, fn, lr=0.01, steps=50, rtol=1e-10, atol=1e-12):
    """``Modular(ps, *make_chain(), LR(lr))`` follows ``p -= lr * fn(params, grads, memory)``
    (float64) for ``steps`` steps of seeded random gradients; the last parameter never gets a
    gradient and must not move, and the gradients must come out of every step untouched."""
    gen = torch.Generator().manual_seed(0)
    ps = make_params(0, torch.float64)
    start = [p.detach().clone() for p in ps]
    ref = [p.detach().clone() for p in ps]
    opt = ob.Modular(ps, *make_chain(), m.LR(lr))
    mem: dict = {}
    for i in range(steps):
        gs = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in ps[:-1]]
        for p, g in zip(ps, gs):
            p.grad = g.clone()
        opt.step()
        for p, g in zip(ps, gs):
            assert torch.equal(p.grad, g), f"step {i}: the chain wrote into a gradient"
        for x, d in zip(ref, fn([x.clone() for x in ref[:-1]], [g.clone() for g in gs], mem)):
            x.sub_(lr * d)
        for j, (p, x) in enumerate(zip(ps, ref)):
            if not torch.allclose(p.detach(), x, rtol=rtol, atol=atol, equal_nan=True):
                torch.testing.assert_close(p.detach(), x, rtol=rtol, atol=atol,
                                           msg=lambda msg: f"step {i}, param {j}: {msg}")
    assert not torch.equal(ps[0].detach(), start[0]), "the parameters did not move; vacuous test"
    assert torch.equal(ps[-1].detach(), start[-1]), "a parameter without grad was changed"


def check_loss(make_chain, fn, lr=0.01, steps=60, rtol=1e-9, atol=1e-11, **kw):
    """Same as :func:`check` on the shared harness's loss (real gradients along the path)."""
    assert_same_trajectory(
        lambda ps: Ref(ps, fn, lr),
        lambda ps: ob.Modular(ps, *make_chain(), m.LR(lr)),
        steps=steps, dtype=torch.float64, rtol=rtol, atol=atol, **kw,
    )


# ------------------------------------------------------------------------ binary, numbers
NUMBER_CASES = {
    "add": (lambda: [m.Add(0.5)], lambda g: g + 0.5),
    "add_alpha": (lambda: [m.Add(0.5, alpha=-2.0)], lambda g: g - 1.0),
    "sub": (lambda: [m.Sub(0.3, alpha=2.0)], lambda g: g - 0.6),
    "rsub": (lambda: [m.RSub(1.0)], lambda g: 1.0 - g),
    "mul": (lambda: [m.Mul(2.5)], lambda g: 2.5 * g),
    "div": (lambda: [m.Div(4.0)], lambda g: g / 4.0),
    "rdiv": (lambda: [m.Abs(), m.Add(1.0), m.RDiv(2.0)], lambda g: 2.0 / (g.abs() + 1.0)),
    "pow": (lambda: [m.Abs(), m.Pow(1.5)], lambda g: g.abs() ** 1.5),
    "rpow": (lambda: [m.Mul(0.1), m.RPow(2.0)], lambda g: 2.0 ** (0.1 * g)),
    "maximum": (lambda: [m.Maximum(0.0)], lambda g: g.clamp(min=0.0)),
    "minimum": (lambda: [m.Minimum(0.1)], lambda g: g.clamp(max=0.1)),
    "clip": (lambda: [m.Clip(-0.5, 0.5)], lambda g: g.clamp(-0.5, 0.5)),
    "clip_min": (lambda: [m.Clip(min=-0.2)], lambda g: g.clamp(min=-0.2)),
    "clip_max": (lambda: [m.Clip(max=0.3)], lambda g: g.clamp(max=0.3)),
    "clip_none": (lambda: [m.Clip()], lambda g: g),
}


@pytest.mark.parametrize("case", sorted(NUMBER_CASES))
def test_binary_with_number(case):
    make_chain, f = NUMBER_CASES[case]
    check(make_chain, ew(f))


# ------------------------------------------------------------------------ binary, modules
MODULE_CASES = {
    "add": (lambda: [m.Add(m.Mul(3.0))], lambda g: g + 3 * g),
    "add_alpha_subchain": (lambda: [m.Add([m.Abs(), m.Mul(2.0)], alpha=0.5)],
                           lambda g: g + g.abs()),
    "sub": (lambda: [m.Sub(m.Sign(), alpha=0.5)], lambda g: g - 0.5 * g.sign()),
    "rsub": (lambda: [m.RSub(m.Mul(3.0))], lambda g: 3 * g - g),
    "mul": (lambda: [m.Mul(m.Abs())], lambda g: g * g.abs()),
    "div": (lambda: [m.Div([m.Abs(), m.Add(1.0)])], lambda g: g / (g.abs() + 1)),
    "rdiv": (lambda: [m.Abs(), m.Add(1.0), m.RDiv(m.Sqrt())],
             lambda g: (g.abs() + 1).sqrt() / (g.abs() + 1)),
    "pow": (lambda: [m.Abs(), m.Add(1.0), m.Pow(m.Fill(0.5))], lambda g: (g.abs() + 1) ** 0.5),
    "rpow": (lambda: [m.Mul(0.1), m.RPow([m.Abs(), m.Add(1.0)])],
             lambda g: (0.1 * g.abs() + 1) ** (0.1 * g)),
    "maximum": (lambda: [m.Maximum(m.Negate())], lambda g: g.abs()),
    "minimum": (lambda: [m.Minimum(m.Mul(0.5))], lambda g: torch.minimum(g, 0.5 * g)),
    "clip": (lambda: [m.Clip(min=[m.Abs(), m.Mul(-0.5)], max=m.Fill(0.3))],
             lambda g: torch.minimum(torch.maximum(g, -0.5 * g.abs()), torch.full_like(g, 0.3))),
    "clip_identity_bound": (lambda: [m.Abs(), m.Clip(min=m.Fill(0.2), max=m.Identity())],
                            lambda g: torch.minimum(g.abs().clamp(min=0.2), g.abs())),
    "lerp": (lambda: [m.Lerp(m.Sign(), 0.25)], lambda g: g + 0.25 * (g.sign() - g)),
}


@pytest.mark.parametrize("case", sorted(MODULE_CASES))
def test_binary_with_module(case):
    make_chain, f = MODULE_CASES[case]
    check(make_chain, ew(f))


def test_rsub_of_its_own_input_is_zero():
    """An owned update minus a child that returns it unchanged: exactly zero, no aliasing error."""
    ps = [torch.randn(3, dtype=torch.float64, requires_grad=True)]
    start = ps[0].detach().clone()
    opt = ob.Modular(ps, m.Abs(), m.RSub(m.Identity()), m.LR(0.1))
    for _ in range(3):
        opt.zero_grad()
        (ps[0] ** 3).sum().backward()
        opt.step()
    assert torch.equal(ps[0].detach(), start)


def test_add_stateful_child_matches_adam():
    """A child with state (Adam) runs on the update each step and keeps its own moments."""
    check_loss(lambda: [m.Add(m.Adam(beta1=0.8))],
          lambda xs, gs, mem: [g + a for g, a in zip(gs, adam_ref(mem, "a", gs, b1=0.8))])


def test_child_runs_on_the_incoming_update():
    """The operand module sees the current update (here |g|), not the raw gradient."""
    check(lambda: [m.Abs(), m.Mul(m.Adam())],
          lambda xs, gs, mem: [g.abs() * a
                               for g, a in zip(gs, adam_ref(mem, "a", [g.abs() for g in gs]))])


# ---------------------------------------------------------------------------------- unary
UNARY_CASES = {
    "abs": (lambda: [m.Abs()], lambda g: g.abs()),
    "sign": (lambda: [m.Sign()], lambda g: g.sign()),
    "sqrt": (lambda: [m.Abs(), m.Sqrt()], lambda g: g.abs().sqrt()),
    "exp": (lambda: [m.Mul(0.1), m.Exp()], lambda g: (0.1 * g).exp()),
    "negate": (lambda: [m.Negate(), m.Mul(-0.5)], lambda g: 0.5 * g),
    "negate_owned": (lambda: [m.Abs(), m.Negate(), m.Negate()], lambda g: g.abs()),
    "reciprocal": (lambda: [m.Abs(), m.Add(2.0), m.Reciprocal()], lambda g: 1 / (g.abs() + 2)),
    "reciprocal_eps": (lambda: [m.Abs(), m.Reciprocal(eps=1.0)], lambda g: 1 / (g.abs() + 1)),
    "nan_to_num_identity": (lambda: [m.NanToNum()], lambda g: g),
    "custom_foreach": (lambda: [m.CustomUnaryOperation("tanh")], lambda g: g.tanh()),
    "custom_loop": (lambda: [m.CustomUnaryOperation("deg2rad")], lambda g: g * (math.pi / 180)),
    "custom_inplace": (lambda: [m.CustomUnaryOperation("abs_")], lambda g: g.abs()),
    "unary_lambda": (lambda: [m.UnaryLambda(lambda ts: [t * 3 + 1 for t in ts])],
                     lambda g: 3 * g + 1),
    "unary_lambda_inplace": (lambda: [m.UnaryLambda(lambda ts: torch._foreach_mul_(ts, 2.0) or ts)],
                             lambda g: 2 * g),
    "parameterwise_lambda": (lambda: [m.UnaryParameterwiseLambda(torch.atan)], lambda g: g.atan()),
}


@pytest.mark.parametrize("case", sorted(UNARY_CASES))
def test_unary(case):
    make_chain, f = UNARY_CASES[case]
    check(make_chain, ew(f))


def test_nan_to_num_replaces_values():
    p = torch.zeros(5, requires_grad=True)
    opt = ob.Modular([p], m.NanToNum(nan=1.0, posinf=2.0, neginf=-3.0), m.LR(1.0))
    p.grad = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.5, -0.25])
    opt.step()
    torch.testing.assert_close(p.detach(), -torch.tensor([1.0, 2.0, -3.0, 0.5, -0.25]))

    q = torch.zeros(3, requires_grad=True)
    opt = ob.Modular([q], m.NanToNum(), m.LR(1.0))
    q.grad = torch.tensor([float("nan"), float("inf"), -float("inf")])
    opt.step()
    big = torch.finfo(torch.float32).max
    torch.testing.assert_close(q.detach(), torch.tensor([0.0, -big, big]))


def test_custom_unary_operation_rejects_shape_changes():
    p = torch.zeros(3, requires_grad=True)
    opt = ob.Modular([p], m.CustomUnaryOperation("sum"))
    p.grad = torch.ones(3)
    with pytest.raises(ValueError, match="CustomUnaryOperation"):
        opt.step()


# -------------------------------------------------------------------------------- sources
SOURCE_CASES = {
    "identity": (lambda: [m.Identity(1, 2, x=3)], lambda xs, gs, mem: gs),
    "noop": (lambda: [m.Abs(), m.Noop()], lambda xs, gs, mem: [g.abs() for g in gs]),
    "clone": (lambda: [m.Clone(), m.Mul(2.0)], lambda xs, gs, mem: [2 * g for g in gs]),
    "grad": (lambda: [m.Mul(5.0), m.Sign(), m.Grad()], lambda xs, gs, mem: gs),
    "grad_then_inplace": (lambda: [m.Grad(), m.Abs()], lambda xs, gs, mem: [g.abs() for g in gs]),
    "params": (lambda: [m.Params()], lambda xs, gs, mem: xs),
    "params_then_op": (lambda: [m.Params(), m.Add(m.Grad())],
                       lambda xs, gs, mem: [x + g for x, g in zip(xs, gs)]),
    "zeros": (lambda: [m.Zeros(), m.Add(0.5)],
              lambda xs, gs, mem: [torch.full_like(g, 0.5) for g in gs]),
    "ones": (lambda: [m.Ones(), m.Mul(0.3)],
             lambda xs, gs, mem: [torch.full_like(g, 0.3) for g in gs]),
    "fill": (lambda: [m.Fill(-0.2)], lambda xs, gs, mem: [torch.full_like(g, -0.2) for g in gs]),
}


@pytest.mark.parametrize("case", sorted(SOURCE_CASES))
def test_sources(case):
    make_chain, fn = SOURCE_CASES[case]
    check(make_chain, fn)


def _random_ref(seed, draw):
    """Reference sampler: one draw per parameter with a gradient, in order, from a generator
    seeded with ``seed``; ``draw(shape, gen)`` returns float64 samples."""
    gen = torch.Generator().manual_seed(seed)
    return lambda xs, gs, mem: draw([g.shape for g in gs], gen)


def _normal(var):
    return lambda shapes, gen: [torch.randn(s, generator=gen, dtype=torch.float64) * math.sqrt(var)
                                for s in shapes]


def _uniform(var):
    b = math.sqrt(3 * var)
    return lambda shapes, gen: [torch.rand(s, generator=gen, dtype=torch.float64) * 2 * b - b
                                for s in shapes]


def _rademacher(var):
    s_ = math.sqrt(var)
    return lambda shapes, gen: [
        torch.randint(0, 2, s, generator=gen, dtype=torch.float64) * 2 * s_ - s_ for s in shapes
    ]


def _sphere(var):
    def draw(shapes, gen):
        zs = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
        n = sum(z.numel() for z in zs)
        norm = torch.cat([z.reshape(-1) for z in zs]).norm()
        radius = 1.0 if var is None else math.sqrt(var * n)
        return [z * radius / norm for z in zs]

    return draw


RANDOM_CASES = {
    "randn": (lambda: [m.Randn(seed=3)], _random_ref(3, _normal(1.0))),
    "normal_default": (lambda: [m.RandomSample(seed=4)], _random_ref(4, _normal(1.0))),
    "gaussian_var": (lambda: [m.RandomSample("gaussian", variance=0.25, seed=5)],
                     _random_ref(5, _normal(0.25))),
    "uniform": (lambda: [m.RandomSample("uniform", seed=6)], _random_ref(6, _uniform(1 / 3))),
    "uniform_var": (lambda: [m.RandomSample("uniform", variance=2.0, seed=6)],
                    _random_ref(6, _uniform(2.0))),
    "rademacher": (lambda: [m.RandomSample("rademacher", variance=0.5, seed=7)],
                   _random_ref(7, _rademacher(0.5))),
    "sphere": (lambda: [m.RandomSample("sphere", seed=8)], _random_ref(8, _sphere(None))),
    "sphere_var": (lambda: [m.RandomSample("sphere", variance=0.1, seed=8)],
                   _random_ref(8, _sphere(0.1))),
    "uniform_range": (lambda: [m.Uniform(-0.5, 2.0, seed=9)],
                      _random_ref(9, lambda shapes, gen: [
                          torch.rand(s, generator=gen, dtype=torch.float64) * 2.5 - 0.5
                          for s in shapes])),
}


@pytest.mark.parametrize("case", sorted(RANDOM_CASES))
def test_random_sources_follow_their_seeded_generator(case):
    make_chain, fn = RANDOM_CASES[case]
    check(make_chain, fn)


@pytest.mark.parametrize("dist,var", [("normal", None), ("normal", 4.0), ("uniform", None),
                                      ("uniform", 0.5), ("rademacher", 2.0), ("sphere", 0.3)])
def test_random_sample_moments(dist, var):
    p = torch.zeros(200_000, requires_grad=True)
    opt = ob.Modular([p], m.RandomSample(dist, variance=var, seed=0), m.LR(1.0))
    p.grad = torch.zeros_like(p)
    opt.step()
    x = -p.detach().double()
    v = 1.0 if var is None else var
    if dist == "uniform" and var is None:
        v = 1 / 3
        assert x.abs().max() <= 1.0
    if dist == "rademacher":
        assert torch.allclose(x.abs(), torch.full_like(x, math.sqrt(v)))
    if dist == "sphere":
        assert math.isclose(x.norm().item(), math.sqrt(v * x.numel()), rel_tol=1e-6)
    assert abs(x.mean().item()) < 0.02 * math.sqrt(v)
    assert math.isclose((x * x).mean().item(), v, rel_tol=0.02)


def test_random_seed_none_follows_torch_manual_seed():
    def run():
        torch.manual_seed(123)
        p = torch.zeros(10, requires_grad=True)
        opt = ob.Modular([p], m.Randn(), m.LR(1.0))
        for _ in range(3):
            p.grad = torch.zeros_like(p)
            opt.step()
        return p.detach().clone()

    a, b = run(), run()
    assert torch.equal(a, b) and not torch.equal(a, torch.zeros(10))


def test_random_sample_per_group_distributions():
    """Param groups may pick different distributions; each gets its own draw."""
    a = torch.zeros(50_000, requires_grad=True)
    b = torch.zeros(50_000, requires_grad=True)
    groups = [{"params": [a], "distribution": "rademacher"}, {"params": [b], "variance": 4.0}]
    opt = ob.Modular(groups, m.RandomSample(seed=1), m.LR(1.0))
    a.grad, b.grad = torch.zeros_like(a), torch.zeros_like(b)
    opt.step()
    assert torch.equal(a.detach().abs(), torch.ones_like(a))
    assert math.isclose(b.detach().var().item(), 4.0, rel_tol=0.05)


# ---------------------------------------------------------------------------- sign ops
def _with_adam(f):
    """A reference ``f(g, a)`` of the gradient and Adam's direction of the gradient."""
    return lambda xs, gs, mem: [f(g, a) for g, a in zip(gs, adam_ref(mem, "a", gs))]


SIGN_CASES = {
    "copysign": (lambda: [m.CopySign(m.Adam())], _with_adam(lambda g, a: torch.copysign(g, a))),
    "copysign_owned": (lambda: [m.Mul(m.Fill(2.0)), m.CopySign(m.Negate())],
                       ew(lambda g: torch.copysign(2 * g, -2 * g))),
    "rcopysign": (lambda: [m.RCopySign(m.Adam())], _with_adam(lambda g, a: torch.copysign(a, g))),
    "copymagnitude": (lambda: [m.CopyMagnitude([m.Abs(), m.Sqrt()])],
                      ew(lambda g: torch.copysign(g.abs().sqrt(), g))),
    "gradsign": (lambda: [m.Adam(), m.GradSign()], _with_adam(lambda g, a: torch.copysign(a, g))),
    "gradsign_borrowed": (lambda: [m.Fill(0.1), m.GradSign()],
                          ew(lambda g: torch.copysign(torch.full_like(g, 0.1), g))),
    "updatesign": (lambda: [m.Adam(), m.UpdateSign()],
                   _with_adam(lambda g, a: torch.copysign(g, a))),
    "updatesign_owned": (lambda: [m.Mul(m.Fill(-1.0)), m.UpdateSign()], ew(lambda g: -g)),
}


@pytest.mark.parametrize("case", sorted(SIGN_CASES))
def test_sign_ops(case):
    make_chain, fn = SIGN_CASES[case]
    check(make_chain, fn)


# ---------------------------------------------------------------------------- param groups
def check_groups(make_opt, fn, lr=0.01, steps=50):
    """``make_opt(ps)`` (ps: the harness's 4 tensors with gradients) follows
    ``p_i -= lr * fn(i, g_i)`` for ``steps`` steps of seeded random gradients."""
    gen = torch.Generator().manual_seed(0)
    ps = make_params(0, torch.float64, with_unused=False)
    ref = [p.detach().clone() for p in ps]
    opt = make_opt(ps)
    for _ in range(steps):
        gs = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in ps]
        for p, g in zip(ps, gs):
            p.grad = g.clone()
        opt.step()
        for i, (x, g) in enumerate(zip(ref, gs)):
            x.sub_(lr * fn(i, g))
    for p, x in zip(ps, ref):
        torch.testing.assert_close(p.detach(), x, rtol=1e-10, atol=1e-12)
    assert not torch.equal(ps[0].detach(), make_params(0, torch.float64)[0].detach())


def test_group_overrides_of_number_operands():
    """A param group overrides a number operand by its name (``other``) and other settings."""
    check_groups(
        lambda ps: ob.Modular([{"params": ps[:2], "other": 3.0, "alpha": 0.5}, {"params": ps[2:]}],
                              m.Add(0.1, alpha=2.0), m.LR(0.01)),
        lambda i, g: g + (1.5 if i < 2 else 0.2),
    )


@pytest.mark.parametrize("chain,fn", [
    (lambda: [m.Mul(2.0)], lambda g, c: c * g),
    (lambda: [m.Div(2.0)], lambda g, c: g / c),
    (lambda: [m.RSub(2.0)], lambda g, c: c - g),
    (lambda: [m.Abs(), m.RPow(2.0)], lambda g, c: c ** g.abs()),
    (lambda: [m.Abs(), m.Exp(), m.RDiv(2.0)], lambda g, c: c / g.abs().exp()),
    (lambda: [m.Maximum(2.0)], lambda g, c: g.clamp(min=c)),
    (lambda: [m.Fill(2.0)], lambda g, c: torch.full_like(g, c)),
])
def test_per_group_scalars(chain, fn):
    """Groups that disagree give each parameter its own scalar (``other`` or ``value``)."""
    name = "value" if isinstance(chain()[-1], m.Fill) else "other"
    check_groups(
        lambda ps: ob.Modular([{"params": ps[:2], name: 0.5}, {"params": ps[2:]}], *chain(),
                              m.LR(0.01)),
        lambda i, g: fn(g, 0.5 if i < 2 else 2.0),
    )
