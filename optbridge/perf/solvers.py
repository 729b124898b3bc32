"""Per-evaluation overhead of stepwise solver modules over calling the solver directly.

Goal (issue "Solvers as modules"): stepwise solver overhead per evaluation over a direct
callback <= 25 us.

The objective is a cheap torch function ``loss(x) = sum(100 (x[1:] - x[:-1]^2)^2 + (1 - x[:-1])^2)``
on 10 float64 parameters. Each timed block runs ``--evals`` evaluations:

- ``direct``: the solver called directly (``nlopt.opt.optimize`` / ``scipy.optimize.minimize``)
  with a callback that evaluates ``loss(torch.from_numpy(x))`` (the same work as the closure);
- ``greenlet handoff``: the same solve run in the adapters' :class:`SolverWorker` (a greenlet
  of the calling thread), the caller evaluating each point it hands out, uncopied (no
  ``Modular`` engine, no module);
- ``Modular stepwise``: ``Modular(params, NLopt(...)/Scipy(...))`` with one ``step(closure)``
  per evaluation (``mode="evaluation"``), the default use. A solver alone in the chain takes
  the engine's fast path (``SolverModule.fast_step``: no ``StepContext``);
- ``Modular full step``: the same with ``reuse_evaluation=True``, which turns the fast path
  off (it changes nothing else for a derivative-free solver): the engine's full step, for
  comparison;
- ``Modular mode=solve``: the same module with ``mode="solve"``: one ``step`` runs the whole
  solve (no worker, no engine step per evaluation): the module's own per-evaluation cost.

All of them evaluate the same points (the adapters are bit-identical to the direct call). The
overhead per evaluation is ``(t - t_direct) / evals``, ``t`` and ``t_direct`` taken in the same
round (the median over rounds of that difference: the machine's slow spells shift both); its split: ``handoff`` = greenlet
handoff - direct (two greenlet switches), ``engine + module`` =
Modular stepwise - greenlet handoff. Two clocks: ``wall`` (what the goal is about) and ``cpu``
(process CPU time: the work added per evaluation, less sensitive to other processes; on a
loaded machine wall times include waiting for a core). Everything runs in one thread: the
thread-based hand-off this replaced cost about 21 us of wake-ups per evaluation by itself.

Last, the hand-off alone: round trips through :class:`SolverWorker` with nothing else.

Run: ``python -m optbridge.perf.solvers`` (one process), or ``python -m optbridge.perf.solvers
--processes 5 --rounds 31`` for the median over fresh processes: the figures move more from one
process to the next (memory layout) than between the blocks of one process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np
import torch

import optbridge as ob


DIM = 10


def loss(x: torch.Tensor) -> torch.Tensor:
    return (100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2).sum()


def x0() -> np.ndarray:
    return np.linspace(-1.2, 1.0, DIM)


# ----------------------------------------------------------------------------------- NLopt
def nlopt_solve(evals: int):
    import nlopt

    def solve(objective):
        opt = nlopt.opt(nlopt.LN_BOBYQA, DIM)
        opt.set_maxeval(evals)
        opt.set_min_objective(lambda x, g: objective(x))
        try:
            opt.optimize(x0())
        except nlopt.RoundoffLimited:
            pass
    return solve


def scipy_solve(evals: int):
    import scipy.optimize as so

    def solve(objective):
        so.minimize(objective, x0(), method="Nelder-Mead", options={"maxfev": evals})
    return solve


def direct(solve):
    counter = [0]

    def objective(x):
        counter[0] += 1
        return float(loss(torch.from_numpy(x)))  # x: nlopt's/scipy's array, read only

    def run():
        solve(objective)
    return run, counter


def greenlet_handoff(solve):
    from optbridge.adapters.solvers.worker import DONE, SolverWorker

    counter = [0]

    class _Stop(Exception):
        pass

    def handed_off(request):
        solve(request)  # the point as the solver passes it, as the adapters do

    def run():
        w = SolverWorker(handed_off, _Stop)
        while True:
            kind, x = w.next()
            if kind == DONE:
                break
            counter[0] += 1
            w.reply(float(loss(torch.from_numpy(x))))
        w.close()
    return run, counter


def modular(make_module, full_step: bool = False):
    counter = [0]

    def run():
        p = torch.nn.Parameter(torch.from_numpy(x0()))
        opt = ob.Modular([p], make_module(), reuse_evaluation=full_step)

        def closure(backward=True):
            return loss(p)
        while not opt.terminated:
            opt.step(closure)
        counter[0] += opt.evals.total
    return run, counter


def _interleaved(fns: dict, rounds: int, warmup: int = 2) -> tuple[dict, dict]:
    """Wall and process-CPU seconds of each call of each function, ``rounds`` calls each,
    the functions called in turn (so a slow spell of the machine hits all of them)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    wall = {k: [] for k in fns}
    cpu = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall[k].append(time.perf_counter() - w0)
            cpu[k].append(time.process_time() - c0)
    return wall, cpu


def _paired_overhead(times: dict, n_evals: dict, key: str, base: str) -> float:
    """Median over rounds of ``key``'s time per evaluation minus ``base``'s in the same round:
    the pairing cancels the machine's slow spells, which shift both."""
    return statistics.median(a / n_evals[key] - b / n_evals[base]
                             for a, b in zip(times[key], times[base]))


def measure(name: str, solve, make_module, evals: int, rounds: int) -> dict[str, float]:
    cases = {"direct": direct(solve), "greenlet handoff": greenlet_handoff(solve),
             "Modular stepwise": modular(lambda: make_module("evaluation")),
             "Modular full step": modular(lambda: make_module("evaluation"), full_step=True),
             "Modular mode=solve": modular(lambda: make_module("solve"))}
    wall, cpu = _interleaved({k: v[0] for k, v in cases.items()}, rounds)
    calls = rounds + 2
    n_evals = {k: cases[k][1][0] / calls for k in cases}
    print(f"\n{name}: {evals} evaluations per block, {DIM}-D Rosenbrock (torch), "
          f"{torch.get_num_threads()} torch thread(s); {rounds} interleaved blocks; overhead: "
          f"median over blocks of the difference to the direct call in the same round")
    out = {}
    for clock, times in (("wall", wall), ("cpu", cpu)):
        base = statistics.median(times["direct"]) / n_evals["direct"]
        over = {k: _paired_overhead(times, n_evals, k, "direct") for k in cases}
        for k in cases:
            t = statistics.median(times[k]) / n_evals[k]
            print(f"  {clock:<4} {k:<19} {t * 1e6:8.1f} us/eval   {t / base:5.2f}x   overhead "
                  f"{over[k] * 1e6:7.1f} us/eval")
        handoff = over["greenlet handoff"]
        total = over["Modular stepwise"]
        engine = total - handoff
        mark = "ok" if total * 1e6 <= 25.0 else "ABOVE GOAL 25 us"
        print(f"  {clock:<4} split: handoff {handoff * 1e6:.1f} us + engine/module "
              f"{engine * 1e6:.1f} us = {total * 1e6:.1f} us/eval  [{mark}]")
        out[clock] = {"overhead_us": total * 1e6, "handoff_us": handoff * 1e6,
                      "engine_us": engine * 1e6}
    return out


def bare_round_trip(n: int, rounds: int) -> None:
    """The hand-off alone: ``n`` point/value round trips through :class:`SolverWorker` with a
    solver loop and an objective that do nothing (no solver, no torch)."""
    from optbridge.adapters.solvers.worker import DONE, SolverWorker

    class _Stop(Exception):
        pass

    def solve(request):
        for i in range(n):
            request(i)

    def run():
        w = SolverWorker(solve, _Stop)
        while True:
            kind, payload = w.next()
            if kind == DONE:
                break
            w.reply(payload)

    wall, cpu = _interleaved({"bare": run}, rounds)
    wall, cpu = statistics.median(wall["bare"]), statistics.median(cpu["bare"])
    print(f"\nbare hand-off (no solver, no objective): {wall / n * 1e6:.2f} us wall, "
          f"{cpu / n * 1e6:.2f} us cpu per round trip (median of {rounds} x {n})")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--evals", type=int, default=400, help="evaluations per timed block")
    ap.add_argument("--rounds", type=int, default=15, help="interleaved blocks per variant")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--processes", type=int, default=1,
                    help="repeat the whole measurement in this many fresh processes and print "
                         "the median overhead over them (each process lays out memory "
                         "differently, which moves the figures more than the blocks within one)")
    ap.add_argument("--json", metavar="FILE", help=argparse.SUPPRESS)  # one process's figures
    args = ap.parse_args(argv)
    if args.processes > 1:
        _over_processes(args)
        return
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    from optbridge.adapters import NLopt, Scipy

    n = args.evals
    print("goal: stepwise solver overhead per evaluation over a direct callback <= 25 us")
    figures = {
        "NLopt LN_BOBYQA": measure(
            "NLopt LN_BOBYQA", nlopt_solve(n),
            lambda mode: NLopt("LN_BOBYQA", budget=n, mode=mode), n, args.rounds),
        "SciPy Nelder-Mead": measure(
            "SciPy Nelder-Mead", scipy_solve(n),
            lambda mode: Scipy("Nelder-Mead", budget=n, mode=mode), n, args.rounds),
    }
    bare_round_trip(20 * n, args.rounds)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f)


def _over_processes(args) -> None:
    """Run the measurement in ``args.processes`` fresh interpreters, one after the other, and
    print each one's stepwise overhead (wall clock) and the median over them."""
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.processes):
            out = os.path.join(tmp, f"{i}.json")
            cmd = [sys.executable, "-m", "optbridge.perf.solvers", "--evals", str(args.evals),
                   "--rounds", str(args.rounds), "--threads", str(args.threads), "--json", out]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            with open(out) as f:
                runs.append(json.load(f))
            print(f"process {i + 1}/{args.processes}: " + ", ".join(
                f"{name} {fig['wall']['overhead_us']:.1f} us" for name, fig in runs[-1].items()),
                flush=True)
    print(f"\nstepwise overhead per evaluation over a direct callback (wall; median over "
          f"{args.processes} processes of {args.rounds} blocks each; goal <= 25 us):")
    for name in runs[0]:
        values = sorted(r[name]["wall"]["overhead_us"] for r in runs)
        handoff = statistics.median(r[name]["wall"]["handoff_us"] for r in runs)
        med = statistics.median(values)
        mark = "ok" if med <= 25.0 else "ABOVE GOAL 25 us"
        print(f"  {name:<18} median {med:5.1f} us  (range {values[0]:.1f}-{values[-1]:.1f}; "
              f"greenlet handoff {handoff:.1f} us)  [{mark}]")


if __name__ == "__main__":
    main()
