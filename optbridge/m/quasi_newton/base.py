"""Base class of the quasi-Newton modules that keep a dense (or diagonal) Hessian approximation.

Every method here keeps either ``H``, an approximation of the inverse Hessian, or ``B``, an
approximation of the Hessian, and updates it from the secant pair

.. math::
    s_k = x_k - x_{k-1}, \\qquad y_k = g_k - g_{k-1}

where :math:`g` is the update that reaches the module (the gradient when the module comes first).
The output is the direction :math:`H_k g_k` (or :math:`B_k^{-1} g_k`), which the engine subtracts;
a line search or ``LR`` after the module decides the step length.

Skip rules (an update that fails one leaves the approximation unchanged) are applied without host
synchronisation, by folding them into the coefficients of the low-rank corrections. One host
synchronisation per step remains: a non-finite direction means the approximation broke down, and
it is then restarted from the scaled identity.

References: J. Nocedal and S. J. Wright, *Numerical Optimization*, 2nd ed., Springer 2006,
chapter 6 (BFGS, DFP, SR1; the initial scaling of eq. 6.20); E. Spedicato and Z. Huang,
"Numerical experience with Newton-like methods for nonlinear algebraic systems", Computing 58
(1997) 69-89 (Broyden's and Greenstadt's methods, PSB).
"""

from __future__ import annotations

import math

import torch

from ...core import checks
from ...core.module import Module

#: largest number of variables a dense approximation accepts by default: a 20000 x 20000 matrix
#: takes 1.6 GB in float32 and 3.2 GB in float64
DEFAULT_MAX_DIM = 20_000


def init_scale_rule(v):
    """``'auto'`` or a finite number > 0."""
    if isinstance(v, str):
        return None if v == "auto" else "'auto' or a finite number > 0"
    return None if checks.positive(v) is None else "'auto' or a finite number > 0"


def interval_rule(v):
    """``None``, ``'auto'`` or an int >= 1."""
    if v is None or (isinstance(v, str) and v == "auto"):
        return None
    return None if checks.positive_int(v) is None else "None, 'auto' or an int >= 1"


def beta_rule(v):
    """``None`` or a number in [0, 1)."""
    return checks.optional(checks.unit_interval)(v)


# ------------------------------------------------------------------------- shared helpers
def flat_copy(tensors: list[torch.Tensor]) -> torch.Tensor:
    """All tensors concatenated into a new 1-D tensor (always a fresh copy)."""
    if len(tensors) == 1:
        return tensors[0].reshape(-1).clone()
    return torch.cat([t.reshape(-1) for t in tensors])


def masked_inv(den: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
    """``1 / den`` where ``ok`` holds and ``den`` is finite and non-zero, else 0 (no host sync)."""
    ok = ok & (den != 0) & torch.isfinite(den)
    return torch.where(ok, 1 / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(den))


def low_rank_update_(M: torch.Tensor, us: list[torch.Tensor], vs: list[torch.Tensor]) -> None:
    """``M += sum_i u_i v_i^T`` in one ``addmm_``."""
    M.addmm_(torch.stack(us, 1), torch.stack(vs, 0))


def global_settings(module: Module, ctx) -> dict:
    """The module's settings for this step, which must agree across the param groups (one
    approximation spans them); ``ValueError`` naming the setting otherwise."""
    keys = tuple(module.defaults)
    return dict(zip(keys, module.uniform_settings(ctx, *keys)))


def _dim_error(name: str, n: int, max_dim: int, dtype: torch.dtype) -> ValueError:
    size = n * n * (torch.finfo(dtype).bits // 8) / 1e9
    return ValueError(
        f"{name}: {n} variables need a {n} x {n} matrix ({size:.1f} GB), more than "
        f"max_dim={max_dim} allows; use LBFGS, a diagonal method, concat_params=False (one "
        "matrix per parameter) or a larger max_dim"
    )


class DiagonalOperator:
    """A diagonal matrix given by its diagonal ``d``: ``matvec`` and ``to_dense``."""

    def __init__(self, d: torch.Tensor):
        self.d = d

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self.d * v

    def to_dense(self) -> torch.Tensor:
        return torch.diag(self.d)


class HessianUpdateStrategy(Module):
    """Base of the dense and diagonal quasi-Newton modules (one shared update loop).

    A subclass implements ``update_H(H, s, y, g, ok, slot, settings)`` and/or
    ``update_B(B, s, y, g, ok, slot, settings)``: they modify the matrix in place, applying the
    correction only where the 0-dim boolean ``ok`` holds (fold it into the coefficients, see
    :func:`masked_inv`); ``g`` is the current gradient (flattened) and ``slot`` the state dict
    holding the approximation, for methods with extra state.

    Args:
        init_scale: the initial Hessian approximation is ``init_scale * I`` (so
            ``H_0 = I / init_scale``). ``"auto"`` starts from ``I`` and rescales it on the first
            update to :math:`H_0 = \\frac{y^T s}{y^T y} I` (Nocedal & Wright eq. 6.20), when
            :math:`y^T s > 0` and the update is not skipped (the scaling is tried once). After
            a restart, ``"auto"`` scales with the pair of the restarting update.
        tol: the method's tolerance (usually the curvature condition :math:`s^T y > tol`).
        ptol: skip the update when :math:`\\max|s| \\le ptol` (``None`` disables). A zero step
            (:math:`s = 0`, e.g. after a rejected trust-region step) is always skipped.
        ptol_restart: restart the approximation instead of only skipping when ``ptol`` fails.
        gtol: skip the update when :math:`\\max|y| \\le gtol` (``None`` disables).
        restart_interval: restart the approximation every this many updates; ``"auto"`` is the
            number of variables + 1; ``None`` never.
        beta: momentum on the approximation, ``M <- beta M + (1 - beta) M_new`` (``None``: off).
        update_freq: update the approximation every this many steps (the secant pair then spans
            those steps); the direction is computed every step.
        scale_first: divide the first direction by :math:`\\max(1, \\|g\\|_1)`.
        scale_second: the same for the second direction.
        concat_params: one approximation over all parameters flattened together (``True``) or
            one per parameter.
        inverse: keep ``H`` (``True``, direction ``H g``) or ``B`` (``False``, direction solved
            from ``B d = g`` with a Cholesky or LU factorisation).
        max_dim: largest number of variables per matrix; more raises ``ValueError`` at the first
            step (``None`` removes the cap). Not used by diagonal methods.
        inner: modules whose output is preconditioned; the approximation is still updated from
            the incoming update.

    Trust regions: the module offers the Hessian-approximation interface of
    :mod:`optbridge.m.trust_region` (``update_hessian(ctx)``, ``hessian(ctx)`` with
    ``inverse=False``, ``inverse_hessian(ctx)`` with ``inverse=True``), e.g.
    ``LevenbergMarquardt(BFGS(inverse=False))``.

    State: the matrix, ``p_prev``/``g_prev`` and counters live in ``global_state`` (one slot)
    when ``concat_params`` is true, otherwise in each parameter's state. When the set of
    parameters taking part changes (a parameter loses its gradient), the approximation restarts.
    All settings are global to the module and must agree across param groups.
    """

    #: the method can keep the inverse approximation H / the direct approximation B
    has_H: bool = True
    has_B: bool = False
    #: B stays symmetric positive definite (solve with Cholesky)
    spd: bool = False
    #: the approximation is a diagonal stored as a vector
    diagonal: bool = False

    def __init__(self, defaults: dict | None = None, rules: dict | None = None, *,
                 init_scale="auto", tol: float = 1e-32, ptol: float | None = 1e-32,
                 ptol_restart: bool = False, gtol: float | None = 1e-32,
                 restart_interval=None, beta: float | None = None, update_freq: int = 1,
                 scale_first: bool = False, scale_second: bool = False,
                 concat_params: bool = True, inverse: bool = True,
                 max_dim: int | None = DEFAULT_MAX_DIM, inner=None):
        forms = tuple(v for v, ok in ((True, self.has_H), (False, self.has_B)) if ok)
        d = dict(defaults or {})
        d.update(init_scale=init_scale, tol=tol, ptol=ptol, ptol_restart=ptol_restart, gtol=gtol,
                 restart_interval=restart_interval, beta=beta, update_freq=update_freq,
                 scale_first=scale_first, scale_second=scale_second,
                 concat_params=concat_params, inverse=inverse)
        r = dict(rules or {})
        r.update(init_scale=init_scale_rule, tol=checks.nonnegative,
                 ptol=checks.optional(checks.nonnegative), ptol_restart=checks.boolean,
                 gtol=checks.optional(checks.nonnegative), restart_interval=interval_rule,
                 beta=beta_rule, update_freq=checks.positive_int, scale_first=checks.boolean,
                 scale_second=checks.boolean, concat_params=checks.boolean,
                 inverse=checks.one_of(*forms))
        if not self.diagonal:
            d["max_dim"] = max_dim
            r["max_dim"] = checks.optional(checks.positive_int)
        super().__init__(d, r)
        if inner is not None:
            self.set_child("inner", inner)

    # ------------------------------------------------------------------- methods to override
    def update_H(self, H, s, y, g, ok, slot, settings) -> None:
        raise NotImplementedError(f"{self.name} does not keep an inverse approximation")

    def update_B(self, B, s, y, g, ok, slot, settings) -> None:
        raise NotImplementedError(f"{self.name} does not keep a direct approximation")

    def initial_matrix(self, n: int, like: torch.Tensor) -> torch.Tensor:
        if self.diagonal:
            return torch.ones(n, dtype=like.dtype, device=like.device)
        return torch.eye(n, dtype=like.dtype, device=like.device)

    def on_restart(self, slot: dict, M: torch.Tensor, s, y, settings) -> bool:
        """Hook called when the approximation restarts after updates (``restart_interval``,
        ``ptol_restart``); return ``True`` when it set ``M`` itself."""
        return False

    # ------------------------------------------------------------------------------- helpers
    @staticmethod
    def _key(settings) -> str:
        return "H" if settings["inverse"] else "B"

    def _scaled_initial(self, n, like, settings):
        M = self.initial_matrix(n, like)
        c = settings["init_scale"]
        if not isinstance(c, str) and c != 1:
            M.mul_(1 / c if settings["inverse"] else c)
        return M

    @staticmethod
    def _auto_factor(s, y, ok):
        """The multiplier ``y's / y'y`` of ``H`` (its inverse for ``B``) of eq. 6.20, or 1."""
        ys, yy = s.dot(y), y.dot(y)
        tiny = torch.finfo(ys.dtype).tiny * 2
        valid = ok & (ys > tiny) & (yy > tiny)
        one = torch.ones_like(ys)
        return torch.where(valid, ys / torch.where(valid, yy, one), one)

    def _apply_auto(self, M, s, y, ok, settings):
        f = self._auto_factor(s, y, ok)
        M.mul_(f if settings["inverse"] else 1 / f)

    def _restart(self, slot, M, s, y, settings):
        if self.on_restart(slot, M, s, y, settings):
            slot["scaled"] = True
            return
        M.copy_(self._scaled_initial(M.shape[0], M, settings))
        if settings["init_scale"] == "auto":
            self._apply_auto(M, s, y, torch.ones((), dtype=torch.bool, device=M.device), settings)
        slot["scaled"] = True

    def _init_slot(self, slot, p, g, numels, settings):
        slot.clear()
        key = self._key(settings)
        slot[key] = self._scaled_initial(p.numel(), p, settings)
        slot["p_prev"], slot["g_prev"] = p, g
        slot["numels"] = numels
        slot["updates"] = 1  # the initialisation counts as the first update
        slot["calls"] = 1
        slot["scaled"] = False

    # --------------------------------------------------------------------------------- step
    def step(self, ctx) -> None:
        if not ctx.params:
            return
        settings = global_settings(self, ctx)
        g_list = ctx.update
        params = ctx.params
        groups = (
            [(self.global_state, params, g_list, list(range(len(params))))]
            if settings["concat_params"]
            else [(st, [p], [g], [i]) for i, (st, p, g) in
                  enumerate(zip(self.param_states(ctx), params, g_list))]
        )
        vec_list = None
        if "inner" in self.children:
            vec_list = self.run_child(ctx, "inner").update
        out: list = [None] * len(params)
        for slot, ps, gs, idx in groups:
            vec = None if vec_list is None else [vec_list[i] for i in idx]
            d = self._slot_step(slot, ps, gs, vec, settings)
            for i, piece in zip(idx, d.split([p.numel() for p in ps])):
                p = params[i]
                piece = piece.view_as(p)
                out[i] = piece if piece.dtype == p.dtype else piece.to(p.dtype)
        ctx.set_update(out, owned=True)

    # ------------------------------------------- Hessian-approximation interface (trust regions)
    def _interface_settings(self, ctx) -> dict:
        settings = global_settings(self, ctx)
        if not settings["concat_params"]:
            raise ValueError(f"{self.name}: a trust region needs one approximation over all "
                             "parameters; construct it with concat_params=True")
        return settings

    def update_hessian(self, ctx) -> None:
        """Fold the current point (``ctx.params``, gradient ``ctx.update``) into the
        approximation, as a step of this module would (a zero step is skipped)."""
        if ctx.params:
            self._fold(self.global_state, ctx.params, ctx.update, self._interface_settings(ctx))

    @property
    def hessian(self):
        """``hessian(ctx)``: the Hessian approximation ``B`` (the live state tensor, dense
        ``(n, n)`` in ``ctx.params`` order; an operator with ``matvec``/``to_dense`` for diagonal
        methods). ``None`` when the module keeps ``H`` (``inverse=True``)."""
        return None if self.defaults["inverse"] else self._hessian

    @property
    def inverse_hessian(self):
        """``inverse_hessian(ctx)``: the dense inverse approximation ``H``; ``None`` when the
        module keeps ``B``."""
        return self._inverse_hessian if self.defaults["inverse"] else None

    def _current(self, ctx, key):
        settings = self._interface_settings(ctx)
        if self._key(settings) != key or key not in self.global_state:
            raise RuntimeError(f"{self.name}: no {key} approximation (inverse="
                               f"{settings['inverse']}); call update_hessian first")
        return self.global_state[key]

    def _hessian(self, ctx):
        B = self._current(ctx, "B")
        return DiagonalOperator(B) if self.diagonal else B

    def _inverse_hessian(self, ctx):
        H = self._current(ctx, "H")
        return torch.diag(H) if self.diagonal else H

    def _fold(self, slot, params, grads, settings):
        """Initialise the approximation or update it with the current point (every
        ``update_freq`` calls); returns the flattened ``g`` when it was read, else ``None``."""
        numels = [p.numel() for p in params]
        n = sum(numels)
        max_dim = settings.get("max_dim")
        if max_dim is not None and n > max_dim:
            raise _dim_error(self.name, n, max_dim, params[0].dtype)
        M = slot.get(self._key(settings))
        fresh = M is None or slot.get("numels") != numels
        if not fresh:
            slot["calls"] += 1
        if not fresh and (slot["calls"] - 1) % settings["update_freq"] != 0:
            return None
        p = flat_copy(params)
        g = flat_copy(grads).to(p.dtype)
        if fresh or M.dtype != p.dtype:
            self._init_slot(slot, p, g, numels, settings)
        else:
            self._update(slot, M, p, g, n, settings)
        return g

    def _slot_step(self, slot, params, grads, vec_tensors, settings) -> torch.Tensor:
        g = self._fold(slot, params, grads, settings)
        key = self._key(settings)
        dtype = slot[key].dtype
        if vec_tensors is not None:
            vec = flat_copy(vec_tensors).to(dtype)
        elif g is not None:
            vec = g
        else:
            vec = flat_copy(grads).to(dtype)
        d = self._direction(slot, vec, settings)
        if not bool(torch.isfinite(d).all()):
            if key == "B" and self.spd and not self.diagonal:  # B is not positive definite
                d = torch.linalg.solve_ex(slot["B"], vec)[0]
            if not bool(torch.isfinite(d).all()):  # the approximation broke down: restart it
                if g is None:
                    g = flat_copy(grads).to(dtype)
                numels = [p.numel() for p in params]
                self._init_slot(slot, flat_copy(params).to(dtype), g, numels, settings)
                d = self._direction(slot, vec, settings)
        return d

    def _update(self, slot, M, p, g, n, settings) -> None:
        slot["updates"] += 1
        s = slot["p_prev"].neg_().add_(p)  # reuses the old buffers: s = p - p_prev
        y = slot["g_prev"].neg_().add_(g)
        slot["p_prev"], slot["g_prev"] = p, g
        interval = settings["restart_interval"]
        if interval == "auto":
            interval = n + 1
        if interval is not None and slot["updates"] % interval == 0:
            self._restart(slot, M, s, y, settings)
            return
        ptol, gtol = settings["ptol"], settings["gtol"]
        if ptol is not None and settings["ptol_restart"] and bool(s.abs().max() <= ptol):
            self._restart(slot, M, s, y, settings)
            return
        ok = torch.isfinite(s).all() & torch.isfinite(y).all() & (s != 0).any()
        if ptol is not None:
            ok = ok & (s.abs().max() > ptol)
        if gtol is not None:
            ok = ok & (y.abs().max() > gtol)
        if not slot["scaled"] and settings["init_scale"] == "auto":
            slot["scaled"] = True
            self._apply_auto(M, s, y, ok, settings)
        beta = settings["beta"]
        target = M.clone() if beta else M
        if settings["inverse"]:
            self.update_H(target, s, y, g, ok, slot, settings)
        else:
            self.update_B(target, s, y, g, ok, slot, settings)
        if beta:
            M.lerp_(target, 1 - beta)

    def _direction(self, slot, vec, settings) -> torch.Tensor:
        updates = slot["updates"]
        first, second = settings["scale_first"], settings["scale_second"]
        if (first and updates == 1) or (second and updates == 2):
            vec = vec / vec.abs().sum().clamp(min=1)
        if settings["inverse"]:
            H = slot["H"]
            return H * vec if self.diagonal else H @ vec
        B = slot["B"]
        if self.diagonal:
            return vec / B
        if self.spd:
            L, info = torch.linalg.cholesky_ex(B)
            d = torch.cholesky_solve(vec.unsqueeze(1), L).squeeze(1)
            return torch.where(info == 0, d, torch.full_like(d, math.nan))
        return torch.linalg.solve_ex(B, vec)[0]


class QuasiNewtonDefaults(HessianUpdateStrategy):
    """:class:`HessianUpdateStrategy` with the standard constructor (no extra settings); the
    arguments are described there."""

    def __init__(self, init_scale="auto", tol: float = 1e-32, ptol: float | None = 1e-32,
                 ptol_restart: bool = False, gtol: float | None = 1e-32, restart_interval=None,
                 beta: float | None = None, update_freq: int = 1, scale_first: bool = False,
                 scale_second: bool = False, concat_params: bool = True,
                 inverse: bool | None = None, max_dim: int | None = DEFAULT_MAX_DIM, inner=None):
        if inverse is None:
            inverse = self.has_H
        super().__init__(
            init_scale=init_scale, tol=tol, ptol=ptol, ptol_restart=ptol_restart, gtol=gtol,
            restart_interval=restart_interval, beta=beta, update_freq=update_freq,
            scale_first=scale_first, scale_second=scale_second, concat_params=concat_params,
            inverse=inverse, max_dim=max_dim, inner=inner,
        )
