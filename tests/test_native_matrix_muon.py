"""optbridge.native Muon / MuonLaProp against the official formulas written out here:
KellerJordan/Muon ``muon.py`` (commit 00ba60d: ``zeropower_via_newtonschulz5``, ``muon_update``,
``SingleDeviceMuonWithAuxAdam``) and HeavyBall's MuonLaProp (LaProp with debiased betas, then
Muon's orthogonalisation)."""

import pytest
import torch

from optbridge.native import Muon, MuonLaProp
from optbridge.native.newton_schulz import newton_schulz
from trajectory import assert_snapshots_close


# ------------------------------------------------------------------------------ references
def ref_zeropower(G, steps=5):
    """zeropower_via_newtonschulz5 of KellerJordan/Muon (bf16, the same operations)."""
    a, b, c = (3.4445, -4.7750, 2.0315)
    X = G.bfloat16()
    if G.size(-2) > G.size(-1):
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        A = X @ X.mT
        B = b * A + c * A @ A
        X = a * X + B @ X
    if G.size(-2) > G.size(-1):
        X = X.mT
    return X


def ref_muon_update(grad, momentum, beta, ns_steps, nesterov):
    momentum.lerp_(grad, 1 - beta)
    update = grad.lerp_(momentum, beta) if nesterov else momentum
    if update.ndim == 4:
        update = update.view(len(update), -1)
    update = ref_zeropower(update, ns_steps)
    update *= max(1, grad.size(-2) / grad.size(-1)) ** 0.5
    return update


def ref_adam_update(grad, buf1, buf2, step, betas, eps):
    buf1.lerp_(grad, 1 - betas[0])
    buf2.lerp_(grad.square(), 1 - betas[1])
    buf1c = buf1 / (1 - betas[0] ** step)
    buf2c = buf2 / (1 - betas[1] ** step)
    return buf1c / (buf2c.sqrt() + eps)


class RefMuonWithAuxAdam(torch.optim.Optimizer):
    """SingleDeviceMuonWithAuxAdam (params with grad None skipped instead of zero-filled)."""

    def __init__(self, groups, nesterov=True, ns_steps=5):
        for g in groups:
            if g["use_muon"]:
                g.setdefault("lr", 0.02)
                g.setdefault("momentum", 0.95)
                g.setdefault("weight_decay", 0)
            else:
                g.setdefault("lr", 3e-4)
                g.setdefault("betas", (0.9, 0.95))
                g.setdefault("eps", 1e-10)
                g.setdefault("weight_decay", 0)
        super().__init__(groups, {})
        self.nesterov, self.ns_steps = nesterov, ns_steps

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if group["use_muon"]:
                    if len(state) == 0:
                        state["momentum_buffer"] = torch.zeros_like(p)
                    update = ref_muon_update(p.grad.clone(), state["momentum_buffer"],
                                             group["momentum"], self.ns_steps, self.nesterov)
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                    p.add_(update.reshape(p.shape), alpha=-group["lr"])
                else:
                    if len(state) == 0:
                        state["exp_avg"] = torch.zeros_like(p)
                        state["exp_avg_sq"] = torch.zeros_like(p)
                        state["step"] = 0
                    state["step"] += 1
                    update = ref_adam_update(p.grad, state["exp_avg"], state["exp_avg_sq"],
                                             state["step"], group["betas"], group["eps"])
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                    p.add_(update, alpha=-group["lr"])


class RefMuonLaProp(torch.optim.Optimizer):
    """HeavyBall MuonLaProp written out: debiased betas 1 - (1-b)/(1-b^t), v = lerp(v, g^2,
    1-b2t), m = lerp(m, g / max(sqrt(v), eps), 1-b1t), then Muon's NS and shape factor for
    matrices; vectors take m."""

    def __init__(self, params, lr=0.0025, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.0):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st["m"], st["v"], st["t"] = torch.zeros_like(p), torch.zeros_like(p), 0
                st["t"] += 1
                t = st["t"]
                b1t = 1 - (1 - b1) / (1 - b1**t)
                b2t = 1 - (1 - b2) / (1 - b2**t)
                g = p.grad
                st["v"].lerp_(g * g, 1 - b2t)
                st["m"].lerp_(g / st["v"].sqrt().clamp(min=group["eps"]), 1 - b1t)
                u = st["m"]
                if p.ndim >= 2:
                    u = u.view(len(u), -1) if u.ndim == 4 else u
                    u = ref_zeropower(u)
                    u *= max(1, p.size(-2) / p.size(-1)) ** 0.5
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(u.reshape(p.shape), alpha=-group["lr"])


# ------------------------------------------------------------------------------ problem
SHAPES = [(6, 5), (6, 5), (5, 6), (3, 4, 2), (4, 3, 2, 2), (6, 5), (8, 3)]
VECTOR_SHAPES = [(7,), (5,), ()]


def make_params(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    mats = [torch.randn(s, generator=g, dtype=dtype).requires_grad_() for s in SHAPES]
    vecs = [torch.randn(s, generator=g, dtype=dtype).requires_grad_() for s in VECTOR_SHAPES]
    unused = torch.randn(4, 4, generator=g, dtype=dtype).requires_grad_()
    return mats, vecs, unused


def loss_of(mats, vecs, k):
    total = sum(((p - 0.3) ** 2).sum() * (i + 1) + torch.sin(p * (1 + 0.1 * k)).sum()
                for i, p in enumerate(mats))
    return total + sum((v ** 4).sum() + (v * 0.5).sum() for v in vecs)


def run(make, steps=60, dtype=torch.float32):
    mats, vecs, unused = make_params(dtype)
    opt = make(mats, vecs, unused)
    out = []
    for k in range(steps):
        opt.zero_grad()
        loss_of(mats, vecs, k).backward()
        opt.step()
        out.append([p.detach().clone() for p in mats + vecs + [unused]])
    return out, opt


def assert_same(a, b, rtol=1e-6, atol=1e-7):
    start_unused = make_params(b[0][0].dtype)[2]
    assert_snapshots_close(a, b, rtol, atol)
    assert not torch.equal(a[-1][0], a[0][0])
    assert torch.equal(b[-1][-1], start_unused.detach())


# ------------------------------------------------------------------------------ tests
def test_newton_schulz_stack_is_bitwise_the_reference():
    g = torch.Generator().manual_seed(0)
    for shape in [(6, 5), (5, 6), (3, 7, 5), (64, 48)]:
        G = torch.randn(shape, generator=g)
        assert torch.equal(newton_schulz(G), ref_zeropower(G))


@pytest.mark.parametrize("kw", [
    dict(),
    dict(lr=0.05, momentum=0.9, weight_decay=0.1),
    dict(nesterov=False, ns_steps=3),
])
def test_muon_with_aux_adam_matches_official(kw):
    ref_kw = {k: kw[k] for k in ("nesterov", "ns_steps") if k in kw}
    muon_kw = {k: v for k, v in kw.items() if k in ("lr", "momentum", "weight_decay")}

    def ref(mats, vecs, unused):
        return RefMuonWithAuxAdam([dict(params=mats + [unused], use_muon=True, **muon_kw),
                                   dict(params=vecs, use_muon=False, lr=0.01,
                                        weight_decay=0.05)], **ref_kw)

    def ours(mats, vecs, unused):
        return Muon([dict(params=mats + [unused]),
                     dict(params=vecs, use_muon=False, lr=0.01, weight_decay=0.05)], **kw)

    a, _ = run(ref)
    b, opt = run(ours)
    assert_same(a, b)
    # bf16 Newton–Schulz with the same operations: the matrices are bitwise equal
    for x, y in zip(a[-1][:len(SHAPES)], b[-1][:len(SHAPES)]):
        assert torch.equal(x, y)
    # the three (6, 5) matrices and the transposed (5, 6) one shared a stack
    assert any(k[0] == (5, 6) and s.X.shape[0] == 4 for k, s in opt._stacks.items())


def test_muon_float64_params_match_official():
    def ref(mats, vecs, unused):
        return RefMuonWithAuxAdam([dict(params=mats, use_muon=True),
                                   dict(params=vecs, use_muon=False)])

    def ours(mats, vecs, unused):
        return Muon([dict(params=mats), dict(params=vecs, use_muon=False)])

    a, _ = run(ref, dtype=torch.float64)
    b, _ = run(ours, dtype=torch.float64)
    assert_same(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kw", [{}, dict(mars=True, mars_gamma=0.05)], ids=["plain", "mars"])
def test_muon_batched_equals_one_by_one(kw):
    """Each matrix in its own optimizer (stacks of one) gives the same parameters."""
    mats, vecs, _ = make_params()
    mats2 = [p.detach().clone().requires_grad_() for p in mats]
    opt = Muon(mats, **kw)
    singles = [Muon([p], **kw) for p in mats2]
    for k in range(10):
        for ps, opts in ((mats, [opt]), (mats2, singles)):
            for o in opts:
                o.zero_grad()
            loss_of(ps, [], k).backward()
            for o in opts:
                o.step()
    for x, y in zip(mats, mats2):
        assert torch.equal(x, y)


def test_muon_laprop_matches_heavyball_formula():
    def ref(mats, vecs, unused):
        return RefMuonLaProp(mats + vecs + [unused], lr=0.01, weight_decay=0.1)

    def ours(mats, vecs, unused):
        return MuonLaProp(mats + vecs + [unused], lr=0.01, weight_decay=0.1)

    a, _ = run(ref)
    b, _ = run(ours)
    assert_same(a, b)


def test_muon_flags_maximize_and_clipping():
    # maximize on -loss is minimize on loss; clipping to a huge norm changes nothing
    a, _ = run(lambda m, v, u: Muon(m + [u]))
    mats, vecs, unused = make_params()
    opt = Muon(mats + [unused], maximize=True, gradient_clipping=1e9)
    for k in range(60):
        opt.zero_grad()
        (-loss_of(mats, [], k)).backward()
        opt.step()
    for x, y in zip(a[-1][:len(SHAPES)], mats):
        torch.testing.assert_close(y.detach(), x, rtol=1e-6, atol=1e-7)


def test_muon_state_dict_round_trip_continues_exactly():
    def make(ps):
        return Muon([dict(params=ps[:len(SHAPES)]), dict(params=ps[len(SHAPES):],
                                                          use_muon=False)])

    def go(split):
        mats, vecs, _ = make_params()
        ps = mats + vecs
        opt = make(ps)
        for k in range(12):
            if k == split:
                sd = opt.state_dict()
                ps = [p.detach().clone().requires_grad_() for p in ps]
                opt = make(ps)
                opt.load_state_dict(sd)
            opt.zero_grad()
            loss_of(ps[:len(SHAPES)], ps[len(SHAPES):], k).backward()
            opt.step()
        return ps

    for x, y in zip(go(None), go(5)):
        assert torch.equal(x, y)


def test_muon_bad_input():
    mats, vecs, _ = make_params()
    with pytest.raises(ValueError, match=r"Muon: parameter 0 of param group 1 has shape \(7,\)"
                                         r".*use_muon=False"):
        Muon([dict(params=mats), dict(params=vecs)])
    with pytest.raises(ValueError, match=r"Muon: unexpected key 'betas' in param group 0 "
                                         r"\(use_muon=True\); 'betas' belongs to use_muon=False"):
        Muon([dict(params=mats, betas=(0.9, 0.9))])
    with pytest.raises(ValueError, match=r"Muon: unexpected key 'momentum' in param group 0"):
        Muon([dict(params=vecs, use_muon=False, momentum=0.9)])
    with pytest.raises(ValueError, match=r"Muon: momentum"):
        Muon(mats, momentum=1.0)
    with pytest.raises(ValueError, match=r"Muon: invalid ns_dtype"):
        Muon(mats, ns_dtype=torch.int32)
    opt = Muon(mats)
    other = MuonLaProp(mats)
    with pytest.raises(ValueError, match=r"Muon.load_state_dict: the state dict comes from "
                                         r"MuonLaProp"):
        opt.load_state_dict(other.state_dict())
    with pytest.raises(ValueError, match="Muon.load_state_dict"):
        opt.load_state_dict(torch.optim.SGD(mats, lr=0.1).state_dict())
