"""Latency-aware structural pruning (issue 28, item 2): a plan that makes a model a given factor faster on the
target runtime, as its measured latency table predicts: first whole residual blocks whose removal costs least
score per millisecond (core.methods.depth), then channels per group by measured points lost per millisecond saved
(core.methods.sensitivity), at counts the runtime runs fastest (core.methods.latency_choice).
"""

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from squeezer.core.graph import ChannelGraph, shrink, trace
from squeezer.core.methods.depth import Block, choose_blocks, remove_blocks, residual_blocks
from squeezer.core.methods.latency_choice import choose_channels, group_norm_scores
from squeezer.core.methods.latency_table import LatencyTable, Runtime, latency_table
from squeezer.core.methods.sensitivity import measure_sensitivity


@dataclass(frozen=True)
class SpeedPlan:
    """What a plan removed and the convolutions' time the tables predict: before, after the blocks, at the end."""

    blocks: list[Block]
    removed_channels: int
    predicted_ms: tuple[float, float, float]
    table_seconds: float  # measuring the tables took this long

    @property
    def predicted_speedup(self) -> float:
        return self.predicted_ms[0] / max(self.predicted_ms[2], 1e-12)


def convolution_ms(table: LatencyTable) -> float:
    """The table's total for every convolution at its full width."""
    total = 0.0
    for key in table.layers.values():
        geometry = table.geometries[key]
        total += geometry.at(geometry.inputs[-1], geometry.outputs[-1])
    return total


def block_ms(table: LatencyTable, blocks: list[Block]) -> dict[str, float]:
    """Each block's convolutions' time at full width: what removing it saves."""
    return {
        block.name: sum(
            table.layer_ms(name, table.geometries[key].inputs[-1], table.geometries[key].outputs[-1])
            for name, key in table.layers.items()
            if name.startswith(f"{block.name}.")
        )
        for block in blocks
    }


def plan_for_speed(
    module: nn.Module,
    input_shape: tuple[int, ...],
    speedup: float,
    *,
    score: Callable[[nn.Module], float] | None = None,
    floor: float = float("-inf"),
    runtime: Runtime = Runtime(),
    cache_dir: Path | None = None,
    min_keep: float = 0.25,
    depth: bool = True,
    sensitivity: bool = True,
) -> tuple[nn.Module, ChannelGraph, SpeedPlan]:
    """A copy of `module` pruned until its convolutions are predicted `speedup` times faster on `runtime`, with the
    graph it was shrunk on. With `score`, residual blocks whose removal keeps the score at least `floor` (measured
    before any recovery) go first (unless not `depth`), and channels are chosen by each group's measured
    sensitivity (unless not `sensitivity`: by importance alone); they make up the rest, each group keeping at least
    `min_keep` of its own."""
    graph = trace(module, input_shape)
    table = latency_table(module, input_shape, runtime, graph=graph, cache_dir=cache_dir)
    before = convolution_ms(table)
    target = before / speedup
    pruned, chosen, seconds = copy.deepcopy(module).eval(), [], table.seconds
    if score is not None and depth:
        blocks = residual_blocks(module, input_shape)
        chosen = choose_blocks(module, blocks, score, floor, block_ms(table, blocks), enough_ms=before - target)
        if chosen:
            remove_blocks(pruned, chosen)
            graph = trace(pruned, input_shape)
            table = latency_table(pruned, input_shape, runtime, graph=graph, cache_dir=cache_dir)
            seconds += table.seconds
    after_blocks = convolution_ms(table)
    scores = group_norm_scores(pruned, graph)
    curves = None
    if score is not None and sensitivity:
        curves = measure_sensitivity(pruned, graph, scores, score, min_keep)
    choice = choose_channels(graph, table, scores, target, min_keep, curves)
    shrink(pruned, graph, set(choice.removed))
    plan = SpeedPlan(chosen, len(choice.removed), (before, after_blocks, choice.after_ms), seconds)
    return pruned.eval(), graph, plan
