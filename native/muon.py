"""Muon and MuonLaProp: momentum orthogonalised by batched Newton–Schulz, with an AdamW fallback.

Reference: Keller Jordan, "Muon: An optimizer for hidden layers in neural networks" (2024),
https://kellerjordan.github.io/posts/muon/; code github.com/KellerJordan/Muon ``muon.py`` at
commit 00ba60d (2025: ``muon_update``, ``SingleDeviceMuonWithAuxAdam``, ``adam_update``).
MuonLaProp: HeavyBall's ``MuonLaProp`` (LaProp, Ziyin et al. 2020, arXiv:2002.04839, feeding
Muon's orthogonalisation).
"""

from __future__ import annotations

import torch

from optbridge.core import checks

from .base import STORAGE_DTYPES, NativeOptimizer
from .matrix_groups import group_by, muon_matrices, wide
from .newton_schulz import NewtonSchulzStack

_MUON_KEYS = {"lr", "momentum", "nesterov", "ns_steps", "weight_decay"}
_ADAM_KEYS = {"lr", "betas", "eps", "weight_decay"}


def _float_dtype(v):
    return None if isinstance(v, torch.dtype) and v.is_floating_point else \
        "a floating-point torch.dtype"


class _OrthogonalizedBase(NativeOptimizer):
    """Shared machinery: param groups with ``use_muon``, the stacked Newton–Schulz, the AdamW
    fallback of the official ``MuonWithAuxAdam``."""

    flags = frozenset({"weight_decay", "maximize", "gradient_clipping", "caution",
                       "update_clipping", "warmup_steps", "mars", "mars_gamma"})
    #: keys a ``use_muon=True`` group may set (besides ``params`` and ``use_muon``)
    matrix_keys: set = set()

    def __init__(self, params, defaults: dict, flags: dict, adam: dict, matrix: dict):
        #: per kind of group (use_muon True/False), the defaults of its own keys
        self._kind_defaults = {True: matrix, False: adam}
        self._stacks: dict = {}
        super().__init__(params, dict(defaults, use_muon=True, **matrix), flags)

    # ------------------------------------------------------------------ param groups
    def add_param_group(self, param_group: dict) -> None:
        name = type(self).__name__
        index = len(self.param_groups)
        if not isinstance(param_group, dict):
            raise TypeError(f"{name}: a param group must be a dict")
        use_muon = param_group.get("use_muon", True)
        if not isinstance(use_muon, bool):
            raise ValueError(f"{name}: use_muon (param group {index}) must be True or False, "
                             f"got {use_muon!r}")
        allowed = (self.matrix_keys if use_muon else _ADAM_KEYS) | set(self._shared_keys())
        for k in param_group:
            if k in ("params", "use_muon") or k in allowed:
                continue
            other = "use_muon=False (AdamW)" if use_muon else "use_muon=True"
            hint = (f"; {k!r} belongs to {other} groups"
                    if k in (_ADAM_KEYS if use_muon else self.matrix_keys) else "")
            raise ValueError(f"{name}: unexpected key {k!r} in param group {index} "
                             f"(use_muon={use_muon}){hint}")
        group = dict(param_group)
        params = group["params"]
        params = [params] if isinstance(params, torch.Tensor) else list(params)
        group["params"] = params
        if use_muon:
            self._check_matrices(params, index)
        for k, v in self._kind_defaults[use_muon].items():
            group.setdefault(k, v)
        super().add_param_group(group)

    def _shared_keys(self):
        return [k for k in self.flags if k != "weight_decay"]

    def _check_matrices(self, params, index: int) -> None:
        """Default: every parameter of a Muon group must be a matrix (ndim >= 2)."""
        for j, p in enumerate(params):
            if p.ndim < 2:
                raise ValueError(
                    f"{type(self).__name__}: parameter {j} of param group {index} has shape "
                    f"{tuple(p.shape)}; Muon orthogonalises matrices (ndim >= 2) only. Put "
                    "embeddings, heads and 1-D parameters in a param group with use_muon=False "
                    "(AdamW fallback).")

    # ------------------------------------------------------------------ the step
    @torch.no_grad()
    def step(self, closure=None):
        loss, live, factor = self._per_parameter_prologue(closure)
        if live is None:
            return loss
        matrix_work = []
        for group, params in live:
            grads = [self.prepared_grad(p, p.grad, self.state[p], group,
                                        None if factor is None else factor[p.device])
                     for p in params]
            if group["use_muon"]:
                matrix_work.append((group, params, grads, self.directions(group, params, grads)))
            else:
                self._adam(group, params, grads)
        if matrix_work:
            self._orthogonalize_and_apply(matrix_work)
        return loss

    def slot_names(self, group) -> tuple:
        """The elementwise slots: ``slots`` (+ MARS) in Muon groups, only MARS's in the AdamW
        fallback groups (whose moments stay in the compute dtype)."""
        names = super().slot_names(group)
        if group.get("use_muon", True):
            return names
        return tuple(k for k in names if k not in self.slots)

    def directions(self, group, params, grads) -> list:  # pragma: no cover - abstract
        """The tensors to orthogonalise (updates the momentum state)."""
        raise NotImplementedError

    def scale_of(self, p) -> float:
        """Keller Jordan's shape factor :math:`\\sqrt{\\max(1, rows/cols)}` with rows, cols the
        last two dimensions of the parameter (as ``muon_update``, also for 4-D filters)."""
        return max(1, p.size(-2) / p.size(-1)) ** 0.5

    def _stack(self, key, count, rows, cols, dtype, device) -> NewtonSchulzStack:
        stack = self._stacks.get(key)
        if stack is None or stack.X.shape[0] != count:
            stack = self._stacks[key] = NewtonSchulzStack(count, rows, cols, dtype, device)
        return stack

    def _orthogonalize_and_apply(self, work) -> None:
        items = []  # (group, param, grad, matrices in wide orientation, tall)
        for group, params, grads, dirs in work:
            for p, g, d in zip(params, grads, dirs):
                mats, tall = wide(muon_matrices(d))
                items.append((group, p, g, mats, tall))
        by_shape = group_by(items, lambda it: (tuple(it[3].shape[-2:]), it[3].device,
                                               it[0]["ns_steps"]))
        for (shape, device, steps), members in by_shape.items():
            count = sum(it[3].shape[0] for it in members)
            stack = self._stack((shape, device, steps), count, *shape, self.ns_dtype, device)
            dst, src, pos = [], [], 0
            for it in members:
                n = it[3].shape[0]
                dst.extend(stack.slices[pos:pos + n])
                src.extend(it[3].unbind(0))
                pos += n
            torch._foreach_copy_(dst, src)
            X = stack.run(steps)
            pos = 0
            for group, p, g, mats, tall in members:
                n = mats.shape[0]
                out = X[pos:pos + n]
                pos += n
                s = self.scale_of(p)
                if s != 1:
                    out.mul_(s)
                u = out.mT if tall else out
                if p.ndim == 4:
                    u = u.reshape(p.shape)
                else:
                    u = u.view(p.shape) if u.is_contiguous() else u.reshape(p.shape)
                if group.get("caution") or group.get("update_clipping") is not None:
                    u = u.to(g.dtype)  # exact; the flags' arithmetic then runs in fp32
                self.apply_update(p, u, g, group, self.lr_at(group, self._t(group, p)))

    def _t(self, group, p) -> int:
        return self.state[p].get("step", 1)

    # ------------------------------------------------------------------ AdamW fallback
    def _adam(self, group, params, grads) -> None:
        """``adam_update`` of KellerJordan/Muon (``MuonWithAuxAdam``), per parameter:
        :math:`m \\leftarrow \\mathrm{lerp}(m, g, 1-\\beta_1)`,
        :math:`v \\leftarrow \\mathrm{lerp}(v, g^2, 1-\\beta_2)`,
        :math:`u = \\frac{m/(1-\\beta_1^t)}{\\sqrt{v/(1-\\beta_2^t)} + \\epsilon}`,
        :math:`p \\leftarrow p(1 - \\eta\\lambda) - \\eta u`. With ``palm`` (MuonLaProp)
        :math:`\\beta_2` becomes :math:`\\beta_{2,t} = 1 - t^{-s}` and :math:`v` is not
        bias-corrected; with ``mars`` :math:`g` is the MARS-corrected gradient (:math:`\\beta_1`
        of the correction: the group's first beta). The moments stay in the compute dtype
        whatever ``storage_dtype``."""
        b1, b2 = group["betas"]
        m, v, bc1, bc2, w2 = [], [], [], [], []
        for p in params:
            st = self.state[p]
            if "exp_avg" not in st:
                st["exp_avg"] = torch.zeros_like(p, dtype=self.compute_dtype(p))
                st["exp_avg_sq"] = torch.zeros_like(p, dtype=self.compute_dtype(p))
                st["step"] = 0
            st["step"] += 1
            m.append(st["exp_avg"])
            v.append(st["exp_avg_sq"])
            bc1.append(1 - b1 ** st["step"])
            b2t, c2 = self.beta2_at(group, b2, st["step"])  # (b2, 1 - b2^t) unless palm
            w2.append(1 - b2t)
            bc2.append(c2)
        torch._foreach_lerp_(m, grads, 1 - b1)
        squares = torch._foreach_mul(grads, grads)
        if group.get("palm"):
            for x, s2, w in zip(v, squares, w2):
                x.lerp_(s2, w)
        else:
            torch._foreach_lerp_(v, squares, 1 - b2)
        mc = torch._foreach_div(m, bc1)
        den = torch._foreach_div(v, bc2)
        torch._foreach_sqrt_(den)
        torch._foreach_add_(den, group["eps"])
        torch._foreach_div_(mc, den)
        for p, u, g in zip(params, mc, grads):
            self.apply_update(p, u, g, group, self.lr_at(group, self.state[p]["step"]))


class Muon(_OrthogonalizedBase):
    """Muon (Keller Jordan, 2024) with the AdamW fallback of the official ``MuonWithAuxAdam``.

    For each matrix parameter :math:`W` with gradient :math:`G` (``use_muon=True`` groups):

    .. math::
        B \\leftarrow \\beta B + (1-\\beta) G,\\qquad
        U = (1-\\beta) G + \\beta B\\ \\ (\\text{Nesterov; else } U = B)

        W \\leftarrow W (1 - \\eta\\lambda)
        - \\eta \\sqrt{\\max(1, \\tfrac{rows}{cols})}\\ \\mathrm{NS}_5(U)

    :math:`\\mathrm{NS}_5` is the quintic Newton–Schulz iteration in bfloat16
    (:mod:`.newton_schulz`; tall matrices transposed), 4-D convolution filters are orthogonalised
    as ``(out, in*kh*kw)`` matrices, other tensors as a batch of matrices over their leading
    dimensions, and the shape factor uses the parameter's last two dimensions — all exactly as
    ``muon_update`` of KellerJordan/Muon (commit 00ba60d). Same-shape matrices of the whole
    optimizer go through one batched iteration in persistent stacked buffers.

    Embeddings, classifier heads and 1-D parameters (gains, biases) go in param groups with
    ``use_muon=False``; they get the official ``adam_update`` (an AdamW, see ``_adam``) with
    the group keys ``lr`` (default ``adam_lr``), ``betas``, ``eps``, ``weight_decay`` (default
    ``adam_weight_decay``). A parameter with ``ndim < 2`` in a Muon group is an error.

    Deviations from the reference are flags, off by default (see
    :data:`optbridge.native.base.SHARED_FLAGS`): ``maximize``, ``gradient_clipping``,
    ``caution``, ``update_clipping``, ``warmup_steps``; ``mars`` (+ ``mars_gamma``): the
    MARS-corrected gradient :math:`c_t = G_t + \\gamma\\frac{\\beta}{1-\\beta}(G_t - G_{t-1})`
    (:math:`\\beta` = ``momentum``; :math:`c_1 = G_1`) replaces :math:`G` in the momentum and the
    Nesterov term (:mod:`.mars`), and in the AdamW fallback (with its first beta);
    ``storage_dtype="bfloat16"`` (momentum buffers stored in bfloat16 with stochastic rounding,
    seed ``sr_seed(param position, 0, step)``; the step uses the fp32 value before rounding;
    the AdamW fallback's moments stay fp32); ``ns_dtype`` other than bfloat16. Parameters
    whose gradient is None are skipped (the reference substitutes zeros).

    Args:
        lr: Muon's learning rate (spectral-norm units; default 0.02).
        momentum: :math:`\\beta` (default 0.95).
        weight_decay: decoupled weight decay :math:`\\lambda` of Muon groups (default 0).
        nesterov: Nesterov momentum (default True).
        ns_steps: Newton–Schulz iterations (default 5).
        ns_dtype: dtype of the iteration (default ``torch.bfloat16``).
        adam_lr, adam_betas, adam_eps, adam_weight_decay: defaults of ``use_muon=False`` groups
            (official: 3e-4, (0.9, 0.95), 1e-10, 0).
    """

    flags = _OrthogonalizedBase.flags | {"storage_dtype"}
    slots = ("momentum_buffer",)
    rules = dict(lr=checks.nonnegative, momentum=checks.unit_interval, nesterov=checks.boolean,
                 ns_steps=checks.positive_int, betas=checks.pair(checks.unit_interval),
                 eps=checks.positive, use_muon=checks.boolean)
    matrix_keys = _MUON_KEYS

    def __init__(self, params, lr: float = 0.02, momentum: float = 0.95,
                 weight_decay: float = 0.0, nesterov: bool = True, ns_steps: int = 5,
                 ns_dtype: torch.dtype = torch.bfloat16, adam_lr: float = 3e-4,
                 adam_betas=(0.9, 0.95), adam_eps: float = 1e-10,
                 adam_weight_decay: float = 0.0, **flags):
        checks.check_value("Muon", "ns_dtype", ns_dtype, _float_dtype)
        checks.check_value("Muon", "adam_lr", adam_lr, checks.nonnegative)
        checks.check_value("Muon", "adam_weight_decay", adam_weight_decay, checks.nonnegative)
        self.ns_dtype = ns_dtype
        adam = dict(lr=adam_lr, betas=tuple(adam_betas), eps=adam_eps,
                    weight_decay=adam_weight_decay)
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov,
                                      ns_steps=ns_steps),
                         dict(flags, weight_decay=weight_decay), adam,
                         dict(betas=adam["betas"], eps=adam_eps))

    def mars_beta1(self, group) -> float:
        """MARS's :math:`\\beta_1`: ``momentum`` in Muon groups, the first beta in AdamW ones."""
        return group["momentum"] if group["use_muon"] else group["betas"][0]

    def directions(self, group, params, grads) -> list:
        beta = group["momentum"]
        storage = STORAGE_DTYPES[group.get("storage_dtype", "float32")]
        bufs = []
        for p in params:
            st = self.state[p]
            if "momentum_buffer" not in st:
                st["momentum_buffer"] = torch.zeros_like(p, dtype=self.slot_dtype(p, storage)
                                                         if storage != torch.float32
                                                         else self.compute_dtype(p))
                st["step"] = 0
            st["step"] += 1
            bufs.append(self.read_slot(st, "momentum_buffer", p))
        torch._foreach_lerp_(bufs, grads, 1 - beta)
        if storage != torch.float32:  # bfloat16 storage: stochastic rounding of the new buffer
            ids = self.param_positions()
            for p, b in zip(params, bufs):
                st = self.state[p]
                self.write_slot(st, "momentum_buffer", b, ids[id(p)], 0, st["step"])
        if group["nesterov"]:
            return torch._foreach_lerp(grads, bufs, beta)
        return bufs


class MuonLaProp(_OrthogonalizedBase):
    """MuonLaProp: LaProp's normalised momentum, orthogonalised as in :class:`Muon`
    (HeavyBall's ``MuonLaProp`` = ``scale_by_laprop`` then ``orthogonalize_update``).

    With HeavyBall's debiased EMA factors
    :math:`\\hat\\beta_{i,t} = 1 - (1-\\beta_i)/(1-\\beta_i^t)` (so step 1 takes the raw values):

    .. math::
        v \\leftarrow \\hat\\beta_{2,t} v + (1-\\hat\\beta_{2,t}) G^2,\\qquad
        m \\leftarrow \\hat\\beta_{1,t} m + (1-\\hat\\beta_{1,t})\\,
        \\frac{G}{\\max(\\sqrt{v}, \\epsilon)}

        W \\leftarrow W(1-\\eta\\lambda)
        - \\eta\\sqrt{\\max(1, \\tfrac{rows}{cols})}\\ \\mathrm{NS}_5(m)

    Tensors with ``ndim < 2`` in a default group take the LaProp update :math:`m` unchanged
    (HeavyBall orthogonalises matrices only); ``use_muon=False`` groups get the AdamW fallback
    as in :class:`Muon`. Defaults as HeavyBall: ``lr=0.0025, betas=(0.9, 0.99), eps=1e-8``.

    Shared flags, off by default (:data:`optbridge.native.base.SHARED_FLAGS`): ``weight_decay``,
    ``maximize``, ``gradient_clipping``, ``caution``, ``update_clipping``, ``warmup_steps``;
    ``mars`` (+ ``mars_gamma``): :math:`c_t = G_t + \\gamma\\frac{\\beta_1}{1-\\beta_1}
    (G_t - G_{t-1})` (:math:`c_1 = G_1`) replaces :math:`G` in both moments (as MARS-AdamW), and
    in the AdamW fallback; ``palm`` (+ ``beta2_scale`` :math:`s`): the second-moment weight
    :math:`1-\\hat\\beta_{2,t}` becomes :math:`t^{-s}` (:math:`\\beta_{2,t} = 1 - t^{-s}`, not
    debiased), also in the AdamW fallback; ``storage_dtype="bfloat16"``: :math:`m` and
    :math:`v` stored in bfloat16 with stochastic rounding (seeds ``sr_seed(param position,
    0 for m / 1 for v, step)``), computed in fp32 from the stored values; the step uses the
    fp32 :math:`m` before rounding; the AdamW fallback's moments stay fp32.
    """

    flags = _OrthogonalizedBase.flags | {"storage_dtype", "palm", "beta2_scale"}
    slots = ("exp_avg", "exp_avg_sq")
    rules = dict(lr=checks.nonnegative, betas=checks.pair(checks.unit_interval),
                 eps=checks.positive, ns_steps=checks.positive_int, use_muon=checks.boolean)
    matrix_keys = {"lr", "betas", "eps", "ns_steps", "weight_decay"}

    def __init__(self, params, lr: float = 0.0025, betas=(0.9, 0.99), eps: float = 1e-8,
                 weight_decay: float = 0.0, ns_steps: int = 5,
                 ns_dtype: torch.dtype = torch.bfloat16, adam_lr: float = 3e-4,
                 adam_betas=(0.9, 0.95), adam_eps: float = 1e-10,
                 adam_weight_decay: float = 0.0, **flags):
        checks.check_value("MuonLaProp", "ns_dtype", ns_dtype, _float_dtype)
        checks.check_value("MuonLaProp", "adam_lr", adam_lr, checks.nonnegative)
        checks.check_value("MuonLaProp", "adam_weight_decay", adam_weight_decay,
                           checks.nonnegative)
        self.ns_dtype = ns_dtype
        super().__init__(params, dict(lr=lr, ns_steps=ns_steps),
                         dict(flags, weight_decay=weight_decay),
                         dict(lr=adam_lr, betas=tuple(adam_betas), eps=adam_eps,
                              weight_decay=adam_weight_decay),
                         dict(betas=tuple(betas), eps=eps))

    def _check_matrices(self, params, index: int) -> None:
        return None  # vectors take the plain LaProp update

    def directions(self, group, params, grads) -> list:
        b1, b2 = group["betas"]
        storage = STORAGE_DTYPES[group.get("storage_dtype", "float32")]
        m, v, w1, w2 = [], [], [], []
        for p in params:
            st = self.state[p]
            if "exp_avg" not in st:
                st["exp_avg"] = torch.zeros_like(p, dtype=self.slot_dtype(p, storage))
                st["exp_avg_sq"] = torch.zeros_like(p, dtype=self.slot_dtype(p, storage))
                st["step"] = 0
            st["step"] += 1
            t = st["step"]
            m.append(self.read_slot(st, "exp_avg", p))
            v.append(self.read_slot(st, "exp_avg_sq", p))
            w1.append((1 - b1) / (1 - b1**t))
            b2t, bc2 = self.beta2_at(group, b2, t)  # (b2, 1 - b2^t) unless palm: (1 - t^-s, 1)
            w2.append((1 - b2t) / bc2)
        squares = torch._foreach_mul(grads, grads)
        for x, s, w in zip(v, squares, w2):
            x.lerp_(s, w)
        den = torch._foreach_sqrt(v)
        torch._foreach_clamp_min_(den, group["eps"])
        scaled = torch._foreach_div(grads, den)
        for x, s, w in zip(m, scaled, w1):
            x.lerp_(s, w)
        if storage != torch.float32:  # bfloat16 storage: stochastic rounding of m and v
            ids = self.param_positions()
            for p, mt, vt in zip(params, m, v):
                st = self.state[p]
                self.write_slot(st, "exp_avg", mt, ids[id(p)], 0, st["step"])
                self.write_slot(st, "exp_avg_sq", vt, ids[id(p)], 1, st["step"])
        return m

    def _orthogonalize_and_apply(self, work) -> None:
        mats, vecs = [], []
        for group, params, grads, dirs in work:
            keep = [k for k, p in enumerate(params) if p.ndim >= 2]
            rest = [k for k, p in enumerate(params) if p.ndim < 2]
            if keep:
                mats.append((group, [params[k] for k in keep], [grads[k] for k in keep],
                             [dirs[k] for k in keep]))
            for k in rest:
                vecs.append((group, params[k], grads[k], dirs[k]))
        if mats:
            super()._orthogonalize_and_apply(mats)
        for group, p, g, d in vecs:
            self.apply_update(p, d, g, group, self.lr_at(group, self._t(group, p)))
