"""Fused CPU kernels for the fp32 elementwise optimizers (AdamW, ADOPT, Lion, LaProp, AdEMAMix,
SGD, Adagrad) and for the direction of the chain module ``optbridge.m.Adam``: plain C with OpenMP,
built with the system C compiler on first use, cached, and called through ``ctypes``.

``lerp`` follows torch's two-sided formula (``a + w (b - a)`` for ``w < 0.5``, else
``b - (b - a)(1 - w)``). bfloat16 slots are read by widening and stored with the stochastic rounding of
:mod:`.stochastic_rounding` (same hash, same bits). Each kernel is one pass over ``(param, grad, state slots)`` doing exactly the operations of the
optimizer's eager formula in the same order (fp32 arithmetic, no fast-math, no FMA contraction),
so both paths agree to rounding. The learning rate, betas and bias corrections are plain
arguments: changing them never rebuilds anything. Threads: ``torch.get_num_threads()``.

Every kernel has two entry points: ``name_<f32|bf16>`` runs one tensor, ``name_multi_<...>``
runs a whole bucket in one call from a :class:`PointerTable` (data pointers, sizes, seeds; built
once and rebuilt only when a pointer changes). The multi call opens one OpenMP region and splits
the concatenated elements evenly between the threads in 64-byte blocks, instead of one ``ctypes``
call (~15 us) and one thread fork per tensor. Each element sees the same operations whatever the
split, so both entry points store the same bits.

The shared library is cached under ``$OPTBRIDGE_CACHE`` (default ``~/.cache/optbridge``) keyed by
a hash of the source, the flags and the CPU's feature flags. When no compiler works, or with
``OPTBRIDGE_NATIVE_CPU=eager``, :func:`library` returns None and the optimizers run their eager
torch formula (same results, slower); :func:`backend` says which one is active.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import operator
import threading

import torch

_IS_CPU, _DTYPE = operator.attrgetter("is_cpu"), operator.attrgetter("dtype")
_DATA_PTR, _NUMEL = torch.Tensor.data_ptr, torch.Tensor.numel

PRELUDE = r"""
#include <math.h>
#include <stdint.h>
#include <omp.h>
/* one range [lo, hi) of one tensor; vectorised, no branch in the loop */
#define LOOP _Pragma("omp simd") for (int64_t i = lo; i < hi; i++)

/* torch's lerp: a + w (b - a) for w < 0.5, else b - (b - a)(1 - w); the branch is taken
   outside the loops, a select inside them costs up to a quarter of the step */
#define LERP_LO(a, b, w) ((a) + (w) * ((b) - (a)))
#define LERP_HI(a, b, w) ((b) - ((b) - (a)) * (1.0f - (w)))

static inline float bf16_load(uint16_t b) {
    union { uint32_t u; float f; } c; c.u = ((uint32_t)b) << 16; return c.f;
}
/* stochastic rounding: the fmix32 hash of (index, seed) as in stochastic_rounding.py */
static inline uint16_t bf16_store_sr(float x, int64_t i, uint32_t seed) {
    union { uint32_t u; float f; } c; c.f = x;
    uint32_t h = (uint32_t)i * 0x9E3779B1u + seed;
    h ^= h >> 16; h *= 0x85EBCA6Bu; h ^= h >> 13; h *= 0xC2B2AE35u; h ^= h >> 16;
    return (uint16_t)((c.u + (h & 0xFFFFu)) >> 16);
}

/* thread t's share of [0, total): whole blocks of 16 elements (64 bytes), so no two threads
   write the same cache line and every share starts vector-aligned */
static inline void share(int64_t total, int t, int nth, int64_t* lo, int64_t* hi) {
    int64_t blocks = (total + 15) / 16, per = blocks / nth, rem = blocks % nth;
    int64_t b0 = t * per + (t < rem ? t : rem), b1 = b0 + per + (t < rem ? 1 : 0);
    *lo = b0 * 16 < total ? b0 * 16 : total;
    *hi = b1 * 16 < total ? b1 * 16 : total;
}
#define PARALLEL_MIN 65536

/* the range as two interleaved halves: twice the memory streams in flight, which one core
   needs to reach its bandwidth when a kernel has few streams (Lion: about 10 % faster; the
   many-stream kernels get slower). Each element sees the same operations. */
#define LOOP2(...) do { \
        int64_t h_ = ((hi - lo) / 2) / 16 * 16; \
        _Pragma("omp simd") for (int64_t k_ = lo; k_ < lo + h_; k_++) { \
            { const int64_t i = k_; __VA_ARGS__ } { const int64_t i = k_ + h_; __VA_ARGS__ } } \
        for (int64_t i = lo + 2 * h_; i < hi; i++) { __VA_ARGS__ } \
    } while (0)
"""

#: slot access per storage dtype; ``SEED(k)`` is the k-th slot's seed argument
STORAGE = {
    "f32": "#define SLOT float\n#define LD(s) (s)[i]\n#define ST(s, x, k) (s)[i] = (x)\n",
    "bf16": "#define SLOT uint16_t\n#define LD(s) bf16_load((s)[i])\n"
            "#define ST(s, x, k) (s)[i] = bf16_store_sr((x), i, seed##k)\n",
}

#: per kernel: (number of state slots, the scalar arguments between the tensors and the seeds)
KERNELS = {
    "adamw": (2, "float gf, float decay, float w1, float b2, float c2, float bc2s, float eps, "
                 "float step"),
    "adopt": (2, "float gf, float decay, float w1, float b2, float c2, float eps, float clip, "
                 "float lr"),
    "lion": (1, "float gf, float decay, float b1, float c1, float b2, float c2, float lr"),
    "laprop": (2, "float gf, float decay, float b1, float c1, float b2, float c2, float bc2, "
                  "float eps, float step"),
    "sgd": (1, "float gf, float decay, float mu, float damp1, int has_momentum, int first, "
               "int nesterov, float lr"),
    "adagrad": (1, "float gf, float decay, float eps, float clr"),
    "ademamix": (3, "float gf, float wd, float b1, float c1, float b3, float c3, float b2, "
                    "float c2, float bc1, float bc2s, float eps, float alpha, float lr"),
    # ``optbridge.m.Adam``'s moments and denominator: the "param" pointer is the denominator
    "adam_dir": (2, "float gf, float w1, float b2, float c2, float epsc"),
}

#: the slots' names inside the kernel bodies, by position
SLOT_NAMES = {"adamw": "m v", "adopt": "m v", "lion": "m", "laprop": "m v", "sgd": "b",
              "adagrad": "s", "ademamix": "m1 m2 v", "adam_dir": "m v"}

#: kernel bodies over one range ``[lo, hi)`` of one tensor: one fused pass, the same operations
#: in the same order as the eager formula. ``RANGE(name)`` declares the arguments of
#: :data:`KERNELS`.
BODIES = r"""
RANGE(adamw) {
#define ADAMW_LOOP(LERP) LOOP { \
        float gi = g[i] * gf; \
        float mi = LERP(LD(m), gi, w1); \
        float vi = LD(v) * b2 + c2 * gi * gi; \
        ST(m, mi, 0); ST(v, vi, 1); \
        float den = sqrtf(vi) / bc2s + eps; \
        p[i] = p[i] * decay + step * (mi / den); \
    }
    if (w1 < 0.5f) { ADAMW_LOOP(LERP_LO) } else { ADAMW_LOOP(LERP_HI) }
#undef ADAMW_LOOP
}

RANGE(adopt) {
#define ADOPT_LOOP(LERP) LOOP { \
        float gi = g[i] * gf; \
        float v0 = LD(v); \
        float s = sqrtf(v0); \
        float ng = gi / (s < eps ? eps : s);  /* NaN propagates, as torch.clamp */ \
        ng = ng < -clip ? -clip : ng; \
        ng = ng > clip ? clip : ng; \
        float mi = LERP(LD(m), ng, w1); \
        ST(m, mi, 0); \
        p[i] = p[i] * decay - lr * mi; \
        ST(v, v0 * b2 + c2 * gi * gi, 1); \
    }
    if (w1 < 0.5f) { ADOPT_LOOP(LERP_LO) } else { ADOPT_LOOP(LERP_HI) }
#undef ADOPT_LOOP
}

RANGE(lion) {
    LOOP2(
        float gi = g[i] * gf;
        float m0 = LD(m);
        float u = m0 * b1 + gi * c1;
        float s = (u > 0.0f ? 1.0f : 0.0f) - (u < 0.0f ? 1.0f : 0.0f);
        p[i] = p[i] * decay - lr * s;
        ST(m, m0 * b2 + gi * c2, 0);
    );
}

RANGE(laprop) {
    LOOP {
        float gi = g[i] * gf;
        float vi = LD(v) * b2 + c2 * gi * gi;
        ST(v, vi, 1);
        float den = sqrtf(vi / bc2) + eps;
        float mi = LD(m) * b1 + c1 * (gi / den);
        ST(m, mi, 0);
        p[i] = p[i] * decay + step * mi;
    }
}

RANGE(sgd) {
    if (!has_momentum) {
        LOOP { p[i] = p[i] * decay - lr * (g[i] * gf); }
    } else if (first) {  /* the buffer starts as the first gradient */
        LOOP {
            float gi = g[i] * gf;
            ST(b, gi, 0);
            p[i] = p[i] * decay - lr * (nesterov ? gi + mu * gi : gi);
        }
    } else if (nesterov) {  /* separate loops: a select in the loop costs ~25% here */
        LOOP {
            float gi = g[i] * gf;
            float bi = LD(b) * mu + damp1 * gi;
            ST(b, bi, 0);
            p[i] = p[i] * decay - lr * (gi + mu * bi);
        }
    } else {
        LOOP {
            float gi = g[i] * gf;
            float bi = LD(b) * mu + damp1 * gi;
            ST(b, bi, 0);
            p[i] = p[i] * decay - lr * bi;
        }
    }
}

RANGE(adagrad) {
    LOOP {
        float gi = g[i] * gf;
        float si = LD(s) + gi * gi;
        ST(s, si, 0);
        p[i] = p[i] * decay - clr * (gi / (sqrtf(si) + eps));
    }
}

RANGE(ademamix) {
    LOOP {
        float gi = g[i] * gf;
        float f = LD(m1) * b1 + c1 * gi;
        float s = LD(m2) * b3 + c3 * gi;
        float vi = LD(v) * b2 + c2 * gi * gi;
        ST(m1, f, 0); ST(m2, s, 1); ST(v, vi, 2);
        float den = sqrtf(vi) / bc2s + eps;
        float u = (f / bc1 + alpha * s) / den + wd * p[i];
        p[i] = p[i] - lr * u;
    }
}

RANGE(adam_dir) {
#define ADAM_DIR_LOOP(LERP) LOOP { \
        float gi = g[i] * gf; \
        float mi = LERP(LD(m), gi, w1); \
        float vi = LD(v) * b2 + c2 * gi * gi; \
        ST(m, mi, 0); ST(v, vi, 1); \
        p[i] = sqrtf(vi) + epsc; \
    }
    if (w1 < 0.5f) { ADAM_DIR_LOOP(LERP_LO) } else { ADAM_DIR_LOOP(LERP_HI) }
#undef ADAM_DIR_LOOP
}
"""

#: the exported entry points of each kernel: ``name`` runs one tensor, ``name_multi`` a whole
#: bucket from a pointer table in one call (one OpenMP region, the concatenated elements split
#: evenly between the threads)
WRAPPERS = r"""
void FN(NAME)(TENSOR_ARGS, int64_t n, SCALARS, SEED_ARGS, int nt) {
    if (nt <= 1 || n <= PARALLEL_MIN) { FN(NAME_range)(TENSORS, 0, n, SCALAR_NAMES, SEEDS); return; }
#pragma omp parallel num_threads(nt)
    {
        int64_t lo, hi;
        share(n, omp_get_thread_num(), omp_get_num_threads(), &lo, &hi);
        if (lo < hi) FN(NAME_range)(TENSORS, lo, hi, SCALAR_NAMES, SEEDS);
    }
}

/* count tensors; ptrs: (param, grad, slots...) per tensor; offsets: count + 1 running sums of
   the sizes rounded up to 16 (so shares start aligned inside every tensor); seed_base: the
   per-slot seeds without the step term, seed_step: the step term (uint32 arithmetic) */
void FN(NAME_multi)(int64_t count, void* const* ptrs, const int64_t* sizes,
                    const int64_t* offsets, const uint32_t* seed_base, uint32_t seed_step,
                    SCALARS, int nt) {
    int64_t total = offsets[count];
    int par = nt > 1 && total > PARALLEL_MIN;
#pragma omp parallel num_threads(par ? nt : 1) if(par)
    {
        int64_t lo, hi;
        share(total, omp_get_thread_num(), omp_get_num_threads(), &lo, &hi);
        for (int64_t j = 0; j < count && offsets[j] < hi; j++) {
            if (offsets[j + 1] <= lo) continue;
            int64_t a = lo > offsets[j] ? lo - offsets[j] : 0;
            int64_t b = hi - offsets[j] < sizes[j] ? hi - offsets[j] : sizes[j];
            void* const* t = ptrs + j * NPTR;
            const uint32_t* sb = seed_base + j * NSLOT;
            if (a < b) FN(NAME_range)(TABLE_TENSORS, a, b, SCALAR_NAMES, TABLE_SEEDS);
        }
    }
}
"""


def _kernel_source(name: str) -> str:
    n_slots, scalars = KERNELS[name]
    slots = SLOT_NAMES[name].split()
    tensor_args = ", ".join(["float* restrict p", "const float* restrict g"]
                            + [f"SLOT* restrict {s}" for s in slots])
    seed_args = ", ".join(f"uint32_t seed{k}" for k in range(n_slots))
    scalar_names = ", ".join(a.split()[-1] for a in scalars.split(","))
    header = (f"static void FN({name}_range)({tensor_args}, int64_t lo, int64_t hi, {scalars}, "
              f"{seed_args})")
    body = BODIES.split(f"RANGE({name})", 1)[1].split("\nRANGE(", 1)[0]
    wrappers = (WRAPPERS.replace("TENSOR_ARGS", tensor_args).replace("SEED_ARGS", seed_args)
                .replace("SCALAR_NAMES", scalar_names).replace("SCALARS", scalars)
                .replace("TABLE_TENSORS", ", ".join(
                    ["(float*)t[0]", "(const float*)t[1]"]
                    + [f"(SLOT*)t[{k + 2}]" for k in range(n_slots)]))
                .replace("TABLE_SEEDS", ", ".join(f"sb[{k}] + seed_step"
                                                  for k in range(n_slots)))
                .replace("TENSORS", ", ".join(["p", "g"] + slots))
                .replace("SEEDS", ", ".join(f"seed{k}" for k in range(n_slots)))
                .replace("NPTR", str(2 + n_slots)).replace("NSLOT", str(n_slots))
                .replace("NAME", name))
    return header + body + wrappers


def _source() -> str:
    parts = [PRELUDE]
    for suffix, defs in STORAGE.items():
        parts.append(f"#define FN(name) name##_{suffix}\n{defs}")
        parts.extend(_kernel_source(name) for name in KERNELS)
        parts.append("#undef FN\n#undef SLOT\n#undef LD\n#undef ST\n")
    return "".join(parts)


SOURCE = _source()

FLAGS = ["-O3", "-fPIC", "-shared", "-fopenmp", "-fno-math-errno", "-ffp-contract=off",
         "-march=native", "-mprefer-vector-width=512", "-std=c11"]

_F, _P, _N, _I = ctypes.c_float, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
_U = ctypes.c_uint32


def _scalar_types(name: str) -> list:
    return [_I if a.split()[0] == "int" else _F for a in KERNELS[name][1].split(",")]


#: ctypes argument types of the single-tensor (``name``) and pointer-table (``name_multi``) entry
#: points
SIGNATURES = {name: [_P] * (2 + k) + [_N] + _scalar_types(name) + [_U] * k + [_I]
              for name, (k, _) in KERNELS.items()}
MULTI_SIGNATURES = {name: [_N, _P, _P, _P, _P, _U] + _scalar_types(name) + [_I]
                    for name in KERNELS}

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_tried = False
_error: str | None = None


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line
    except OSError:
        pass
    import platform

    return platform.processor() + platform.machine()


def cache_dir() -> str:
    """Where the compiled library is kept."""
    root = os.environ.get("OPTBRIDGE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                             "optbridge")
    return os.path.join(root, "native_cpu")


def _build() -> ctypes.CDLL:
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise RuntimeError("no C compiler found (gcc/cc)")
    key = hashlib.sha256("\0".join([SOURCE, cc, *FLAGS, _cpu_flags()]).encode()).hexdigest()[:16]
    out_dir = cache_dir()
    path = os.path.join(out_dir, f"kernels_{key}.so")
    if not os.path.exists(path):
        os.makedirs(out_dir, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
            src = os.path.join(tmp, "kernels.c")
            with open(src, "w") as f:
                f.write(SOURCE)
            tmp_so = os.path.join(tmp, "kernels.so")
            res = subprocess.run([cc, *FLAGS, src, "-o", tmp_so, "-lm"], capture_output=True,
                                 text=True)
            if res.returncode != 0:
                raise RuntimeError(f"{cc} failed: {res.stderr.strip()[:500]}")
            os.replace(tmp_so, path)  # atomic: concurrent builders never see a partial file
    lib = ctypes.CDLL(path)
    for name in KERNELS:
        for suffix in STORAGE:
            for entry, argtypes in ((name, SIGNATURES[name]),
                                    (f"{name}_multi", MULTI_SIGNATURES[name])):
                fn = getattr(lib, f"{entry}_{suffix}")
                fn.argtypes = argtypes
                fn.restype = None
    return lib


def library() -> ctypes.CDLL | None:
    """The compiled kernels, or None (eager fallback) when disabled or no compiler works."""
    global _lib, _tried, _error
    if os.environ.get("OPTBRIDGE_NATIVE_CPU", "").lower() == "eager":
        return None
    if not _tried:
        with _lock:
            if not _tried:
                try:
                    _lib = _build()
                except Exception as e:  # no compiler, no OpenMP, read-only cache...
                    _lib, _error = None, f"{type(e).__name__}: {e}"
                _tried = True
    return _lib


def backend() -> str:
    """``"c"`` when the fused C kernels are active, else ``"eager (<reason>)"``."""
    if library() is not None:
        return "c"
    if os.environ.get("OPTBRIDGE_NATIVE_CPU", "").lower() == "eager":
        return "eager (OPTBRIDGE_NATIVE_CPU=eager)"
    return f"eager ({_error})"


def usable(params, grads, slots) -> bool:
    """The kernels' contract: params/grads fp32, slots all fp32 or all bf16, all contiguous on
    the CPU."""
    if not all(t.device.type == "cpu" and t.dtype == torch.float32 for t in (params[0], grads[0])):
        return False
    # the base class checked that grads match their params and params share device and dtype
    contiguous = torch.Tensor.is_contiguous
    if not (all(map(contiguous, params)) and all(map(contiguous, grads))
            and all(map(contiguous, slots))):
        return False
    if not all(map(_IS_CPU, slots)):
        return False
    dtypes = set(map(_DTYPE, slots))
    return dtypes <= {torch.float32} or dtypes == {torch.bfloat16}


#: ``sr_seed(pid, k, step) = pid A + k B + step C (mod 2**32)`` of :mod:`.base`
SEED_PID, SEED_SLOT, SEED_STEP = 0x9E3779B1, 0x85EBCA77, 0xC2B2AE3D


class PointerTable:
    """The ctypes arrays a ``*_multi`` kernel reads for one bucket: data pointers of (param,
    grad, slots...) per tensor, sizes, running offsets (sizes rounded up to 16) and the
    step-independent part of each slot's stochastic-rounding seed. Built once; :meth:`current`
    rebuilds it only when a data pointer, a size or a parameter position changed."""

    def __init__(self):
        self.key = None

    def current(self, params, grads, slot_lists, ids, n_slots: int):
        """``slot_lists[k]``: the k-th slot of every tensor (a kernel with more slots than given
        gets the param as an unused placeholder, as SGD without momentum)."""
        ptrs = list(map(_DATA_PTR, params))
        ptrs += map(_DATA_PTR, grads)
        for slot in slot_lists:
            ptrs += map(_DATA_PTR, slot)
        key = (tuple(ptrs), tuple(ids), tuple(map(_NUMEL, params)))
        if key != self.key:
            self._build(ptrs, len(params), len(slot_lists), n_slots, key[2], ids)
            self.key = key
        return self

    def _build(self, flat, count, given, n_slots, sizes, ids):
        cols = [flat[c * count:(c + 1) * count] for c in range(2 + given)]
        cols += [cols[0]] * (n_slots - given)
        self.count = count
        self.ptrs = (ctypes.c_void_p * (count * (2 + n_slots)))(
            *[col[j] for j in range(count) for col in cols])
        self.sizes = (ctypes.c_int64 * count)(*sizes)
        offsets, total = [0], 0
        for n in sizes:
            total += (n + 15) // 16 * 16
            offsets.append(total)
        self.offsets = (ctypes.c_int64 * (count + 1))(*offsets)
        self.seed_base = (ctypes.c_uint32 * max(1, count * n_slots))(
            *[(pid * SEED_PID + k * SEED_SLOT) & 0xFFFFFFFF for pid in ids
              for k in range(n_slots)])

    def args(self, step: int) -> tuple:
        """The leading arguments of a ``*_multi`` call at ``step``."""
        return (self.count, self.ptrs, self.sizes, self.offsets, self.seed_base,
                (step * SEED_STEP) & 0xFFFFFFFF)


def kernel(lib, name: str, slot: torch.Tensor):
    """The variant of kernel ``name`` (or ``name_multi``) for the storage dtype of ``slot``."""
    return getattr(lib, f"{name}_{'bf16' if slot.dtype == torch.bfloat16 else 'f32'}")


def threads() -> int:
    """Threads the kernels use: the same as torch's intra-op pool."""
    return torch.get_num_threads()
