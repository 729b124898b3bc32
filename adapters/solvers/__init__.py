"""Shared machinery for callback-driven solvers (NLopt, SciPy) run as chain modules.

- :mod:`.worker`: runs a solver's ``optimize``/``minimize`` in a worker thread whose objective
  callback hands each point to the main thread and blocks until the value comes back, so each
  ``Modular.step`` can advance the solver by exactly one evaluation.
- :mod:`.budget`: an evaluation budget enforced from inside the callback.
- :mod:`.bounds`: per-element bounds from per-parameter ``(low, high)`` pairs.
- :mod:`.best`: best point seen so far (NaN/inf values never become best).
"""

from .nevergrad import Nevergrad
from .nlopt import NLopt
from .scipy import Scipy

__all__ = ["Nevergrad", "NLopt", "Scipy"]
