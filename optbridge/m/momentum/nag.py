"""Nesterov momentum."""

from __future__ import annotations

from ...core import checks
from ...core import foreach as fe
from ...core.module import Transform
from ._common import momentum_, state_from_update, subset


class NAG(Transform):
    """Nesterov accelerated gradient in torch.optim.SGD's form (Nesterov, 1983; Sutskever et
    al., 2013, http://proceedings.mlr.press/v28/sutskever13.html).

    .. math::
        b_1 = u_1,\\qquad b_t = \\mu\\, b_{t-1} + c\\,(1-d)\\, u_t,\\qquad
        \\text{output } u_t + \\mu\\, b_t

    with :math:`c = 1` (:math:`c = 1-\\mu` with ``lerp``). ``[NAG(mu), LR(lr)]`` is
    ``torch.optim.SGD(lr=lr, momentum=mu, nesterov=True)``; torch has no dampening with
    Nesterov, here it scales the update entering the buffer as in :class:`HeavyBall`.

    Args:
        momentum: :math:`\\mu`, in [0, 1).
        dampening: :math:`d`, in [0, 1].
        lerp: keep an exponential moving average (:math:`c = 1-\\mu`) instead of a sum.
    """

    inplace = False

    def __init__(self, momentum: float = 0.9, dampening: float = 0.0, lerp: bool = False):
        super().__init__(
            dict(momentum=momentum, dampening=dampening, lerp=lerp),
            rules=dict(momentum=checks.unit_interval, dampening=checks.closed_unit_interval,
                       lerp=checks.boolean),
        )

    def transform(self, update, part):
        s = part.settings
        beta = s["momentum"]
        bufs, old = state_from_update(part, "momentum_buffer", update)
        momentum_(subset(bufs, old), subset(update, old), beta, s["dampening"], s["lerp"])
        return fe.add_scaled(update, bufs, beta)
