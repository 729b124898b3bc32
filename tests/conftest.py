import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

# The tests use small tensors: one intra-op thread avoids OpenMP start-up and contention costs
# (small LAPACK calls are orders of magnitude slower with two threads on a loaded 2-core box).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
