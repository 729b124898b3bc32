"""The base class of every ``optbridge.native`` optimizer.

:class:`NativeOptimizer` is a ``torch.optim.Optimizer`` that keeps the bookkeeping (argument
validation, grouping, AMP grad scale, global gradient clipping, learning-rate warmup, shared
flags, state-dict checks) in one place so that each optimizer only writes its formula.

API for subclasses (elementwise and matrix optimizers alike)
-----------------------------------------------------------
Class attributes:

- ``rules``: ``{hyperparameter: rule}`` with rules from :mod:`optbridge.core.checks`; run on the
  defaults and on every param group (also groups added later) before any state exists.
- ``flags``: the names of the shared flags (:data:`SHARED_FLAGS`) the optimizer supports. A
  shared flag that is not listed may only be passed with its default value.
- ``slots``: names of the elementwise state tensors (same shape as the parameter). They are
  created zero-filled in ``storage_dtype`` on the first step; :meth:`init_state` can fill them.

Methods a subclass writes:

- ``update(group, bucket)``: apply one step to ``bucket`` (a :class:`Bucket`: params of one
  group sharing device and dtype, with their grads and states; ``state["step"]`` is already
  incremented). Use the helpers below; the base calls nothing else.
- ``init_state(p, state, group)`` (optional): called once per parameter after the slots exist.
- ``begin_group(group) -> dict`` (optional): group-level bookkeeping once per group and step;
  the dict is passed to ``update`` as ``bucket.extra``.

Helpers:

- :meth:`prepared_grad` — the gradient the formula should see: unscaled (AMP), globally
  clipped, sign-flipped for ``maximize``, MARS-corrected; always a fresh fp32/fp64 tensor.
- :meth:`read_slot` / :meth:`write_slot` — fp32 views of a slot and the store back (a no-op for
  fp32 storage, stochastic rounding for ``"bfloat16"``, see :mod:`.stochastic_rounding`).
- :meth:`apply_update` — ``p <- p (1 - lr wd) - lr u`` after ``caution`` and
  ``update_clipping`` (the shared tail of every optimizer).
- :meth:`lr_at` (warmup), :meth:`beta2_at` (PaLM schedule), :meth:`step_of`; their device
  twins :meth:`lr_on_device` / :meth:`beta2_on_device` take a float64 tensor of steps.
- :meth:`plain` / :meth:`decay_` — when no ``caution``/``update_clipping`` is on, write the
  reference's own in-place arithmetic (agrees with it to the last bit).
- :meth:`cpu_step` — run a C kernel over the whole bucket (one call over a cached pointer
  table); returns what is left for the eager formula.
- :meth:`fused_cpu` / :meth:`fused_triton` — the compiled C kernels
  (:mod:`.cpu_kernels`) or the Triton launch (:mod:`.triton_kernels`) when they can run the
  bucket, else None (use the eager formula, which is also the reference in the tests).

Shared flags (off by default; documented on :data:`SHARED_FLAGS`) keep the default behaviour
reference-exact. ``_step_supports_amp_scaling = True``: ``GradScaler.step(opt)`` sets
``opt.grad_scale`` / ``opt.found_inf`` and the base unscales inside the step (no extra pass over
the gradients). When every bucket runs a Triton kernel of a ``device_skip`` optimizer, the
kernels read ``found_inf`` on the device and mask the update, and the step counts advance by
``1 - found_inf`` (no host sync); otherwise ``found_inf`` is read on the host (one sync per step
on CUDA) and a step with an inf/NaN is skipped as a whole.

Per-step host work is kept flat: the tensor checks are a few C-level passes over each group,
the step counts of a bucket are 0-d views of one tensor advanced by one op (each param's
``state["step"]`` keeps its own value), and the C kernels' pointer table is rebuilt only when a
pointer changes.

``Optimizer.module(**kw)`` returns the optimizer as a ``Modular`` chain module
(``optbridge.adapters.TorchOptimizer(cls, **kw)``).
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field

import torch

from optbridge.core import checks

from . import cpu_kernels, triton_kernels
from .mars import PREV as MARS_PREV
from .mars import mars_corrected
from .stochastic_rounding import stochastic_round_

SHARED_FLAGS = {
    # name: (default, rule, meaning)
    "caution": (False, checks.boolean,
                "Cautious update (Liang et al., 2024): zero update entries whose sign disagrees "
                "with the gradient, rescale the rest by numel / max(count kept, 1)"),
    "mars": (False, checks.boolean,
             "MARS gradient correction (Yuan et al., 2024): "
             "c = g + gamma * beta1 / (1 - beta1) * (g - g_prev)"),
    "mars_gamma": (0.0025, checks.nonnegative, "gamma of the MARS correction"),
    "palm": (False, checks.boolean,
             "PaLM second-moment schedule (Chowdhery et al., 2022): beta2_t = 1 - t^-beta2_scale, "
             "no second-moment bias correction (beta2_1 = 0 makes it exact)"),
    "beta2_scale": (0.8, checks.positive, "exponent of the PaLM beta2 schedule"),
    "warmup_steps": (0, checks.nonnegative_int, "linear lr warmup: lr * min(1, t / warmup_steps)"),
    "storage_dtype": ("float32", checks.one_of("float32", "bfloat16"),
                      "dtype of the state slots; bfloat16 stores with stochastic rounding"),
    "gradient_clipping": (None, checks.optional(checks.positive),
                          "max global L2 norm of all gradients of the optimizer (torch's "
                          "clip_grad_norm_ formula), or None"),
    "update_clipping": (None, checks.optional(checks.positive),
                        "clamp every update entry to [-c, c] before the learning rate, or None"),
    "weight_decay": (0.0, checks.nonnegative, "decoupled weight decay: p *= 1 - lr * wd"),
    "maximize": (False, checks.boolean, "ascend instead of descend"),
}

SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
SUPPORTED_DEVICES = ("cpu", "cuda")
_GRAD, _DTYPE, _DEVICE = (operator.attrgetter(k) for k in ("grad", "dtype", "device"))
_SHAPE, _SPARSE, _TYPE = (operator.attrgetter(k) for k in ("shape", "is_sparse", "type"))
STORAGE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
_SUPPORTED_DTYPE_SET, _SUPPORTED_DEVICE_SET = frozenset(SUPPORTED_DTYPES), frozenset(SUPPORTED_DEVICES)


@dataclass
class Bucket:
    """Params of one group sharing (device, dtype), with grads, states and run-wide factors."""

    params: list
    grads: list
    states: list
    ids: list  # position of each param in the optimizer (seeds stochastic rounding)
    grad_factor: torch.Tensor | None = None  # multiplies every grad (AMP unscale x clipping)
    extra: dict = field(default_factory=dict)
    #: GradScaler's found_inf on the device when the kernels skip the step themselves (no host
    #: read); None when the step is known not to be skipped
    found_inf: torch.Tensor | None = None
    #: fp32 [T] tensor whose elements are the params' ``state["step"]`` (0-d views), or None
    step_counts: torch.Tensor | None = None


class NativeOptimizer(torch.optim.Optimizer):
    """Base of the native optimizers (see the module docstring for the subclass API)."""

    rules: dict = {}
    flags: frozenset = frozenset()
    slots: tuple = ()
    #: the Triton kernels read GradScaler's ``found_inf`` themselves (see :meth:`step`)
    device_skip: bool = False
    #: options under which the Triton path does not run (the eager formula does)
    triton_unsupported: tuple = ()
    _step_supports_amp_scaling = True

    def __init__(self, params, defaults: dict, flags: dict):
        name = type(self).__name__
        for k, v in flags.items():
            if k not in SHARED_FLAGS:
                raise TypeError(f"{name}: unexpected argument {k!r}")
            default = SHARED_FLAGS[k][0]
            if k not in self.flags and v != default:
                raise ValueError(f"{name}: flag {k!r} is not supported by {name} "
                                 f"(supported: {', '.join(sorted(self.flags)) or 'none'})")
        all_defaults = {k: SHARED_FLAGS[k][0] for k in self.flags}
        all_defaults.update(defaults)
        all_defaults.update({k: v for k, v in flags.items() if k in self.flags})
        self._validate(all_defaults, "")
        super().__init__(params, all_defaults)

    # ---------------------------------------------------------------- validation
    def _validate(self, settings: dict, where: str):
        name = type(self).__name__
        for k, v in settings.items():
            if k == "params":
                continue
            rule = self.rules.get(k) or (SHARED_FLAGS[k][1] if k in SHARED_FLAGS else None)
            if rule is None:
                continue
            msg = rule(v)
            if msg is not None:
                raise ValueError(f"{name}: {k}{where} must be {msg}, got {v!r}")

    def add_param_group(self, param_group: dict) -> None:
        for k in param_group:
            if k != "params" and k not in self.defaults:
                raise TypeError(f"{type(self).__name__}: unexpected param group key {k!r}")
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            self._validate(group, f" (param group {len(self.param_groups) - 1})")
            self._check_group_tensors(group, len(self.param_groups) - 1, grads=False)
        except Exception:
            self.param_groups.pop()
            raise

    def _check_group_tensors(self, group, index: int, grads: bool):
        name = type(self).__name__
        devices = {p.device for p in group["params"]}
        if len(devices) > 1:
            raise ValueError(f"{name}: param group {index} mixes devices "
                             f"({', '.join(sorted(map(str, devices)))}); use one group per device")
        for p in group["params"]:
            if p.dtype not in SUPPORTED_DTYPES:
                raise TypeError(f"{name}: unsupported parameter dtype {p.dtype} in param group "
                                f"{index} (supported: float32, float64, bfloat16, float16)")
            if p.device.type not in SUPPORTED_DEVICES:
                raise TypeError(f"{name}: unsupported device {p.device} in param group {index} "
                                "(supported: cpu, cuda)")
            if grads and p.grad is not None:
                if p.grad.is_sparse:
                    raise RuntimeError(f"{name}: sparse gradients are not supported "
                                       f"(param group {index})")
                if p.grad.dtype != p.dtype or p.grad.shape != p.shape:
                    raise RuntimeError(f"{name}: a gradient's dtype/shape differs from its "
                                       f"parameter's (param group {index})")

    # ---------------------------------------------------------------- state dict
    def state_dict(self):
        sd = super().state_dict()
        sd["optimizer_class"] = type(self).__name__
        return sd

    def load_state_dict(self, state_dict):
        name = type(self).__name__
        other = state_dict.get("optimizer_class") if isinstance(state_dict, dict) else None
        if other != name:
            raise ValueError(f"{name}.load_state_dict: the state dict comes from "
                             f"{other or 'another optimizer (no optimizer_class key)'}, not {name}")
        sd = {k: v for k, v in state_dict.items() if k != "optimizer_class"}
        for i, g in enumerate(sd["param_groups"]):
            self._validate({k: v for k, v in g.items() if k in self.defaults},
                           f" (param group {i} of the state dict)")
        super().load_state_dict(sd)
        # torch casts every state tensor to its parameter's dtype, which rounds the fp32 state
        # of bfloat16/float16 parameters: take the saved tensors again, slots in the storage
        # dtype, the step count in fp32, everything else (preconditioners...) as saved
        saved = sd["state"]
        for group, saved_group in zip(self.param_groups, sd["param_groups"]):
            storage = STORAGE_DTYPES[group.get("storage_dtype", "float32")]
            slots = set(self.slot_names(group))
            for p, index in zip(group["params"], saved_group["params"]):
                st, src = self.state.get(p), saved.get(index)
                if not st or not src:
                    continue
                for k, v in src.items():
                    if not (torch.is_tensor(v) and torch.is_tensor(st.get(k))):
                        continue
                    if k == "step":
                        st[k] = st[k].to(device=p.device, dtype=torch.float32)
                    else:
                        dtype = self.slot_dtype(p, storage) if k in slots else v.dtype
                        st[k] = v.to(device=p.device, dtype=dtype, copy=True)

    # ---------------------------------------------------------------- chain module
    @classmethod
    def module(cls, **kwargs):
        """This optimizer as a ``Modular`` chain module (``TorchOptimizer(cls, **kwargs)``)."""
        from optbridge.adapters import TorchOptimizer

        return TorchOptimizer(cls, **kwargs)

    # ---------------------------------------------------------------- helpers
    def slot_names(self, group) -> tuple:
        """Elementwise state slots of ``group`` (MARS adds ``mars_prev_grad``)."""
        return self.slots + (("mars_prev_grad",) if group.get("mars") else ())

    def param_positions(self) -> dict:
        """``{id(param): position of the param in the optimizer}``: the ``pid`` of the
        stochastic-rounding seeds (:func:`sr_seed`) of optimizers that step per parameter."""
        ids, k = {}, 0
        for group in self.param_groups:
            for p in group["params"]:
                ids[id(p)] = k
                k += 1
        return ids

    @staticmethod
    def slot_dtype(p, storage: torch.dtype) -> torch.dtype:
        """fp64 params keep fp64 state; others use the storage dtype."""
        return torch.float64 if p.dtype == torch.float64 else storage

    @staticmethod
    def compute_dtype(p) -> torch.dtype:
        """The dtype the formula runs in: fp64 for fp64 params, fp32 otherwise."""
        return torch.float64 if p.dtype == torch.float64 else torch.float32

    @staticmethod
    def step_of(state) -> int:
        """The (already incremented) step count of a parameter as a Python int."""
        return int(state["step"].item())

    @staticmethod
    def lr_at(group, step: int) -> float:
        """The group's lr with the linear warmup of ``warmup_steps`` applied."""
        lr = group["lr"]
        w = group.get("warmup_steps", 0)
        return lr * min(1.0, step / w) if w else lr

    @staticmethod
    def beta2_at(group, beta2: float, step: int) -> tuple[float, float]:
        """``(beta2_t, bias_correction2)``: the PaLM schedule when ``palm`` else the constant."""
        if group.get("palm"):
            return 1.0 - step ** (-group["beta2_scale"]), 1.0
        return beta2, 1.0 - beta2**step

    def read_slot(self, state, name, p) -> torch.Tensor:
        """The slot in the compute dtype (the slot itself when no conversion is needed)."""
        t = state[name]
        cd = self.compute_dtype(p)
        return t if t.dtype == cd else t.to(cd)

    def write_slot(self, state, name, value, pid: int, slot_index: int, step: int):
        """Store ``value`` into the slot: nothing to do when ``value`` is the slot itself,
        a copy for equal dtypes, stochastic rounding into bfloat16 storage."""
        t = state[name]
        if value is t:
            return
        if t.dtype == torch.bfloat16 and value.dtype != torch.bfloat16:
            stochastic_round_(t, value, seed=sr_seed(pid, slot_index, step))
        else:
            t.copy_(value)

    def prepared_grad(self, p, g, state, group, grad_factor) -> torch.Tensor:
        """The gradient the formula sees, as a fresh tensor in the compute dtype."""
        g = g.to(self.compute_dtype(p), copy=True)
        if grad_factor is not None:
            g.mul_(grad_factor.to(g.dtype))
        if group.get("maximize"):
            g.neg_()
        if group.get("mars"):
            storage = STORAGE_DTYPES[group.get("storage_dtype", "float32")]
            g = mars_corrected(g, state, self.mars_beta1(group), group["mars_gamma"],
                               self.slot_dtype(p, storage))
        return g

    def mars_beta1(self, group) -> float:
        """:math:`\\beta_1` of the MARS correction: the first beta, else the momentum, else 0.9
        (optimizers whose first moment is called otherwise override this)."""
        return group["betas"][0] if "betas" in group else group.get("momentum", 0.9)

    @staticmethod
    def plain(group, p) -> bool:
        """True when neither ``caution`` nor ``update_clipping`` is on and ``p`` is fp32/fp64:
        the optimizer may then write the reference's own arithmetic (``decay_`` + in-place
        ops on ``p``) instead of :meth:`apply_update`, to agree with it to the last bit."""
        return (not group.get("caution") and group.get("update_clipping") is None
                and p.dtype in (torch.float32, torch.float64))

    @staticmethod
    def decay_(p, group, lr: float):
        """Decoupled weight decay ``p *= 1 - lr wd`` (nothing when wd = 0)."""
        wd = group.get("weight_decay", 0.0)
        if wd:
            p.mul_(1 - lr * wd)

    def apply_update(self, p, u, g, group, lr: float, scale: float = 1.0):
        """``p <- p (1 - lr wd) - lr scale u`` with ``caution`` (against ``g``) and
        ``update_clipping`` applied to ``scale u``; ``u`` itself is not modified."""
        c = group.get("update_clipping")
        if c is not None or group.get("caution"):
            if scale != 1.0:
                u = u * scale
                scale = 1.0
        if group.get("caution"):
            mask = (u * g) > 0
            kept = mask.sum()
            u = torch.where(mask, u, torch.zeros((), dtype=u.dtype, device=u.device))
            u = u * (mask.numel() / kept.clamp(min=1).to(u.dtype))
        if c is not None:
            u = u.clamp(-c, c)
        wd = group.get("weight_decay", 0.0)
        q = p if p.dtype in (torch.float32, torch.float64) else p.float()
        if wd:
            q.mul_(1 - lr * wd)
        q.add_(u.to(q.dtype), alpha=-lr * scale)
        if q is not p:  # low-precision params: computed in fp32, rounded once
            p.copy_(q)

    def fused_cpu(self, group, bucket: Bucket, slot_names, unsupported=()):
        """A function ``kernel(name, state) -> C function`` when the compiled CPU kernels can run
        this bucket (fp32 params and grads, fp32 or bf16 slots, all contiguous on the CPU; no
        ``caution``/``mars``/``update_clipping`` and none of ``unsupported``), else None (use
        the eager formula). The C functions take the slots' stochastic-rounding seeds
        (:meth:`seeds`) before the thread count."""
        for k in ("caution", "mars", "update_clipping", *unsupported):
            if group.get(k):
                return None
        lib = cpu_kernels.library()
        if lib is None or not bucket.params:
            return None
        slots = [st[k] for st in bucket.states for k in slot_names]
        if not cpu_kernels.usable(bucket.params, bucket.grads, slots):
            return None
        return lambda name, st: cpu_kernels.kernel(lib, name, st[slot_names[0]] if slot_names
                                                   else bucket.params[0])

    def cpu_step(self, group, bucket: Bucket, name: str, slot_names, scalars,
                 unsupported=()) -> Bucket:
        """Run C kernel ``name`` (:mod:`.cpu_kernels`) over the bucket when :meth:`fused_cpu`
        allows it and return the part of the bucket left for the eager formula (empty when the
        kernel ran everywhere; the whole bucket when it cannot run).

        ``scalars(t)``: the kernel's scalar arguments at step ``t`` (grad multiplier first), or
        None where the eager formula handles that step. When every parameter of the bucket is at
        the same step (the usual case) the whole bucket is one C call over a cached pointer
        table (:class:`.cpu_kernels.PointerTable`); otherwise one call per parameter."""
        fused = self.fused_cpu(group, bucket, slot_names, unsupported)
        if fused is None:
            return bucket
        nt = torch.get_num_threads()
        all_steps = (bucket.step_counts.tolist() if bucket.step_counts is not None
                     else [st["step"].item() for st in bucket.states])
        t0 = int(all_steps[0])
        if all_steps.count(all_steps[0]) == len(all_steps):
            args = scalars(t0)
            if args is None:
                return bucket
            tables = self.__dict__.setdefault("_cpu_tables", {})
            key = (id(group), name, bucket.params[0].dtype)
            table = tables.get(key)
            if table is None:
                table = tables[key] = cpu_kernels.PointerTable()
            n_slots = cpu_kernels.KERNELS[name][0]
            table.current(bucket.params, bucket.grads,
                          [[st[k] for st in bucket.states] for k in slot_names], bucket.ids,
                          n_slots)
            fused(f"{name}_multi", bucket.states[0])(*table.args(t0), *args, nt)
            return Bucket([], [], [], [], bucket.grad_factor, bucket.extra)
        rest = Bucket([], [], [], [], bucket.grad_factor, bucket.extra)
        n_slots = cpu_kernels.KERNELS[name][0]
        for p, g, st, pid, t in zip(bucket.params, bucket.grads, bucket.states, bucket.ids,
                                    all_steps):
            t = int(t)
            args = scalars(t)
            if args is None:
                for lst, x in zip((rest.params, rest.grads, rest.states, rest.ids),
                                  (p, g, st, pid)):
                    lst.append(x)
                continue
            slots = [st[k].data_ptr() for k in slot_names]
            slots += [p.data_ptr()] * (n_slots - len(slots))
            fused(name, st)(p.data_ptr(), g.data_ptr(), *slots, p.numel(), *args,
                            *self.seeds(pid, t, n_slots), nt)
        return rest

    @staticmethod
    def seeds(pid: int, step: int, n_slots: int) -> list:
        """The stochastic-rounding seeds of a parameter's slots at one step."""
        return [sr_seed(pid, k, step) for k in range(n_slots)]

    def fused_triton(self, group, bucket: Bucket, slot_names, unsupported=()):
        """``(launcher, float64 step tensor)`` when the Triton kernels can run this bucket
        (see :func:`.triton_kernels.usable`), else None."""
        if not triton_kernels.usable(group, bucket, slot_names, unsupported):
            if bucket.found_inf is not None:  # step() promised the device skip
                raise RuntimeError(f"{type(self).__name__}: internal error, the Triton path "
                                   "cannot run a bucket that skips on the device")
            return None
        p0 = bucket.params[0]
        key = (id(group), p0.device, p0.dtype)
        launchers = self.__dict__.setdefault("_triton_launchers", {})
        if key not in launchers:
            launchers[key] = triton_kernels.Launcher()
        return launchers[key], triton_kernels.bucket_steps(bucket)

    @staticmethod
    def lr_on_device(group, steps: torch.Tensor):
        """:meth:`lr_at` for a tensor of step counts (float64), computed on their device."""
        w = group.get("warmup_steps", 0)
        return group["lr"] * (steps / w).clamp(max=1.0) if w else group["lr"]

    @staticmethod
    def beta2_on_device(group, beta2: float, steps: torch.Tensor):
        """:meth:`beta2_at` for a tensor of step counts (float64)."""
        if group.get("palm"):
            return 1.0 - steps ** (-group["beta2_scale"]), 1.0
        return beta2, 1.0 - torch.pow(beta2, steps)

    @staticmethod
    def sqrt(x):
        """Square root of a float or a tensor (IEEE-rounded in both cases)."""
        return x.sqrt() if torch.is_tensor(x) else math.sqrt(x)

    @staticmethod
    def grad_multiplier(group, bucket: Bucket) -> float:
        """The scalar the kernels multiply every gradient by (unscale, clipping, maximize)."""
        f = 1.0 if bucket.grad_factor is None else float(bucket.grad_factor.item())
        return -f if group.get("maximize") else f

    # ---------------------------------------------------------------- the step
    def _single_clipping(self, groups):
        """The ``gradient_clipping`` shared by ``groups`` (None if off); the global norm needs
        one value, so groups that disagree are an error."""
        clips = {g.get("gradient_clipping") for g in groups if g.get("gradient_clipping")}
        if len(clips) > 1:
            raise ValueError(f"{type(self).__name__}: gradient_clipping differs between param "
                             "groups; the global norm needs one value")
        return clips.pop() if clips else None

    def _per_parameter_prologue(self, closure):
        """The common start of a step that works parameter by parameter (the matrix optimizers).

        Evaluates ``closure``, validates every group, honours GradScaler's ``found_inf`` (read
        on the host: these steps are not device-skip capable) and returns
        ``(loss, live, factor)``: ``live`` the ``(group, params with a grad)`` pairs (None when
        the step is skipped or nothing has a grad) and ``factor`` the per-device gradient
        factor of :meth:`_global_grad_factor` (None when it is 1).
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for i, group in enumerate(self.param_groups):
            self._check_group_tensors(group, i, grads=True)
        found_inf = getattr(self, "found_inf", None)
        if found_inf is not None and bool(found_inf.item()):
            return loss, None, None
        live = [(g, [p for p in g["params"] if p.grad is not None]) for g in self.param_groups]
        live = [(g, ps) for g, ps in live if ps]
        if not live:
            return loss, None, None
        clip = self._single_clipping(g for g, _ in live)
        factor = self._global_grad_factor([Bucket(ps, [p.grad for p in ps], [], [])
                                           for _, ps in live],
                                          getattr(self, "grad_scale", None), clip)
        return loss, live, factor

    def _global_grad_factor(self, buckets, grad_scale, clip):
        """Per-device factor multiplying every gradient: 1/scale times the clipping coefficient."""
        factors = {}
        inv = None
        if grad_scale is not None:
            inv = grad_scale.double().reciprocal().float()
        if clip is not None:
            norms = []
            for b in buckets:
                norms.extend(n.float().to("cpu" if b.grads[0].device.type == "cpu" else
                                          b.grads[0].device)
                             for n in torch._foreach_norm(b.grads))
            if norms:
                dev = norms[0].device
                total = torch.linalg.vector_norm(torch.stack([n.to(dev) for n in norms]))
                if inv is not None:
                    total = total * inv.to(dev)
                coef = (clip / (total + 1e-6)).clamp(max=1.0)
                inv = coef if inv is None else coef * inv.to(dev)
        if inv is None:
            return None
        for b in buckets:
            d = b.grads[0].device
            if d not in factors:
                factors[d] = inv.to(d)
        return factors

    def _check_step_tensors(self, group, index: int, params, grads):
        """:meth:`_check_group_tensors` with grads, as a few C-level passes over the group; the
        full check runs (and raises its message) only when one of them fails."""
        devices = set(map(_DEVICE, params))
        ok = (len(devices) <= 1 and set(map(_DTYPE, params)) <= _SUPPORTED_DTYPE_SET
              and set(map(_TYPE, devices)) <= _SUPPORTED_DEVICE_SET)
        if _any_none(grads):
            params = [p for p, g in zip(params, grads) if g is not None]
            grads = [g for g in grads if g is not None]
        ok = (ok and not any(map(_SPARSE, grads))
              and list(map(_DTYPE, grads)) == list(map(_DTYPE, params))
              and list(map(_SHAPE, grads)) == list(map(_SHAPE, params)))
        if not ok:
            self._check_group_tensors(group, index, grads=True)

    def _buckets(self, group, grads, pid: int) -> list:
        """The group's params with a gradient, split by (device, dtype); ``pid``: the position
        of the group's first param in the optimizer."""
        params = group["params"]
        if not _any_none(grads) and len(set(map(_DTYPE, params))) == 1:
            return [Bucket(list(params), grads, [], list(range(pid, pid + len(params))))]
        buckets: dict = {}
        for p, g in zip(params, grads):
            if g is not None:
                key = (p.device, p.dtype)
                if key not in buckets:
                    buckets[key] = Bucket([], [], [], [])
                b = buckets[key]
                b.params.append(p)
                b.grads.append(g)
                b.ids.append(pid)
            pid += 1
        return list(buckets.values())

    def takes_device_skip(self, group, bucket: Bucket) -> bool:
        """Whether the bucket's update is one Triton launch that reads ``found_inf`` on the
        device (``device_skip`` optimizers, :func:`.triton_kernels.usable` on the existing
        state; state created by this step is contiguous)."""
        if not self.device_skip or not bucket.params:
            return False
        if not triton_kernels.usable(group, bucket, (), self.triton_unsupported):
            return False
        return all(v.is_contiguous() for p in bucket.params for v in self.state.get(p, {}).values()
                   if torch.is_tensor(v))

    def _advance_steps(self, group, bucket: Bucket):
        """``state["step"] += 1`` (``+= 1 - found_inf`` on the device when the kernels skip)
        for the whole bucket in one op: the params' step tensors are kept as 0-d views of one
        [T] tensor (``bucket.step_counts``), re-made when a step tensor was replaced (new
        state, load_state_dict) or the bucket's params changed. Each view keeps its own
        value, so per-param ``state["step"]`` and state dicts are unchanged."""
        steps = [st["step"] for st in bucket.states]
        cache = self.__dict__.setdefault("_step_views", {})
        key = (id(group), bucket.params[0].device, bucket.params[0].dtype)
        entry = cache.get(key)
        if entry is None or len(entry[1]) != len(steps) or not all(
                map(operator.is_, steps, entry[1])):
            counts = torch.stack(steps).to(torch.float32)
            views = list(counts.unbind(0))
            for st, v in zip(bucket.states, views):
                st["step"] = v
            entry = cache[key] = (counts, views)
        counts = entry[0]
        if bucket.found_inf is None:
            counts.add_(1.0)
        else:
            counts.add_(1.0 - triton_kernels.found_inf_flag(bucket.found_inf, counts.device))
        bucket.step_counts = counts

    @torch.no_grad()
    def step(self, closure=None):
        """One step. GradScaler's ``found_inf`` is read on the host (one sync on CUDA) unless
        every bucket takes the device skip (:meth:`takes_device_skip`): then the kernels mask
        the update and the step counts advance by ``1 - found_inf`` on the device."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        all_grads = [list(map(_GRAD, group["params"])) for group in self.param_groups]
        for i, (group, grads) in enumerate(zip(self.param_groups, all_grads)):
            self._check_step_tensors(group, i, group["params"], grads)

        per_group = []
        pid = 0
        all_buckets = []
        for group, grads in zip(self.param_groups, all_grads):
            buckets = self._buckets(group, grads, pid)
            pid += len(group["params"])
            per_group.append((group, buckets))
            all_buckets.extend(buckets)

        found_inf = getattr(self, "found_inf", None)
        if found_inf is not None:
            if all_buckets and all(self.takes_device_skip(g, b) for g, bs in per_group
                                   for b in bs):
                for b in all_buckets:
                    b.found_inf = found_inf
            elif bool(found_inf.item()):
                return loss  # GradScaler found inf/NaN: skip the whole step
        grad_scale = getattr(self, "grad_scale", None)

        clip = self._single_clipping(g for g, _ in per_group)
        factors = self._global_grad_factor(all_buckets, grad_scale, clip)

        for group, buckets in per_group:
            extra = self.begin_group(group)
            for b in buckets:
                b.extra = extra
                if factors is not None:
                    b.grad_factor = factors[b.grads[0].device]
                b.states = list(map(self.state.__getitem__, b.params))
                if not all(b.states):
                    for p, st in zip(b.params, b.states):
                        if len(st) == 0:
                            self._init_param_state(p, st, group)
                self._advance_steps(group, b)
                self.update(group, b)
        return loss

    def _init_param_state(self, p, st, group):
        st["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
        storage = STORAGE_DTYPES[group.get("storage_dtype", "float32")]
        for k in self.slot_names(group):
            if k != MARS_PREV:  # created by the first corrected step (see .mars)
                st[k] = torch.zeros(p.shape, dtype=self.slot_dtype(p, storage), device=p.device)
        self.init_state(p, st, group)

    def init_state(self, p, state, group):
        """Optional per-parameter initialisation after the zero slots exist."""

    def begin_group(self, group) -> dict:
        """Optional group-level bookkeeping, called once per group and step (also when no
        parameter of the group has a gradient); the result is each bucket's ``extra``."""
        return {}

    def update(self, group, bucket: Bucket):  # pragma: no cover - abstract
        raise NotImplementedError


def _any_none(items) -> bool:
    """Whether ``items`` holds a None (``None in items`` would compare tensors with ``==``)."""
    return any(x is None for x in items)


def sr_seed(pid: int, slot_index: int, step: int) -> int:
    """A 32-bit seed for the stochastic rounding of one slot of one parameter at one step."""
    return (pid * 0x9E3779B1 + slot_index * 0x85EBCA77 + step * 0xC2B2AE3D) & 0xFFFFFFFF


def bias_correction(beta: float, step: int) -> float:
    """``1 - beta**step``."""
    return 1.0 - beta**step


__all__ = ["NativeOptimizer", "Bucket", "SHARED_FLAGS", "sr_seed", "bias_correction"]
