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


def test_adam_on_owned_update_matches_torch_with_clipping():
    """After ClipNorm the update is the step's own buffer, which Adam reuses for its
    denominator; the trajectory equals clip_grad_norm_ + torch.optim.Adam."""

    class ClippedAdam(torch.optim.Adam):
        def step(self, closure=None):
            torch.nn.utils.clip_grad_norm_([p for g in self.param_groups for p in g["params"]], 0.5)
            return super().step(closure)

    assert_same_trajectory(
        lambda ps: ClippedAdam(ps, lr=0.01, amsgrad=True),
        lambda ps: ob.Modular(ps, m.ClipNorm(0.5), m.Adam(amsgrad=True), m.LR(0.01)),
    )
