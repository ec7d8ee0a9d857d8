"""The timed networks of the speed tests: the same two convolutions at a chosen width, so widths compare."""

import torch
from torch import nn

SHAPE = (3, 32, 32)


def conv_network(channels: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, channels, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(channels, channels, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(channels, 10),
    ).eval()
