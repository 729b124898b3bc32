"""``Modular``: a chain of modules as a ``torch.optim.Optimizer``.

``Modular(params, *modules)`` runs the modules in order on each step and subtracts the final
update from the parameters in place.

Param groups may override any module hyperparameter by name; the override reaches only modules
that declare that name, and a name no module declares is an error.

Learning rate: ``group["lr"]`` is the ``lr`` of every module that declares ``lr`` (``LR``), so
every ``torch.optim.lr_scheduler`` works. Without a group value, ``lr`` defaults to the chain's
``LR`` default. When several ``LR`` modules have different defaults (e.g. inside ``Alternate``)
and the group sets no ``lr``, the group has no ``lr`` key and each module keeps its own; a
scheduler then needs an explicit group ``lr`` (which all of them follow) — or use ``StepSize``
for fixed factors. In a chain where no module declares ``lr``, the group's ``lr`` (default 1.0)
multiplies the final update, so a scheduler still scales the steps.
"""

from __future__ import annotations

import copy
import functools
from itertools import chain as _chain

import torch

from .closure import CountedClosure, EvalCounts
from .context import StepContext
from .module import Chain, Module, as_module

_MISSING = object()
_DISAGREE = object()

#: keys torch and its schedulers put in param groups; never module hyperparameters
_TORCH_GROUP_KEYS = frozenset(
    {"params", "lr", "initial_lr", "param_names", "max_lr", "min_lr", "base_lr", "swa_lr"}
)


class Modular(torch.optim.Optimizer):
    """A ``torch.optim.Optimizer`` made of chained modules.

    Args:
        params: parameters or param groups, as for any torch optimizer. A group may set any
            hyperparameter declared by a module of the chain.
        *modules: module instances; a list is a sub-chain.
        reuse_evaluation: for deterministic objectives (full batch): when a step starts exactly
            where the previous step's last ``closure(backward=True)`` left the parameters and
            gradients (same closure object, no parameter or gradient modified since), that loss
            and gradient are reused instead of evaluating again. Line searches and trust
            regions end on such a point, so this saves one evaluation per step. Off by default:
            a closure that reads changing data (a new minibatch) would get a stale gradient.

    Attributes:
        evals: :class:`~optbridge.core.closure.EvalCounts`, closure evaluations so far.
        num_steps: completed ``step()`` calls.
        terminated: set by a termination module (``StepContext.terminate``); once true,
            ``step()`` does nothing and returns ``None``.
        stop_reason: why it terminated.
    """

    def __init__(self, params, *modules, reuse_evaluation: bool = False):
        if not modules:
            raise ValueError("Modular: needs at least one module")
        for i, m in enumerate(modules):
            as_module(m, f"Modular: module {i}")
        self.chain = Chain(*modules)
        self._bind_modules()
        self._declared = self._declared_settings()
        self._lr_consumed = "lr" in self._declared
        if isinstance(params, torch.Tensor):
            raise TypeError("Modular: params must be an iterable of tensors or dicts, not a tensor")
        params = list(params)
        if len(params) == 0:
            raise ValueError("Modular: got an empty parameter list")
        self.evals = EvalCounts()
        self.num_steps = 0
        self.terminated = False
        self.stop_reason: str | None = None
        if not isinstance(reuse_evaluation, bool):
            raise TypeError("Modular: reuse_evaluation must be True or False")
        self.reuse_evaluation = reuse_evaluation
        self._last_eval = None  # (closure, loss, fingerprint) of the last backward evaluation
        self._layout_token = object()
        self._layout_ids: tuple = ()
        self._gathered = None  # (selector, keys, spans, counts) of the last step
        self._has_complex = False
        super().__init__(params, self._scheduler_defaults())

    def _agreed_default(self, key: str):
        """The default all modules declaring ``key`` share, ``_DISAGREE`` if they differ."""
        values = [m.defaults[key] for m in self._declared.get(key, ())]
        if not values:
            return _MISSING
        return values[0] if all(v == values[0] for v in values) else _DISAGREE

    def _scheduler_defaults(self) -> dict:
        """The group keys torch schedulers read: ``lr`` (1.0 multiplies the final update when no
        module declares it; absent when ``LR`` modules disagree on their defaults, each then
        using its own unless the group sets one lr for all), ``momentum`` and ``betas`` when the
        chain declares them and its modules agree on the defaults (``CyclicLR``/``OneCycleLR``
        cycle them)."""
        out = {}
        lr = self._agreed_default("lr")
        if lr is _MISSING:
            out["lr"] = 1.0
        elif lr is not _DISAGREE:
            out["lr"] = lr
        mom = self._agreed_default("momentum")
        if mom not in (_MISSING, _DISAGREE):
            out["momentum"] = mom
        b1, b2 = self._agreed_default("beta1"), self._agreed_default("beta2")
        if b1 not in (_MISSING, _DISAGREE) and b2 is not _DISAGREE:
            out["betas"] = (b1,) if b2 is _MISSING else (b1, b2)
        return out

    # ------------------------------------------------------------------------- construction
    def _bind_modules(self) -> None:
        """Give every module its state key (its path in the chain); validate before binding."""
        keyed: list[tuple[Module, str]] = []
        seen: set[int] = set()

        def collect(module: Module, key: str):
            if id(module) in seen:
                raise ValueError(f"Modular: the same {module.name} instance appears twice in the chain")
            owner = getattr(module, "_optimizer", None)
            if owner is not None and owner is not self:
                raise ValueError(
                    f"Modular: this {module.name} instance already belongs to another optimizer; "
                    "create a new instance for each optimizer"
                )
            seen.add(id(module))
            keyed.append((module, key))
            for name, child in module.children.items():
                collect(child, f"{key}.{name}")

        for name, m in self.chain.children.items():
            collect(m, name)
        for module, key in keyed:
            module.key = key
            module._optimizer = self
        self.chain.key = ""

    def _declared_settings(self) -> dict[str, list[Module]]:
        out: dict[str, list[Module]] = {}
        for m in self.chain.walk():
            for k in m.defaults:
                out.setdefault(k, []).append(m)
        return out

    def add_param_group(self, param_group: dict) -> None:
        if not isinstance(param_group, dict):
            raise TypeError(f"Modular: param group must be a dict, got {type(param_group).__name__}")
        params = param_group.get("params")
        if isinstance(params, torch.Tensor):
            params = [params]
        elif isinstance(params, set):
            raise TypeError("Modular: params must be an ordered collection, not a set")
        params = list(params) if params is not None else []
        if not params:
            raise ValueError("Modular: a param group has an empty parameter list")
        for p in params:
            if not isinstance(p, torch.Tensor):
                raise TypeError(f"Modular: params must be tensors, got {type(p).__name__}")
            if not p.is_leaf:
                raise ValueError(
                    "Modular: params must be leaf tensors (a non-leaf tensor was given; pass the "
                    "model's parameters, not a tensor computed from them)"
                )
        for key, value in param_group.items():
            if key in _TORCH_GROUP_KEYS:
                continue
            if key == "betas" and "beta1" in self._declared:
                self._check_betas(value)
                continue
            owners = self._declared.get(key)
            if not owners:
                known = sorted(self._declared)
                raise ValueError(
                    f"Modular: param group sets {key!r}, which no module of the chain declares "
                    f"(declared: {', '.join(known) or 'none'})"
                )
            for m in owners:
                m.check_setting(key, value)
        if "lr" in param_group:
            lr = param_group["lr"]
            if self._lr_consumed:
                for m in self._declared["lr"]:
                    m.check_setting("lr", lr)
            elif not (isinstance(lr, (int, float)) and not isinstance(lr, bool) and lr >= 0):
                raise ValueError(f"Modular: invalid lr={lr!r}; expected a number >= 0")
        group = dict(param_group)
        group["params"] = params
        for k, v in self.defaults.items():
            group.setdefault(k, v)
        if any(p.is_complex() for p in params):
            self._has_complex = True
        defaults, self.defaults = self.defaults, {}  # groups were filled above, torch must not
        try:
            super().add_param_group(group)
        finally:
            self.defaults = defaults
        self._bump_layout()

    def _check_betas(self, betas) -> None:
        if not isinstance(betas, (tuple, list)) or not 1 <= len(betas) <= 2:
            raise ValueError(f"Modular: invalid betas={betas!r}; expected a pair (beta1, beta2)")
        for name, value in zip(("beta1", "beta2"), betas):
            for m in self._declared.get(name, ()):
                m.check_setting(name, value)

    # ------------------------------------------------------------------------------ stepping
    def _bump_layout(self) -> None:
        self._layout_token = object()
        self._gathered = None

    def _gather(self, selector) -> tuple[list, list, list]:
        """The parameters taking part in this step (``keys``; ``params`` their real views),
        and ``spans``, the (group, start, stop) ranges of each param group in them. The lists of
        the previous step are reused when the same tensors take part again (and so are the
        per-parameter caches keyed by ``layout_token``)."""
        keys: list = []
        counts: list = []
        for group in self.param_groups:
            n = len(keys)
            for p in group["params"]:
                if selector(p):
                    keys.append(p)
            counts.append((id(group), len(keys) - n))
        last = self._gathered
        if last is not None and last[0] is selector and last[3] == counts:
            old = last[1]
            for a, b in zip(keys, old):
                if a is not b:
                    break
            else:
                return self._real_views(old), old, last[2]
        spans: list = []
        start = 0
        for group, (_, n) in zip(self.param_groups, counts):
            if n:
                spans.append((group, start, start + n))
            start += n
        ids = tuple(map(id, keys))
        if ids != self._layout_ids:
            self._layout_ids = ids
            self._bump_layout()
        self._gathered = (selector, keys, spans, counts)
        return self._real_views(keys), keys, spans

    def takes_part_unchanged(self, keys: list) -> bool:
        """Whether exactly ``keys``, in this order, are the parameters requiring grad in the
        param groups (what ``_gather`` would return), checked without building lists: the
        fast path's test that a step may reuse what the previous one set up."""
        n = len(keys)
        i = 0
        for group in self.param_groups:
            for p in group["params"]:
                if p.requires_grad:
                    if i == n or p is not keys[i]:
                        return False
                    i += 1
        return i == n

    def _real_views(self, keys: list) -> list:
        """``keys`` with complex parameters seen as real (``view_as_real``, made afresh each
        step: a view would not follow a later ``.data`` assignment)."""
        if self._has_complex:
            return [torch.view_as_real(p) if p.is_complex() else p for p in keys]
        return keys

    @staticmethod
    def profile_hook_step(func):
        """torch's ``step`` wrapper (step pre/post hooks, the profiler's ``record_function``),
        entered only when a hook is registered or a profiler runs: otherwise its fixed cost
        (several microseconds) is skipped. Behaviour is torch's in every case."""
        hooked = torch.optim.Optimizer.profile_hook_step(func)
        profiling = torch.autograd._profiler_enabled
        from torch.optim import optimizer as torch_optimizer

        global_pre = torch_optimizer._global_optimizer_pre_hooks
        global_post = torch_optimizer._global_optimizer_post_hooks

        @functools.wraps(func)
        def wrapper(self, *args, **kwargs):
            if (self._optimizer_step_pre_hooks or self._optimizer_step_post_hooks or global_pre
                    or global_post or profiling()):
                return hooked(self, *args, **kwargs)
            return func(self, *args, **kwargs)

        return wrapper

    def step(self, closure=None):
        """Run the chain once; returns the loss at the starting point if it was evaluated."""
        if self.terminated:
            return None
        grad_was_enabled = torch.is_grad_enabled()
        torch._C._set_grad_enabled(False)
        try:
            solo = self._solo_fast_module
            if solo is not None and closure is not None:
                # Fast path for a module alone in the chain: ``solo.fast_step(self, closure)``
                # runs the whole step without a StepContext (it checks that the same tensors
                # take part with ``takes_part_unchanged``, counts its closure evaluations in
                # ``self.evals`` and applies no update) and returns the loss, or
                # ``NotImplemented``, having changed nothing, to take the full step.
                loss = solo.fast_step(self, closure)
                if loss is not NotImplemented:
                    self.num_steps += 1
                    return loss
            return self._step(closure)
        finally:
            torch._C._set_grad_enabled(grad_was_enabled)

    @functools.cached_property
    def _solo_fast_module(self):
        """The chain's only module when it has a ``fast_step`` (callback-driven solvers), else
        None; see :meth:`step`."""
        mods = list(self.chain.children.values())
        return mods[0] if len(mods) == 1 and getattr(mods[0], "fast_step", None) else None

    def _step(self, closure):
        counted = None
        ctx = StepContext(self, None, None, None, None, self.num_steps)
        needs_grad = self.chain.needs_grad
        if closure is not None:
            record = self._record_evaluation(closure) if self.reuse_evaluation else None
            counted = CountedClosure(closure, self.evals, ctx.owner_name, record)
            ctx.closure = counted
            if needs_grad:
                ctx.loss = self._reusable_loss(closure)
                if ctx.loss is None:
                    ctx.loss = counted(True)
        if counted is None or needs_grad:
            params, keys, spans = self._gather(_has_grad)
            for p in keys:
                if p.grad.is_sparse:
                    raise RuntimeError("Modular: sparse gradients are not supported")
        else:
            params, keys, spans = self._gather(_requires_grad)
            for p in keys:
                g = p.grad
                if g is not None and g.is_sparse:
                    raise RuntimeError("Modular: sparse gradients are not supported")
        ctx.params, ctx.keys, ctx.spans = params, keys, spans
        if ctx.loss is not None or closure is None:
            ctx._grads = ctx.read_grads()
        self.chain.step(ctx)
        ctx.module = None
        if not self._lr_consumed and params:
            lrs = ctx.per_param([g["lr"] for g, _, _ in spans])
            if lrs != 1.0:
                ctx.scale_update(lrs)
        ctx.apply_update()
        self.num_steps += 1
        return ctx.loss

    # ----------------------------------------------------------------------- target points
    def _record_target(self, target: list, params: list) -> None:
        self._last_target = (tuple(map(id, target)), tuple(map(id, params)),
                             [t._version for t in target] + [p._version for p in params])

    def params_at_target(self, target: list, params: list) -> bool:
        """Whether ``params`` were last set by a step to exactly ``target`` (``set_target``) and
        neither has been modified since (version counters)."""
        last = getattr(self, "_last_target", None)
        if last is None or last[0] != tuple(map(id, target)) or last[1] != tuple(map(id, params)):
            return False
        return [t._version for t in target] + [p._version for p in params] == last[2]

    # -------------------------------------------------------------------- evaluation reuse
    def _fingerprint(self) -> tuple:
        out = []
        for group in self.param_groups:
            for p in group["params"]:
                g = p.grad
                out.append((p._version, id(g), None if g is None else g._version))
        return tuple(out)

    def _record_evaluation(self, closure):
        def record(loss):
            self._last_eval = (closure, loss.detach(), self._fingerprint())
        return record

    def _reusable_loss(self, closure):
        last = self._last_eval
        if not self.reuse_evaluation or last is None or last[0] is not closure:
            return None
        if last[2] != self._fingerprint():
            return None
        return last[1]

    # ---------------------------------------------------------------------------- checkpoint
    def _signature(self) -> list[str]:
        return [f"{m.key}:{m.name}" for m in self.chain.walk() if m is not self.chain]

    def state_dict(self) -> dict:
        """torch's format (``state`` keyed by parameter index, ``param_groups``) plus an
        ``optbridge`` section: the chain signature, module-level state and counters."""
        sd = super().state_dict()
        sd["optbridge"] = {
            "chain": self._signature(),
            "modules": {
                m.key: copy.deepcopy(m.global_state)
                for m in self.chain.walk()
                if m is not self.chain and m.global_state
            },
            "num_steps": self.num_steps,
            "terminated": self.terminated,
            "stop_reason": self.stop_reason,
            "evals": self.evals.as_dict(),
        }
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore a state from :meth:`state_dict`; a state of another chain or another set of
        parameters raises ``ValueError`` and changes nothing."""
        if not isinstance(state_dict, dict) or "param_groups" not in state_dict:
            raise ValueError("Modular.load_state_dict: not an optimizer state dict")
        state_dict = state_dict.copy()
        for hook in self._optimizer_load_state_dict_pre_hooks.values():
            res = hook(self, state_dict)
            if res is not None:
                state_dict = res
        extra = state_dict.get("optbridge")
        if extra is None:
            raise ValueError(
                "Modular.load_state_dict: the state dict has no 'optbridge' section; it was not "
                "saved by a Modular optimizer"
            )
        ours, theirs = self._signature(), list(extra.get("chain", []))
        if ours != theirs:
            raise ValueError(
                "Modular.load_state_dict: the state dict is for a different chain:\n"
                f"  saved:   {theirs}\n  current: {ours}"
            )
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"Modular.load_state_dict: the state dict has {len(saved_groups)} param groups, "
                f"the optimizer {len(self.param_groups)}"
            )
        for i, (g, s) in enumerate(zip(self.param_groups, saved_groups)):
            if len(g["params"]) != len(s["params"]):
                raise ValueError(
                    f"Modular.load_state_dict: param group {i} has {len(g['params'])} parameters, "
                    f"the state dict {len(s['params'])}"
                )
        id_map = dict(
            zip(
                _chain.from_iterable(g["params"] for g in saved_groups),
                _chain.from_iterable(g["params"] for g in self.param_groups),
            )
        )
        known = {m.key for m in self.chain.walk()}
        new_state: dict = {}
        for k, v in state_dict["state"].items():
            if k not in id_map:
                raise ValueError(f"Modular.load_state_dict: state for unknown parameter index {k}")
            bad = set(v) - known
            if bad:
                raise ValueError(f"Modular.load_state_dict: state for unknown modules {sorted(bad)}")
            p = id_map[k]
            new_state[p] = _to_device(v, p.device)
        new_groups = []
        for g, s in zip(self.param_groups, saved_groups):
            ng = {k: v for k, v in s.items() if k != "params"}
            ng["params"] = g["params"]
            new_groups.append(ng)
        self.__setstate__({"state": new_state, "param_groups": new_groups})
        for m in self.chain.walk():
            m.global_state = copy.deepcopy(extra.get("modules", {}).get(m.key, {}))
        self.num_steps = int(extra.get("num_steps", 0))
        self.terminated = bool(extra.get("terminated", False))
        self.stop_reason = extra.get("stop_reason")
        ev = extra.get("evals", {})
        self.evals.loss, self.evals.loss_and_grad = int(ev.get("loss", 0)), int(ev.get("loss_and_grad", 0))
        self._bump_layout()
        for hook in self._optimizer_load_state_dict_post_hooks.values():
            hook(self)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._bump_layout()

    def __repr__(self) -> str:
        return f"Modular({self.chain!r})"

    @property
    def modules(self) -> list[Module]:
        return self.chain.modules


def _has_grad(p: torch.Tensor) -> bool:
    return p.grad is not None


def _requires_grad(p: torch.Tensor) -> bool:
    return p.requires_grad


def _to_device(value, device):
    """Deep copy of a state value with tensors moved to ``device`` (dtype kept as saved)."""
    if isinstance(value, torch.Tensor):
        return value.to(device=device, copy=True)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_device(v, device) for v in value)
    return copy.deepcopy(value)


