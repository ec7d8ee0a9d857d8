"""Channel dependencies and physical channel removal: trace a model, find which channels go together,
remove them exactly, and record the new widths so saved models rebuild."""

from squeezer.core.graph.dependency import ChannelGraph, trace
from squeezer.core.graph.surgery import (
    CHANNELS_ARG,
    apply_channel_overrides,
    fold_constants,
    mask_consumers,
    producer_widths,
    shrink,
    with_channels,
)

__all__ = [
    "CHANNELS_ARG",
    "ChannelGraph",
    "apply_channel_overrides",
    "fold_constants",
    "mask_consumers",
    "producer_widths",
    "shrink",
    "trace",
    "with_channels",
]
