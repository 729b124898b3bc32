"""The per-step context that flows through a chain of modules.

A :class:`StepContext` holds, for one ``Modular.step``:

- ``params``: the parameters taking part in this step (real views of complex parameters, so
  elementwise formulas match torch.optim's ``view_as_real`` treatment); ``keys`` are the user's
  tensors, used to key state.
- ``grads``: evaluated lazily (at most once per point) through the counted closure.
- ``update``: the direction that will be *subtracted* from the parameters. It starts as the
  gradients (borrowed, never written to) and each module replaces or modifies it.
- ``closure``: the counted closure; a module may replace it for the modules after it.

Ownership of the update: a module may write into ``update`` in place only when the context owns
it (``mutable_update()`` copies a borrowed update first). A module that hands out one of its
state buffers as the update assigns it with ``ctx.update = buf`` (borrowed), so later in-place
writes copy it instead of corrupting the state. ``set_update(new, owned=True)`` is for freshly
allocated tensors.

A pending scalar factor (``scale_update``) lets step-size modules avoid a pass over memory: it is
folded into the final ``params -= scale * update`` and materialised only if a later module reads
the update.
"""

from __future__ import annotations

import torch

from . import foreach as fe


_BETAS_INDEX = {"beta1": 0, "beta2": 1}


def group_value(group: dict, key: str, default):
    """A module setting as seen from a param group.

    An explicit ``group[key]`` wins; ``beta1``/``beta2`` may also come from torch's ``betas``
    pair (which ``OneCycleLR``/``CyclicLR`` cycle); otherwise the module's default.
    """
    if key in group:
        return group[key]
    idx = _BETAS_INDEX.get(key)
    if idx is not None and "betas" in group:
        betas = group["betas"]
        if len(betas) > idx:
            return betas[idx]
    return default


def _mul(a, b, n: int):
    if fe.is_list(a) or fe.is_list(b):
        a = a if fe.is_list(a) else [a] * n
        b = b if fe.is_list(b) else [b] * n
        return [x * y for x, y in zip(a, b)]
    return a * b


def _add(a, b, n: int):
    if fe.is_list(a) or fe.is_list(b):
        a = a if fe.is_list(a) else [a] * n
        b = b if fe.is_list(b) else [b] * n
        return [x + y for x, y in zip(a, b)]
    return a + b


class StepContext:
    """State of one optimizer step as it flows through the chain (see module docstring)."""

    __slots__ = (
        "optimizer",
        "params",
        "keys",
        "spans",
        "closure",
        "loss",
        "_grads",
        "_update",
        "_owned",
        "_scale",
        "_tscale",
        "_den",
        "_pcoef",
        "_target",
        "skip_update",
        "stop_chain",
        "module",
        "step_index",
        "extra",
        "parent",
    )

    def __init__(self, optimizer, params, keys, spans, closure, step_index: int):
        self.optimizer = optimizer
        self.params: list[torch.Tensor] = params
        self.keys: list[torch.Tensor] = keys
        self.spans: list = spans  # [(group_dict, start, stop)] over params
        self.closure = closure
        self.loss = None  # loss at the starting point, once evaluated
        self._grads = None
        self._update = None
        self._owned = False
        self._scale = None
        self._tscale = None  # pending per-parameter 0-dim tensor factors (no host sync)
        self._den = None  # pending denominator: update = _update / _den (then * _scale)
        self._pcoef = None  # pending parameter term: update += _pcoef * params
        self._target = None  # pending target point: update = params - _target
        self.skip_update = False  # a module already moved the parameters
        self.stop_chain = False  # no later module of this step runs (forks have their own flag)
        self.module = None  # module currently running (for error messages)
        self.step_index = step_index
        self.extra: dict = {}  # scratch space modules may share within a step
        self.parent = None

    # ----------------------------------------------------------------------------- evaluation
    def owner_name(self) -> str:
        return type(self.module).__name__ if self.module is not None else "Modular.step"

    def require_closure(self, why: str = "") -> None:
        if self.closure is None:
            from .closure import ClosureError

            raise ClosureError(
                f"{self.owner_name()}: requires a closure passed to step(closure)"
                + (f" ({why})" if why else "")
            )

    def evaluate(self, backward: bool = True):
        """Evaluate the closure at the current parameters; with ``backward`` refresh ``grads``."""
        self.require_closure()
        loss = self.closure(backward)
        if backward:
            self._grads = self.read_grads()
        return loss

    def get_loss(self):
        """Loss at the starting point (evaluated loss-only once if nobody evaluated it yet)."""
        if self.loss is None:
            self.loss = self.evaluate(backward=False)
        return self.loss

    def read_grads(self) -> list[torch.Tensor]:
        """The gradients now in ``.grad`` (zeros where None), without changing ``ctx.grads``."""
        grads = []
        for p, k in zip(self.params, self.keys):
            g = k.grad
            if g is None:
                g = torch.zeros_like(p)
            elif p is not k:  # complex parameter: real view of its grad
                g = torch.view_as_real(g)
            grads.append(g)
        return grads

    @property
    def grads(self) -> list[torch.Tensor]:
        if self._grads is None:
            if self.closure is not None:
                self.loss = self.evaluate(backward=True)
            else:
                self._grads = self.read_grads()
        return self._grads

    @grads.setter
    def grads(self, value):
        self._grads = list(value)

    # ----------------------------------------------------------------------------- the update
    @property
    def update(self) -> list[torch.Tensor]:
        if self._target is not None:
            self._materialize_target()
        if self._update is None:
            self._update = self.grads
            self._owned = False
        if self._den is not None:
            self._materialize_ratio()
        if self._scale is not None:
            self._materialize_scale()
        if self._tscale is not None:
            self._materialize_tensor_scale()
        if self._pcoef is not None:
            self._materialize_params_term()
        return self._update

    @update.setter
    def update(self, value):
        """Assign a borrowed update (a state buffer or someone else's tensors)."""
        self._update = value if isinstance(value, list) else list(value)
        self._owned = False
        self._scale = self._tscale = self._den = self._pcoef = self._target = None

    def set_update(self, value, owned: bool = True) -> None:
        """Assign the update; ``owned=True`` for tensors allocated by the caller for this step."""
        self._update = value if isinstance(value, list) else list(value)
        self._owned = owned
        self._scale = self._tscale = self._den = self._pcoef = self._target = None

    def set_update_ratio(self, numerator, denominator) -> None:
        """Set ``update = numerator / denominator`` lazily.

        ``denominator`` must be owned (allocated for this step); ``numerator`` may be a state
        buffer. When nothing reads the update before it is applied, the division happens inside
        one ``addcdiv_`` on the parameters, as torch.optim's Adam does.
        """
        self._update = numerator if isinstance(numerator, list) else list(numerator)
        self._den = denominator if isinstance(denominator, list) else list(denominator)
        self._owned = False
        self._scale = self._tscale = self._pcoef = self._target = None

    def set_target(self, values) -> None:
        """Say where the parameters should end: ``update = params - values``, lazily.

        When nothing reads or rescales the update afterwards, the engine copies ``values`` into
        the parameters (one pass, bit-exact); otherwise the difference is materialised.
        ``values`` must stay unchanged until the step ends (e.g. an adapter's shadow copies).
        """
        self._target = values if isinstance(values, list) else list(values)
        self._update, self._owned = None, False
        self._scale = self._tscale = self._den = self._pcoef = None

    def _materialize_target(self):
        target, self._target = self._target, None
        self._update, self._owned = torch._foreach_sub(self.params, target), True

    def _materialize_ratio(self):
        """``den <- scale * num / den`` in one pass per tensor (foreach has no ``out=``)."""
        num, den, scale = self._update, self._den, self._scale
        self._den = self._scale = None
        if scale is None:
            for n, d in zip(num, den):
                torch.div(n, d, out=d)
        else:
            zero = torch.zeros((), dtype=den[0].dtype, device=den[0].device)
            scales = scale if fe.is_list(scale) else [scale] * len(den)
            for n, d, s in zip(num, den, scales):
                torch.addcdiv(zero, n, d, value=s, out=d)
        self._update, self._owned = den, True

    def update_with_factor(self):
        """``(tensors, factor)`` with ``update == factor * tensors``, without a pass over memory,
        when the only pending work is one factor shared by every tensor (a number, or one 0-dim
        CPU tensor: read with ``item()``); None otherwise. For fused kernels that fold the
        factor into their own read. ``tensors`` must not be written to."""
        if self._target is not None or self._den is not None or self._pcoef is not None:
            return None
        factor = 1.0
        if self._scale is not None:
            if fe.is_list(self._scale) or isinstance(self._scale, torch.Tensor):
                return None
            factor = float(self._scale)
        if self._tscale is not None:
            t0 = self._tscale[0]
            if t0.device.type != "cpu" or any(t is not t0 for t in self._tscale):
                return None
            factor *= t0.item()
        return (self._update if self._update is not None else self.grads), factor

    @property
    def update_is_owned(self) -> bool:
        return self._owned

    def mutable_update(self) -> list[torch.Tensor]:
        """The update, copied first if it is borrowed, safe to modify in place."""
        u = self.update
        if not self._owned:
            u = fe.mul_scalar(u, 1.0) if u else []
            self._update, self._owned = u, True
        return u

    def scale_update(self, factor) -> None:
        """Multiply the update by ``factor``, lazily: a number or a list with one number per
        parameter, or a 0-dim tensor or a list of 0-dim tensors (one per parameter; kept on
        the device, no host sync). Pending factors are folded into the final parameter update
        when nothing reads the update in between."""
        if self._target is not None:
            self._materialize_target()
        if self._update is None:
            self._update = self.grads
            self._owned = False
        n = len(self.params)
        if isinstance(factor, torch.Tensor) or (fe.is_list(factor) and factor
                                                and isinstance(factor[0], torch.Tensor)):
            factors = [factor] * n if isinstance(factor, torch.Tensor) else list(factor)
            if self._den is not None or self._pcoef is not None:
                u = self.mutable_update()
                torch._foreach_mul_(u, factors)
            elif self._tscale is None:
                self._tscale = factors
            else:
                self._tscale = torch._foreach_mul(self._tscale, factors)
            return
        self._scale = factor if self._scale is None else _mul(self._scale, factor, n)
        if self._pcoef is not None:
            self._pcoef = _mul(self._pcoef, factor, n)

    def _materialize_tensor_scale(self):
        factors, self._tscale = self._tscale, None
        if self._owned:
            torch._foreach_mul_(self._update, factors)
        else:
            self._update = torch._foreach_mul(self._update, factors)
            self._owned = True

    def add_params_term(self, coef) -> None:
        """``update += coef * params`` (coef a number or one per parameter), lazily.

        When the update is a pending ratio (Adam-like modules) or carries pending tensor
        factors, the term is folded into the final parameter update as ``params *= 1 - lr *
        coef`` before the rest is applied, which is torch.optim.AdamW's order and saves a pass.
        Otherwise it is added now (same cost), in torch.optim.SGD's order.
        """
        if self._target is not None:
            self._materialize_target()
        if self._den is None and self._tscale is None:
            u = self.update
            if self._owned:
                fe.add_scaled_(u, self.params, coef)
            else:
                self._update, self._owned = fe.add_scaled(u, self.params, coef), True
            return
        self._pcoef = coef if self._pcoef is None else _add(self._pcoef, coef, len(self.params))

    def _materialize_params_term(self):
        coef, self._pcoef = self._pcoef, None
        if not self._owned:
            self._update = fe.mul_scalar(self._update, 1.0)
            self._owned = True
        fe.add_scaled_(self._update, self.params, coef)

    def _materialize_scale(self):
        scale, self._scale = self._scale, None
        if self._owned:
            fe.mul_scalar_(self._update, scale)
        else:
            self._update = fe.mul_scalar(self._update, scale)
            self._owned = True

    def apply_update(self) -> None:
        """``params -= update`` in place, with the pending factors folded in."""
        if self.skip_update or not self.params:
            return
        if self._target is not None:
            torch._foreach_copy_(self.params, self._target)
            self.optimizer._record_target(self._target, self.params)
            return
        if self._update is None:
            self._update = self.grads
        u, scale, params = self._update, self._scale, self.params
        if self._pcoef is not None:
            fe.mul_scalar_(params, fe.scalar_map(lambda c: 1 - c, self._pcoef))
        if self._den is not None:
            neg = -1.0 if scale is None else fe.scalar_map(lambda x: -x, scale)
            torch._foreach_addcdiv_(params, u, self._den, neg)
        elif self._tscale is not None:
            if not fe.is_list(scale):
                torch._foreach_addcmul_(params, u, self._tscale, value=-1.0 if scale is None else -scale)
            else:
                for p, x, t, v in zip(params, u, self._tscale, scale):
                    p.addcmul_(x, t, value=-v)
        elif scale is None:
            torch._foreach_sub_(params, u)
        else:
            fe.add_scaled_(params, u, fe.scalar_map(lambda x: -x, scale))

    @property
    def layout_token(self):
        """Changes whenever the set of parameters taking part or the state is reset or loaded:
        a key for caches of per-parameter lists."""
        return self.optimizer._layout_token

    def terminate(self, reason: str) -> None:
        """Stop the optimizer: this step still applies its update (unless a module skips it);
        later ``step()`` calls do nothing. ``optimizer.stop_reason`` records ``reason``."""
        self.optimizer.terminated = True
        if self.optimizer.stop_reason is None:
            self.optimizer.stop_reason = reason

    # ----------------------------------------------------------------------------- sub-chains
    def fork(self, update=None) -> StepContext:
        """A child context sharing params, grads, loss and closure, with its own update.

        ``update`` (default: this context's update) is handed to the child borrowed, so the child
        cannot modify the parent's tensors in place.
        """
        child = StepContext.__new__(StepContext)
        child.optimizer, child.params, child.keys = self.optimizer, self.params, self.keys
        child.spans, child.closure, child.loss = self.spans, self.closure, self.loss
        child._grads = self._grads
        child._update = self.update if update is None else list(update)
        child._owned, child._scale, child._den, child._pcoef = False, None, None, None
        child._tscale = child._target = None
        child.skip_update, child.stop_chain, child.module = False, False, self.module
        child.step_index, child.extra, child.parent = self.step_index, self.extra, self
        return child

    def fork_subset(self, indices: list[int], update=None) -> StepContext:
        """A child context over the parameters at ``indices`` only (e.g. ``Split``).

        Settings, state and the update refer to that subset; ``update`` (default: this
        context's update restricted to it) is borrowed. The closure is shared.
        """
        child = self.fork([self.update[i] for i in indices] if update is None else update)
        child.params = [self.params[i] for i in indices]
        child.keys = [self.keys[i] for i in indices]
        if self._grads is not None:
            child._grads = [self._grads[i] for i in indices]
        spans, pos = [], 0
        for group, a, b in self.spans:
            n = sum(1 for i in indices if a <= i < b)
            if n:
                spans.append((group, pos, pos + n))
                pos += n
        child.spans = spans
        return child

    def merge_evaluations(self, child: StepContext) -> None:
        """Take over the loss (and, for a full fork, the gradients) a child evaluated at the
        starting point."""
        if self.loss is None:
            self.loss = child.loss
        if self._grads is None and child.params is self.params:
            self._grads = child._grads

    # ----------------------------------------------------------------------------- settings
    def group_values(self, key: str, default):
        """Per-span values of ``key``: group override if present, else ``default``."""
        return [group_value(g, key, default) for g, _, _ in self.spans]

    def per_param(self, values: list):
        """Expand per-span values to a number (all equal) or a per-parameter list."""
        first = values[0] if values else None
        if all(v == first for v in values):
            return first
        out = []
        for v, (_, a, b) in zip(values, self.spans):
            out.extend([v] * (b - a))
        return out
