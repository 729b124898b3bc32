"""Resolving the ``cls_or_name`` argument of :class:`~optbridge.adapters.TorchOptimizer`.

Accepted: a ``torch.optim.Optimizer`` subclass (torch.optim, heavyball, pytorch-optimizer or a
user class), ``"pytorch_optimizer:<name>"`` (looked up with ``pytorch_optimizer.load_optimizer``,
case-insensitive) or ``"torch:<Name>"`` (a class of ``torch.optim``).
"""

from __future__ import annotations

import difflib
import inspect

import torch

_WHERE = "TorchOptimizer"
PO_PREFIX = "pytorch_optimizer:"
TORCH_PREFIX = "torch:"


def _import_pytorch_optimizer():
    try:
        import pytorch_optimizer
    except ImportError as e:
        raise ImportError(
            f"{_WHERE}: 'pytorch_optimizer:...' names need the pytorch-optimizer package; install "
            "it with `pip install optbridge[pytorch-optimizer]`"
        ) from e
    return pytorch_optimizer


def pytorch_optimizer_names() -> list[str]:
    """Names accepted after ``pytorch_optimizer:`` (lower case)."""
    po = _import_pytorch_optimizer()
    return sorted(po.get_supported_optimizers())


def _closest(name: str, names) -> str:
    close = difflib.get_close_matches(name, list(names), n=5, cutoff=0.5)
    return f"; closest matches: {', '.join(close)}" if close else ""


def resolve(cls_or_name) -> type:
    """The optimizer class for ``cls_or_name`` (see the module docstring)."""
    if isinstance(cls_or_name, str):
        if cls_or_name.startswith(PO_PREFIX):
            name = cls_or_name[len(PO_PREFIX):].strip().lower()
            po = _import_pytorch_optimizer()
            names = po.get_supported_optimizers()
            if name not in names:
                raise ValueError(
                    f"{_WHERE}: unknown pytorch_optimizer optimizer {name!r}{_closest(name, names)}"
                )
            cls = po.load_optimizer(name)
        elif cls_or_name.startswith(TORCH_PREFIX):
            name = cls_or_name[len(TORCH_PREFIX):].strip()
            names = [k for k, v in vars(torch.optim).items()
                     if isinstance(v, type) and issubclass(v, torch.optim.Optimizer)
                     and v is not torch.optim.Optimizer]
            if name not in names:
                raise ValueError(f"{_WHERE}: unknown torch.optim optimizer {name!r}"
                                 f"{_closest(name, names)}")
            cls = getattr(torch.optim, name)
        else:
            raise ValueError(
                f"{_WHERE}: cls_or_name={cls_or_name!r}: a name must start with "
                f"'{PO_PREFIX}' (e.g. 'pytorch_optimizer:lion') or '{TORCH_PREFIX}' (e.g. "
                "'torch:AdamW'); or pass the optimizer class itself"
            )
    else:
        cls = cls_or_name
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        if isinstance(cls, torch.optim.Optimizer):
            raise TypeError(
                f"{_WHERE}: cls_or_name must be an optimizer class, got an instance of "
                f"{type(cls).__name__}; pass the class and its arguments as keywords"
            )
        raise TypeError(
            f"{_WHERE}: cls_or_name must be a torch.optim.Optimizer subclass or a name, got "
            f"{cls!r}"
        )
    return cls


def class_lr_default(cls: type):
    """``(accepts_lr, default)`` from the signature of ``cls.__init__``."""
    try:
        sig = inspect.signature(cls.__init__)
    except (TypeError, ValueError):
        return False, None
    p = sig.parameters.get("lr")
    if p is None:
        return False, None
    return True, (None if p.default is inspect.Parameter.empty else p.default)


def check_kwargs(cls: type, kwargs: dict) -> None:
    """``TypeError`` for keywords the class does not accept (before anything is built)."""
    try:
        sig = inspect.signature(cls.__init__)
    except (TypeError, ValueError):
        return
    params = list(sig.parameters.values())
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return
    names = {p.name for p in params[1:] if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    names.discard("params")
    bad = sorted(set(kwargs) - names)
    if bad:
        raise TypeError(
            f"{_WHERE}: {cls.__name__} does not accept {', '.join(bad)} "
            f"(accepted: {', '.join(sorted(names))})"
        )
