"""Trust-region base class: the model, the trial loop and the radius rules."""

from __future__ import annotations

import math

import torch

from ...core import checks
from ...core.module import Module
from ._model import Layout, Model, exact_hessian, has_hessian_interface, module_model

#: outside these bounds the radius is reset to ``init`` (it collapsed) or clamped (it exploded)
RADIUS_MIN, RADIUS_MAX = 1e-12, 1e24


def _at_least_one(v):
    """A finite number >= 1."""
    return None if checks.number(v) is None and v >= 1 else "a finite number >= 1"


RADIUS_RULES = dict(
    eta=checks.interval(0, 1, high_open=True),
    nplus=_at_least_one,
    nminus=checks.interval(0, 1, low_open=True, high_open=True),
    rho_good=checks.number,
    rho_bad=checks.number,
    init=checks.positive,
    max_attempts=checks.positive_int,
    update_freq=checks.positive_int,
)


class TrustRegion(Module):
    """Base of the trust-region modules (catalogue name ``TrustRegionBase``).

    Each step builds the quadratic model of the loss around the current point :math:`x`,

    .. math:: m(-d) = f - g^\\top d + \\tfrac12 d^\\top B d

    (:math:`g` the incoming update, normally the gradient; :math:`B` the exact Hessian when
    ``hess_module`` is None, else ``hess_module``'s approximation, refreshed every
    ``update_freq`` steps), asks the subclass for a step :math:`d` (:meth:`solve`, for the current
    radius :math:`\\Delta`) and evaluates the trial point :math:`x - d` (one ``closure(False)``).
    With the reduction ratio

    .. math:: \\rho = \\frac{f(x) - f(x - d)}{g^\\top d - \\tfrac12 d^\\top B d}

    the radius becomes :math:`r\\,\\eta_-` when :math:`\\rho < \\rho_{bad}` or the trial loss is
    not finite, and :math:`\\max(\\Delta, r\\,\\eta_+)` when :math:`\\rho > \\rho_{good}` (and, with
    ``boundary_tol``, the step reached the boundary: :math:`(\\Delta - r)/\\Delta <`
    ``boundary_tol``), where :math:`r = \\lVert d \\rVert` for norm-bounded subproblems
    (TrustCG, Dogleg) and :math:`r = \\Delta` where the radius is a damping parameter
    (LevenbergMarquardt, CubicRegularization). The trial is accepted when its loss is finite and
    :math:`\\rho > \\eta`; otherwise the parameters are restored bit-exactly (copied back) and
    the step is retried with the new radius, at most ``max_attempts`` times. A model that
    predicts no decrease (:math:`g^\\top d - \\frac12 d^\\top B d \\le 0`, a failed factorisation)
    counts as a rejected attempt without evaluating the loss. After the last failed attempt the
    parameters stay at :math:`x`. A radius that falls below 1e-12 is reset to ``init``; one above
    1e24 is clamped. Nothing happens (no evaluation) when :math:`g = 0` or the loss or gradient
    is not finite.

    The module moves the parameters itself (``ctx.skip_update = True``); the update it leaves for
    later modules is the step taken (zero when nothing was accepted).

    Evaluations per step: the engine's ``closure(True)`` at the starting point (1
    ``loss_and_grad``); with ``hess_module=None``, one ``closure(False)`` per refreshed Hessian;
    one ``closure(False)`` per evaluated trial (``global_state["trials"]``, at most
    ``max_attempts``). ``global_state`` also keeps ``radius``, ``step`` and ``accepted`` (the
    last step's outcome).

    Subclasses implement ``solve(g, model, radius, settings) -> Tensor | None`` (the flat step,
    ``None`` when the subproblem cannot be solved) and set ``norm_bounded``.

    Args (common):
        hess_module: None for the exact Hessian (Newton's model), or a module offering the
            Hessian-approximation interface of :mod:`optbridge.m.trust_region._model`
            (``update_hessian(ctx)``, ``hessian(ctx)``), e.g. a quasi-Newton module keeping
            :math:`B`.
        eta: acceptance threshold on :math:`\\rho` (in [0, 1), <= ``rho_bad``).
        nplus: radius expansion factor (>= 1).
        nminus: radius shrink factor (in (0, 1)).
        rho_good: :math:`\\rho` above which the radius expands.
        rho_bad: :math:`\\rho` below which the radius shrinks (< ``rho_good``).
        init: initial radius (> 0).
        max_attempts: trials per step.
        boundary_tol: None, or expand only for steps with :math:`(\\Delta - r)/\\Delta <`
            ``boundary_tol``.
        update_freq: refresh the Hessian every this many steps (in between the last one is
            reused).
        inner: optional sub-chain; its output replaces :math:`g` in the model.
    """

    #: the subproblem bounds the step norm by the radius
    norm_bounded: bool = True
    #: the module may invert an inverse-Hessian approximation (``fallback`` setting)
    accepts_inverse: bool = False

    def __init__(self, defaults: dict, rules: dict, hess_module=None, *, eta: float, nplus: float,
                 nminus: float, rho_good: float, rho_bad: float, init: float, max_attempts: int,
                 update_freq: int, boundary_tol: float | None = None, inner=None,
                 declare_boundary_tol: bool = False):
        d = dict(eta=eta, nplus=nplus, nminus=nminus, rho_good=rho_good, rho_bad=rho_bad,
                 init=init, max_attempts=max_attempts, update_freq=update_freq)
        r = dict(RADIUS_RULES)
        if declare_boundary_tol:
            d["boundary_tol"] = boundary_tol
            r["boundary_tol"] = checks.optional(checks.nonnegative)
        d.update(defaults)
        r.update(rules)
        super().__init__(d, r)
        self._check_thresholds(self.defaults)
        if hess_module is not None:
            if not has_hessian_interface(hess_module) or not (
                    self.accepts_inverse or callable(getattr(hess_module, "hessian", None))):
                name = getattr(hess_module, "name", type(hess_module).__name__)
                raise TypeError(
                    f"{self.name}: hess_module {name} does not offer the Hessian-approximation "
                    "interface (update_hessian(ctx) and hessian(ctx)"
                    + (", or inverse_hessian(ctx) with fallback=True" if self.accepts_inverse
                       else "") + "); pass None for the exact Hessian, or a quasi-Newton module "
                    "keeping B (inverse=False)"
                )
            self.set_child("hess_module", hess_module)
        self.set_child("inner", inner)

    def _check_thresholds(self, s: dict) -> None:
        if not s["rho_bad"] < s["rho_good"]:
            raise ValueError(f"{self.name}: invalid rho_bad={s['rho_bad']!r}; expected a number "
                             f"< rho_good={s['rho_good']!r}")
        if s["eta"] > s["rho_bad"]:
            raise ValueError(f"{self.name}: invalid eta={s['eta']!r}; expected a number <= "
                             f"rho_bad={s['rho_bad']!r} (a step rejected without shrinking the "
                             "radius would be retried unchanged)")

    # --------------------------------------------------------------------------- subclass API
    def solve(self, g: torch.Tensor, model: Model, radius: float, settings: dict):
        raise NotImplementedError(f"{self.name} does not implement solve()")

    # --------------------------------------------------------------------------------- model
    def _model(self, ctx, g_list, layout: Layout, refresh: bool, settings: dict) -> Model:
        gs = self.global_state
        if not refresh and "hessian" in gs:
            return Model(gs["hessian"])
        hess = self.children.get("hess_module")
        if hess is None:
            model = Model(exact_hessian(ctx, self.name, layout))
        else:
            model = module_model(hess, ctx.fork(g_list), self.name,
                                 settings.get("fallback", False), layout)
        if settings["update_freq"] > 1:
            gs["hessian"] = model.dense
        return model

    # ---------------------------------------------------------------------------------- step
    def step(self, ctx) -> None:
        params = ctx.params
        if not params:
            return
        ctx.require_closure("it evaluates the loss at trial points")
        s = {k: self.uniform_setting(ctx, k) for k in self.defaults}
        self._check_thresholds(s)
        gs = self.global_state
        count = gs.get("step", 0)
        gs["step"] = count + 1
        layout = Layout(params)
        model = self._model(ctx, ctx.update, layout, count % s["update_freq"] == 0, s)
        g_list = self.run_child(ctx, "inner").update if "inner" in self.children else ctx.update
        g = layout.flatten(g_list)
        f0 = float(ctx.get_loss())
        radius = float(gs.get("radius", s["init"]))
        gs["trials"], gs["accepted"] = 0, False
        step = None
        if math.isfinite(f0) and bool(torch.isfinite(g).all()) and bool(g.any()):
            step, radius = self._attempts(ctx, g, model, radius, f0, layout, s)
        gs["radius"] = radius
        ctx.skip_update = True
        if step is None:
            ctx.set_update([torch.zeros_like(p) for p in params], owned=True)
        else:
            ctx.set_update(layout.unflatten(step), owned=True)

    def _attempts(self, ctx, g, model, radius, f0, layout, s):
        params, gs = ctx.params, self.global_state
        x0 = None
        for _ in range(s["max_attempts"]):
            d = self.solve(g, model, radius, s)
            if d is not None and not bool(torch.isfinite(d).all()):
                d = None
            pred = math.nan if d is None else float(g.dot(d) - 0.5 * d.dot(model.matvec(d)))
            if not pred > 0:
                size = radius if d is None or not self.norm_bounded else float(d.norm())
                radius = self._bounded(min(size, radius) * s["nminus"], s)
                continue
            if x0 is None:
                x0 = layout.flatten(params)
                saved = layout.unflatten(x0)
            torch._foreach_sub_(params, layout.unflatten(d))
            try:
                f1 = float(ctx.closure(False))
            except BaseException:
                torch._foreach_copy_(params, saved)
                raise
            gs["trials"] += 1
            rho = (f0 - f1) / pred
            finite = math.isfinite(f1)
            radius = self._update_radius(radius, float(d.norm()), rho, finite, s)
            if finite and rho > s["eta"]:
                gs["accepted"] = True
                return d, radius
            torch._foreach_copy_(params, saved)
        return None, radius

    def _update_radius(self, radius: float, dnorm: float, rho: float, finite: bool, s) -> float:
        r = dnorm if self.norm_bounded else radius
        if not finite or not rho >= s["rho_bad"]:
            return self._bounded(r * s["nminus"], s)
        if rho > s["rho_good"]:
            tol = s.get("boundary_tol")
            if tol is None or (radius - r) / radius < tol:
                return self._bounded(max(radius, r * s["nplus"]), s)
        return radius

    @staticmethod
    def _bounded(radius: float, s) -> float:
        if radius < RADIUS_MIN:
            return float(s["init"])
        return min(radius, RADIUS_MAX)


TrustRegionBase = TrustRegion
