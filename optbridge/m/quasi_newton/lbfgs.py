"""Limited-memory BFGS (two-loop recursion) and the shared limited-memory machinery."""

from __future__ import annotations

import math

import torch

from ...core import checks
from ...core.module import Module


class _Flat:
    """Scratch buffers of a limited-memory module (not checkpointed): the current point as one
    vector, spare history vectors recycled from dropped pairs, per-parameter view sizes."""

    __slots__ = ("key", "token", "sizes", "x", "spare_s", "spare_y")

    def __init__(self, key, params):
        self.key, self.token = key, None
        self.sizes = [p.numel() for p in params]
        self.x = torch.empty(sum(self.sizes), dtype=params[0].dtype, device=params[0].device)
        self.spare_s = self.spare_y = None


def flatten(tensors: list[torch.Tensor]) -> torch.Tensor:
    """A new 1-D tensor holding all ``tensors`` concatenated."""
    return torch.cat([t.reshape(-1) for t in tensors])


class LimitedMemory(Module):
    """Shared machinery of :class:`LBFGS` and :class:`LSR1`: secant pairs, history, restarts.

    Works on one flat vector over all parameters (they must share dtype and device). Per step:
    ``s = x_k - x_{k-1}`` (parameter difference), ``y = g_k - g_{k-1}`` (difference of the
    incoming update, the gradient unless earlier modules changed it); the pair is stored when it
    passes ``ptol``/``gtol`` and :meth:`accept_pair`; the oldest pair is dropped past
    ``history_size``. Non-finite ``s^T y`` or ``y^T y`` (or gradients) restart the method.
    State (``global_state``, checkpointed): ``s``, ``y`` (lists of flat tensors), ``rho``
    (list of 0-dim tensors :math:`1/s^T y`), ``prev_x``, ``prev_g``, ``scale`` (initial
    inverse-Hessian factor), ``step``, ``numel``.
    """

    def __init__(self, defaults: dict, rules: dict, inner=None):
        super().__init__(defaults, rules)
        self._flat: _Flat | None = None
        if inner is not None:
            self.set_child("inner", inner)

    # --------------------------------------------------------------------------- to override
    def accept_pair(self, sy: float, settings: dict) -> bool:
        return True

    def new_scale(self, sy: torch.Tensor, yy: torch.Tensor, sy_value: float, settings: dict):
        """The initial inverse-Hessian factor after a stored pair (None: keep the old one);
        ``sy_value`` is ``float(sy)``."""
        return sy / yy

    def direction(self, q: torch.Tensor, settings: dict) -> None:
        """Overwrite ``q`` (the vector to precondition) with ``H q``."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------- helpers
    def restart(self) -> None:
        gs = self.global_state
        for k in ("s", "y", "rho", "prev_x", "prev_g", "scale"):
            gs.pop(k, None)

    def _scratch(self, ctx) -> _Flat:
        params, f = ctx.params, self._flat
        first, last = params[0], params[-1]
        token = (ctx.layout_token, len(params), id(first), id(last), first.dtype,
                 first.device, last.dtype)
        if f is not None and f.token == token:
            return f
        key = tuple((p.shape, p.dtype, p.device) for p in params)
        if f is None or f.key != key:
            first = params[0]
            if any(p.dtype != first.dtype or p.device != first.device for p in params):
                kinds = sorted({f"{p.dtype}/{p.device}" for p in params})
                raise ValueError(f"{self.name}: all parameters must share one dtype and device "
                                 f"(got {', '.join(kinds)})")
            f = self._flat = _Flat(key, params)
        f.token = token
        return f

    def _settings(self, ctx) -> dict:
        """All settings; each must be the same in every param group."""
        spans = ctx.spans
        if len(spans) == 1:
            group = spans[0][0]
            return {k: group.get(k, v) for k, v in self.defaults.items()}
        return {k: self.uniform_setting(ctx, k) for k in self.defaults}

    def _keep_point_restart(self, keep: bool) -> None:
        """Clear the history; with ``keep`` the current point stays as the previous one."""
        gs = self.global_state
        x, g = gs.get("prev_x"), gs.get("prev_g")
        self.restart()
        if keep and x is not None:
            gs["prev_x"], gs["prev_g"] = x, g

    def _update_history(self, ctx, flat: _Flat, g: torch.Tensor, st: dict) -> bool:
        """Store the pair ending at the current point. Returns False when there was no usable
        previous point (first step, restart): the direction is then a first step's."""
        gs = self.global_state
        torch.cat([p.reshape(-1) for p in ctx.params], out=flat.x)
        prev_x, prev_g = gs.get("prev_x"), gs.get("prev_g")
        if prev_x is None or gs.get("numel") != g.numel() or prev_x.dtype != g.dtype:
            self.restart()
            gs["numel"] = g.numel()
            gs["prev_x"], flat.x = flat.x, torch.empty_like(flat.x)
            gs["prev_g"] = g.clone()
            return False
        s = flat.spare_s if flat.spare_s is not None else torch.empty_like(g)
        y = flat.spare_y if flat.spare_y is not None else torch.empty_like(g)
        flat.spare_s = flat.spare_y = None
        torch.sub(flat.x, prev_x, out=s)
        torch.sub(g, prev_g, out=y)
        sy, yy = s.dot(y), y.dot(y)
        s_max, y_max, sy_f, yy_f = torch.stack([s.abs().max(), y.abs().max(), sy, yy]).tolist()
        gs["prev_x"], flat.x = flat.x, prev_x  # the current point becomes the previous one
        prev_g.copy_(g)
        if not all(map(math.isfinite, (s_max, y_max, sy_f, yy_f))):
            flat.spare_s, flat.spare_y = s, y
            keep = bool(gs["prev_x"].isfinite().all()) and bool(g.isfinite().all())
            self._keep_point_restart(keep)
            return False
        ptol, gtol = st["ptol"], st["gtol"]
        bad_p = ptol is not None and s_max < ptol
        bad_g = gtol is not None and y_max < gtol
        if (bad_p and st["ptol_restart"]) or (bad_g and st["gtol_restart"]):
            flat.spare_s, flat.spare_y = s, y
            self._keep_point_restart(True)
            return False
        if bad_p or bad_g or s_max == 0.0 or y_max == 0.0 or not self.accept_pair(sy_f, st):
            flat.spare_s, flat.spare_y = s, y
            return True
        hist_s, hist_y = gs.setdefault("s", []), gs.setdefault("y", [])
        hist_rho = gs.setdefault("rho", [])
        while len(hist_s) >= st["history_size"]:
            flat.spare_s, flat.spare_y = hist_s.pop(0), hist_y.pop(0)
            hist_rho.pop(0)
        hist_s.append(s)
        hist_y.append(y)
        hist_rho.append(1.0 / sy)
        scale = self.new_scale(sy, yy, sy_f, st)
        if scale is not None:
            gs["scale"] = scale
        return True

    def step(self, ctx) -> None:
        if not ctx.params:
            return
        st = self._settings(ctx)
        flat = self._scratch(ctx)
        gs = self.global_state
        g = flatten(ctx.update)
        tol_grad = st.get("tol_grad")
        if tol_grad is not None and float(g.abs().max()) <= tol_grad:
            g.zero_()
            ctx.set_update(_views(g, ctx.params, flat.sizes), owned=True)
            return
        count = gs.get("step", 0)
        gs["step"] = count + 1
        continuing = True
        if count % st["update_freq"] == 0 or "prev_x" not in gs:
            continuing = self._update_history(ctx, flat, g, st)
        if "inner" in self.children:
            q = flatten(self.run_child(ctx, "inner").update)
        else:
            q = g  # fresh: prev_g holds its own copy
        if not continuing and st["scale_first"]:
            # torch.optim.LBFGS's first step length, min(1, 1/||g||_1), folded into the direction
            q.mul_(torch.clamp(q.abs().sum().reciprocal(), max=1.0))
        elif gs.get("s"):
            self.direction(q, st)
        else:
            scale = gs.get("scale")
            if scale is not None:
                q.mul_(scale)
        ctx.set_update(_views(q, ctx.params, flat.sizes), owned=True)


def _views(flat: torch.Tensor, params, sizes) -> list[torch.Tensor]:
    return [v.view_as(p) for v, p in zip(flat.split(sizes), params)]


_COMMON_RULES = dict(
    history_size=checks.positive_int,
    ptol=checks.optional(checks.nonnegative),
    ptol_restart=checks.boolean,
    gtol=checks.optional(checks.nonnegative),
    gtol_restart=checks.boolean,
    scale_first=checks.boolean,
    update_freq=checks.positive_int,
    tol_grad=checks.optional(checks.nonnegative),
)


class LBFGS(LimitedMemory):
    """Limited-memory BFGS (Nocedal, 1980, "Updating quasi-Newton matrices with limited
    storage", Math. Comp. 35(151), https://doi.org/10.1090/S0025-5718-1980-0572855-7; Liu &
    Nocedal, 1989). Outputs the direction :math:`H_k g_k` (subtracted by the engine), so a
    line search or a trust region should follow.

    With the last :math:`m` pairs :math:`s_i = x_{i+1} - x_i`, :math:`y_i = g_{i+1} - g_i`,
    :math:`\\rho_i = 1 / s_i^\\top y_i`, the two-loop recursion computes

    .. math::
        H_k g = V_{k-1}^\\top \\cdots V_{k-m}^\\top H^0 V_{k-m} \\cdots V_{k-1} g + \\dots,
        \\quad V_i = I - \\rho_i y_i s_i^\\top, \\quad
        H^0 = \\frac{s_{k-1}^\\top y_{k-1}}{y_{k-1}^\\top y_{k-1}} I

    (Nocedal & Wright, Numerical Optimization, 2nd ed., Algorithm 7.4 and eq. 7.20). A pair is
    stored only when :math:`s^\\top y >` ``sy_tol`` (curvature condition). ``g`` is the
    incoming update (the gradient when LBFGS comes first); pairs come from consecutive points
    (parameter and update differences). Non-finite curvature values restart the history.

    Equivalence with ``torch.optim.LBFGS(line_search_fn="strong_wolfe", max_iter=1,
    max_eval=E, lr=lr, history_size=H)``: ``[LBFGS(history_size=H, sy_tol=1e-10),
    StrongWolfe(maxiter=E, init_value=lr, fallback=True, adaptive=False, maxzoom=None)]``
    (add ``tol_grad=1e-7`` for torch's ``tolerance_grad``). The same closure evaluations; the
    iterates agree up to rounding (torch measures :math:`s` as :math:`t d`, here as the
    parameter difference). The defaults here follow torchzero (history 10, ``sy_tol=1e-32``).

    All parameters must share one dtype and device (one flat vector; like torch's LBFGS).

    Args:
        history_size: number of stored pairs :math:`m`.
        ptol: skip the pair when :math:`\\max|s| <` ptol (None: never; a zero :math:`s` or
            :math:`y` is always skipped).
        ptol_restart: restart (clear the history) instead of only skipping.
        gtol: skip the pair when :math:`\\max|y| <` gtol (None: never).
        gtol_restart: restart instead of only skipping.
        sy_tol: store the pair only when :math:`s^\\top y >` sy_tol (None: any positive).
        scale_first: on the first step (no history) output
            :math:`\\min(1, 1/\\lVert g\\rVert_1)\\, g`, torch.optim.LBFGS's first step.
        update_freq: store a pair every this many steps (the pair spans them).
        tol_grad: when :math:`\\max|g| \\le` tol_grad the direction is zero and the state is
            left untouched (torch's ``tolerance_grad``; None: off).
        inner: modules applied after the history update; their output is preconditioned.
    """

    def __init__(self, history_size: int = 10, ptol: float | None = 1e-32,
                 ptol_restart: bool = False, gtol: float | None = 1e-32,
                 gtol_restart: bool = False, sy_tol: float | None = 1e-32,
                 scale_first: bool = True, update_freq: int = 1, tol_grad: float | None = None,
                 inner=None):
        super().__init__(
            dict(history_size=history_size, ptol=ptol, ptol_restart=ptol_restart, gtol=gtol,
                 gtol_restart=gtol_restart, sy_tol=sy_tol, scale_first=scale_first,
                 update_freq=update_freq, tol_grad=tol_grad),
            dict(_COMMON_RULES, sy_tol=checks.optional(checks.nonnegative)),
            inner,
        )

    def accept_pair(self, sy: float, settings: dict) -> bool:
        tol = settings["sy_tol"]
        return sy > (0.0 if tol is None else tol)

    def direction(self, q: torch.Tensor, settings: dict) -> None:
        gs = self.global_state
        s_hist, y_hist, rho = gs["s"], gs["y"], gs["rho"]
        m = len(s_hist)
        alpha = [None] * m
        for i in range(m - 1, -1, -1):
            alpha[i] = s_hist[i].dot(q) * rho[i]
            q.addcmul_(y_hist[i], alpha[i], value=-1)
        q.mul_(gs["scale"])
        for i in range(m):
            beta = y_hist[i].dot(q) * rho[i]
            q.addcmul_(s_hist[i], alpha[i] - beta)
