"""Overhead of the gradient approximators per closure evaluation.

On a 10-D Rosenbrock closure in torch (CPU), each approximator's step (``[X, LR(0)]``, so the
point never moves) is timed against as many bare evaluations of the closure as the step makes
(interleaved blocks of equal length): ``step time / bare time = 1 + overhead per evaluation``.
Goal: overhead <= 10 % (ratio <= 1.10). The step's fixed costs (the engine, drawing directions,
combining the losses) are spread over the evaluations, so approximators with few evaluations
per step (SPSA, MeZO with one sample: 2) show them more; configurations with 20+ evaluations
show the cost per evaluation.

The step's cost is also split into a fixed part per step and a marginal part per evaluation: each
family is timed at two evaluation counts (``n_samples`` 1 and 40, FDM's ``forward`` and
``central4``; ForwardGradient 1 and 10), the slope between them is the cost of one more evaluation, and ``slope / bare
evaluation - 1`` the approximator's own cost per evaluation, without the fixed costs.

ForwardGradient evaluates the closure with forward-mode tangents attached; that evaluation is
itself much slower than a plain one (torch's forward-mode AD), so its rows compare with bare
forward-mode evaluations (a ``dual_level`` with the tangent attached, the closure, the JVP read
out).

Run: ``python -m optbridge.perf.grad_approx``
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.autograd.forward_ad as fwad

import optbridge as ob
from optbridge import m

from .timing import add_threads_option, apply_threads, clock_of, report, time_interleaved

DIM = 10


def rosenbrock_closure(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(DIM, generator=g).requires_grad_()

    def closure(backward=True):
        a, b = x[:-1], x[1:]
        loss = (100 * (b - a * a) ** 2 + (1 - a) ** 2).sum()
        if backward:
            x.grad = None
            loss.backward()
        return loss

    return x, closure


CASES = {
    "FDM(central)": lambda: m.FDM(),
    "FDM(forward)": lambda: m.FDM(formula="forward"),
    "FDM(central4)": lambda: m.FDM(formula="central4"),
    "SPSA()": lambda: m.SPSA(seed=0),
    "SPSA(n_samples=10)": lambda: m.SPSA(n_samples=10, seed=0),
    "SPSA(n_samples=40)": lambda: m.SPSA(n_samples=40, seed=0),
    "RDSA()": lambda: m.RDSA(seed=0),
    "RDSA(n_samples=10)": lambda: m.RDSA(n_samples=10, seed=0),
    "RDSA(n_samples=40)": lambda: m.RDSA(n_samples=40, seed=0),
    "GaussianSmoothing() [100 samples]": lambda: m.GaussianSmoothing(seed=0),
    "MeZO()": lambda: m.MeZO(seed=0),
    "MeZO(n_samples=10)": lambda: m.MeZO(n_samples=10, seed=0),
    "MeZO(n_samples=40)": lambda: m.MeZO(n_samples=40, seed=0),
    "ForwardGradient()": lambda: m.ForwardGradient(seed=0),
    "ForwardGradient(n_samples=10)": lambda: m.ForwardGradient(n_samples=10, seed=0),
}


def _evals_per_step(make) -> int:
    x, closure = rosenbrock_closure()
    opt = ob.Modular([x], make(), m.LR(0.0))
    opt.step(closure)
    assert opt.evals.loss_and_grad == 0
    return opt.evals.loss


def _repeat(fn, n: int):
    def many():
        for _ in range(n):
            fn()
    return many


def run(steps: int, rounds: int, clock=time.perf_counter) -> dict[str, float]:
    """Times, per approximator, one step against as many bare evaluations as the step makes
    (interleaved, equally long blocks, so machine load biases neither side)."""
    x, closure = rosenbrock_closure()
    tangent = torch.randn(DIM)

    def bare():
        with torch.no_grad():
            closure(False)

    def bare_forward_ad():
        with torch.no_grad(), fwad.dual_level():
            x.copy_(fwad.make_dual(x.detach().clone(), tangent))
            fwad.unpack_dual(closure(False))

    fns, evals = {}, {}
    for name, make in CASES.items():
        n = evals[name] = _evals_per_step(make)
        xs, cl = rosenbrock_closure()
        opt = ob.Modular([xs], make(), m.LR(0.0))
        fns[name] = (lambda o, c: lambda: o.step(c))(opt, cl)
        base = bare_forward_ad if name.startswith("ForwardGradient") else bare
        fns[f"{name}: bare x {n}"] = _repeat(base, n)
    times = time_interleaved(fns, steps=steps, rounds=rounds, clock=clock)
    print(f"Gradient approximators on a {DIM}-D Rosenbrock closure, CPU, {torch.get_num_threads()} "
          "threads: one step (with [X, LR(0)]) vs as many bare closure(False) evaluations")
    print("(ForwardGradient: vs bare evaluations with a forward-mode tangent attached)")
    out = {}
    for name in CASES:
        n, base = evals[name], f"{name}: bare x {evals[name]}"
        label = "one evaluation" + (" (forward-mode)" if name.startswith("Forward") else "")
        per_eval = {label: times[base] / n,
                    f"{name}, per evaluation [{n} per step]": times[name] / n}
        out[name] = report(name, per_eval, label, goal=1.10) - 1
    single = time_interleaved({"bare": bare, "fwd": bare_forward_ad}, steps=steps, rounds=rounds,
                              clock=clock)
    ratio = single["fwd"] / single["bare"]
    print(f"\n(one forward-mode evaluation of this closure costs {ratio:.1f}x a plain one: torch's"
          " forward-mode AD, not the approximator)")
    print("\nOverhead per evaluation (step / bare evaluations - 1); goal <= 10 %:")
    for k, v in out.items():
        verdict = "ok" if v <= 0.10 else "above goal"
        print(f"  {k:<40} {evals[k]:4d} evals/step {100 * v:7.1f} %  {verdict}")
    # one bare evaluation: the median over all the cases' bare blocks of the same kind
    plain = statistics.median(times[f"{k}: bare x {evals[k]}"] / evals[k] for k in CASES
                              if not k.startswith("Forward"))
    forward = statistics.median(times[f"{k}: bare x {evals[k]}"] / evals[k] for k in CASES
                                if k.startswith("Forward"))
    marginal(times, evals, {k: forward if k.startswith("Forward") else plain for k in CASES})
    return out


#: (fewer evaluations, more evaluations) per family, for the marginal cost per evaluation
MARGINAL_PAIRS = {
    "FDM (forward -> central4)": ("FDM(forward)", "FDM(central4)"),
    "SPSA (1 -> 40 samples)": ("SPSA()", "SPSA(n_samples=40)"),
    "RDSA (1 -> 40 samples)": ("RDSA()", "RDSA(n_samples=40)"),
    "MeZO (1 -> 40 samples)": ("MeZO()", "MeZO(n_samples=40)"),
    "ForwardGradient (1 -> 10 samples)": ("ForwardGradient()", "ForwardGradient(n_samples=10)"),
}


def marginal(times: dict[str, float], evals: dict[str, int], bare: dict[str, float]) -> dict:
    """Per family: the slope of step time against evaluations (cost of one more evaluation)
    over one bare evaluation, minus 1, and the fixed cost per step (the intercept)."""
    print("\nMarginal cost per evaluation (slope between two evaluation counts) and fixed cost "
          "per step; goal for the marginal part <= 10 %:")
    out = {}
    for label, (a, b) in MARGINAL_PAIRS.items():
        slope = (times[b] - times[a]) / (evals[b] - evals[a])
        fixed = times[a] - evals[a] * slope
        over = slope / bare[a] - 1
        out[label] = (over, fixed)
        verdict = "ok" if over <= 0.10 else "above goal"
        print(f"  {label:<36} {evals[a]:3d}->{evals[b]:3d} evals  {100 * over:6.1f} % per evaluation"
              f"  fixed {fixed * 1e6:6.0f} us/step  {verdict}")
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="calls per timing block")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved timing blocks")
    add_threads_option(parser)
    args = parser.parse_args(argv)
    apply_threads(args)
    run(args.steps, args.rounds, clock_of(args))


if __name__ == "__main__":
    main()
