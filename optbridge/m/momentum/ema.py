"""Exponential moving average of the update and Polyak's heavy-ball momentum."""

from __future__ import annotations

from ...core import checks
from ...core import foreach as fe
from ...core.module import Borrowed, Transform
from ._common import momentum_, state_from_update, subset


class EMA(Transform):
    """Exponential moving average of the update.

    .. math::
        b_t = \\beta\\, b_{t-1} + c\\,(1-d)\\, u_t,\\qquad
        c = 1-\\beta \\text{ if lerp else } 1,\\qquad
        \\text{output } b_t \\;\\big(\\text{or } b_t / (1-\\beta^t) \\text{ with debias}\\big)

    With ``ema_init="zeros"`` the buffer starts at :math:`b_0 = 0`; with ``"update"`` it is
    :math:`b_1 = u_1` (the first update as is, no dampening), as ``torch.optim.SGD`` does.

    Args:
        momentum: the decay :math:`\\beta`, in [0, 1).
        dampening: :math:`d`, scales the incoming update by :math:`1-d`, in [0, 1].
        debias: divide by :math:`1-\\beta^t` like Adam's first moment (meant for ``lerp`` with
            ``ema_init="zeros"``, where it makes the weights sum to :math:`1-d`).
        lerp: ``True`` for an average (:math:`c = 1-\\beta`), ``False`` for an accumulating
            momentum buffer (:math:`c = 1`, :class:`HeavyBall`).
        ema_init: ``"zeros"`` or ``"update"``, the buffer's starting value (see above).
    """

    inplace = False

    def __init__(self, momentum: float = 0.9, dampening: float = 0.0, debias: bool = False,
                 lerp: bool = True, ema_init: str = "zeros"):
        super().__init__(
            dict(momentum=momentum, dampening=dampening, debias=debias, lerp=lerp, ema_init=ema_init),
            rules=dict(momentum=checks.unit_interval, dampening=checks.closed_unit_interval,
                       debias=checks.boolean, lerp=checks.boolean,
                       ema_init=checks.one_of("zeros", "update")),
        )

    def transform(self, update, part):
        s = part.settings
        beta = s["momentum"]
        if s["ema_init"] == "update":
            bufs, old = state_from_update(part, "momentum_buffer", update)
            momentum_(subset(bufs, old), subset(update, old), beta, s["dampening"], s["lerp"])
        else:
            bufs = part.buffers("momentum_buffer")
            momentum_(bufs, update, beta, s["dampening"], s["lerp"])
        step = part.next_step()
        if s["debias"]:
            part.scale_output(fe.scalar_map(lambda t: 1 / (1 - beta**t), step))
        return Borrowed(bufs)


class HeavyBall(EMA):
    """Polyak's heavy-ball momentum (Polyak, 1964, https://doi.org/10.1016/0041-5553(64)90137-5).

    .. math::
        b_1 = u_1,\\qquad b_t = \\mu\\, b_{t-1} + (1-d)\\, u_t,\\qquad \\text{output } b_t

    ``[HeavyBall(mu, dampening=d), LR(lr)]`` is ``torch.optim.SGD(lr=lr, momentum=mu,
    dampening=d)``. This is :class:`EMA` with ``lerp=False`` and ``ema_init="update"``.

    Args:
        momentum: :math:`\\mu`, in [0, 1).
        dampening: :math:`d`, in [0, 1].
        debias: divide by :math:`1-\\mu^t`.
        lerp: ``True`` turns the buffer into an exponential moving average (weights
            :math:`(1-\\mu)(1-d)`).
        ema_init: ``"update"`` (torch's first step) or ``"zeros"``.
    """

    def __init__(self, momentum: float = 0.9, dampening: float = 0.0, debias: bool = False,
                 lerp: bool = False, ema_init: str = "update"):
        super().__init__(momentum=momentum, dampening=dampening, debias=debias, lerp=lerp,
                         ema_init=ema_init)
