"""Different sub-chains for different parameters: Split."""

from __future__ import annotations

import operator
import re

import torch

from ...core.module import Module
from ._common import run_inline

_OPS = {">=": operator.ge, "<=": operator.le, "==": operator.eq, "!=": operator.ne,
        ">": operator.gt, "<": operator.lt}
_SPEC = re.compile(r"^\s*(ndim|numel)\s*(>=|<=|==|!=|>|<)\s*(\d+)\s*$")


class ParamFilter:
    """A picklable parameter predicate built from ``Split``'s ``filter`` argument.

    Clauses (a parameter is selected when any clause selects it):

    - ``"ndim>=2"``-style specs on ``ndim`` or ``numel`` with ``>= <= == != > <`` and an int;
    - parameter names (strings without comparison operators), matched against the param
      groups' ``param_names``;
    - tensors (the parameters themselves, matched by identity);
    - callables ``p -> bool`` (picklable when they are module-level functions).
    """

    def __init__(self, spec, owner: str = "Split"):
        self.specs: list[tuple[str, str, int]] = []
        self.names: set[str] = set()
        self.tensors: list[torch.Tensor] = []
        self.functions: list = []
        items = [spec] if isinstance(spec, (str, torch.Tensor)) or callable(spec) else spec
        try:
            items = list(items)
        except TypeError:
            raise ValueError(
                f"{owner}: invalid filter={spec!r}; expected a callable p -> bool, a spec such as "
                "'ndim>=2', parameter names, parameters, or a list of those"
            ) from None
        if not items:
            raise ValueError(f"{owner}: filter is empty; it would select no parameter")
        for item in items:
            if isinstance(item, torch.Tensor):
                self.tensors.append(item)
            elif isinstance(item, str):
                if any(c in item for c in "<>=!"):
                    m = _SPEC.match(item)
                    if m is None:
                        raise ValueError(
                            f"{owner}: invalid filter spec {item!r}; expected 'ndim' or 'numel', "
                            "an operator (>=, <=, ==, !=, >, <) and an int, e.g. 'ndim>=2'"
                        )
                    self.specs.append((m.group(1), m.group(2), int(m.group(3))))
                else:
                    self.names.add(item)
            elif callable(item):
                self.functions.append(item)
            else:
                raise ValueError(
                    f"{owner}: invalid filter element {item!r} ({type(item).__name__}); expected "
                    "a callable, a spec string, a parameter name or a parameter"
                )
        self.owner = owner

    def __repr__(self) -> str:
        parts = [f"{a}{op}{v}" for a, op, v in self.specs] + sorted(self.names)
        parts += [f"<{len(self.tensors)} tensors>"] if self.tensors else []
        parts += [getattr(f, "__name__", repr(f)) for f in self.functions]
        return "ParamFilter(" + ", ".join(parts) + ")"

    def select(self, keys: list[torch.Tensor], names: dict[int, str]) -> list[bool]:
        """Whether each of ``keys`` (the user's tensors) is selected; ``names`` maps
        ``id(tensor)`` to its name."""
        if self.names and not names:
            raise ValueError(
                f"{self.owner}: the filter selects parameters by name, but the param groups have "
                "no 'param_names'; pass e.g. [{'params': [p for _, p in named], "
                "'param_names': [n for n, _ in named]}]"
            )
        ids = {id(t) for t in self.tensors}
        out = []
        for p in keys:
            hit = id(p) in ids or names.get(id(p)) in self.names
            for attr, op, value in self.specs:
                hit = hit or _OPS[op](p.dim() if attr == "ndim" else p.numel(), value)
            for fn in self.functions:
                hit = hit or bool(fn(p))
            out.append(hit)
        return out


class Split(Module):
    """Applies ``true`` to the parameters selected by ``filter`` and ``false`` to the others.

    .. math::
        u_i = \\begin{cases} d_{true}(u)_i & \\text{filter}(x_i) \\\\
        d_{false}(u)_i & \\text{otherwise} \\end{cases}

    Each sub-chain sees only its parameters (its settings, state, norms and step counts refer
    to that subset), so ``Split('ndim>=2', true=[Adam(), StepSize(a)], false=[HeavyBall(),
    StepSize(b)])`` is Adam on the matrices and SGD with momentum on the rest (``StepSize``, as
    a param group holds one ``lr``; or put one ``LR`` after the Split). A missing branch passes its
    parameters' update through. A branch whose module moved its parameters itself (a line
    search) contributes a zero update.

    Args:
        filter: a callable ``p -> bool`` on the user's parameter tensors, a spec such as
            ``"ndim>=2"`` or ``"numel<100"``, parameter names (needs ``param_names`` in the
            param groups), parameters, or a list of those (any match selects). Use a spec or a
            module-level function for a picklable module.
        true: sub-chain for the selected parameters.
        false: sub-chain for the other parameters.
    """

    def __init__(self, filter, true=None, false=None):
        super().__init__()
        if true is None and false is None:
            raise ValueError(f"{self.name}: needs true=... or false=... modules")
        self.filter = ParamFilter(filter, self.name)
        self.set_child("true", true)
        self.set_child("false", false)
        self.needs_grad = any(c.needs_grad for c in self.children.values())
        self._cache = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_cache"] = None
        return state

    def _indices(self, ctx):
        keys = ctx.keys
        token = (ctx.layout_token, len(keys), id(keys[0]), id(keys[-1]))
        if self._cache is not None and self._cache[0] == token:
            return self._cache[1]
        names = {}
        for g in ctx.optimizer.param_groups:
            for p, n in zip(g["params"], g.get("param_names", ())):
                names[id(p)] = n
        mask = self.filter.select(keys, names)
        out = ([i for i, s in enumerate(mask) if s], [i for i, s in enumerate(mask) if not s])
        self._cache = (token, out)
        return out

    def step(self, ctx) -> None:
        if not ctx.params:
            return
        selected, others = self._indices(ctx)
        update = list(ctx.update)
        owned = True
        for name, idx in (("true", selected), ("false", others)):
            if not idx:
                continue
            if name not in self.children:
                owned = owned and ctx.update_is_owned
                continue
            sub = ctx.fork_subset(idx)
            run_inline(sub, self.children[name])
            ctx.merge_evaluations(sub)
            if sub.skip_update:
                part, part_owned = [torch.zeros_like(ctx.params[i]) for i in idx], True
            else:
                part, part_owned = sub.update, sub.update_is_owned
            owned = owned and part_owned
            for i, t in zip(idx, part):
                update[i] = t
        if owned:
            ctx.set_update(update, owned=True)
        else:
            ctx.update = update
