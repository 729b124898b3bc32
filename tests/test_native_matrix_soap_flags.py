"""optbridge.native.SOAP with the shared flags ``caution``, ``update_clipping``, ``mars`` and
``storage_dtype="bfloat16"``, against the official SOAP step of ``test_native_matrix_soap``
with the flag formulas written out on top."""

import functools

import pytest
import torch

import optbridge as ob
from optbridge.native import SOAP
from optbridge.native.base import sr_seed
from optbridge.native.stochastic_rounding import stochastic_round_
from test_native_matrix_soap import RefSOAP, run
from trajectory import train_with_reload


class RefSOAPFlags(RefSOAP):
    """The official step (``RefSOAP``) plus, written out here:

    - MARS: ``c = g + gamma * b1 / (1 - b1) * (g - g_prev)`` (``c = g`` on the first call)
      replaces ``g`` everywhere (projection, statistics GG, caution mask);
    - ``u = s_t * back(m / (sqrt(v) + eps))`` with ``s_t = sqrt(1 - b2^t) / (1 - b1^t)``;
      caution ``u * [u c > 0] * numel / max(kept, 1)``; clipping ``clamp(u, -clip, clip)``;
      ``p -= lr * u``, then the weight decay ``p -= lr * wd * p`` as the reference;
    - bfloat16 storage: at the end of each step ``m`` and ``v`` are rounded stochastically
      with the seeds ``sr_seed(param position, 0 / 1, t)``.
    """

    def __init__(self, params, caution=False, update_clipping=None, mars=False,
                 mars_gamma=0.0025, bf16=False, **kw):
        super().__init__(params, **kw)
        self.flags = dict(caution=caution, clip=update_clipping, mars=mars, gamma=mars_gamma,
                          bf16=bf16)

    @staticmethod
    def rounded(x, seed):
        out = torch.empty(x.shape, dtype=torch.bfloat16)
        stochastic_round_(out, x.contiguous(), seed)
        return out.float()

    def corrected(self, g, st, b1):
        f = self.flags
        if not f["mars"]:
            return g
        prev = st.get("prev")
        st["prev"] = g.clone()
        return g if prev is None else g + (f["gamma"] * b1 / (1 - b1)) * (g - prev)

    @torch.no_grad()
    def step(self):
        f = self.flags
        pid = -1
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                pid += 1
                if p.grad is None:
                    continue
                st = self.state[p]
                g = self.corrected(p.grad.clone(), st, b1)
                if "step" not in st:
                    self.first_step(g, st, group)
                    continue
                gp = self.project(g, st, group)
                st["step"] += 1
                t = st["step"]
                st["exp_avg"].mul_(b1).add_(gp, alpha=1 - b1)
                st["exp_avg_sq"].mul_(b2).add_(gp.square(), alpha=1 - b2)
                denom = st["exp_avg_sq"].sqrt().add_(group["eps"])
                u = self.project(st["exp_avg"] / denom, st, group, back=True)
                if group["normalize"]:
                    u = u / (1e-30 + torch.mean(u**2) ** 0.5)
                scale = (1.0 - b2**t) ** 0.5 / (1.0 - b1**t) if group["correct_bias"] else 1.0
                if f["caution"] or f["clip"] is not None:
                    u = u * scale
                    if f["caution"]:
                        mask = (u * g) > 0
                        kept = mask.sum().clamp(min=1).to(u.dtype)
                        u = torch.where(mask, u, 0.0) * (mask.numel() / kept)
                    if f["clip"] is not None:
                        u = u.clamp(-f["clip"], f["clip"])
                    p.add_(u, alpha=-group["lr"])
                else:  # RefSOAP's arithmetic
                    step_size = group["lr"]
                    if group["correct_bias"]:
                        step_size = step_size * (1.0 - b2**t) ** 0.5 / (1.0 - b1**t)
                    p.add_(u, alpha=-step_size)
                if group["weight_decay"] > 0.0:
                    p.add_(p, alpha=-group["lr"] * group["weight_decay"])
                self.update_preconditioner(g, st, group)
                if f["bf16"]:
                    st["exp_avg"] = self.rounded(st["exp_avg"], sr_seed(pid, 0, t))
                    st["exp_avg_sq"] = self.rounded(st["exp_avg_sq"], sr_seed(pid, 1, t))


def assert_trajectories(a, b, rtol, atol):
    for k, (xs, ys) in enumerate(zip(a, b)):
        for x, y in zip(xs, ys):
            torch.testing.assert_close(x, y, rtol=rtol, atol=atol,
                                       msg=lambda m, k=k: f"step {k}: {m}")


BASE = dict(lr=0.01, betas=(0.9, 0.95), precondition_frequency=3, weight_decay=0.05)
LAYOUTS = [dict(), dict(max_precond_dim=5, merge_dims=True, precondition_1d=True,
                        normalize_grads=True, precondition_frequency=2)]


@functools.cache
def plain_run(layout: int):
    """SOAP without flags on ``LAYOUTS[layout]`` (the trajectory the flags must change)."""
    return run(lambda ps: SOAP(ps, **dict(BASE, **LAYOUTS[layout])), 60, torch.float64)


@pytest.mark.parametrize("layout", range(len(LAYOUTS)))
@pytest.mark.parametrize("flags", [dict(caution=True), dict(update_clipping=0.3),
                                   dict(mars=True, mars_gamma=0.1)])
def test_soap_flag_matches_its_formula_float64(flags, layout):
    kw = dict(BASE, **LAYOUTS[layout])
    ref = run(lambda ps: RefSOAPFlags(ps, **flags, **kw), 60, torch.float64)
    ours = run(lambda ps: SOAP(ps, **flags, **kw), 60, torch.float64)
    assert_trajectories(ref, ours, rtol=1e-12, atol=1e-14)
    plain = plain_run(layout)
    assert (ref[-1][0] - plain[-1][0]).abs().max() > 1e-4  # the flag changes the trajectory


def test_soap_all_flags_together_match_their_formulas_float32():
    flags = dict(caution=True, update_clipping=0.3, mars=True, mars_gamma=0.1)
    ref = run(lambda ps: RefSOAPFlags(ps, **flags, **BASE), 60, torch.float32)
    ours = run(lambda ps: SOAP(ps, **flags, **BASE), 60, torch.float32)
    assert_trajectories(ref, ours, rtol=1e-6, atol=1e-7)


def test_soap_flags_with_lazy_basis_change_are_the_same_algorithm():
    flags = dict(BASE, caution=True, update_clipping=0.3, mars=True, mars_gamma=0.1)
    eager = run(lambda ps: SOAP(ps, **flags), 40, torch.float64)
    lazy = run(lambda ps: SOAP(ps, lazy_basis_change=True, **flags), 40, torch.float64)
    assert_trajectories(eager, lazy, rtol=1e-9, atol=1e-11)


def _states(opt):
    return [opt.state[p] for g in opt.param_groups for p in g["params"] if opt.state[p]]


def _matrix_dtypes(opt):
    """dtypes of the statistics GG and bases Q of all parameters."""
    return {v.dtype for s in _states(opt) for k, v in s.items()
            if k.startswith(("GG", "Q")) and torch.is_tensor(v)}


def test_soap_bfloat16_storage_matches_stochastically_rounded_reference():
    kw = dict(BASE, **LAYOUTS[1])
    refs, ours = [], []

    def make_ref(ps):
        refs.append(RefSOAPFlags(ps, bf16=True, **kw))
        return refs[-1]

    def make_ours(ps):
        ours.append(SOAP(ps, storage_dtype="bfloat16", **kw))
        return ours[-1]

    a = run(make_ref, 30, torch.float32)
    b = run(make_ours, 30, torch.float32)
    for xs, ys in zip(a, b):
        assert all(torch.equal(x, y) for x, y in zip(xs, ys))
    for r, s in zip(_states(refs[0]), _states(ours[0])):
        for k in ("exp_avg", "exp_avg_sq"):
            assert s[k].dtype == torch.bfloat16
            assert torch.equal(s[k].float().reshape(r[k].shape), r[k])
    assert _matrix_dtypes(ours[0]) == {torch.float32}
    # deterministic: a second run gives the same bits; and close to the fp32 storage run
    assert all(torch.equal(x, y) for x, y in zip(b[-1], run(make_ours, 30, torch.float32)[-1]))
    full = run(lambda ps: SOAP(ps, **kw), 30, torch.float32)
    assert_trajectories(full[-1:], b[-1:], rtol=0.0, atol=2e-2)
    assert any(not torch.equal(x, y) for x, y in zip(full[-1], b[-1]))
    # the moments take half the memory of fp32 storage
    def moment_bytes(opt):
        return sum(s[k].numel() * s[k].element_size() for s in _states(opt)
                   for k in ("exp_avg", "exp_avg_sq"))

    fp32 = []
    run(lambda ps: fp32.append(SOAP(ps, **kw)) or fp32[-1], 2, torch.float32)
    assert 2 * moment_bytes(ours[0]) == moment_bytes(fp32[0]) > 0


def _go(split, dtype=torch.float32, **kw):
    """14 steps; at ``split`` the state dict goes through torch.save / torch.load
    (weights_only=True) into a fresh optimizer on cloned parameters."""
    gen = torch.Generator().manual_seed(3)
    ps = [torch.randn(s, generator=gen).to(dtype).requires_grad_()
          for s in [(6, 5), (6, 5), (4,), (3, 2, 2)]]
    return train_with_reload(lambda xs: SOAP(xs, **kw), ps, 14, split)


@pytest.mark.parametrize("kw", [
    dict(storage_dtype="bfloat16", mars=True, caution=True, update_clipping=0.5),
    dict(storage_dtype="bfloat16", merge_dims=True, max_precond_dim=4, lazy_basis_change=True),
    dict(dtype=torch.bfloat16, mars=True),  # bf16 params: fp32 state stays fp32 after loading
])
def test_soap_flags_state_dict_round_trip_continues_exactly(kw):
    kw = dict(lr=0.01, precondition_frequency=3, precondition_1d=True, **kw)
    (a, _), (b, opt_b) = _go(None, **kw), _go(6, **kw)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    assert _matrix_dtypes(opt_b) == {torch.float32}
    moments = torch.bfloat16 if kw.get("storage_dtype") == "bfloat16" else torch.float32
    for s in _states(opt_b):
        assert s["exp_avg"].dtype == s["exp_avg_sq"].dtype == moments
        if kw.get("mars"):
            assert s["mars_prev_grad"].dtype == moments


def test_soap_module_with_flags_equals_the_optimizer():
    kw = dict(lr=0.01, caution=True, update_clipping=0.5, mars=True, storage_dtype="bfloat16")
    gen = torch.Generator().manual_seed(0)
    ps = [torch.randn(s, generator=gen).requires_grad_() for s in [(6, 5), (4, 4), (6, 5)]]
    qs = [p.detach().clone().requires_grad_() for p in ps]
    chain, direct = ob.Modular(ps, SOAP.module(**kw)), SOAP(qs, **kw)
    for k in range(12):
        for xs, opt in ((ps, chain), (qs, direct)):
            opt.zero_grad()
            sum((torch.sin(x * (k + 1)) * x).sum() + (x**2).sum() for x in xs).backward()
            opt.step()
    for x, y in zip(ps, qs):
        assert torch.equal(x, y)


@pytest.mark.parametrize("kw, name", [
    (dict(storage_dtype="float16"), "storage_dtype"),
    (dict(update_clipping=0.0), "update_clipping"),
    (dict(mars_gamma=-1.0), "mars_gamma"),
    (dict(caution=1), "caution"),
])
def test_soap_bad_flag_values(kw, name):
    p = torch.zeros(3, 3, requires_grad=True)
    with pytest.raises(ValueError, match=rf"SOAP: {name}"):
        SOAP([p], **kw)
