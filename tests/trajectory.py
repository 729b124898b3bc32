"""Shared harness for trajectory tests: run two optimizers on the same problem and compare."""

from __future__ import annotations

import io

import torch


def make_params(seed: int = 0, dtype=torch.float32, with_unused: bool = True):
    """Several tensors of different shapes; the last one never gets a gradient when
    ``with_unused`` (its grad stays None, so every optimizer must skip it)."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(6, 5), (5,), (3, 4, 2), (1,)]
    ps = [torch.randn(s, generator=g, dtype=dtype).requires_grad_() for s in shapes]
    if with_unused:
        ps.append(torch.randn(4, generator=g, dtype=dtype).requires_grad_())
    return ps


def loss_fn(ps):
    """A smooth non-quadratic loss over the first four tensors (the fifth is unused)."""
    a, b, c, d = ps[:4]
    return (
        (a**2).sum() * 0.5
        + torch.sin(a).sum()
        + ((b - 1.0) ** 2).sum()
        + (c.tanh() * c).sum()
        + (d**4).sum()
        + (a[:5, 0] * b).sum() * 0.3
    )


def trajectory(make_opt, steps: int = 60, seed: int = 0, dtype=torch.float32, with_unused=True,
               closure: bool = False):
    """Run ``steps`` optimizer steps; returns the list of parameter snapshots after each step."""
    ps = make_params(seed, dtype, with_unused)
    opt = make_opt(ps)
    out = []
    for _ in range(steps):
        if closure:
            def cl(backward=True):
                loss = loss_fn(ps)
                if backward:
                    opt.zero_grad()
                    loss.backward()
                return loss
            opt.step(cl)
        else:
            opt.zero_grad()
            loss_fn(ps).backward()
            opt.step()
        out.append([p.detach().clone() for p in ps])
    return out


def assert_same_trajectory(make_a, make_b, steps: int = 60, rtol=1e-6, atol=1e-7,
                           dtype=torch.float32, **kw):
    """Both optimizers give the same parameters at every step (within tolerance)."""
    ta = trajectory(make_a, steps, dtype=dtype, **kw)
    tb = trajectory(make_b, steps, dtype=dtype, **kw)
    moved = False
    assert_snapshots_close(ta, tb, rtol, atol)
    start = make_params(0, dtype, kw.get("with_unused", True))
    for x, s in zip(ta[-1][:4], start[:4]):
        moved = moved or not torch.equal(x, s.detach())
    assert moved, "the reference optimizer did not move the parameters; the test is vacuous"
    if kw.get("with_unused", True):
        assert torch.equal(ta[-1][4], start[4].detach()) and torch.equal(tb[-1][4], start[4].detach()), \
            "a parameter without grad was changed"


def assert_snapshots_close(a, b, rtol, atol):
    """Snapshot lists ``a`` (reference) and ``b`` agree at every step and parameter."""
    assert len(a) == len(b)
    for i, (sa, sb) in enumerate(zip(a, b)):
        for j, (x, y) in enumerate(zip(sa, sb)):
            torch.testing.assert_close(y, x, rtol=rtol, atol=atol,
                                       msg=lambda m: f"step {i}, param {j}: {m}")


def merge_dims_reference(shape, max_dim):
    """The official SOAP ``merge_dims`` rule (nikhilvyas/SOAP), written out independently:
    adjacent dimensions are merged while their product stays <= ``max_dim``."""
    out, cur = [], 1
    for n in shape:
        if cur * n > max_dim:
            out.append(cur if cur > 1 else n)
            cur = n if cur > 1 else 1
        else:
            cur *= n
    if cur > 1 or not out:
        out.append(cur)
    return tuple(out)


def sin_loss(params, k):
    """A loss that changes with the step ``k``: sum of sin(p (k + 1)) p."""
    return sum((torch.sin(p * (k + 1)) * p).sum() for p in params)


def train_with_reload(make_opt, params, steps, split=None, loss=sin_loss):
    """``steps`` optimizer steps on ``loss(params, k)``. At step ``split`` the optimizer's
    state goes through ``torch.save`` / ``torch.load(weights_only=True)`` into a fresh
    ``make_opt`` over clones of the parameters, as a resumed run would. Returns
    ``(params, optimizer)``."""
    opt = make_opt(params)
    for k in range(steps):
        if k == split:
            buf = io.BytesIO()
            torch.save(opt.state_dict(), buf)
            buf.seek(0)
            params = [p.detach().clone().requires_grad_() for p in params]
            opt = make_opt(params)
            opt.load_state_dict(torch.load(buf, weights_only=True))
        opt.zero_grad()
        loss(params, k).backward()
        opt.step()
    return params, opt
