"""PSGD Kron: a Kronecker-factored preconditioner fitted on a Lie group, with batched factors.

Xi-Lin Li, "Preconditioned stochastic gradient descent" (2015, arXiv:1512.04202) and "Black box
Lie group preconditioners for SGD" (2022, arXiv:2211.04422); reference code: the Kron optimizer
of github.com/evanatyourservice/kron_torch ``kron.py`` (the PyTorch port of lixilinx/psgd_torch's
Kron that HeavyBall's ``ForeachPSGDKron`` follows; variant names from HeavyBall).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from optbridge.core import checks

from .base import STORAGE_DTYPES, NativeOptimizer
from .matrix_groups import group_by
from .psgd_ops import (
    balance,
    cached_factors,
    precondition,
    precondition_cached,
    update_factors,
)

_TINY = torch.finfo(torch.bfloat16).tiny


def precond_update_prob_schedule(max_prob: float = 1.0, min_prob: float = 0.03,
                                 decay: float = 0.001, flat_start: float = 500):
    """kron_torch's default schedule of the preconditioner update probability: 1 for
    ``flat_start`` steps, then ``max_prob * exp(-decay * (n - flat_start))`` clamped to
    ``[min_prob, max_prob]`` (computed in float32 as the reference)."""
    return _ProbSchedule(max_prob, min_prob, decay, flat_start)


class _ProbSchedule:
    def __init__(self, max_prob, min_prob, decay, flat_start):
        self.max_prob, self.min_prob = max_prob, min_prob
        self.decay, self.flat_start = decay, flat_start

    def __call__(self, n: int) -> float:
        n = torch.tensor(n, dtype=torch.float32)
        prob = self.max_prob * torch.exp(-self.decay * (n - self.flat_start))
        return float(prob.clamp_(min=self.min_prob, max=self.max_prob))


def _probability(v):
    if v is None or callable(v) or (checks._finite(v) and 0 <= v <= 1):
        return None
    return "None, a number in [0, 1] or a callable step -> probability"


def factor_layout(shape: tuple, max_size: int, min_ndim: int, memory_save_mode) -> list[bool]:
    """For each dimension, whether its factor is diagonal (kron_torch ``init_Q_exprs``): size 1,
    size > ``max_size``, fewer than ``min_ndim`` dimensions, or chosen by ``memory_save_mode``
    (``"one_diag"``: the largest dimension, the last of equals; ``"all_diag"``)."""
    if len(shape) == 0:
        return [True]
    diag = [False] * len(shape)
    if memory_save_mode == "one_diag":
        largest = max(range(len(shape)), key=lambda i: (shape[i], i))
        diag[largest] = True
    elif memory_save_mode == "all_diag":
        diag = [True] * len(shape)
    return [d or n == 1 or n > max_size or len(shape) < min_ndim for n, d in zip(shape, diag)]


class PSGDKron(NativeOptimizer):
    """PSGD with a Kronecker-factored preconditioner :math:`P = Q^\\top Q`,
    :math:`Q = Q_1 \\otimes \\cdots \\otimes Q_k` (upper-triangular or diagonal factors).

    Per step, with one uniform draw deciding whether the preconditioner is updated (probability
    ``preconditioner_update_probability``, by default :func:`precond_update_prob_schedule`) and
    another (< 0.01, only on update steps) whether the factors are balanced:

    .. math::
        m \\leftarrow \\beta m + (1-\\beta) g,\\qquad \\hat m = m / (1-\\beta^t)

        Q_i \\leftarrow Q_i - \\mu\\,\\frac{\\mathrm{triu}(A_{(i)}A_{(i)}^\\top -
        B_{(i)}B_{(i)}^\\top)}{\\lVert A_{(i)}A_{(i)}^\\top + B_{(i)}B_{(i)}^\\top\\rVert} Q_i,
        \\quad A = \\hat m \\times_i Q_i,\\ B = V \\times_i Q_i^{-\\top},\\ V\\sim\\mathcal N(0, I)

        u = P\\hat m,\\quad u \\leftarrow u \\min(1, 1.1/(\\mathrm{rms}(u) + 10^{-6})),\\quad
        W \\leftarrow W - \\eta (u + \\lambda W)\\ (\\lambda \\text{ only for } W.\\mathrm{ndim}
        \\ge 2)

    as kron_torch's ``Kron`` (``momentum_into_precond_update=False`` fits on :math:`g` instead
    of :math:`\\hat m`). Factors start as ``precond_init_scale ** (1/ndim) * I``. Same-shape
    parameters of a group are stacked and go through each operation as one batch.

    Randomness: a ``torch.Generator`` per optimizer seeded with ``seed`` (not Python's
    ``random``), saved in the state dict, so runs and resumed runs reproduce exactly.

    Variants (HeavyBall's names), off by default:

    - ``pure=True``: no momentum; the gradient is preconditioned and fits the preconditioner
      (HeavyBall ``ForeachPurePSGD``).
    - ``cached=True``: keep :math:`Q_i^\\top Q_i` and precondition with it (one product per
      dimension instead of two; refreshed when the factors change) (``ForeachCachedPSGDKron``).
    - ``delayed=True``: precondition with the factors from before this step's update
      (``ForeachDelayedPSGD``).
    - ``clip_update_rms=None`` drops the RMS cap.

    Shared flags (:data:`optbridge.native.base.SHARED_FLAGS`), off by default so the default
    step stays reference-exact: ``maximize``, ``gradient_clipping``, ``warmup_steps``, and

    - ``mars`` (+ ``mars_gamma`` :math:`\\gamma`), Yuan et al. 2024 (arXiv:2411.10438), with
      :math:`\\beta_1` = ``beta``: the corrected gradient
      :math:`c_t = g_t + \\gamma\\,\\frac{\\beta}{1-\\beta}(g_t - g_{t-1})` (:math:`c_1 = g_1`)
      replaces :math:`g` everywhere: in the momentum, in the preconditioner fit
      (``momentum_into_precond_update=False``, ``pure``), and as the sign reference of
      ``caution``. :math:`g_{t-1}` is kept in the ``mars_prev_grad`` slot.
    - ``caution`` and ``update_clipping``: applied to the final update :math:`u` (after the RMS
      cap) as :meth:`~optbridge.native.base.NativeOptimizer.apply_update` does:
      :math:`u \\leftarrow u\\,[u g > 0]\\,\\frac{n}{\\max(1, \\#\\text{kept})}`, then
      :math:`u \\leftarrow \\mathrm{clamp}(u, -c, c)`, then
      :math:`W \\leftarrow W(1 - \\eta\\lambda) - \\eta u` (decoupled, still matrices only).
    - ``storage_dtype="bfloat16"``: the momentum buffer (and ``mars_prev_grad``) stored in
      bfloat16; the momentum is computed in fp32 as
      :math:`m_{32} = \\beta\\,\\mathrm{float}(m) + (1-\\beta) g`, the step uses :math:`m_{32}`
      and the buffer keeps :math:`m_{32}` stochastically rounded
      (:mod:`optbridge.native.stochastic_rounding`, seed ``sr_seed(param position, 0, t)``).
      The Kronecker factors stay in the compute dtype (fp32; fp64 parameters keep fp64 state).

    Args:
        lr: learning rate (default 0.001). beta: momentum (default 0.9).
        weight_decay: :math:`\\lambda`, matrices only (default 0).
        preconditioner_update_probability: None (schedule), a probability, or ``t -> prob``.
        max_size_triangular: larger dimensions get diagonal factors (default 8192).
        min_ndim_triangular: tensors with fewer dimensions get diagonal factors (default 2).
        memory_save_mode: None, ``"one_diag"`` or ``"all_diag"``.
        momentum_into_precond_update: fit on :math:`\\hat m` (default True) or :math:`g`.
        precond_lr: :math:`\\mu` (default 0.1). precond_init_scale: default 1.0.
        seed: seed of the generator (default 0).
    """

    flags = frozenset({"maximize", "gradient_clipping", "warmup_steps", "caution",
                       "update_clipping", "mars", "mars_gamma", "storage_dtype"})
    rules = dict(lr=checks.nonnegative, beta=checks.unit_interval,
                 weight_decay=checks.nonnegative,
                 preconditioner_update_probability=_probability,
                 max_size_triangular=checks.positive_int,
                 min_ndim_triangular=checks.nonnegative_int,
                 memory_save_mode=checks.one_of(None, "one_diag", "all_diag"),
                 momentum_into_precond_update=checks.boolean, precond_lr=checks.positive,
                 precond_init_scale=checks.positive,
                 clip_update_rms=checks.optional(checks.positive), pure=checks.boolean,
                 cached=checks.boolean, delayed=checks.boolean)

    def __init__(self, params, lr: float = 0.001, beta: float = 0.9, weight_decay: float = 0.0,
                 preconditioner_update_probability: float | Callable | None = None,
                 max_size_triangular: int = 8192, min_ndim_triangular: int = 2,
                 memory_save_mode: str | None = None, momentum_into_precond_update: bool = True,
                 precond_lr: float = 0.1, precond_init_scale: float = 1.0,
                 clip_update_rms: float | None = 1.1, pure: bool = False, cached: bool = False,
                 delayed: bool = False, seed: int = 0, **flags):
        checks.check_value("PSGDKron", "seed", seed, checks.nonnegative_int)
        super().__init__(params, dict(
            lr=lr, beta=beta, weight_decay=weight_decay,
            preconditioner_update_probability=preconditioner_update_probability,
            max_size_triangular=max_size_triangular, min_ndim_triangular=min_ndim_triangular,
            memory_save_mode=memory_save_mode,
            momentum_into_precond_update=momentum_into_precond_update, precond_lr=precond_lr,
            precond_init_scale=precond_init_scale, clip_update_rms=clip_update_rms, pure=pure,
            cached=cached, delayed=delayed), flags)
        self.generator = torch.Generator().manual_seed(seed)
        self.prob_step = 0

    # ------------------------------------------------------------------ state dict
    def state_dict(self):
        sd = super().state_dict()
        sd["psgd"] = {"prob_step": self.prob_step, "rng_state": self.generator.get_state()}
        return sd

    def load_state_dict(self, state_dict):
        extra = state_dict.get("psgd") if isinstance(state_dict, dict) else None
        super().load_state_dict({k: v for k, v in state_dict.items() if k != "psgd"}
                                if isinstance(state_dict, dict) else state_dict)
        if extra is not None:
            self.prob_step = int(extra["prob_step"])
            self.generator.set_state(extra["rng_state"])

    # ------------------------------------------------------------------ the step
    def _draws(self) -> tuple[bool, bool]:
        prob = self.param_groups[0]["preconditioner_update_probability"]
        if prob is None:
            prob = precond_update_prob_schedule()
        if callable(prob):
            prob = prob(self.prob_step)
        do_update = torch.rand((), generator=self.generator).item() < prob
        self.prob_step += 1
        do_balance = torch.rand((), generator=self.generator).item() < 0.01 and do_update
        return do_update, do_balance

    @torch.no_grad()
    def step(self, closure=None):
        loss, live, factor = self._per_parameter_prologue(closure)
        if live is None:
            return loss
        do_update, do_balance = self._draws()
        ids = self.param_positions()
        items = []
        for gi, (group, params) in enumerate(live):
            keep_grad = group["caution"]
            for p in params:
                st = self.state[p]
                if "Q0" not in st:
                    self._init_state(p, st, group)
                g = self.prepared_grad(p, p.grad, st, group,
                                       None if factor is None else factor[p.device])
                st["step"] += 1
                if group["pure"]:
                    direction = fit = g
                else:
                    direction = self._momentum(p, st, group, g, ids)
                    fit = direction if group["momentum_into_precond_update"] else g
                V = None
                if do_update:
                    V = torch.randn(p.shape, generator=self.generator, dtype=g.dtype)
                    V = V.to(p.device)
                items.append((gi, group, p, st, direction, fit, V, g if keep_grad else None))
        for members in group_by(items, self._stack_key).values():
            self._stack_step(members, do_update, do_balance)
        return loss

    def _momentum(self, p, st, group, g, ids) -> torch.Tensor:
        """:math:`m \\leftarrow \\beta m + (1-\\beta) g`; returns :math:`m / (1-\\beta^t)`.
        A bfloat16 buffer is read as fp32 and stored back with stochastic rounding."""
        b = group["beta"]
        buf = self.read_slot(st, "momentum_buffer", p)
        buf.mul_(b).add_(g, alpha=1 - b)
        self.write_slot(st, "momentum_buffer", buf, ids[id(p)], 0, st["step"])
        return buf / (1 - b ** st["step"])

    def mars_beta1(self, group) -> float:
        """MARS's :math:`\\beta_1`: PSGD's momentum ``beta``."""
        return group["beta"]

    @staticmethod
    def _stack_key(item):
        gi, group, p, st, direction, *_ = item
        layout = tuple(st[f"Q{i}"].ndim for i in range(st["n_factors"]))
        return gi, tuple(p.shape), direction.dtype, p.device, layout

    def _init_state(self, p, st, group) -> None:
        dtype = self.compute_dtype(p)
        shape = tuple(p.shape)
        diag = factor_layout(shape, group["max_size_triangular"], group["min_ndim_triangular"],
                             group["memory_save_mode"])
        work = shape if shape else (1,)
        scale = group["precond_init_scale"] ** (1 / len(shape)) if shape else \
            group["precond_init_scale"]
        st["step"] = 0
        st["n_factors"] = len(work)
        if not group["pure"]:
            storage = STORAGE_DTYPES[group["storage_dtype"]]
            st["momentum_buffer"] = torch.zeros_like(
                p, dtype=dtype if storage == torch.float32 else self.slot_dtype(p, storage))
        for i, (n, d) in enumerate(zip(work, diag)):
            st[f"Q{i}"] = scale * (torch.ones(n, dtype=dtype, device=p.device) if d
                                   else torch.eye(n, dtype=dtype, device=p.device))

    def _stack_step(self, members, do_update: bool, do_balance: bool) -> None:
        group = members[0][1]
        params = [it[2] for it in members]
        states = [it[3] for it in members]
        k = states[0]["n_factors"]
        work = tuple(params[0].shape) or (1,)
        Q = [torch.stack([st[f"Q{i}"] for st in states]) for i in range(k)]
        D = torch.stack([it[4].reshape(work) for it in members])
        if do_balance and params[0].ndim > 1:
            balance(Q)
        pre = None
        if group["delayed"]:
            pre = self._precondition(group, states, Q, D,
                                     changed=do_balance and params[0].ndim > 1)
        if do_update:
            F = torch.stack([it[5].reshape(work) for it in members])
            V = torch.stack([it[6].reshape(work) for it in members])
            update_factors(Q, F, V, group["precond_lr"], _TINY)
        changed = do_update or (do_balance and params[0].ndim > 1)
        for i in range(k):
            for st, q in zip(states, Q[i].unbind(0)):
                st[f"Q{i}"] = q
        if pre is None:
            pre = self._precondition(group, states, Q, D, changed)
        elif group["cached"] and changed:
            self._store_cache(states, cached_factors(Q))
        c = group["clip_update_rms"]
        if c is not None:
            rms = pre.flatten(1).square().mean(1).sqrt()
            pre.mul_(torch.clamp(c / (rms + 1e-6), max=1.0).view(-1, *([1] * len(work))))
        flagged = group["caution"] or group["update_clipping"] is not None
        for it, u in zip(members, pre.unbind(0)):
            p, st = it[2], it[3]
            u = u.reshape(p.shape)
            if flagged:  # apply_update's caution / clipping, weight decay on matrices only
                self.apply_update(p, u, it[7], group if p.ndim >= 2 else
                                  dict(group, weight_decay=0.0), self.lr_at(group, st["step"]))
                continue
            if group["weight_decay"] != 0 and p.ndim >= 2:
                u.add_(p, alpha=group["weight_decay"])
            p.add_(u.to(p.dtype), alpha=-self.lr_at(group, st["step"]))

    def _precondition(self, group, states, Q, D, changed: bool) -> torch.Tensor:
        if not group["cached"]:
            return precondition(Q, D)
        k = len(Q)
        if changed or "P0" not in states[0]:
            P = cached_factors(Q)
            self._store_cache(states, P)
        else:
            P = [torch.stack([st[f"P{i}"] for st in states]) for i in range(k)]
        return precondition_cached(P, D)

    @staticmethod
    def _store_cache(states, P) -> None:
        for i, pi in enumerate(P):
            for st, x in zip(states, pi.unbind(0)):
                st[f"P{i}"] = x


__all__ = ["PSGDKron", "precond_update_prob_schedule", "factor_layout"]
