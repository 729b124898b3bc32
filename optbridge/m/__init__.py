"""All chain modules, by family. ``from optbridge import m``; ``m.Adam()``, ``m.LR(1e-3)`` …"""

from .adaptive import *  # noqa: F401,F403
from .clipping import *  # noqa: F401,F403
from .momentum import *  # noqa: F401,F403
from .ops import *  # noqa: F401,F403
from .step_size import *  # noqa: F401,F403
from .weight_decay import *  # noqa: F401,F403
from . import adaptive, clipping, momentum, ops, step_size, weight_decay

__all__ = sorted(
    set(adaptive.__all__)
    | set(clipping.__all__)
    | set(momentum.__all__)
    | set(ops.__all__)
    | set(step_size.__all__)
    | set(weight_decay.__all__)
)
