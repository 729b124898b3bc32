"""optbridge.native.SOAP against the official SOAP step (nikhilvyas/SOAP ``soap.py``, commit
f42d296) written out here one tensor at a time, plus the PaLM and frequency-schedule variants."""

from itertools import chain

import pytest
import torch

from optbridge.native import SOAP, linear_frequency_schedule
from trajectory import assert_snapshots_close, merge_dims_reference, train_with_reload


def merge(shape, max_dim):
    return list(merge_dims_reference(shape, max_dim))


class RefSOAP(torch.optim.Optimizer):
    """The official step, including weight decay after the update, the round trip of exp_avg
    through the basis at every step, and ``palm`` / callable frequency variants."""

    def __init__(self, params, lr=3e-3, betas=(0.95, 0.95), shampoo_beta=-1, eps=1e-8,
                 weight_decay=0.01, precondition_frequency=10, max_precond_dim=10000,
                 merge_dims=False, precondition_1d=False, normalize_grads=False,
                 correct_bias=True, palm=False, beta2_scale=0.8):
        super().__init__(params, dict(lr=lr, betas=betas, shampoo_beta=shampoo_beta, eps=eps,
                                      weight_decay=weight_decay, freq=precondition_frequency,
                                      max_dim=max_precond_dim, merge=merge_dims,
                                      p1d=precondition_1d, normalize=normalize_grads,
                                      correct_bias=correct_bias, palm=palm,
                                      beta2_scale=beta2_scale))

    @staticmethod
    def shape_of(g, group):
        if group["merge"] and g.dim() > 1:
            return merge(g.shape, group["max_dim"])
        return list(g.shape)

    def project(self, g, st, group, back=False):
        shape = g.shape
        g = g.reshape(self.shape_of(g, group))
        for q in st["Q"]:
            if len(q) > 0:
                g = torch.tensordot(g, q, dims=[[0], [1 if back else 0]])
            else:
                g = g.permute(list(range(1, g.dim())) + [0])
        return g.reshape(shape)

    def update_preconditioner(self, g, st, group):
        if st["Q"] is not None:
            st["exp_avg"] = self.project(st["exp_avg"], st, group, back=True)
        gm = g.reshape(self.shape_of(g, group))
        if g.dim() == 1:
            if group["p1d"] and g.shape[0] <= group["max_dim"]:
                st["GG"][0].lerp_(g.unsqueeze(1) @ g.unsqueeze(0), 1 - st["sb"])
        else:
            for idx, sh in enumerate(gm.shape):
                if sh <= group["max_dim"]:
                    rest = [*chain(range(idx), range(idx + 1, gm.dim()))]
                    st["GG"][idx].lerp_(torch.tensordot(gm, gm, dims=[rest] * 2), 1 - st["sb"])
        if st["Q"] is None:
            st["Q"] = [torch.flip(torch.linalg.eigh(m + 1e-30 * torch.eye(len(m), dtype=m.dtype))
                                  [1], [1]) if len(m) else [] for m in st["GG"]]
        freq = group["freq"](st["step"]) if callable(group["freq"]) else group["freq"]
        if st["step"] > 0 and st["step"] % freq == 0:
            v = st["exp_avg_sq"].reshape(self.shape_of(g, group))
            new = []
            for ind, (m, o) in enumerate(zip(st["GG"], st["Q"])):
                if len(m) == 0:
                    new.append([])
                    continue
                sort_idx = torch.argsort(torch.diag(o.T @ m @ o), descending=True)
                v = v.index_select(ind, sort_idx)
                new.append(torch.linalg.qr(m @ o[:, sort_idx])[0])
            st["exp_avg_sq"] = v.reshape(g.shape)
            st["Q"] = new
        if st["step"] > 0:
            st["exp_avg"] = self.project(st["exp_avg"], st, group)

    def first_step(self, g, st, group):
        """The reference's first step: create the state, fill GG, no parameter update."""
        st["step"] = 0
        st["exp_avg"] = torch.zeros_like(g)
        st["exp_avg_sq"] = torch.zeros_like(g)
        b2 = group["betas"][1]
        st["sb"] = group["shampoo_beta"] if group["shampoo_beta"] >= 0 else b2
        gm = g.reshape(self.shape_of(g, group))
        if g.dim() == 1:
            ok = group["p1d"] and g.shape[0] <= group["max_dim"]
            st["GG"] = [torch.zeros(len(g), len(g), dtype=g.dtype) if ok else []]
        else:
            st["GG"] = [torch.zeros(s, s, dtype=g.dtype) if s <= group["max_dim"]
                        else [] for s in gm.shape]
        st["Q"] = None
        self.update_preconditioner(g, st, group)

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g, st = p.grad, self.state[p]
                if "step" not in st:
                    self.first_step(g, st, group)
                    continue
                gp = self.project(g, st, group)
                st["step"] += 1
                t = st["step"]
                beta2 = 1 - t ** -group["beta2_scale"] if group["palm"] else b2
                st["exp_avg"].mul_(b1).add_(gp, alpha=1 - b1)
                st["exp_avg_sq"].mul_(beta2).add_(gp.square(), alpha=1 - beta2)
                denom = st["exp_avg_sq"].sqrt().add_(group["eps"])
                step_size = group["lr"]
                if group["correct_bias"]:
                    bc2 = 1.0 if group["palm"] else 1.0 - b2**t
                    step_size = step_size * bc2**0.5 / (1.0 - b1**t)
                u = self.project(st["exp_avg"] / denom, st, group, back=True)
                if group["normalize"]:
                    u = u / (1e-30 + torch.mean(u**2) ** 0.5)
                p.add_(u, alpha=-step_size)
                if group["weight_decay"] > 0.0:
                    p.add_(p, alpha=-group["lr"] * group["weight_decay"])
                self.update_preconditioner(g, st, group)


SHAPES = [(6, 5), (6, 5), (5, 6), (3, 4, 2), (7,), (), (2, 3, 2, 2), (6, 5)]


def run(make, steps, dtype):
    gen = torch.Generator().manual_seed(0)
    ps = [torch.randn(s, generator=gen, dtype=dtype).requires_grad_() for s in SHAPES]
    unused = torch.randn(3, 3, generator=gen, dtype=dtype).requires_grad_()
    start = unused.detach().clone()
    opt = make(ps + [unused])
    noise = torch.Generator().manual_seed(1)
    out = []
    for k in range(steps):
        opt.zero_grad()
        z = [torch.randn(p.shape, generator=noise, dtype=dtype) for p in ps]
        loss = sum(((p - 0.2) ** 2).sum() * (i + 1) + torch.sin(p).sum() + (zi * p).sum()
                   for i, (p, zi) in enumerate(zip(ps, z)))
        loss.backward()
        opt.step()
        out.append([p.detach().clone() for p in ps])
    assert torch.equal(unused.detach(), start)
    return out


def assert_same(make_ref, make_ours, steps=60, dtype=torch.float64, rtol=1e-12, atol=1e-14):
    a = run(make_ref, steps, dtype)
    b = run(make_ours, steps, dtype)
    assert_snapshots_close(a, b, rtol, atol)
    assert not torch.equal(a[-1][0], a[1][0])


CASES = [
    dict(),
    dict(lr=0.01, betas=(0.9, 0.99), shampoo_beta=0.8, precondition_frequency=3,
         precondition_1d=True, eps=1e-6, weight_decay=0.1),
    dict(max_precond_dim=5, merge_dims=True, normalize_grads=True, precondition_frequency=4),
    dict(max_precond_dim=8, merge_dims=True, precondition_1d=True, precondition_frequency=2,
         correct_bias=False),
]


@pytest.mark.parametrize("kw", CASES)
def test_soap_matches_official_float64(kw):
    assert_same(lambda ps: RefSOAP(ps, **kw), lambda ps: SOAP(ps, **kw))


def test_soap_matches_official_float32():
    kw = dict(lr=0.01, precondition_frequency=3)
    assert_same(lambda ps: RefSOAP(ps, **kw), lambda ps: SOAP(ps, **kw), dtype=torch.float32,
                rtol=1e-6, atol=1e-7)


def test_soap_palm_variant():
    kw = dict(lr=0.01, precondition_frequency=2, palm=True, beta2_scale=0.7)
    assert_same(lambda ps: RefSOAP(ps, **kw), lambda ps: SOAP(ps, **kw), steps=40)


def test_soap_frequency_schedule_variant():
    sched = linear_frequency_schedule(1, 6, 30)
    assert [sched(t) for t in (1, 15, 30, 100)] == [1, 4, 6, 6]
    kw = dict(lr=0.01, precondition_frequency=sched)
    assert_same(lambda ps: RefSOAP(ps, **kw), lambda ps: SOAP(ps, **kw), steps=40)


def test_soap_first_step_only_initialises_and_batches_factors():
    ps = [torch.randn(6, 5, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    start = [p.detach().clone() for p in ps]
    opt = SOAP(ps)
    sum((p**2).sum() for p in ps).backward()
    opt.step()
    assert all(torch.equal(p, s) for p, s in zip(ps, start))
    st = opt.state[ps[0]]
    G = ps[0].grad
    torch.testing.assert_close(st["GG0"], 0.05 * G @ G.T)
    torch.testing.assert_close(st["Q0"].T @ st["Q0"], torch.eye(6, dtype=torch.float64))
    # batched eigh == one eigh per matrix
    for p in ps:
        S = opt.state[p]["GG1"]
        single = torch.flip(torch.linalg.eigh(S + 1e-30 * torch.eye(5, dtype=S.dtype))[1], [1])
        torch.testing.assert_close(opt.state[p]["Q1"], single, rtol=1e-12, atol=1e-12)


def test_soap_state_dict_round_trip_continues_exactly():
    def go(split):
        gen = torch.Generator().manual_seed(3)
        ps = [torch.randn(s, generator=gen, dtype=torch.float64).requires_grad_()
              for s in [(6, 5), (4,), (3, 2, 2)]]
        return train_with_reload(
            lambda xs: SOAP(xs, lr=0.01, precondition_frequency=3, precondition_1d=True),
            ps, 14, split)[0]

    for a, b in zip(go(None), go(6)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kw, name", [
    (dict(betas=(1.0, 0.9)), "betas"),
    (dict(precondition_frequency=0), "precondition_frequency"),
    (dict(max_precond_dim=0), "max_precond_dim"),
    (dict(shampoo_beta=1.5), "shampoo_beta"),
    (dict(data_format="nhwc"), "data_format"),
    (dict(eps=0.0), "eps"),
])
def test_soap_bad_hyperparameters(kw, name):
    p = torch.zeros(3, 3, requires_grad=True)
    with pytest.raises(ValueError, match=rf"SOAP: {name}"):
        SOAP([p], **kw)


def test_soap_bad_group_key_and_foreign_state_dict():
    p = torch.zeros(3, 3, requires_grad=True)
    with pytest.raises(TypeError, match=r"SOAP: unexpected param group key 'momentum'"):
        SOAP([dict(params=[p], momentum=0.9)])
    with pytest.raises(ValueError, match=r"SOAP.load_state_dict"):
        SOAP([p]).load_state_dict(torch.optim.Adam([p]).state_dict())


def test_soap_lazy_basis_change_matches_the_m_module():
    import optbridge as ob
    from optbridge import m

    assert_same(lambda ps: ob.Modular(ps, m.SOAP(precond_freq=3), m.LR(0.01)),
                lambda ps: SOAP(ps, lr=0.01, precondition_frequency=3, weight_decay=0.0,
                                lazy_basis_change=True), rtol=1e-9, atol=1e-11)
