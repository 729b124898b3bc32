"""``mars``, ``palm`` and ``storage_dtype`` of the native Muon, MuonLaProp and Shampoo against
their formulas written out here on top of the reference optimizers of
``test_native_matrix_muon`` / ``test_native_matrix_shampoo``.

MARS (Yuan et al., 2024): c_t = g_t + gamma * b1 / (1 - b1) * (g_t - g_{t-1}), c_1 = g_1, fed to
the reference in place of the gradient (b1: Muon's momentum, the first beta of MuonLaProp and of
the AdamW fallback, 0.9 for Shampoo). PaLM: beta2_t = 1 - t^-s, second moment not debiased.
bfloat16 storage: the buffers updated in fp32 from the stored values, then stochastically
rounded with ``stochastic_round_(buf, value, sr_seed(param position, slot, step))``.
"""


import pytest
import torch

import optbridge as ob
from optbridge.native import Muon, MuonLaProp, Shampoo
from optbridge.native.base import sr_seed
from optbridge.native.stochastic_rounding import stochastic_round_
from test_native_matrix_muon import (RefMuonWithAuxAdam, loss_of, make_params,
                                     ref_zeropower)
from test_native_matrix_muon import run as run_muon
from test_native_matrix_shampoo import RefShampoo
from test_native_matrix_shampoo import run as run_shampoo
from trajectory import assert_snapshots_close, train_with_reload

GAMMA = 0.05


class MarsFeed:
    """Runs ``ref`` on MARS-corrected gradients: before each step, ``p.grad`` <- c_t."""

    def __init__(self, ref, beta1_of, gamma=GAMMA):
        self.ref, self.gamma, self.prev = ref, gamma, {}
        self.beta1 = {id(p): beta1_of(g) for g in ref.param_groups for p in g["params"]}

    def zero_grad(self):
        self.ref.zero_grad()

    @torch.no_grad()
    def step(self):
        for group in self.ref.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad.clone()
                prev = self.prev.get(id(p))
                if prev is not None:
                    b = self.beta1[id(p)]
                    p.grad = g + (self.gamma * b / (1 - b)) * (g - prev)
                self.prev[id(p)] = g
        self.ref.step()


def assert_moved_differently(a, b):
    """The flag changed the trajectory (the comparison is not vacuous)."""
    assert not torch.allclose(a[-1][0], b[-1][0], rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------ Muon + MARS
def muon_groups(mats, vecs, unused):
    # default momentum 0.95: MARS's beta1 differs from the fallback's first beta (0.9)
    return [dict(params=mats + [unused], use_muon=True),
            dict(params=vecs, use_muon=False, lr=0.01)]


def test_muon_mars_matches_reference_on_corrected_gradients():
    def ref(mats, vecs, unused):
        inner = RefMuonWithAuxAdam(muon_groups(mats, vecs, unused))
        return MarsFeed(inner, lambda g: g["momentum"] if g["use_muon"] else g["betas"][0])

    def ours(mats, vecs, unused):
        return Muon(muon_groups(mats, vecs, unused), mars=True, mars_gamma=GAMMA)

    a, _ = run_muon(ref)
    b, opt = run_muon(ours)
    assert_snapshots_close(a, b, 1e-6, 1e-7)
    plain, _ = run_muon(lambda m, v, u: Muon(muon_groups(m, v, u)))
    assert_moved_differently(a, plain)
    assert torch.equal(b[-1][-1], make_params()[2].detach())  # grad None: untouched
    # same-shape matrices still went through one stacked Newton–Schulz
    assert any(k[0] == (5, 6) and s.X.shape[0] == 4 for k, s in opt._stacks.items())


# ------------------------------------------------------------------------------ MuonLaProp
class RefMuonLaPropFlags(torch.optim.Optimizer):
    """HeavyBall MuonLaProp (as ``RefMuonLaProp``) with PaLM: the v weight 1 - b2t with
    b2t = 1 - t^-s (no debiasing); plus an AdamW fallback group (``adam_update`` with PaLM:
    lerp weight 1 - b2t, no bias correction of v)."""

    def __init__(self, groups, palm, s=0.8):
        super().__init__(groups, dict(weight_decay=0.0))
        self.palm, self.s = palm, s

    def b2_weight(self, b2, t):
        if self.palm:
            return 1 - (1 - t ** -self.s), 1.0
        return (1 - b2) / (1 - b2**t), 1 - b2**t

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                st, g = self.state[p], p.grad
                if not st:
                    st["m"], st["v"], st["t"] = torch.zeros_like(p), torch.zeros_like(p), 0
                st["t"] += 1
                t = st["t"]
                w2, bc2 = self.b2_weight(b2, t)
                if group["use_muon"]:
                    st["v"].lerp_(g * g, w2)
                    st["m"].lerp_(g / st["v"].sqrt().clamp(min=group["eps"]),
                                  (1 - b1) / (1 - b1**t))
                    u = st["m"]
                    if p.ndim >= 2:
                        u = ref_zeropower(u.view(len(u), -1) if u.ndim == 4 else u)
                        u = u * max(1, p.size(-2) / p.size(-1)) ** 0.5
                else:
                    st["m"].lerp_(g, 1 - b1)
                    st["v"].lerp_(g * g, 1 - b2 if not self.palm else w2)
                    u = (st["m"] / (1 - b1**t)) / ((st["v"] / bc2).sqrt() + group["eps"])
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(u.reshape(p.shape), alpha=-group["lr"])


def laprop_groups(mats, vecs, unused):
    # vectors in the default group take LaProp's m; the last vector uses the AdamW fallback
    return [dict(params=mats + vecs[:2] + [unused], use_muon=True),
            dict(params=vecs[2:], use_muon=False, lr=0.01)]


def ref_laprop_groups(mats, vecs, unused):
    return [dict(params=mats + vecs[:2] + [unused], use_muon=True, lr=0.01, betas=(0.9, 0.99),
                 eps=1e-8),
            dict(params=vecs[2:], use_muon=False, lr=0.01, betas=(0.9, 0.95), eps=1e-10)]


@pytest.mark.parametrize("flags", [dict(palm=True), dict(mars=True),
                                   dict(palm=True, mars=True, beta2_scale=0.6)])
def test_muon_laprop_palm_and_mars_match_reference(flags):
    palm, mars = flags.get("palm", False), flags.get("mars", False)
    s = flags.get("beta2_scale", 0.8)

    def ref(mats, vecs, unused):
        inner = RefMuonLaPropFlags(ref_laprop_groups(mats, vecs, unused), palm, s)
        return MarsFeed(inner, lambda g: g["betas"][0]) if mars else inner

    def ours(mats, vecs, unused):
        return MuonLaProp(laprop_groups(mats, vecs, unused), lr=0.01,
                          **dict(flags, mars_gamma=GAMMA) if mars else flags)

    a, _ = run_muon(ref)
    b, _ = run_muon(ours)
    assert_snapshots_close(a, b, 1e-6, 1e-7)
    assert torch.equal(b[-1][-1], make_params()[2].detach())
    plain, _ = run_muon(lambda m, v, u: MuonLaProp(laprop_groups(m, v, u), lr=0.01))
    assert_moved_differently(a, plain)
    assert not torch.allclose(a[-1][-2], plain[-1][-2])  # the AdamW fallback follows the flag


def test_muon_laprop_bfloat16_storage_matches_stochastic_rounding_reference():
    """m32 = lerp(float(m), g / max(sqrt(v32), eps), w1), v32 = lerp(float(v), g^2, w2); the
    buffers are m32, v32 rounded with seeds sr_seed(position, 0 / 1, t); the step uses m32."""
    gen = torch.Generator().manual_seed(3)
    shapes = [(6, 5), (6, 5), (5, 6), (6, 5), (3, 4, 2), (7,)]
    ps = [torch.randn(s, generator=gen).requires_grad_() for s in shapes]
    qs = [p.detach().clone().requires_grad_() for p in ps]
    ms = [torch.zeros(s, dtype=torch.bfloat16) for s in shapes]
    vs = [torch.zeros(s, dtype=torch.bfloat16) for s in shapes]
    b1, b2, eps, lr = 0.9, 0.99, 1e-8, 0.01
    opt = MuonLaProp(ps, lr=lr, storage_dtype="bfloat16")
    for k in range(60):
        t = k + 1
        for xs in (ps, qs):
            for x in xs:
                x.grad = None
            loss_of(xs, [], k).backward()
        opt.step()
        with torch.no_grad():
            for pid, (q, m, v) in enumerate(zip(qs, ms, vs)):
                g = q.grad
                v32 = v.float().lerp_(g * g, (1 - b2) / (1 - b2**t))
                m32 = m.float().lerp_(g / v32.sqrt().clamp(min=eps), (1 - b1) / (1 - b1**t))
                stochastic_round_(m, m32, sr_seed(pid, 0, t))
                stochastic_round_(v, v32, sr_seed(pid, 1, t))
                u = m32
                if q.ndim >= 2:
                    u = ref_zeropower(u) * max(1, q.size(-2) / q.size(-1)) ** 0.5
                q.add_(u, alpha=-lr)
    for p, q, m, v in zip(ps, qs, ms, vs):
        st = opt.state[p]
        assert st["exp_avg"].dtype == st["exp_avg_sq"].dtype == torch.bfloat16
        assert torch.equal(st["exp_avg"], m) and torch.equal(st["exp_avg_sq"], v)
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------------------ Shampoo
SHAMPOO_KW = dict(merge_small=False, update_freq=2)


@pytest.mark.parametrize("dtype,rtol,atol", [(torch.float64, 1e-12, 1e-14),
                                             (torch.float32, 1e-6, 1e-7)])
def test_shampoo_mars_matches_reference_on_corrected_gradients(dtype, rtol, atol):
    """MARS's c_t (beta1 = 0.9) replaces G in the statistics, the Adagrad sum and the step."""
    a = run_shampoo(lambda ps: MarsFeed(RefShampoo(ps, lr=0.01, **SHAMPOO_KW), lambda g: 0.9),
                    dtype=dtype)
    b = run_shampoo(lambda ps: Shampoo(ps, lr=0.01, mars=True, mars_gamma=GAMMA, **SHAMPOO_KW),
                    dtype=dtype)
    assert_snapshots_close(a, b, rtol, atol)
    assert_moved_differently(a, run_shampoo(lambda ps: Shampoo(ps, lr=0.01, **SHAMPOO_KW),
                                            dtype=dtype))


def test_shampoo_bfloat16_storage_matches_stochastic_rounding_reference():
    """Vectors (precondition_1d=False) keep acc32 = float(acc) + g^2 stored by stochastic
    rounding (seed sr_seed(position, 0, t)) and step g / (sqrt(acc32) + eps); matrices keep
    fp32 statistics and roots (the reference Shampoo)."""
    gen = torch.Generator().manual_seed(4)
    shapes = [(6, 5), (7,), (4, 4), (5,)]
    ps = [torch.randn(s, generator=gen).requires_grad_() for s in shapes]
    qs = [p.detach().clone().requires_grad_() for p in ps]
    kw = dict(lr=0.01, precondition_1d=False, **SHAMPOO_KW)
    opt = Shampoo(ps, storage_dtype="bfloat16", **kw)
    ref = RefShampoo([q for q in qs if q.ndim == 2], **kw)
    accs = {i: torch.zeros(q.shape, dtype=torch.bfloat16) for i, q in enumerate(qs)
            if q.ndim == 1}
    for k in range(60):
        for xs in (ps, qs):
            for x in xs:
                x.grad = None
            sum((torch.sin(x * (k + 1)) * x).sum() + (x**2).sum() for x in xs).backward()
        opt.step()
        ref.step()
        with torch.no_grad():
            for i, acc in accs.items():
                g = qs[i].grad
                acc32 = acc.float().addcmul_(g, g)
                stochastic_round_(acc, acc32, sr_seed(i, 0, k + 1))
                qs[i].add_(g / (acc32.sqrt() + 1e-8), alpha=-0.01)
    for i, (p, q) in enumerate(zip(ps, qs)):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
        st = opt.state[p]
        if i in accs:
            assert st["diag"].dtype == torch.bfloat16 and torch.equal(st["diag"], accs[i])
        else:
            assert st["stat0"].dtype == st["precond0"].dtype == torch.float32


# ------------------------------------------------------------------------------ checkpoints
def _cos_loss(params, k):
    return sum((torch.cos(p * (k + 1)) * p).sum() + (p**2).sum() for p in params)


def _train(make, params, steps, split=None):
    return train_with_reload(make, params, steps, split, loss=_cos_loss)


def _muon_groups(ps):
    return [dict(params=ps[:3]), dict(params=ps[3:], use_muon=False)]


def _laprop_groups(ps):
    return [dict(params=ps[:4]), dict(params=ps[4:], use_muon=False)]


CHECKPOINT_CASES = [
    (lambda ps: Muon(_muon_groups(ps), mars=True, storage_dtype="bfloat16"), "momentum_buffer"),
    (lambda ps: MuonLaProp(_laprop_groups(ps), mars=True, palm=True, storage_dtype="bfloat16"),
     "exp_avg"),
    (lambda ps: Shampoo(ps, mars=True, storage_dtype="bfloat16", update_freq=3,
                        precondition_1d=False), "diag"),
]


@pytest.mark.parametrize("make,slot", CHECKPOINT_CASES, ids=["Muon", "MuonLaProp", "Shampoo"])
def test_state_dict_round_trip_continues_exactly_and_is_deterministic(make, slot):
    def fresh():
        gen = torch.Generator().manual_seed(5)
        return [torch.randn(s, generator=gen).requires_grad_()
                for s in [(6, 5), (5, 6), (4, 4), (5,), (3,)]]

    whole, opt = _train(make, fresh(), 9)
    again, _ = _train(make, fresh(), 9)
    split, opt2 = _train(make, fresh(), 9, split=4)
    for x, y, z in zip(whole, again, split):
        assert torch.equal(x, y) and torch.equal(x, z)
    for o in (opt, opt2):
        states = list(o.state.values())
        assert any(st.get(slot) is not None and st[slot].dtype == torch.bfloat16
                   for st in states)
        assert all(st["mars_prev_grad"].dtype == torch.bfloat16 for st in states)


@pytest.mark.parametrize("make", [lambda ps: MuonLaProp(_laprop_groups(ps)),
                                  lambda ps: Muon(_muon_groups(ps)),
                                  lambda ps: Shampoo(ps, precondition_1d=False)],
                         ids=["MuonLaProp", "Muon", "Shampoo"])
def test_bfloat16_params_keep_fp32_state_through_a_round_trip(make):
    """torch's load_state_dict casts state to the parameter dtype; the optimizers restore the
    fp32 moments, statistics and roots, so the continuation is exact."""
    def fresh():
        gen = torch.Generator().manual_seed(7)
        return [torch.randn(s, generator=gen).bfloat16().requires_grad_()
                for s in [(6, 5), (5, 6), (4, 4), (5,), (3,)]]

    whole, _ = _train(make, fresh(), 6)
    split, opt = _train(make, fresh(), 6, split=3)
    for x, y in zip(whole, split):
        assert torch.equal(x, y)
    for st in opt.state.values():
        assert all(v.dtype == torch.float32 for k, v in st.items()
                   if torch.is_tensor(v) and k != "step")


# ------------------------------------------------------------------------------ chain, errors
@pytest.mark.parametrize("cls,kw", [(Muon, dict(mars=True)),
                                    (MuonLaProp, dict(mars=True, palm=True,
                                                      storage_dtype="bfloat16")),
                                    (Shampoo, dict(mars=True, storage_dtype="bfloat16"))])
def test_flags_in_a_modular_chain_equal_the_optimizer(cls, kw):
    gen = torch.Generator().manual_seed(6)
    ps = [torch.randn(s, generator=gen).requires_grad_() for s in [(6, 5), (4, 4), (6, 5)]]
    qs = [p.detach().clone().requires_grad_() for p in ps]
    chain, direct = ob.Modular(ps, cls.module(**kw)), cls(qs, **kw)
    for k in range(10):
        for xs, opt in ((ps, chain), (qs, direct)):
            opt.zero_grad()
            sum((torch.sin(x * (k + 1)) * x).sum() for x in xs).backward()
            opt.step()
    for x, y in zip(ps, qs):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7)


def test_bad_flag_values_are_rejected_before_anything_changes():
    p = torch.zeros(3, 3, requires_grad=True)
    for cls in (MuonLaProp, Shampoo, Muon):
        with pytest.raises(ValueError, match=rf"{cls.__name__}: storage_dtype must be one of "
                                             r"'float32', 'bfloat16', got 'float16'"):
            cls([p], storage_dtype="float16")
        with pytest.raises(ValueError, match=rf"{cls.__name__}: mars_gamma must be"):
            cls([p], mars=True, mars_gamma=-1.0)
    with pytest.raises(ValueError, match=r"MuonLaProp: beta2_scale must be"):
        MuonLaProp([p], palm=True, beta2_scale=0.0)
    for cls in (Muon, Shampoo):  # no second moment with a beta2
        with pytest.raises(ValueError, match=rf"{cls.__name__}: flag 'palm' is not supported"):
            cls([p], palm=True)
    opt = MuonLaProp([p])
    with pytest.raises(ValueError, match=r"MuonLaProp: storage_dtype \(param group 1\)"):
        opt.add_param_group(dict(params=[torch.zeros(2, 2, requires_grad=True)],
                                 storage_dtype="float16"))
    assert len(opt.param_groups) == 1
