"""Weight-decay modules: coupled or decoupled (by position), direct, relative and cautious."""

from .cautious import CautiousWeightDecay
from .decay import DirectWeightDecay, WeightDecay
from .relative import RelativeWeightDecay

__all__ = ["CautiousWeightDecay", "DirectWeightDecay", "RelativeWeightDecay", "WeightDecay"]
