"""Shared flags of the native matrix optimizers against their formulas, and the optimizers as
``Modular`` chain modules."""

import pytest
import torch

import optbridge as ob
from optbridge.native import SOAP, Muon, MuonLaProp, PSGDKron, Shampoo
from test_native_matrix_muon import ref_muon_update


def _loss(xs, k):
    return sum((torch.sin(x * (k + 1)) * x).sum() + (x**2).sum() for x in xs)


@pytest.mark.parametrize("cls", [Muon, MuonLaProp, SOAP, Shampoo, PSGDKron])
def test_module_in_a_modular_chain_equals_the_optimizer(cls):
    gen = torch.Generator().manual_seed(0)
    ps = [torch.randn(s, generator=gen).requires_grad_() for s in [(6, 5), (4, 4), (6, 5)]]
    qs = [p.detach().clone().requires_grad_() for p in ps]
    chain, direct = ob.Modular(ps, cls.module()), cls(qs)
    for k in range(12):
        for xs, opt in ((ps, chain), (qs, direct)):
            opt.zero_grad()
            _loss(xs, k).backward()
            opt.step()
    for x, y in zip(ps, qs):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7)
    assert not torch.equal(ps[0], qs[0].detach() * 0 + ps[0].detach() + 1)


def test_muon_caution_and_update_clipping_match_their_formulas():
    """u = scale * NS(nesterov momentum); caution: u * [u g > 0] * numel / max(kept, 1);
    update clipping: clamp(u, -c, c); then p -= lr * u."""
    gen = torch.Generator().manual_seed(1)
    ps = [torch.randn(s, generator=gen).requires_grad_() for s in [(6, 5), (5, 6), (8, 3)]]
    qs = [p.detach().clone().requires_grad_() for p in ps]
    bufs = [torch.zeros_like(p) for p in qs]
    opt = Muon(ps, lr=0.05, caution=True, update_clipping=0.3)
    for k in range(60):
        for xs in (ps, qs):
            for x in xs:
                x.grad = None
            _loss(xs, k).backward()
        opt.step()
        with torch.no_grad():
            for q, buf in zip(qs, bufs):
                g = q.grad
                u = ref_muon_update(g.clone(), buf, 0.95, 5, True).float()
                mask = (u * g) > 0
                u = torch.where(mask, u, 0.0) * (mask.numel() / mask.sum().clamp(min=1))
                q.add_(u.clamp(-0.3, 0.3), alpha=-0.05)
    for x, y in zip(ps, qs):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7)


def test_flags_a_matrix_optimizer_does_not_support_are_rejected():
    """``palm`` schedules a second-moment beta2: optimizers without one reject it."""
    p = torch.zeros(3, 3, requires_grad=True)
    for cls in (PSGDKron, Muon, Shampoo):
        with pytest.raises(ValueError, match=rf"{cls.__name__}: flag 'palm' is not supported"):
            cls([p], palm=True)
    with pytest.raises(TypeError, match=r"Muon: unexpected argument 'foo'"):
        Muon([p], foo=1)


def test_muon_bfloat16_momentum_storage_matches_its_formula():
    """storage_dtype="bfloat16": b32 = lerp(float(b), g, 1-beta); the step uses b32; the stored
    buffer is b32 stochastically rounded with seed sr_seed(param position, 0, step)."""
    from optbridge.native.base import sr_seed
    from optbridge.native.stochastic_rounding import stochastic_round_
    from test_native_matrix_muon import ref_zeropower

    gen = torch.Generator().manual_seed(2)
    ps = [torch.randn(s, generator=gen).requires_grad_() for s in [(6, 5), (5, 6), (4, 4)]]
    qs = [p.detach().clone().requires_grad_() for p in ps]
    bufs = [torch.zeros(p.shape, dtype=torch.bfloat16) for p in qs]
    opt = Muon(ps, storage_dtype="bfloat16")
    for k in range(60):
        for xs in (ps, qs):
            for x in xs:
                x.grad = None
            _loss(xs, k).backward()
        opt.step()
        with torch.no_grad():
            for pid, (q, buf) in enumerate(zip(qs, bufs)):
                b32 = buf.float().lerp_(q.grad, 0.05)
                stochastic_round_(buf, b32, sr_seed(pid, 0, k + 1))
                u = ref_zeropower(q.grad.lerp(b32, 0.95))
                u *= max(1, q.size(-2) / q.size(-1)) ** 0.5
                q.add_(u, alpha=-0.02)
    for p, x, y, buf in zip(ps, ps, qs, bufs):
        assert opt.state[p]["momentum_buffer"].dtype == torch.bfloat16
        assert torch.equal(opt.state[p]["momentum_buffer"], buf)
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7)
    # the bfloat16 buffers survive a state-dict round trip
    sd = opt.state_dict()
    opt2 = Muon([p.detach().clone().requires_grad_() for p in ps], storage_dtype="bfloat16")
    opt2.load_state_dict(sd)
    assert all(s["momentum_buffer"].dtype == torch.bfloat16 for s in opt2.state.values())
