"""One fused C pass for :class:`~optbridge.m.Adam` on the CPU.

The eager formula of ``Adam.transform`` moves each element through about a dozen memory passes
before the division (materialising a pending clip factor, ``lerp_``, ``mul_``/``addcmul_``,
``sqrt``, ``add_``). The ``adam_dir`` kernel of :mod:`optbridge.native.cpu_kernels` reads the
update, ``exp_avg`` and ``exp_avg_sq`` once and writes them and the denominator once:

.. math::
    g = f\\,u,\\quad m \\leftarrow \\mathrm{lerp}(m, g, 1-\\beta_1),\\quad
    v \\leftarrow \\beta_2 v + (1-\\beta_2) g^2,\\quad
    d = \\sqrt{v} + \\epsilon c

with ``f`` the factor still pending on the incoming update (a global ``ClipNorm`` coefficient,
an earlier ``LR``; ``-1`` more for ``maximize``) and ``c = \\sqrt{1-\\beta_2^t}`` (1 without
``debias``): the eager formula's operations in its order, in fp32 without FMA contraction.
The result is the same lazy ratio ``(c / (1-\\beta_1^t))\\, m / d`` as the eager path's, so the
division still happens inside the parameter update's ``addcdiv_`` (or once, where a later
module reads the update), and both paths agree to rounding.

It runs when the compiled kernels are available (see ``optbridge.native.cpu_backend()``;
``OPTBRIDGE_NATIVE_CPU=eager`` turns them off) and the step allows it: one set of settings,
no ``amsgrad``, every parameter fp32, contiguous and on the CPU at the same step count, and a
pending factor shared by all tensors. Otherwise ``Adam`` runs its eager formula.
"""

from __future__ import annotations

import weakref

import torch

from ...core import foreach as fe

_contiguous = torch.Tensor.is_contiguous
#: per module: its cached pointer table (kept off the module, which stays picklable)
_tables: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _kernels():
    from optbridge.native import cpu_kernels

    return cpu_kernels


def _usable(tensors) -> bool:
    t0 = tensors[0]
    if t0.dtype != torch.float32 or t0.device.type != "cpu":
        return False
    return all(t.dtype == torch.float32 and t.device.type == "cpu" and _contiguous(t)
               for t in tensors)


def fused_adam_step(module, ctx) -> bool:
    """Run ``module`` (an ``Adam``) as one C pass over ``ctx``; False when it cannot (nothing
    was changed then)."""
    params = ctx.params
    if len(ctx.spans) != 1:
        return False
    s = module.group_settings(ctx.spans[0][0])
    if s["amsgrad"]:
        return False
    kernels = _kernels()
    lib = kernels.library()
    if lib is None:
        return False
    pending = ctx.update_with_factor()
    if pending is None:
        return False
    update, factor = pending
    if not (_usable(params) and _usable(update)):
        return False
    states = module.param_states(ctx)
    steps = [st.get("step", 0) for st in states]
    if steps.count(steps[0]) != len(steps):
        return False
    exp_avg = fe.state_buffers(states, params, "exp_avg", torch.zeros_like)
    exp_avg_sq = fe.state_buffers(states, params, "exp_avg_sq", torch.zeros_like)
    if not (_usable(exp_avg) and _usable(exp_avg_sq)):
        return False
    t = fe.next_count(states, "step")
    beta1, beta2, eps = s["beta1"], s["beta2"], s["eps"]
    if s["debias"]:
        c = (1 - beta2 ** t) ** 0.5
        epsc, scale = eps * c, c / (1 - beta1 ** t)
    else:
        epsc, scale = eps, None
    denom = [torch.empty_like(p) for p in params]
    table = _tables.get(module)
    if table is None:
        table = _tables[module] = kernels.PointerTable()
    table.current(denom, update, [exp_avg, exp_avg_sq], range(len(params)), 2)
    fn = kernels.kernel(lib, "adam_dir_multi", exp_avg[0])
    fn(*table.args(t), -factor if s["maximize"] else factor, 1 - beta1, beta2, 1 - beta2,
       epsc, kernels.threads())
    ctx.set_update_ratio(exp_avg, denom)
    if scale is not None:
        ctx.scale_update(scale)
    return True
