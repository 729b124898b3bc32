"""PSGDKron's shared flags against kron_torch's Kron step written out in the test (the helpers
of ``test_native_matrix_psgd``) with the flag formulas applied on top:

- MARS (Yuan et al. 2024): c_t = g_t + gamma * beta / (1 - beta) * (g_t - g_{t-1}), c_1 = g_1,
  used in place of g everywhere (momentum, the preconditioner fit, caution's sign reference);
- caution: u <- u [u c > 0] numel / max(kept, 1); update clipping: u <- clamp(u, -c, c); both
  on the final update after the RMS cap, then W <- W (1 - lr wd) - lr u (wd on matrices only);
- storage_dtype="bfloat16": m32 = beta float(m) + (1 - beta) c, the step uses m32 / (1 - beta^t)
  and the buffer keeps stochastic_round(m32, seed sr_seed(param position, 0, t)).

The reference draws from its torch.Generator in the same order as the optimizer (update draw,
balance draw, then one Gaussian probe per parameter on update steps).
"""


import pytest
import torch

import optbridge as ob
from optbridge.native import PSGDKron
from optbridge.native.base import sr_seed
from optbridge.native.stochastic_rounding import stochastic_round_
from test_native_matrix_psgd import (
    RefKron,
    _ours,
    assert_same,
    ref_schedule,
    run,
)
from trajectory import sin_loss, train_with_reload


class RefKronFlags(RefKron):
    """kron_torch's Kron step (as ``RefKron``) plus mars / caution / update_clipping /
    bfloat16 momentum storage, one tensor at a time."""

    def __init__(self, params, mars=False, mars_gamma=0.0025, caution=False,
                 update_clipping=None, storage_dtype="float32", **kw):
        super().__init__(params, **kw)
        self.f = dict(mars=mars, gamma=mars_gamma, caution=caution, clip=update_clipping,
                      bf16=storage_dtype == "bfloat16")

    @torch.no_grad()
    def step(self):
        h, f = self.h, self.f
        prob = h["prob"] if h["prob"] is not None else ref_schedule(self.prob_step)
        do_update = torch.rand((), generator=self.gen).item() < prob
        self.prob_step += 1
        balance = torch.rand((), generator=self.gen).item() < 0.01 and do_update
        pid = -1
        for group in self.param_groups:
            beta, lr, wd = group["beta"], group["lr"], group["wd"]
            for p in group["params"]:
                pid += 1
                if p.grad is None:
                    continue
                g, st = p.grad.clone(), self.state[p]
                if not st:
                    st["step"], st["Q"] = 0, self.init_Q(p)
                    st["m"] = torch.zeros_like(p, dtype=torch.bfloat16 if f["bf16"] else None)
                st["step"] += 1
                if f["mars"]:
                    if "prev" in st:
                        c = g + f["gamma"] * beta / (1 - beta) * (g - st["prev"])
                    else:
                        c = g
                    st["prev"] = g.bfloat16() if f["bf16"] else g  # round to nearest
                    g = c
                if h["pure"]:
                    d = fit = g
                else:
                    m32 = st["m"].float() if f["bf16"] else st["m"]
                    m32.mul_(beta).add_(g, alpha=1 - beta)
                    if f["bf16"]:
                        stochastic_round_(st["m"], m32, sr_seed(pid, 0, st["step"]))
                    d = m32 / (1 - beta ** st["step"])
                    fit = d if h["into"] else g
                u = self.preconditioned(p, st["Q"], d, fit, balance, do_update)
                if f["caution"]:
                    mask = (u * g) > 0
                    kept = mask.sum().clamp(min=1).to(u.dtype)
                    u = torch.where(mask, u, 0.0) * (mask.numel() / kept)
                if f["clip"] is not None:
                    u = u.clamp(-f["clip"], f["clip"])
                if wd != 0 and p.ndim >= 2:
                    p.mul_(1 - lr * wd)
                p.add_(u, alpha=-lr)


CASES = [
    dict(lr=0.01, caution=True, weight_decay=0.1),
    dict(lr=0.02, update_clipping=0.004, weight_decay=0.1, prob=0.5, delayed=True),
    dict(lr=0.01, caution=True, update_clipping=0.01, cached=True, prob=0.3,
         memory_save_mode="one_diag", mars=True, mars_gamma=0.05),
    dict(lr=0.01, mars=True, mars_gamma=0.05, momentum_into_precond_update=False, beta=0.8,
         caution=True),
    dict(lr=0.01, mars=True, mars_gamma=0.05, pure=True, update_clipping=0.01),
]


@pytest.mark.parametrize("kw", CASES)
def test_psgd_flags_match_reference_float64(kw):
    assert_same(run(lambda ps: RefKronFlags(ps, **kw)),
                run(lambda ps: PSGDKron(ps, **_ours(kw))), rtol=1e-12, atol=1e-14)


def test_psgd_flags_change_the_trajectory():
    """Each flag matters on this problem (a reference ignoring it would fail above)."""
    base = run(lambda ps: PSGDKron(ps, lr=0.01), steps=20)
    for kw in (dict(caution=True), dict(update_clipping=0.004), dict(mars=True, mars_gamma=0.05)):
        other = run(lambda ps: PSGDKron(ps, lr=0.01, **kw), steps=20)
        assert (other[-1][0] - base[-1][0]).abs().max() > 1e-4, kw


def test_psgd_flags_float32():
    kw = dict(lr=0.01, prob=0.5, caution=True, update_clipping=0.01, mars=True,
              mars_gamma=0.05)
    assert_same(run(lambda ps: RefKronFlags(ps, **kw), dtype=torch.float32),
                run(lambda ps: PSGDKron(ps, **_ours(kw)), dtype=torch.float32),
                rtol=1e-6, atol=1e-7)


def _bf16_run(steps, split=None, **kw):
    """fp32 params, bfloat16 momentum; at ``split`` the state goes through
    torch.save / torch.load(weights_only=True) into a fresh optimizer."""
    gen = torch.Generator().manual_seed(3)
    ps = [torch.randn(s, generator=gen).requires_grad_() for s in [(6, 5), (6, 5), (4,), (3, 2, 2)]]
    return train_with_reload(
        lambda xs: PSGDKron(xs, lr=0.01, storage_dtype="bfloat16", **kw), ps, steps, split,
        loss=lambda xs, k: sin_loss(xs, k) + sum((x**2).sum() for x in xs))


@pytest.mark.parametrize("kw", [
    dict(lr=0.01, prob=0.5, memory_save_mode="all_diag"),
    dict(lr=0.01, memory_save_mode="all_diag", mars=True, cached=True, caution=True,
         update_clipping=0.01),
])
def test_psgd_bfloat16_momentum_equals_reference_bit_for_bit(kw):
    """fp32 params, bfloat16 momentum: the reference rounds its buffer with the same
    stochastic rounding; with diagonal factors both do the same fp32 arithmetic, so the
    trajectories and the stored buffers agree exactly (a round-to-nearest store would not)."""
    opts = {}

    def make(key, factory):
        def f(ps):
            opts[key] = (factory(ps), ps)
            return opts[key][0]
        return f

    want = run(make("ref", lambda ps: RefKronFlags(ps, storage_dtype="bfloat16", **kw)),
               dtype=torch.float32)
    got = run(make("ours", lambda ps: PSGDKron(ps, storage_dtype="bfloat16", **_ours(kw))),
              dtype=torch.float32)
    for a, b in zip(want, got):
        for x, y in zip(a, b):
            assert torch.equal(x, y)
    assert not torch.equal(got[-1][0], got[0][0])
    (ref, ref_ps), (ours, ps) = opts["ref"], opts["ours"]
    for p, q in zip(ps[:-1], ref_ps[:-1]):
        buf = ours.state[p]["momentum_buffer"]
        assert buf.dtype == torch.bfloat16 and buf.element_size() == 2
        assert torch.equal(buf, ref.state[q]["m"])


def test_psgd_bfloat16_momentum_storage_formula_each_step():
    """Triangular factors: at every step the stored buffer is exactly
    SR(beta float(m_{t-1}) + (1-beta) c_t, sr_seed(position, 0, t)), computed from this
    optimizer's own gradient, previous buffer and previous MARS gradient."""
    kw = dict(lr=0.01, prob=0.5, delayed=True, mars=True)

    class Checked:
        def __init__(self, ps):
            self.ps, self.opt = ps, PSGDKron(ps, storage_dtype="bfloat16", **_ours(kw))

        def zero_grad(self):
            self.opt.zero_grad()

        def step(self):
            before = {p: self.opt.state[p]["momentum_buffer"].clone()
                      for p in self.ps if p in self.opt.state}
            prev = {p: self.opt.state[p]["mars_prev_grad"].clone()
                    for p in self.ps if "mars_prev_grad" in self.opt.state.get(p, {})}
            self.opt.step()
            for pid, p in enumerate(self.ps):
                if p.grad is None:
                    continue
                st = self.opt.state[p]
                assert st["momentum_buffer"].dtype == torch.bfloat16
                assert st["Q0"].dtype == torch.float32
                g = p.grad
                if kw.get("mars") and p in prev:
                    g = g + 0.0025 * 0.9 / (1 - 0.9) * (g - prev[p])
                m32 = before.get(p, torch.zeros(p.shape, dtype=torch.bfloat16)).float()
                m32.mul_(0.9).add_(g, alpha=1 - 0.9)
                expected = torch.empty_like(st["momentum_buffer"])
                stochastic_round_(expected, m32, sr_seed(pid, 0, st["step"]))
                assert torch.equal(st["momentum_buffer"], expected)

    got = run(Checked, steps=30, dtype=torch.float32)
    assert not torch.equal(got[-1][0], got[0][0])


def test_psgd_bfloat16_storage_is_deterministic_and_round_trips():
    kw = dict(cached=True, mars=True, mars_gamma=0.05, preconditioner_update_probability=0.5)
    a, opt = _bf16_run(16, **kw)
    b, _ = _bf16_run(16, **kw)
    c, resumed = _bf16_run(16, split=7, **kw)
    for x, y, z in zip(a, b, c):
        assert torch.equal(x, y) and torch.equal(x, z)
    for o, ps in ((opt, a), (resumed, c)):  # bfloat16 slots stay bfloat16 through the load
        for p in ps:
            st = o.state[p]
            assert st["momentum_buffer"].dtype == st["mars_prev_grad"].dtype == torch.bfloat16
            assert all(st[f"Q{i}"].dtype == torch.float32 for i in range(st["n_factors"]))


@pytest.mark.parametrize("kw", [dict(delayed=True), dict(pure=True), dict(cached=True)])
def test_psgd_flags_as_a_modular_module(kw):
    kw = dict(kw, lr=0.01, caution=True, update_clipping=0.01, mars=True, mars_gamma=0.05,
              storage_dtype="bfloat16", preconditioner_update_probability=0.5)
    gen = torch.Generator().manual_seed(0)
    ps = [torch.randn(s, generator=gen).requires_grad_() for s in [(6, 5), (4, 4), (6, 5), (3,)]]
    qs = [p.detach().clone().requires_grad_() for p in ps]
    chain, direct = ob.Modular(ps, PSGDKron.module(**kw)), PSGDKron(qs, **kw)
    for k in range(12):
        for xs, opt in ((ps, chain), (qs, direct)):
            opt.zero_grad()
            sum((torch.sin(x * (k + 1)) * x).sum() + (x**2).sum() for x in xs).backward()
            opt.step()
    for x, y in zip(ps, qs):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7)


def test_psgd_storage_dtype_float16_is_rejected():
    p, q = (torch.zeros(3, 3, requires_grad=True) for _ in range(2))
    with pytest.raises(ValueError, match=r"PSGDKron: storage_dtype must be one of"):
        PSGDKron([p], storage_dtype="float16")
    opt = PSGDKron([p])
    with pytest.raises(ValueError, match=r"PSGDKron: storage_dtype \(param group 1\)"):
        opt.add_param_group({"params": [q], "storage_dtype": "float16"})
    assert len(opt.param_groups) == 1
    with pytest.raises(ValueError, match=r"PSGDKron: mars_gamma must be"):
        PSGDKron([p], mars=True, mars_gamma=-1.0)
    with pytest.raises(ValueError, match=r"PSGDKron: update_clipping must be"):
        PSGDKron([p], update_clipping=0.0)
