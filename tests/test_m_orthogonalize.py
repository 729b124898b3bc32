"""Orthogonalize, Muon (against Keller Jordan's muon_update) and OrthoGrad (against Prieto et
al.'s per-tensor projection)."""

import pytest
import torch

import optbridge as ob
from optbridge import m
from optbridge.m.adaptive.orthogonalize import (
    Muon,
    OrthoGrad,
    Orthogonalize,
    newton_schulz,
    orthogonalize,
)
from trajectory import assert_same_trajectory, loss_fn, make_params


def ref_zeropower(G, steps, dtype):
    """KellerJordan/Muon zeropower_via_newtonschulz5 for one matrix, in ``dtype``."""
    a, b, c = (3.4445, -4.7750, 2.0315)
    X = G.to(dtype)
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


class RefMuon(torch.optim.Optimizer):
    """KellerJordan/Muon muon_update + SingleDeviceMuon step (weight_decay=0); tensors with
    ndim >= 3 flattened to (shape[0], -1); ndim < 2 tensors get plain SGD (``fallback``
    "identity") or the Nesterov momentum ("momentum")."""

    def __init__(self, params, lr, beta=0.95, nesterov=True, ns_steps=5, dtype=torch.float32,
                 fallback="identity"):
        super().__init__(params, dict(lr=lr))
        self.h = dict(beta=beta, nesterov=nesterov, ns_steps=ns_steps, dtype=dtype,
                      fallback=fallback)

    @torch.no_grad()
    def step(self):
        h = self.h
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if p.ndim < 2 and h["fallback"] == "identity":
                    p.add_(g, alpha=-group["lr"])
                    continue
                state = self.state[p]
                if not state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.lerp_(g, 1 - h["beta"])
                u = g.lerp(buf, h["beta"]) if h["nesterov"] else buf
                if p.ndim >= 2:
                    u = u.reshape(len(u), -1)
                    u = ref_zeropower(u, h["ns_steps"], h["dtype"])
                    u *= max(1, u.size(-2) / u.size(-1)) ** 0.5
                p.add_(u.reshape(p.shape).to(p.dtype), alpha=-group["lr"])


def _matrix_params(seed=0, dtype=torch.float32):
    """Several same-shape matrices (batched together), a transposed one, a 4-D one, a vector."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(6, 5), (6, 5), (5, 6), (4, 3, 2, 2), (6, 5), (7,)]
    return [torch.randn(s, generator=g, dtype=dtype).requires_grad_() for s in shapes]


def _matrix_loss(ps):
    return sum(((p - 0.3) ** 2).sum() * (k + 1) + torch.sin(p).sum() for k, p in enumerate(ps))


def _run(make_opt, params, steps=50):
    opt = make_opt(params)
    out = []
    for _ in range(steps):
        opt.zero_grad()
        _matrix_loss(params).backward()
        opt.step()
        out.append([p.detach().clone() for p in params])
    return out


# ----------------------------------------------------------------------------- Newton–Schulz
def test_newton_schulz_matches_reference_and_orthogonalizes():
    g = torch.Generator().manual_seed(0)
    for shape in [(8, 5), (5, 8), (6, 6)]:
        G = torch.randn(shape, generator=g, dtype=torch.float64)
        X = newton_schulz(G, 5, torch.float64)
        torch.testing.assert_close(X, ref_zeropower(G, 5, torch.float64), rtol=1e-12, atol=1e-12)
        sv = torch.linalg.svdvals(X)
        assert sv.min() > 0.6 and sv.max() < 1.25
        U, _, Vh = torch.linalg.svd(G, full_matrices=False)
        assert torch.linalg.matrix_norm(X - U @ Vh, 2) < 0.4


def test_orthogonalize_batches_like_one_by_one():
    g = torch.Generator().manual_seed(1)
    ts = [torch.randn(s, generator=g, dtype=torch.float64)
          for s in [(6, 5), (6, 5), (5, 6), (3, 4, 2), (6, 5), (3, 4, 2)]]
    batched = orthogonalize(ts, 5, torch.float64, scale=True, adjust_lr=True)
    for t, b in zip(ts, batched):
        mat = t.reshape(t.shape[0], -1)
        rows, cols = mat.shape
        factor = max(1, rows / cols) ** 0.5 * 0.2 * max(rows, cols) ** 0.5
        expected = (ref_zeropower(mat, 5, torch.float64) * factor).reshape(t.shape)
        assert b.shape == t.shape and b.dtype == t.dtype and b.is_contiguous()
        torch.testing.assert_close(b, expected, rtol=1e-12, atol=1e-12)


def test_orthogonalize_module_passes_vectors_and_opted_out_groups():
    ps = make_params(0)
    loss_fn(ps).backward()
    grads = [p.grad.clone() for p in ps[:4]]
    opt = ob.Modular([dict(params=ps[:2]), dict(params=ps[2:], orthogonalize=False)],
                     Orthogonalize(dtype=torch.float32), m.LR(1.0))
    start = [p.detach().clone() for p in ps]
    opt.step()
    moved = [s - p.detach() for s, p in zip(start, ps)]
    torch.testing.assert_close(moved[0], ref_zeropower(grads[0], 5, torch.float32),
                               rtol=1e-5, atol=1e-6)
    for k in (1, 2, 3):  # a vector, then the opted-out group
        torch.testing.assert_close(moved[k], grads[k], rtol=1e-6, atol=1e-7)
    assert torch.equal(ps[4].detach(), start[4])
    for p, gr in zip(ps[:4], grads):
        assert torch.equal(p.grad, gr), "the gradients must not be modified"


# -------------------------------------------------------------------------------------- Muon
@pytest.mark.parametrize("kw, with_vectors", [
    (dict(), True),
    (dict(beta=0.8, nesterov=False), False),
    (dict(fallback="momentum"), True),
    (dict(beta=0.5, ns_steps=3, fallback="momentum", nesterov=False), False),
])
def test_muon_float32_matches_keller_jordan(kw, with_vectors):
    if with_vectors:  # the shared problem: vectors, a 3-D tensor, a tensor without gradient
        assert_same_trajectory(
            lambda ps: RefMuon(ps, lr=0.02, dtype=torch.float32, **kw),
            lambda ps: ob.Modular(ps, Muon(dtype=torch.float32, **kw), m.LR(0.02)),
            steps=50, rtol=1e-5, atol=1e-5,
        )
    ref = _run(lambda ps: RefMuon(ps, lr=0.02, dtype=torch.float32, **kw), _matrix_params())
    ours = _run(lambda ps: ob.Modular(ps, Muon(dtype=torch.float32, **kw), m.LR(0.02)),
                _matrix_params())
    for i, (a, b) in enumerate(zip(ref, ours)):
        for x, y in zip(a, b):
            torch.testing.assert_close(y, x, rtol=1e-5, atol=1e-5, msg=lambda s: f"step {i}: {s}")


def test_muon_bfloat16_default_is_close_to_float32():
    ps32, ps16 = _matrix_params(), _matrix_params()
    opt32 = ob.Modular(ps32, Muon(dtype=torch.float32), m.LR(0.02))
    opt16 = ob.Modular(ps16, Muon(), m.LR(0.02))
    assert opt16.chain.modules[0].defaults["dtype"] is torch.bfloat16
    for k in range(50):
        for ps, opt in ((ps32, opt32), (ps16, opt16)):
            opt.zero_grad()
            _matrix_loss(ps).backward()
            before = [p.detach().clone() for p in ps]
            opt.step()
            if ps is ps32:
                step32 = [b - p.detach() for b, p in zip(before, ps)]
            else:
                step16 = [b - p.detach() for b, p in zip(before, ps)]
        for a, b, p in zip(step32, step16, ps16):
            assert b.dtype == p.dtype == torch.float32 and torch.isfinite(b).all()
            if k == 0:  # same gradients: only the bf16 iteration differs
                assert (a - b).norm() <= 0.03 * a.norm()
    for a, b in zip(ps32, ps16):
        torch.testing.assert_close(b, a, rtol=0.05, atol=0.05)


def test_muon_momentum_buffers_only_where_used():
    ps = _matrix_params()
    opt = ob.Modular(ps, Muon(), m.LR(0.02))
    _matrix_loss(ps).backward()
    opt.step()
    assert "momentum_buffer" in opt.state[ps[0]]["0"]
    assert "momentum_buffer" not in opt.state[ps[-1]].get("0", {})


# --------------------------------------------------------------------------------- OrthoGrad
class RefOrthoGradSGD(torch.optim.Optimizer):
    """The official per-tensor ⟂Grad projection (eps 1e-30), then SGD."""

    def __init__(self, params, lr, renormalize=True):
        super().__init__(params, dict(lr=lr))
        self.renormalize = renormalize

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                w, g = p.view(-1), p.grad.view(-1)
                proj = torch.dot(w, g) / (torch.dot(w, w) + 1e-30)
                g_orth = g - proj * w
                if self.renormalize:
                    g_orth = g_orth * (g.norm(2) / (g_orth.norm(2) + 1e-30))
                p.add_(g_orth.view_as(p), alpha=-group["lr"])


@pytest.mark.parametrize("renormalize", [True, False])
def test_orthograd_matches_reference(renormalize):
    assert_same_trajectory(
        lambda ps: RefOrthoGradSGD(ps, lr=0.05, renormalize=renormalize),
        lambda ps: ob.Modular(ps, OrthoGrad(renormalize=renormalize), m.LR(0.05)),
        dtype=torch.float64, rtol=1e-9, atol=1e-11,
    )


def test_orthograd_is_orthogonal_to_weights_and_keeps_norm():
    ps = make_params(3, torch.float64)
    loss_fn(ps).backward()
    grads = [p.grad.clone() for p in ps[:4]]
    weights = [p.detach().clone() for p in ps[:4]]
    opt = ob.Modular(ps, OrthoGrad(), m.LR(1.0))
    opt.step()
    for w, g, p in zip(weights, grads, ps):
        u = w - p.detach()
        assert abs(torch.dot(u.view(-1), w.view(-1))) <= 1e-10 * g.norm() * w.norm()
        if w.numel() > 1:
            assert not torch.allclose(u, g)
            torch.testing.assert_close(u.norm(), g.norm(), rtol=1e-10, atol=0)
        else:  # a single weight: the whole gradient is parallel to it
            assert u.abs().max() < 1e-12 * g.norm()


# ------------------------------------------------------------------------------ bad inputs
@pytest.mark.parametrize("cls, kw, name", [
    (Orthogonalize, dict(ns_steps=0), "ns_steps"),
    (Orthogonalize, dict(dtype=torch.int32), "dtype"),
    (Orthogonalize, dict(dtype="bf16"), "dtype"),
    (Orthogonalize, dict(scale=1), "scale"),
    (Muon, dict(beta=1.0), "beta"),
    (Muon, dict(fallback="adam"), "fallback"),
    (Muon, dict(nesterov=None), "nesterov"),
    (Muon, dict(ns_steps=2.0), "ns_steps"),
    (OrthoGrad, dict(eps=0.0), "eps"),
    (OrthoGrad, dict(renormalize="no"), "renormalize"),
])
def test_bad_hyperparameters(cls, kw, name):
    with pytest.raises(ValueError, match=rf"^{cls.__name__}: invalid {name}="):
        cls(**kw)


def test_bad_group_override():
    ps = make_params(0)
    with pytest.raises(ValueError, match=r"^Muon: invalid orthogonalize="):
        ob.Modular([dict(params=ps[:2], orthogonalize="no"), dict(params=ps[2:])], Muon(),
                   m.LR(0.1))


def test_vectors_only_pass_through_without_state():
    for module in (Orthogonalize(), Muon()):
        ps = [torch.randn(5, requires_grad=True), torch.randn(3, requires_grad=True)]
        opt = ob.Modular(ps, module, m.LR(0.5))
        before = [p.detach().clone() for p in ps]
        ((ps[0] ** 2).sum() + (ps[1] ** 3).sum()).backward()
        grads = [p.grad.clone() for p in ps]
        opt.step()
        for b, p, g in zip(before, ps, grads):
            torch.testing.assert_close(p.detach(), b - 0.5 * g)
            assert torch.equal(p.grad, g)
        assert all("momentum_buffer" not in s.get("0", {}) for s in opt.state.values())
