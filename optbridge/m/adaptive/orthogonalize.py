"""Orthogonalised updates: Newton–Schulz orthogonalisation, Muon and ⟂Grad (OrthoGrad)."""

from __future__ import annotations

import math

import torch

from ...core import checks
from ...core import foreach as fe
from ...core.module import Borrowed, Transform

#: Keller Jordan's quintic Newton–Schulz coefficients
NS_COEFFS = (3.4445, -4.7750, 2.0315)


def newton_schulz(G: torch.Tensor, steps: int = 5, dtype: torch.dtype | None = torch.bfloat16,
                  eps: float = 1e-7) -> torch.Tensor:
    """Approximate orthogonalisation :math:`UV^T` of ``G = USV^T`` (``(..., rows, cols)``,
    leading dimensions are a batch) by Keller Jordan's quintic Newton–Schulz iteration.

    .. math::
        X_0 = G / (\\lVert G \\rVert_F + \\epsilon),\\qquad
        A = X X^T,\\quad X \\leftarrow a X + (b A + c A^2) X

    with :math:`(a, b, c) = (3.4445, -4.7750, 2.0315)`, computed on the wide orientation
    (transposed when rows > cols) in ``dtype`` (None: ``G``'s dtype). The result is in ``dtype``
    with singular values roughly in [0.7, 1.2] rather than exactly 1, as in Muon.
    """
    X = G if dtype is None else G.to(dtype)
    batch_shape = X.shape[:-2]
    X = X.reshape(-1, *X.shape[-2:])
    tall = X.size(-2) > X.size(-1)
    if tall:
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + eps)
    a, b, c = NS_COEFFS
    for _ in range(steps):
        A = torch.bmm(X, X.mT)
        B = torch.baddbmm(A, A, A, beta=b, alpha=c)
        X = torch.baddbmm(X, B, X, beta=a)
    if tall:
        X = X.mT
    return X.reshape(*batch_shape, *X.shape[-2:])


def orthogonalize(tensors: list[torch.Tensor], steps: int = 5,
                  dtype: torch.dtype | None = torch.bfloat16, scale: bool = False,
                  adjust_lr: bool = False) -> list[torch.Tensor]:
    """Newton–Schulz orthogonalisation of each tensor (``ndim >= 2``; trailing dimensions are
    flattened into columns), returned as new contiguous tensors of the input shapes and dtypes.

    Matrices are taken in their wide orientation (tall ones transposed), and those that then share
    shape, dtype and device go through one batched Newton–Schulz. ``scale`` multiplies by
    :math:`\\sqrt{\\max(1, rows/cols)}` (Keller Jordan's Muon), ``adjust_lr`` by
    :math:`0.2\\sqrt{\\max(rows, cols)}` (Moonlight, "Muon is Scalable for LLM Training").
    """
    out: list = [None] * len(tensors)
    groups: dict = {}
    for i, t in enumerate(tensors):
        mat = t.reshape(t.shape[0], -1)
        tall = mat.size(0) > mat.size(1)
        wide = mat.mT if tall else mat
        groups.setdefault((tuple(wide.shape), t.dtype, t.device), []).append((i, wide, tall))
    for (shape, in_dtype, device), members in groups.items():
        work = in_dtype if dtype is None else dtype
        if len(members) == 1:
            batch = members[0][1].unsqueeze(0).to(work)
        else:
            batch = torch.empty((len(members), *shape), dtype=work, device=device)
            torch._foreach_copy_(list(batch.unbind(0)), [wide for _, wide, _ in members])
        X = newton_schulz(batch, steps, None)
        rows, cols = shape
        factors = [1.0] * len(members)
        for k, (_, _, tall) in enumerate(members):
            if scale and tall:
                factors[k] *= (cols / rows) ** 0.5
            if adjust_lr:
                factors[k] *= 0.2 * math.sqrt(cols)
        if len(set(factors)) > 1:
            X.mul_(torch.tensor(factors, dtype=X.dtype, device=device).view(-1, 1, 1))
        elif factors[0] != 1.0:
            X.mul_(factors[0])
        slices = X.unbind(0)
        copy_src, copy_dst = [], []
        for (i, _, tall), x in zip(members, slices):
            if tall or x.dtype != in_dtype:
                dst = torch.empty(x.shape[::-1] if tall else x.shape, dtype=in_dtype, device=device)
                copy_src.append(x.mT if tall else x)
                copy_dst.append(dst)
                x = dst
            out[i] = x.view(tensors[i].shape)
        if copy_dst:
            torch._foreach_copy_(copy_dst, copy_src)
    return out


def _float_dtype(v):
    """None or a floating-point torch.dtype."""
    if v is None or (isinstance(v, torch.dtype) and v.is_floating_point):
        return None
    return "None or a floating-point torch.dtype"


def _matrices(tensors: list[torch.Tensor]) -> list[int]:
    """Positions of the tensors that can be orthogonalised (non-empty, ``ndim >= 2``)."""
    return [i for i, t in enumerate(tensors) if t.ndim >= 2 and t.numel() > 0]


def _passthrough(tensors: list[torch.Tensor], owned: bool) -> list[torch.Tensor]:
    """Tensors handed on unchanged inside a new (owned) update: copied unless already owned."""
    if owned or not tensors:
        return list(tensors)
    return torch._foreach_mul(tensors, 1.0)


def _ns_rules() -> dict:
    return dict(ns_steps=checks.positive_int, dtype=_float_dtype, scale=checks.boolean,
                adjust_lr=checks.boolean, orthogonalize=checks.boolean)


class Orthogonalize(Transform):
    """Replaces each matrix update by its (approximate) orthogonalisation :math:`UV^T`
    (:func:`newton_schulz`; :math:`U S V^T` is the update's SVD).

    Tensors with ``ndim >= 3`` are seen as ``(shape[0], prod(shape[1:]))`` matrices (e.g. conv
    filters as ``out x (in*kh*kw)``). Tensors with ``ndim < 2``, and the parameters of a param
    group that sets ``orthogonalize=False`` (embeddings and classifier heads, per the Muon
    write-up), pass through unchanged. Same-shape matrices are orthogonalised in one batch.

    Args:
        ns_steps: Newton–Schulz iterations (default 5).
        dtype: dtype of the iteration (default ``torch.bfloat16`` as Muon; None: the update's).
        scale: multiply by :math:`\\sqrt{\\max(1, rows/cols)}` as Keller Jordan's Muon
            (default False).
        adjust_lr: multiply by :math:`0.2\\sqrt{\\max(rows, cols)}` to match Adam's update RMS,
            as Moonlight (default False).
        orthogonalize: whether to orthogonalise at all (for param-group overrides; default True).
    """

    inplace = False

    def __init__(self, ns_steps: int = 5, dtype: torch.dtype | None = torch.bfloat16,
                 scale: bool = False, adjust_lr: bool = False, orthogonalize: bool = True):
        super().__init__(
            dict(ns_steps=ns_steps, dtype=dtype, scale=scale, adjust_lr=adjust_lr,
                 orthogonalize=orthogonalize),
            rules=_ns_rules(),
        )

    def transform(self, update, part):
        s = part.settings
        mats = _matrices(update) if s["orthogonalize"] else []
        if len(mats) == len(update):
            return orthogonalize(update, s["ns_steps"], s["dtype"], s["scale"], s["adjust_lr"])
        if not mats:
            return update if part.ctx.update_is_owned else Borrowed(update)
        is_mat = set(mats)
        rest = [i for i in range(len(update)) if i not in is_mat]
        out: list = [None] * len(update)
        for i, t in zip(rest, _passthrough([update[i] for i in rest], part.ctx.update_is_owned)):
            out[i] = t
        if mats:
            ortho = orthogonalize([update[i] for i in mats], s["ns_steps"], s["dtype"], s["scale"],
                                  s["adjust_lr"])
            for i, t in zip(mats, ortho):
                out[i] = t
        return out


class Muon(Transform):
    """Muon (MomentUm Orthogonalized by Newton–Schulz, Keller Jordan, 2024,
    https://kellerjordan.github.io/posts/muon/), without the learning rate.

    .. math::
        b_t = \\beta b_{t-1} + (1-\\beta) g_t,\\qquad
        \\tilde g_t = (1-\\beta) g_t + \\beta b_t \\ (\\text{nesterov; else } b_t)

        u_t = \\sqrt{\\max(1, rows/cols)}\\ \\operatorname{NS}_5(\\tilde g_t)

    As ``muon_update`` of KellerJordan/Muon with :func:`newton_schulz` in bfloat16; its weight
    decay ``p *= 1 - lr*wd`` is ``[Muon(), WeightDecay(wd), LR(lr)]``. Tensors with
    ``ndim >= 3`` are orthogonalised as ``(shape[0], prod(shape[1:]))`` matrices and scaled by
    that matrix's rows/cols (the official code flattens 4-D conv filters only and scales by the
    last two dimensions of the original shape).

    Muon is for hidden matrices. Tensors it does not orthogonalise (``ndim < 2``, or a param group
    with ``orthogonalize=False``) get ``fallback``:

    - ``"identity"`` (default): their update passes through unchanged (no momentum is kept for
      them), so another method can handle them, e.g. via a split of the chain by parameter.
    - ``"momentum"``: they get the same (Nesterov) momentum, not orthogonalised.

    Args:
        beta: momentum (default 0.95).
        nesterov: Nesterov momentum (default True).
        ns_steps: Newton–Schulz iterations (default 5).
        dtype: dtype of the iteration (default ``torch.bfloat16``; None: the update's).
        scale: the :math:`\\sqrt{\\max(1, rows/cols)}` factor (default True).
        adjust_lr: Moonlight's :math:`0.2\\sqrt{\\max(rows, cols)}` factor (default False).
        orthogonalize: whether to orthogonalise (for param-group overrides; default True).
        fallback: ``"identity"`` or ``"momentum"``, see above.
    """

    inplace = False

    def __init__(self, beta: float = 0.95, nesterov: bool = True, ns_steps: int = 5,
                 dtype: torch.dtype | None = torch.bfloat16, scale: bool = True,
                 adjust_lr: bool = False, orthogonalize: bool = True, fallback: str = "identity"):
        super().__init__(
            dict(beta=beta, nesterov=nesterov, ns_steps=ns_steps, dtype=dtype, scale=scale,
                 adjust_lr=adjust_lr, orthogonalize=orthogonalize, fallback=fallback),
            rules=dict(beta=checks.unit_interval, nesterov=checks.boolean,
                       fallback=checks.one_of("identity", "momentum"), **_ns_rules()),
        )

    def transform(self, update, part):
        s = part.settings
        beta, n = s["beta"], len(update)
        mats = _matrices(update) if s["orthogonalize"] else []
        is_mat = set(mats)
        rest = [i for i in range(n) if i not in is_mat]
        moving = list(range(n)) if s["fallback"] == "momentum" else mats
        if not moving:
            return update if part.ctx.update_is_owned else Borrowed(update)
        out: list = [None] * n
        if s["fallback"] == "identity":
            kept = _passthrough([update[i] for i in rest], part.ctx.update_is_owned)
            for i, t in zip(rest, kept):
                out[i] = t
        g = [update[i] for i in moving]
        buf = []
        for i in moving:
            b = part.states[i].get("momentum_buffer")
            if b is None:
                b = part.states[i]["momentum_buffer"] = torch.zeros_like(part.params[i])
            buf.append(b)
        fe.ema_(buf, g, beta)
        if s["nesterov"]:
            directions = torch._foreach_lerp(g, buf, beta)
        else:
            directions = buf
        pos = {i: k for k, i in enumerate(moving)}
        if mats:
            ortho = orthogonalize([directions[pos[i]] for i in mats], s["ns_steps"], s["dtype"],
                                  s["scale"], s["adjust_lr"])
            for i, t in zip(mats, ortho):
                out[i] = t
        if s["fallback"] == "momentum" and rest:
            plain = [directions[pos[i]] for i in rest]
            for i, t in zip(rest, plain if s["nesterov"] else torch._foreach_mul(plain, 1.0)):
                out[i] = t
        return out


class OrthoGrad(Transform):
    """⟂Grad: removes, per tensor, the component of the update parallel to the weights and
    rescales to the update's norm (Prieto et al., 2025, "Grokking at the edge of numerical
    stability", https://arxiv.org/abs/2501.04697).

    .. math::
        g_\\perp = g - \\frac{\\langle w, g\\rangle}{\\langle w, w\\rangle + \\epsilon} w,\\qquad
        u = g_\\perp \\frac{\\lVert g \\rVert}{\\lVert g_\\perp \\rVert + \\epsilon}

    As the official code (per parameter tensor, :math:`\\epsilon = 10^{-30}`). Put it first and
    the base method after it: ``[OrthoGrad(), Adam(), WeightDecay(wd), LR(lr)]`` is the paper's
    ⟂AdamW.

    Args:
        eps: added to both denominators (default 1e-30).
        renormalize: rescale to the original norm (default True).
    """

    inplace = False

    def __init__(self, eps: float = 1e-30, renormalize: bool = True):
        super().__init__(dict(eps=eps, renormalize=renormalize),
                         rules=dict(eps=checks.positive, renormalize=checks.boolean))

    def transform(self, update, part):
        eps = part.settings["eps"]
        w, g = part.params, update
        dots = torch.stack([torch.dot(wi.reshape(-1), gi.reshape(-1)) for wi, gi in zip(w, g)])
        w_sq = torch.stack(torch._foreach_norm(w)).square_()
        neg_proj = dots.div_(w_sq.add_(eps)).neg_()
        out = torch._foreach_mul(w, list(neg_proj.unbind(0)))
        torch._foreach_add_(out, g)
        if part.settings["renormalize"]:
            g_norm = torch.stack(torch._foreach_norm(g))
            o_norm = torch.stack(torch._foreach_norm(out))
            torch._foreach_mul_(out, list(g_norm.div_(o_norm.add_(eps)).unbind(0)))
        return out
