import pytest
import torch

import optbridge as ob
from optbridge import m
from trajectory import assert_same_trajectory


@pytest.mark.parametrize("kw", [
    dict(),
    dict(eps=0.1),
    dict(amsgrad=True),
    dict(maximize=True),
    dict(betas=(0.5, 0.9), eps=1e-3, amsgrad=True),
])
def test_adam_matches_torch(kw):
    kw = dict(kw)
    betas = kw.pop("betas", (0.9, 0.999))
    assert_same_trajectory(
        lambda ps: torch.optim.Adam(ps, lr=0.01, betas=betas, **kw),
        lambda ps: ob.Modular(ps, m.Adam(beta1=betas[0], beta2=betas[1], **kw), m.LR(0.01)),
    )


def test_adam_float64_exact():
    assert_same_trajectory(
        lambda ps: torch.optim.Adam(ps, lr=0.02),
        lambda ps: ob.Modular(ps, m.Adam(), m.LR(0.02)),
        dtype=torch.float64, rtol=1e-12, atol=1e-13,
    )
