"""``Optax``: any optax ``GradientTransformation`` as a chain module.

References: optax (DeepMind), https://github.com/google-deepmind/optax; JAX,
https://github.com/jax-ml/jax.
"""

from __future__ import annotations

import numbers

import torch

from optbridge.core import checks
from optbridge.core.module import Module


#: up to this many parameters the update comes back as one JAX buffer per parameter; above it,
#: as one concatenated buffer per dtype (XLA's concatenation costs a pass over memory, each
#: DLPack export about 14 us: measured crossover on CPU between 10 and 200 tensors)
PER_LEAF_MAX = 32


class Optax(Module):
    """Runs an optax transformation on the chain's update.

    ``Optax(optax.adam(1e-3))`` behaves as ``torch.optim.Adam(lr=1e-3)``. Each step the current
    update (the gradients, or what earlier modules made of them) is handed to
    ``transform.update(updates, state, params)`` as optax's ``updates`` and the parameters are
    always passed as ``params``. Parameters whose ``.grad`` is None take no part (the set taking
    part must stay the same from step to step: optax's state is one pytree over a fixed list).

    Conventions:

    - **Sign.** optax's updates are *added* to the parameters (``optax.apply_updates``); the
      engine *subtracts* ``ctx.update``, so the module sets ``ctx.update = -updates`` (the negation
      is fused into the compiled function).
    - **Learning rate.** optax's transforms carry their own learning rate (``optax.adam(lr)``):
      do not chain ``LR`` after ``Optax`` and leave the group ``lr`` at its default (1.0, which
      the engine does not apply). When the transform was built with ``optax.inject_hyperparams``
      (at the top level, not inside ``optax.chain``)
      and has a numeric ``learning_rate`` hyperparameter (name: ``lr_hyperparam``), the module
      declares the group setting ``lr`` (default: the injected value) and writes it into the
      hyperparameter before every update, so ``torch.optim.lr_scheduler`` schedulers drive it
      without recompiling. The ``lr`` must agree across param groups (one optax state).
    - **Extra arguments.** For a ``GradientTransformationExtraArgs`` (``optax.lbfgs()``,
      ``optax.scale_by_backtracking_linesearch``, ``optax.scale_by_zoom_linesearch``,
      ``inject_hyperparams`` results) and a step with a closure, the module passes ``value``
      (the loss at the parameters), ``grad`` (the gradients) and ``value_fn`` (``extra_args``:
      ``"auto"``, the default, does that; ``False`` never passes them; ``True`` requires a
      closure). ``value_fn(params)`` evaluates the chain's closure at the given parameters
      through ``jax.pure_callback``: the JAX parameters are copied into the torch parameters,
      ``closure(False)`` is evaluated, and the parameters (and ``.grad``) are restored bit for
      bit. Differentiating ``value_fn`` (the zoom line search) evaluates ``closure(True)`` and
      returns torch's gradient (``jax.custom_vjp``). Every evaluation is counted in
      ``optimizer.evals``.
    - **Compilation.** ``transform.update`` (plus the sign, the lr injection and the flattening
      of the outputs) is ``jax.jit``-compiled once and the compiled function cached; a change of
      the parameters' shapes or dtypes raises instead of recompiling. ``trace_count`` counts the
      traces (1 after any number of steps with a fixed layout, 2 when steps with and without
      extra arguments alternate).
    - **Memory.** Parameters and gradients reach JAX through DLPack without a copy when they are
      contiguous and aligned (see :mod:`optbridge.adapters.jax_bridge`: an unaligned or
      non-contiguous tensor is copied each step); the JAX views are cached while the tensors
      stay the same. The update comes back as JAX buffers viewed by torch without a copy (one
      per parameter up to ``PER_LEAF_MAX`` parameters, else one concatenated buffer per dtype).
      optax's state stays on the JAX side (donated to the compiled function so XLA updates it
      in place); on the extra-arguments path parameters and gradients are copied first,
      because the closure evaluations overwrite the parameters while XLA runs.
    - **dtypes.** float32, bfloat16 and float16 work as they are. float64 needs JAX's x64 mode:
      without ``jax.config.update("jax_enable_x64", True)`` JAX would silently compute in
      float32, so the first step with a float64 parameter raises ``ValueError`` (the module never
      flips that global switch itself).
    - **Checkpoints.** ``global_state["optax"]`` holds the live state; ``Modular.state_dict()``
      (which deep-copies ``global_state``) receives its leaves as torch tensors in a plain dict,
      so ``torch.load(weights_only=True)`` works. After ``load_state_dict`` the leaves are
      unflattened into the structure of ``transform.init(params)`` at the next step.

    Args:
        transform: an ``optax.GradientTransformation`` (e.g. ``optax.adam(1e-3)``, not
            ``optax.adam``).
        lr_hyperparam: name of the injected hyperparameter that the group ``lr`` drives.
        extra_args: ``"auto"``, ``True`` or ``False`` (see above).
        donate: donate the optax state to the compiled function (in-place state update).
    """

    def __init__(self, transform, *, lr_hyperparam: str = "learning_rate", extra_args="auto",
                 donate: bool = True):
        from .jax_bridge import make_importer, require_jax

        jax, optax = require_jax("Optax")
        if not isinstance(transform, optax.GradientTransformation):
            hint = ""
            if callable(transform):
                hint = " (got a function: call it, e.g. optax.adam(1e-3) rather than optax.adam)"
            raise TypeError(
                f"Optax: transform must be an optax.GradientTransformation, got "
                f"{type(transform).__name__}{hint}"
            )
        if extra_args not in ("auto", True, False):
            raise ValueError(f"Optax: extra_args must be 'auto', True or False, got {extra_args!r}")
        if not isinstance(lr_hyperparam, str):
            raise TypeError(f"Optax: lr_hyperparam must be a str, got {type(lr_hyperparam).__name__}")
        lr0 = _injected_lr(jax, optax, transform, lr_hyperparam)
        if lr0 is None:
            super().__init__()
        else:
            super().__init__(dict(lr=lr0), rules=dict(lr=checks.nonnegative))
        self.transform = transform
        self.lr_hyperparam = lr_hyperparam if lr0 is not None else None
        self.takes_extra_args = isinstance(transform, optax.GradientTransformationExtraArgs)
        self.extra_args = extra_args
        self.donate = bool(donate)
        self.trace_count = 0
        self._jax, self._optax = jax, optax
        importer = make_importer(jax)
        from .jax_bridge import ViewCache

        self._pviews, self._gviews = ViewCache(importer), ViewCache(importer)
        self._compiled: dict = {}
        self._layout = None
        self._plan = None
        self._eval = None  # (ctx) during a step on the extra-arguments path

    def __repr__(self) -> str:
        extra = f", lr={self.defaults['lr']!r}" if self.lr_hyperparam is not None else ""
        return f"Optax(<optax transform>{extra})"

    # --------------------------------------------------------------------------------- step
    def step(self, ctx) -> None:
        params = ctx.params
        if not params:
            return
        jax = self._jax
        layout = tuple((tuple(p.shape), p.dtype) for p in params)
        if layout != self._layout:
            self._check_layout(layout)
        use_extra = self._use_extra(ctx)
        lr = float(self.uniform_setting(ctx, "lr")) if self.lr_hyperparam is not None else 0.0
        state = self._state(params)
        grads = ctx.update
        if use_extra:
            jnp = jax.numpy
            jparams = [jnp.array(v, copy=True) for v in self._pviews(params)]
            jgrads = [jnp.array(v, copy=True) for v in self._gviews(grads)]
            dtype = jparams[0].dtype
            value = jnp.asarray(float(ctx.get_loss()), dtype=dtype)
            fn = self._fn(True)
            self._eval = ctx
            try:
                flats, new_state = fn(jgrads, state, jparams, lr, value)
                flats = jax.block_until_ready(flats)
                new_state = jax.block_until_ready(new_state)
            finally:
                self._eval = None
        else:
            flats, new_state = self._fn(False)(self._gviews(grads), state, self._pviews(params), lr)
        self.global_state["optax"] = _Live(self, new_state)
        ctx.set_update(self._unflatten(flats), owned=True)

    # ------------------------------------------------------------------------------ helpers
    def _use_extra(self, ctx) -> bool:
        if self.extra_args is False or not self.takes_extra_args:
            if self.extra_args is True and not self.takes_extra_args:
                raise ValueError("Optax: extra_args=True but the transform is not a "
                                 "GradientTransformationExtraArgs")
            return False
        if ctx.closure is None:
            if self.extra_args is True:
                ctx.require_closure("extra_args=True evaluates value_fn")
            return False
        return True

    def _check_layout(self, layout) -> None:
        jax = self._jax
        if any(dt == torch.float64 for _, dt in layout) and not jax.config.jax_enable_x64:
            raise ValueError(
                "Optax: float64 parameters need JAX's x64 mode; call "
                "jax.config.update('jax_enable_x64', True) before the first step (without it JAX "
                "computes in float32)"
            )
        bad = [dt for _, dt in layout if not dt.is_floating_point]
        if bad:
            raise TypeError(f"Optax: parameters must be floating point, got {bad[0]}")
        live = self.global_state.get("optax")
        if self._layout is not None and isinstance(live, _Live):
            raise ValueError(
                f"Optax: the parameters taking part changed from {len(self._layout)} to "
                f"{len(layout)} tensors (or their shapes/dtypes changed); optax's state covers a "
                "fixed list: keep the same parameters with gradients every step"
            )
        self._layout = layout
        self._plan = None
        self._compiled.clear()
        self._pviews.clear()
        self._gviews.clear()

    def _state(self, params):
        jax = self._jax
        live = self.global_state.get("optax")
        if isinstance(live, _Live):
            return live.state
        jparams = self._pviews(params)
        fresh = self.transform.init(jparams)
        leaves, treedef = jax.tree.flatten(fresh)
        if isinstance(live, dict) and "leaves" in live:  # loaded from a checkpoint
            saved = live["leaves"]
            if len(saved) != len(leaves):
                raise ValueError(
                    f"Optax: the checkpoint holds {len(saved)} state leaves, the transform's "
                    f"state has {len(leaves)}; load it into the same transform"
                )
            leaves = [_leaf_from_torch(jax, s, ref) for s, ref in zip(saved, leaves)]
        else:
            # own every buffer (init may return views of the parameters, e.g. lookahead) and
            # drop weak types (updates return strong types: a weak leaf would retrace once)
            leaves = [jax.numpy.array(x, dtype=x.dtype, copy=True) if isinstance(x, jax.Array)
                      else x for x in leaves]
        return jax.tree.unflatten(treedef, leaves)

    def _fn(self, extra: bool):
        fn = self._compiled.get(extra)
        if fn is None:
            fn = self._compiled[extra] = self._build(extra)
        return fn

    def _build(self, extra: bool):
        jax, optax = self._jax, self._optax
        jnp = jax.numpy
        transform, name = self.transform, self.lr_hyperparam
        dtypes = [jnp.dtype(str(dt).removeprefix("torch.")) for _, dt in self._layout]
        order = _dtype_order(dtypes)
        value_fn = _make_value_fn(self, jax) if extra else None
        per_leaf = len(dtypes) <= PER_LEAF_MAX

        def run(grads, state, params, lr, value=None):
            self.trace_count += 1
            if name is not None:
                hp = dict(state.hyperparams)
                hp[name] = jnp.asarray(lr, dtype=hp[name].dtype)
                state = state._replace(hyperparams=hp)
            if extra:
                updates, new_state = transform.update(grads, state, params, value=value,
                                                      grad=grads, value_fn=value_fn)
            else:
                updates, new_state = transform.update(grads, state, params)
            inputs = {id(x) for x in params} | {id(x) for x in grads}
            new_state = jax.tree.map(lambda x: jnp.array(x, copy=True) if id(x) in inputs else x,
                                     new_state)
            if per_leaf:
                return tuple((-u).astype(dt) for u, dt in zip(updates, dtypes)), new_state
            flats = tuple(
                jnp.concatenate([(-updates[i]).astype(dt).ravel() for i in idx])
                for dt, idx in order
            )
            return flats, new_state

        del optax
        return jax.jit(run, donate_argnums=(1,) if self.donate else ())

    def _unflatten(self, flats) -> list[torch.Tensor]:
        from .jax_bridge import to_torch

        if len(self._layout) <= PER_LEAF_MAX:
            return [to_torch(u) for u in flats]
        plan = self._plan
        if plan is None:
            dtypes = [str(dt) for _, dt in self._layout]
            plan = self._plan = _split_plan(self._layout, _dtype_order(dtypes))
        out: list = [None] * len(self._layout)
        for flat, (idx, sizes, shapes) in zip(flats, plan):
            pieces = to_torch(flat).split(sizes)
            for i, piece, shape in zip(idx, pieces, shapes):
                out[i] = piece.view(shape)
        return out


class _Live:
    """The live optax state in ``global_state``; a deep copy (``state_dict``) is a plain dict of
    torch tensors (``{"leaves": [...]}``), loadable with ``torch.load(weights_only=True)``."""

    __slots__ = ("module", "state")

    def __init__(self, module, state):
        self.module, self.state = module, state

    def __deepcopy__(self, memo):
        from .jax_bridge import leaves_to_torch

        return {"leaves": leaves_to_torch(self.module._jax.tree.leaves(self.state))}


def _leaf_from_torch(jax, saved, ref):
    jnp = jax.numpy
    if isinstance(saved, torch.Tensor):
        arr = jnp.array(jax.dlpack.from_dlpack(saved.detach().cpu().contiguous()), copy=True)
        dtype = getattr(ref, "dtype", None)
        return arr.astype(dtype) if dtype is not None else arr
    return saved


def _dtype_order(dtypes) -> list:
    """[(dtype, [positions])] in order of first appearance."""
    out: dict = {}
    for i, dt in enumerate(dtypes):
        out.setdefault(dt, []).append(i)
    return list(out.items())


def _split_plan(layout, order) -> list:
    plan = []
    for _, idx in order:
        shapes = [layout[i][0] for i in idx]
        sizes = [int(torch.Size(s).numel()) for s in shapes]
        plan.append((idx, sizes, shapes))
    return plan


def _injected_lr(jax, optax, transform, name: str):
    """The initial value of the numeric hyperparameter ``name`` if ``transform`` was built with
    ``optax.inject_hyperparams`` (and ``name`` is not a schedule); else None."""
    try:
        state = transform.init([jax.numpy.zeros((1,), jax.numpy.float32)])
    except Exception:
        return None
    hp = getattr(state, "hyperparams", None)
    hs = getattr(state, "hyperparams_states", {}) or {}
    if not isinstance(hp, dict) or name not in hp or name in hs:
        return None
    value = float(hp[name])
    return value if isinstance(value, numbers.Real) else None


_NO_NUMPY = (torch.bfloat16,)


def _np_to_torch(x) -> torch.Tensor:
    """A callback's NumPy argument as a torch tensor (bfloat16, which NumPy only knows through
    ml_dtypes, goes through float32: exact)."""
    import numpy as np

    if x.dtype.name == "bfloat16":
        return torch.as_tensor(np.asarray(x, dtype=np.float32)).to(torch.bfloat16)
    return torch.tensor(np.asarray(x))  # a copy: the callback's buffers are read-only


def _make_value_fn(module: Optax, jax):
    """``value_fn(params) -> loss`` evaluating the torch closure of the running step through
    ``jax.pure_callback``; differentiable (``custom_vjp``) with torch's gradient."""
    jnp = jax.numpy

    def evaluate(flat_params, backward: bool):
        ctx = module._eval
        if ctx is None:  # pragma: no cover - only called inside Optax.step
            raise RuntimeError("Optax: value_fn called outside a step")
        params, keys = ctx.params, ctx.keys
        backup = [p.clone() for p in params]
        grad_refs = [k.grad for k in keys]
        grad_backup = [None if g is None else g.clone() for g in grad_refs]
        try:
            with torch.no_grad():
                for p, x in zip(params, flat_params):
                    p.copy_(_np_to_torch(x).view(p.shape))
            loss = ctx.closure(backward)
            grads = ctx.read_grads() if backward else None
            grads = None if grads is None else [g.detach().clone() for g in grads]
        finally:
            with torch.no_grad():
                for p, b in zip(params, backup):
                    p.copy_(b)
                for k, ref, b in zip(keys, grad_refs, grad_backup):
                    k.grad = ref
                    if ref is not None:
                        ref.copy_(b)
        return float(loss), grads

    def loss_only(*flat):
        import numpy as np

        v, _ = evaluate(flat, False)
        return np.asarray(v, dtype=flat[0].dtype)

    def loss_and_grad(*flat):
        import numpy as np

        v, g = evaluate(flat, True)
        return (np.asarray(v, dtype=flat[0].dtype),
                [gi.float().numpy().astype(f.dtype) if gi.dtype in _NO_NUMPY else
                 gi.numpy().astype(f.dtype) for gi, f in zip(g, flat)])

    def shape_of(params):
        return jax.ShapeDtypeStruct((), params[0].dtype)

    @jax.custom_vjp
    def value_fn(params):
        return jax.pure_callback(loss_only, shape_of(params), *params)

    def fwd(params):
        specs = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in params]
        v, g = jax.pure_callback(loss_and_grad, (shape_of(params), specs), *params)
        return v, g

    def bwd(g, ct):
        return ([ct * gi for gi in g],)

    value_fn.defvjp(fwd, bwd)
    del jnp
    return value_fn
