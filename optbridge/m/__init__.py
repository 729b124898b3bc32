"""All chain modules, by family. ``from optbridge import m``; ``m.Adam()``, ``m.LR(1e-3)`` …"""

from .adaptive import *  # noqa: F401,F403
from .clipping import *  # noqa: F401,F403
from .conjugate_gradient import *  # noqa: F401,F403
from .grad_approximation import *  # noqa: F401,F403
from .line_search import *  # noqa: F401,F403
from .meta import *  # noqa: F401,F403
from .momentum import *  # noqa: F401,F403
from .ops import *  # noqa: F401,F403
from .preconditioners import *  # noqa: F401,F403
from .quasi_newton import *  # noqa: F401,F403
from .sam import *  # noqa: F401,F403
from .second_order import *  # noqa: F401,F403
from .step_size import *  # noqa: F401,F403
from .termination import *  # noqa: F401,F403
from .trust_region import *  # noqa: F401,F403
from .weight_decay import *  # noqa: F401,F403
from . import adaptive, clipping, conjugate_gradient, grad_approximation, line_search, meta, momentum, ops, preconditioners, quasi_newton, sam, second_order, step_size, termination, trust_region, weight_decay

__all__ = sorted(
    set(adaptive.__all__)
    | set(clipping.__all__)
    | set(conjugate_gradient.__all__)
    | set(grad_approximation.__all__)
    | set(line_search.__all__)
    | set(meta.__all__)
    | set(momentum.__all__)
    | set(ops.__all__)
    | set(preconditioners.__all__)
    | set(quasi_newton.__all__)
    | set(sam.__all__)
    | set(second_order.__all__)
    | set(step_size.__all__)
    | set(termination.__all__)
    | set(trust_region.__all__)
    | set(weight_decay.__all__)
)
