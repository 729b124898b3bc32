"""pytorch-optimizer optimizers that need more than a plain ``step()`` on plain param groups.

Registry names (``pytorch_optimizer.get_supported_optimizers()``, version 4.1) and what each
needs. :data:`NEEDS_CLOSURE` optimizers work through ``TorchOptimizer`` when
``Modular.step(closure)`` gets a closure; :data:`NEEDS_KWARGS` ones work given the keyword;
:data:`UNSUPPORTED` ones raise ``ValueError`` from the ``TorchOptimizer`` constructor with the
reason. ``tests/test_adapter_torch_optimizer.py`` checks every entry.
"""

from __future__ import annotations

import torch

#: need a closure passed to step(); torch.optim.LBFGS too
NEEDS_CLOSURE: dict[str, str] = {
    "lbfgs": "L-BFGS re-evaluates the loss and gradient inside step(closure)",
    "alig": "AliG's step size uses the loss: step(closure) with a closure returning it",
    "bsam": "BSAM (SAM family) evaluates the gradient at a perturbed point: step(closure)",
}

#: need a keyword argument without default (works when given)
NEEDS_KWARGS: dict[str, str] = {
    "bsam": "num_data (training set size), and a closure",
    "ranger21": "num_iterations (total number of steps, for its warm-up/warm-down schedule)",
}

#: need a particular parameter layout (work when the parameters have it)
NEEDS_LAYOUT: dict[str, str] = {
    "spectralsphere": "2-D parameters only",
}

#: cannot be wrapped: the reason is the ValueError message
UNSUPPORTED: dict[str, str] = {
    "adahessian": "it computes Hessian-vector products with create_graph=True gradients of the "
                  "model's graph, which the shadow parameters are not part of",
    "sophiah": "it computes Hessian-vector products with create_graph=True gradients of the "
               "model's graph, which the shadow parameters are not part of",
    "adalomo": "it takes the model (named_parameters) and fuses the update into backward()",
    "lomo": "it takes the model (named_parameters) and fuses the update into backward()",
    "adammini": "it takes the model (named_parameters) to partition the parameters",
    "adago": "it needs param groups flagged with use_muon=True/False, a key Modular groups "
             "cannot carry",
    "adamuon": "it needs param groups flagged with use_muon=True/False, a key Modular groups "
               "cannot carry",
    "muon": "it needs param groups flagged with use_muon=True/False, a key Modular groups "
            "cannot carry",
    "muonclip": "it needs the model and param groups flagged with use_muon, which Modular "
                "groups cannot carry",
    "normuon": "it needs param groups flagged with use_muon=True/False, a key Modular groups "
               "cannot carry",
    "distributedmuon": "it needs torch.distributed and param groups flagged with use_muon",
    "lorarite": "it needs the LoRA A/B factor pairs as consecutive parameters",
    "demo": "it needs the einops package and torch.distributed (decoupled momentum)",
}


def _registry_name(cls) -> str | None:
    """The pytorch-optimizer registry name of ``cls``, or None for another library's class."""
    if not cls.__module__.startswith("pytorch_optimizer"):
        return None
    import pytorch_optimizer as po  # already imported: cls comes from it

    name = cls.__name__.lower()
    for n in (name, *NEEDS_CLOSURE, *UNSUPPORTED):
        try:
            if po.load_optimizer(n) is cls:
                return n
        except (NotImplementedError, ImportError):
            continue
    return name


def needs_closure(cls) -> bool:
    """Whether ``cls.step`` must get a closure."""
    return issubclass(cls, torch.optim.LBFGS) or _registry_name(cls) in NEEDS_CLOSURE


def unsupported_reason(cls) -> str | None:
    """Why ``cls`` cannot be wrapped, or None."""
    return UNSUPPORTED.get(_registry_name(cls))
