"""SOAP: Shampoo with Adam in the preconditioner's eigenbasis, with batched linear algebra.

Vyas et al., "SOAP: Improving and Stabilizing Shampoo using Adam" (2024),
https://arxiv.org/abs/2409.11321; reference code github.com/nikhilvyas/SOAP ``soap.py``
(commit f42d296, the version with ``shampoo_beta=-1`` and ``precondition_frequency=10``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from optbridge.core import checks
from optbridge.m.preconditioners._kron import contract, layout, outer

from .base import STORAGE_DTYPES, NativeOptimizer
from .matrix_groups import group_by


def _shampoo_beta(v):
    ok = checks._finite(v) and v < 1
    return None if ok else "a number < 1 (negative: use betas[1])"


def _frequency(v):
    if callable(v) or checks.positive_int(v) is None:
        return None
    return "an int >= 1 or a callable step -> int >= 1"


def _eigenbasis(mats: torch.Tensor) -> torch.Tensor:
    """Eigenvectors of symmetric matrices by decreasing eigenvalue (official ``eigh`` of
    ``S + 1e-30 I``, columns flipped)."""
    eye = torch.eye(mats.shape[-1], dtype=mats.dtype, device=mats.device)
    return torch.flip(torch.linalg.eigh(mats + 1e-30 * eye)[1], [-1])


def linear_frequency_schedule(start: int, end: int, steps: int) -> Callable[[int], int]:
    """A preconditioner update-frequency schedule for ``precondition_frequency``: the basis is
    refreshed every ``start`` steps at first, ramping linearly to every ``end`` steps at step
    ``steps`` (frequent refreshes while the statistics move fast, as HeavyBall's
    ``PrecondScheduleForeachSOAP`` intends)."""
    for name, v in (("start", start), ("end", end), ("steps", steps)):
        checks.check_value("linear_frequency_schedule", name, v, checks.positive_int)
    return _LinearFrequency(start, end, steps)


class _LinearFrequency:
    def __init__(self, start, end, steps):
        self.start, self.end, self.steps = start, end, steps

    def __call__(self, t: int) -> int:
        frac = min(t / self.steps, 1.0)
        return max(1, round(self.start + (self.end - self.start) * frac))


class SOAP(NativeOptimizer):
    """SOAP (official defaults), same-size factors through batched ``eigh`` / ``qr``.

    For a parameter with gradient :math:`G` and preconditioned dimensions :math:`i` (statistic
    :math:`S_i`, orthogonal basis :math:`Q_i`; dimensions larger than ``max_precond_dim`` and,
    unless ``precondition_1d``, 1-D tensors have none):

    .. math::
        \\tilde G = G \\times_1 Q_1 \\cdots \\times_k Q_k\\ (\\text{projection}),\\qquad
        m \\leftarrow \\beta_1 m + (1-\\beta_1)\\tilde G,\\quad
        v \\leftarrow \\beta_2 v + (1-\\beta_2)\\tilde G^2

        W \\leftarrow W - \\eta\\frac{\\sqrt{1-\\beta_2^t}}{1-\\beta_1^t}\\,
        \\mathrm{back}\\Big(\\frac{m}{\\sqrt v + \\epsilon}\\Big),\\qquad
        W \\leftarrow W - \\eta\\lambda W

        S_i \\leftarrow \\beta_s S_i + (1-\\beta_s) G_{(i)} G_{(i)}^\\top

    as ``nikhilvyas/SOAP`` (commit f42d296): the first step only initialises :math:`S_i` and
    :math:`Q_i = \\mathrm{eigh}(S_i)` (columns by decreasing eigenvalue) and leaves the
    parameter unchanged; every ``precondition_frequency`` steps :math:`Q_i` is refreshed by one
    power iteration :math:`\\mathrm{qr}(S_i Q_i)` with columns sorted by
    :math:`\\mathrm{diag}(Q_i^\\top S_i Q_i)` (and :math:`v` permuted alike); :math:`m` lives in
    the rotated basis and is carried to the new one; :math:`\\beta_s` = ``shampoo_beta`` or
    :math:`\\beta_2` when negative; ``merge_dims`` merges adjacent dimensions while the product
    stays ``<= max_precond_dim`` (``data_format="channels_last"`` 4-D tensors are seen as NCHW
    for the merge); ``normalize_grads`` divides the back-projected update by its RMS.

    Named variants (off by default):

    - ``palm=True``: the PaLM second-moment schedule :math:`\\beta_{2,t} = 1 -
      t^{-\\texttt{beta2\\_scale}}` replaces :math:`\\beta_2` in :math:`v` (without its bias
      correction); :math:`\\beta_s` stays the constant (HeavyBall's ``PaLMForeachSOAP``).
    - ``precondition_frequency`` a callable ``t -> int``: the basis is refreshed at step
      :math:`t` when ``t % f(t) == 0`` (e.g. :func:`linear_frequency_schedule`;
      HeavyBall's ``PrecondScheduleForeachSOAP`` idea). A callable does not survive
      ``torch.load(weights_only=True)`` of the state dict.
    - ``lazy_basis_change=True``: keep :math:`m` in the rotated basis between refreshes
      instead of the reference's round trip through the original space at every step (the
      same algorithm in exact arithmetic, two contractions per tensor and step fewer; as
      :class:`optbridge.m.SOAP`).
    - ``caution=True`` / ``update_clipping=c``: applied to the final update in the original
      space, after the back projection, ``normalize_grads`` and the bias-correction factor
      :math:`s_t = \\sqrt{1-\\beta_2^t}/(1-\\beta_1^t)` (1 without ``correct_bias``;
      no :math:`\\beta_2` term under ``palm``):
      :math:`u = s_t\\,\\mathrm{back}(\\cdot)`, caution (Liang et al., 2024)
      :math:`u \\leftarrow u \\odot [u \\odot G > 0]\\cdot n / \\max(1, \\#\\text{kept})`,
      clipping :math:`u \\leftarrow \\mathrm{clamp}(u, -c, c)`, then
      :math:`W \\leftarrow W - \\eta u` and the weight decay after it as in the reference.
    - ``mars=True`` (Yuan et al., 2024, https://arxiv.org/abs/2411.10438): the corrected
      gradient :math:`C_t = G_t + \\gamma\\frac{\\beta_1}{1-\\beta_1}(G_t - G_{t-1})`
      (:math:`C_1 = G_1`; :math:`\\gamma` = ``mars_gamma``) replaces :math:`G` everywhere
      SOAP reads the gradient: the projection into :math:`m, v`, the statistics
      :math:`S_i \\leftarrow \\beta_s S_i + (1-\\beta_s) C_{(i)} C_{(i)}^\\top` (MARS
      swaps the stochastic gradient for the variance-reduced one inside the optimizer, whose
      preconditioner statistics included, as its MARS-AdamW does for :math:`v`) and the
      caution mask. :math:`G_{t-1}` is the ``mars_prev_grad`` slot (the gradient after
      unscaling, clipping and ``maximize``).
    - ``storage_dtype="bfloat16"``: :math:`m` and :math:`v` are stored in bfloat16; each
      step reads them once into fp32, runs the whole step (Adam update, basis change) in
      fp32 and stores them once, stochastically rounded with the seeds
      ``sr_seed(param position, 0 for m / 1 for v, step)`` (:mod:`.stochastic_rounding`);
      :math:`S_i, Q_i` stay fp32; MARS's previous gradient is stored in bfloat16 as for the
      elementwise optimizers (``prepared_grad``). fp64 parameters keep fp64 state.
    - shared flags ``maximize``, ``gradient_clipping``, ``warmup_steps``.
    """

    flags = frozenset({"weight_decay", "maximize", "gradient_clipping", "palm", "beta2_scale",
                       "warmup_steps", "caution", "update_clipping", "mars", "mars_gamma",
                       "storage_dtype"})
    slots = ("exp_avg", "exp_avg_sq")  # elementwise state (load_state_dict keeps their dtype)
    rules = dict(lr=checks.nonnegative, betas=checks.pair(checks.unit_interval),
                 shampoo_beta=_shampoo_beta, eps=checks.positive,
                 precondition_frequency=_frequency, max_precond_dim=checks.positive_int,
                 merge_dims=checks.boolean, precondition_1d=checks.boolean,
                 normalize_grads=checks.boolean, correct_bias=checks.boolean,
                 data_format=checks.one_of("channels_first", "channels_last"),
                 lazy_basis_change=checks.boolean)

    def __init__(self, params, lr: float = 3e-3, betas=(0.95, 0.95), shampoo_beta: float = -1,
                 eps: float = 1e-8, weight_decay: float = 0.01,
                 precondition_frequency: int | Callable[[int], int] = 10,
                 max_precond_dim: int = 10000, merge_dims: bool = False,
                 precondition_1d: bool = False, normalize_grads: bool = False,
                 data_format: str = "channels_first", correct_bias: bool = True,
                 lazy_basis_change: bool = False, **flags):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), shampoo_beta=shampoo_beta,
                                      eps=eps, precondition_frequency=precondition_frequency,
                                      max_precond_dim=max_precond_dim, merge_dims=merge_dims,
                                      precondition_1d=precondition_1d,
                                      normalize_grads=normalize_grads, data_format=data_format,
                                      correct_bias=correct_bias,
                                      lazy_basis_change=lazy_basis_change),
                         dict(flags, weight_decay=weight_decay))

    # ------------------------------------------------------------------ layout
    @staticmethod
    def _layout(p, group):
        """``(permute for channels_last or None, working shape, preconditioned dims)``."""
        perm = None
        shape = tuple(p.shape)
        merge = group["merge_dims"] and p.ndim > 1
        if merge and group["data_format"] == "channels_last" and p.ndim == 4:
            perm = (0, 3, 1, 2)
            shape = tuple(shape[i] for i in perm)
        work, dims = layout(shape, merge, group["max_precond_dim"], group["precondition_1d"])
        if p.ndim == 0:
            work = ()
        return perm, work, dims

    @staticmethod
    def _to_work(t, perm, work):
        return (t.permute(*perm) if perm else t).reshape(work)

    @staticmethod
    def _from_work(t, perm, p):
        if perm:
            shape = tuple(p.shape[i] for i in perm)
            return t.reshape(shape).permute(0, 2, 3, 1)
        return t.reshape(p.shape)

    @staticmethod
    def _factors(st, work):
        return [st.get(f"Q{d}") for d in range(len(work))]

    # ------------------------------------------------------------------ the step
    @torch.no_grad()
    def step(self, closure=None):
        loss, live, factor = self._per_parameter_prologue(closure)
        if live is None:
            return loss
        fresh, ready = [], []
        for group, params in live:
            for p in params:
                st = self.state[p]
                g = self.prepared_grad(p, p.grad, st, group,
                                       None if factor is None else factor[p.device])
                item = (group, p, g, st, self._layout(p, group))
                (ready if "Q_ready" in st else fresh).append(item)
        if ready:
            stored = self._widen_moments(ready)
            self._adam(ready)
            self._update_preconditioners(ready)
            self._store_moments(stored)
        if fresh:
            self._initialise(fresh)
        return loss

    @staticmethod
    def _storage(group) -> torch.dtype:
        return STORAGE_DTYPES[group.get("storage_dtype", "float32")]

    def _widen_moments(self, items) -> list:
        """bfloat16-stored ``m, v`` replaced by fp32 working copies for this step; returns
        ``(state, param position, stored m, stored v)`` for :meth:`_store_moments`."""
        stored, ids = [], None
        for _, p, _, st, _ in items:
            if st["exp_avg"].dtype == self.compute_dtype(p):
                continue
            if ids is None:
                ids = self.param_positions()
            stored.append((st, ids[id(p)], st["exp_avg"], st["exp_avg_sq"]))
            st["exp_avg"] = self.read_slot(st, "exp_avg", p)
            st["exp_avg_sq"] = self.read_slot(st, "exp_avg_sq", p)
        return stored

    def _store_moments(self, stored) -> None:
        """The step's fp32 ``m, v`` stochastically rounded into their bfloat16 slots."""
        for st, pid, m_low, v_low in stored:
            m, v = st["exp_avg"], st["exp_avg_sq"]
            st["exp_avg"], st["exp_avg_sq"] = m_low, v_low
            self.write_slot(st, "exp_avg", m, pid, 0, st["step"])
            self.write_slot(st, "exp_avg_sq", v, pid, 1, st["step"])

    def _initialise(self, items) -> None:
        """First step: statistics from this gradient and their eigenbases; no update."""
        stacks: dict = {}
        for group, p, g, st, (perm, work, dims) in items:
            wd = self.compute_dtype(p)
            md = self.slot_dtype(p, self._storage(group))  # wd unless bfloat16 storage
            st["step"] = 0
            st["exp_avg"] = torch.zeros(work, dtype=md, device=p.device)
            st["exp_avg_sq"] = torch.zeros(work, dtype=md, device=p.device)
            st["Q_ready"] = True
            gw = self._to_work(g, perm, work)
            sb = self._shampoo_beta(group)
            for d in dims:
                gg = st[f"GG{d}"] = torch.zeros(work[d], work[d], dtype=wd, device=p.device)
                gg.lerp_(outer(gw, d), 1 - sb)
                stacks.setdefault((work[d], wd, p.device), []).append((st, d))
        for members in stacks.values():
            qs = _eigenbasis(torch.stack([st[f"GG{d}"] for st, d in members]))
            for (st, d), q in zip(members, qs.unbind(0)):
                st[f"Q{d}"] = q

    @staticmethod
    def _shampoo_beta(group) -> float:
        sb = group["shampoo_beta"]
        return sb if sb >= 0 else group["betas"][1]

    def _adam(self, items) -> None:
        """Adam on the projected gradient; the update projected back and applied."""
        by_group = group_by(items, lambda it: id(it[0]))
        for members in by_group.values():
            group = members[0][0]
            b1, b2 = group["betas"]
            gp, m, v = [], [], []
            for _, p, g, st, (perm, work, _) in members:
                st["step"] += 1
                gp.append(contract(self._to_work(g, perm, work), self._factors(st, work)))
                m.append(st["exp_avg"])
                v.append(st["exp_avg_sq"])
            torch._foreach_mul_(m, b1)
            torch._foreach_add_(m, gp, alpha=1 - b1)
            steps = [it[3]["step"] for it in members]
            if group.get("palm"):
                b2s = [1 - t ** (-group["beta2_scale"]) for t in steps]
                for x, y, b in zip(v, gp, b2s):
                    x.mul_(b).add_(y.square(), alpha=1 - b)
            else:
                torch._foreach_mul_(v, b2)
                torch._foreach_add_(v, torch._foreach_mul(gp, gp), alpha=1 - b2)
            den = torch._foreach_sqrt(v)
            torch._foreach_add_(den, group["eps"])
            shaped = group.get("caution") or group.get("update_clipping") is not None
            # caution / update clipping through the shared tail, weight decay kept after it
            undecayed = dict(caution=group.get("caution"),
                             update_clipping=group.get("update_clipping"))
            for (_, p, g, st, (perm, work, _)), mi, di, t in zip(members, m, den, steps):
                lr = self.lr_at(group, t)
                bc2 = 1.0 if group.get("palm") else 1.0 - b2**t
                u = contract(mi / di, self._factors(st, work), transpose=True)
                u = self._from_work(u, perm, p)
                if group["normalize_grads"]:
                    u = u / (1e-30 + torch.mean(u**2) ** 0.5)
                if shaped:
                    scale = (bc2**0.5) / (1.0 - b1**t) if group["correct_bias"] else 1.0
                    self.apply_update(p, u, g, undecayed, lr, scale=scale)
                else:  # the reference's arithmetic
                    step_size = lr
                    if group["correct_bias"]:
                        step_size = step_size * (bc2**0.5) / (1.0 - b1**t)
                    p.add_(u.to(p.dtype), alpha=-step_size)
                if group["weight_decay"] > 0.0:
                    p.add_(p, alpha=-lr * group["weight_decay"])

    def _update_preconditioners(self, items) -> None:
        """As the official ``update_preconditioner``: ``m`` back to the original space, fold the
        gradient into the statistics, refresh the bases when due (one batched ``qr`` per
        factor size), ``m`` into the (new) basis. With ``lazy_basis_change`` the round trip
        of ``m`` is skipped when the basis did not change."""
        stacks: dict = {}
        moved = []
        for group, p, g, st, (perm, work, dims) in items:
            freq = group["precondition_frequency"]
            freq = freq(st["step"]) if callable(freq) else freq
            refresh = bool(dims) and st["step"] > 0 and st["step"] % freq == 0
            if refresh or not group["lazy_basis_change"]:
                st["exp_avg"] = contract(st["exp_avg"], self._factors(st, work), transpose=True)
                moved.append((st, work))
            gw = self._to_work(g, perm, work)
            sb = self._shampoo_beta(group)
            for d in dims:
                st[f"GG{d}"].lerp_(outer(gw, d), 1 - sb)
            if not refresh:
                continue
            v = st["exp_avg_sq"]
            for d in dims:
                gg, o = st[f"GG{d}"], st[f"Q{d}"]
                order = torch.argsort(torch.diag(o.T @ gg @ o), descending=True)
                v = v.index_select(d, order)
                stacks.setdefault((work[d], gg.dtype, gg.device), []).append(
                    (st, d, gg @ o[:, order]))
            st["exp_avg_sq"] = v
        for members in stacks.values():
            qs = torch.linalg.qr(torch.stack([mat for _, _, mat in members]))[0]
            for (st, d, _), q in zip(members, qs.unbind(0)):
                st[f"Q{d}"] = q
        for st, work in moved:
            st["exp_avg"] = contract(st["exp_avg"], self._factors(st, work)).contiguous()
