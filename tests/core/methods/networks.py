"""Networks the method tests build by hand (bench/int8_layers.py times the same ones)."""

from torch import nn


def wide_digits_cnn() -> nn.Module:
    """A digits CNN (1×8×8) with one narrow layer (one input channel, which int8 runs slower on a CPU) and wide
    ones."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 64, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(64, 64, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(64 * 64, 10),
    )
