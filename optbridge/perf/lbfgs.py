"""L-BFGS with a strong-Wolfe line search: ``Modular[LBFGS, StrongWolfe]`` vs
``torch.optim.LBFGS(line_search_fn="strong_wolfe", max_iter=1)``.

Both optimizers run the same episodes (``--steps`` steps from the same starting point, state
reset before each episode) on the same closure; the result is the wall time per closure
evaluation (the two make the same evaluations; the counts are printed). CPU. Goal (issue
"line searches, L-BFGS"): <= 1.2x torch.

Problems: an MLP (2 hidden tanh layers) on generated regression data, float32; the 1000-D
Rosenbrock function, float64 (cheap closure: the optimizer overhead shows).

Run: ``python -m optbridge.perf.lbfgs``
"""

from __future__ import annotations

import argparse

import torch

import optbridge as ob
from optbridge import m

from .timing import report, time_interleaved

HISTORY, MAX_EVAL = 10, 25


def mlp_problem(width: int = 64, n: int = 512, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 16, generator=g)
    Y = torch.sin(X[:, :4].sum(1, keepdim=True)) + 0.1 * torch.randn(n, 1, generator=g)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(16, width), torch.nn.Tanh(),
                                torch.nn.Linear(width, width), torch.nn.Tanh(),
                                torch.nn.Linear(width, 1))
    params = list(model.parameters())

    def loss():
        return torch.nn.functional.mse_loss(model(X), Y)

    return params, loss


def rosenbrock_problem(dim: int = 1000, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(dim, generator=g, dtype=torch.float64) * 0.5 - 1).requires_grad_()

    def loss():
        return (100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum()

    return [x], loss


class Episode:
    """``steps`` optimizer steps from a fixed starting point; counts closure evaluations."""

    def __init__(self, params, loss, make_opt, steps: int):
        self.params, self.loss, self.steps = params, loss, steps
        self.start = [p.detach().clone() for p in params]
        self.opt = make_opt(params)
        self.evals = 0

        def closure(backward=True):
            self.evals += 1
            value = self.loss()
            if backward:
                self.opt.zero_grad()
                value.backward()
            return value

        self.closure = closure

    def reset(self) -> None:
        with torch.no_grad():
            for p, s in zip(self.params, self.start):
                p.copy_(s)
        opt = self.opt
        if isinstance(opt, ob.Modular):
            for mod in opt.modules:
                mod.reset()
        else:
            opt.state.clear()

    def __call__(self) -> None:
        self.reset()
        for _ in range(self.steps):
            self.opt.step(self.closure)


def make_torch(params):
    return torch.optim.LBFGS(params, line_search_fn="strong_wolfe", max_iter=1, max_eval=MAX_EVAL,
                             history_size=HISTORY)


def make_ours(params):
    return ob.Modular(params, m.LBFGS(history_size=HISTORY, sy_tol=1e-10, tol_grad=1e-7),
                      m.StrongWolfe(maxiter=MAX_EVAL, fallback=True, adaptive=False, maxzoom=None))


def run(steps: int, rounds: int) -> dict[str, float]:
    cases = [
        ("MLP 16-64-64-1 on 512 samples (float32)", mlp_problem),
        ("Rosenbrock 1000-D (float64)", rosenbrock_problem),
    ]
    results = {}
    for title, make_problem in cases:
        episodes = {}
        for name, make in (("torch.optim.LBFGS(strong_wolfe)", make_torch),
                           ("Modular[LBFGS, StrongWolfe]", make_ours)):
            params, loss = make_problem()
            episodes[name] = Episode(params, loss, make, steps)
        counts = {}
        for name, ep in episodes.items():  # one untimed episode: evaluation counts
            ep.evals = 0
            ep()
            counts[name] = ep.evals
        times = time_interleaved(episodes, steps=1, rounds=rounds, warmup=1)
        per_eval = {k: t / counts[k] for k, t in times.items()}
        worst = report(f"{title}: {steps} steps per episode, time per closure evaluation, "
                       f"{torch.get_num_threads()} threads", per_eval,
                       "torch.optim.LBFGS(strong_wolfe)", goal=1.2)
        print("  closure evaluations per episode: "
              + ", ".join(f"{k}: {v}" for k, v in counts.items()))
        results[title] = worst
    return results


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30, help="optimizer steps per episode")
    ap.add_argument("--rounds", type=int, default=15, help="interleaved episodes per optimizer")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print("goal: Modular[LBFGS, StrongWolfe] <= 1.2x torch.optim.LBFGS per closure evaluation")
    run(args.steps, args.rounds)


if __name__ == "__main__":
    main()
