"""What the channel-removing methods (filter, group) share: the traced channel graph, trials measured on the
shrunk model and the per-layer report of channels kept and removed (their level search: core.methods.level_search)."""

from typing import Unpack

from torch import nn

from squeezer.core.artifacts.sqz import pack_sqz
from squeezer.core.config import CompressConfig, StructuredTraining
from squeezer.core.graph import ChannelGraph, trace, with_channels
from squeezer.core.graph.dependency import PRODUCERS, producer
from squeezer.core.graph.surgery import width
from squeezer.core.methods.harness import MethodHooks, MethodRun
from squeezer.core.methods.results import ChannelLayerState, Trial


class StructuredRun(MethodRun):
    """A run that removes channels: the harness plus the traced graph of the baseline."""

    def __init__(
        self,
        model,
        data,
        config: CompressConfig,
        settings: StructuredTraining,
        name: str,
        **hooks: Unpack[MethodHooks],
    ):
        super().__init__(model, data, config, settings, name=name, **hooks)
        self.graph: ChannelGraph = trace(self.base, tuple(model.input_shape))

    def measure_baseline(self, *, announce: bool = True, **data) -> tuple[float, float]:
        return super().measure_baseline(announce=announce, unsupported=self.graph.unsupported, **data)

    def record_shrunk(
        self,
        stage: str,
        shrunk: nn.Module,
        removed: int,
        accuracy: float,
        accepted: bool,
        fraction: float,
        level: float,
    ) -> Trial:
        """A trial whose compression ratio is the packed size of the shrunk model."""
        layers = [name for name, count in self.widths(shrunk).items() if count != len(self.graph.producers[name])]
        return self.record(
            stage,
            pack_sqz(with_channels(self.model, shrunk), []),
            layers=layers,
            accuracy=accuracy,
            accepted=accepted,
            fraction=fraction,
            sparsity=level,
            summary=f"{removed} channels removed",
            channels_removed=removed,
        )

    def widths(self, module: nn.Module) -> dict[str, int]:
        return {name: width(module.get_submodule(name)) for name in self.graph.producers}

    def layer_states(self, shrunk: nn.Module, why_removed: str, why_kept: str) -> list[ChannelLayerState]:
        """One row per convolution and linear layer of the original model: its channels before and after, and why."""
        widths, states = self.widths(shrunk), []
        for name, layer in self.base.named_modules():
            if not isinstance(layer, PRODUCERS):
                continue
            before = width(layer)
            if name in self.graph.producers:
                kept = widths[name]
                frozen = self.graph.why_frozen(name)
                reason = why_removed if kept < before else (f"left alone: {frozen}" if frozen else why_kept)
            else:
                kept, reason = before, "left alone: not reached by the traced graph"
            weight = producer(shrunk, name).weight.detach()
            states.append(ChannelLayerState.kept_float(name, layer, weight, before, kept, reason))
        return states


def keep_one_per_group(graph: ChannelGraph, order: list[int], count: int) -> set[int]:
    """The first `count` classes of `order` that can go while every channel group keeps at least one channel."""
    group_of = {root: key for key, roots in graph.channel_groups().items() for root in roots}
    left = {key: len(roots) for key, roots in graph.channel_groups().items()}
    removed: set[int] = set()
    for root in order:
        if len(removed) >= count:
            break
        if left[group_of[root]] > 1:
            left[group_of[root]] -= 1
            removed.add(root)
    return removed
