"""Latency-aware structural pruning (issue 28, item 2): a plan that makes a model a given factor faster on the
target runtime, as its measured latency table predicts: first whole residual blocks whose removal costs least
score per millisecond (core.methods.depth), then channels per group by measured points lost per millisecond saved
(core.methods.sensitivity), at counts the runtime runs fastest (core.methods.latency_choice).
"""

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from squeezer.core.artifacts.onnx_export import module_onnx
from squeezer.core.graph import ChannelGraph, shrink, trace
from squeezer.core.measure.compare import compare_onnx
from squeezer.core.methods.depth import Block, choose_blocks, remove_blocks, residual_blocks
from squeezer.core.methods.latency_choice import Choice, choose_channels, group_norm_scores
from squeezer.core.methods.latency_table import LatencyTable, Runtime, latency_table
from squeezer.core.methods.sensitivity import measure_sensitivity

# How far (as a factor either way) a plan's measured speed-up may miss its target before it is made again, and
# how many plans at most are timed: each re-aims by the last one's measured/predicted ratio.
CALIBRATION_TOLERANCE = 1.1
CALIBRATION_PLANS = 3


@dataclass(frozen=True)
class SpeedPlan:
    """What a plan removed and the convolutions' time the tables predict: before, after the blocks, at the end."""

    blocks: list[Block]
    removed_channels: int
    predicted_ms: tuple[float, float, float]
    table_seconds: float  # measuring the tables took this long
    measured_speedup: float | None = None  # the pruned model timed A/B against the input model, when calibrated

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
    widths: Mapping[str, int] | None = None,
    step_keep: float = 0.0,
    depth: bool = True,
    sensitivity: bool = True,
    calibrate: bool = False,
) -> tuple[nn.Module, ChannelGraph, SpeedPlan]:
    """A copy of `module` pruned until its convolutions are predicted `speedup` times faster on `runtime`, with the
    graph it was shrunk on. With `score`, residual blocks whose removal keeps the score at least `floor` (measured
    before any recovery) go first (unless not `depth`), and channels are chosen by each group's measured
    sensitivity (unless not `sensitivity`: by importance alone); they make up the rest, each group keeping at least
    `min_keep` of its own (of its width in `widths`, by group key, where given) and `step_keep` of
    its channels now. `calibrate`: the pruned model is
    timed against `module` on `runtime`, and a plan whose speed-up misses `speedup` by more than
    CALIBRATION_TOLERANCE is made again, aimed by the measured ratio, and the closest of CALIBRATION_PLANS is kept."""
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
        curves = measure_sensitivity(pruned, graph, scores, score, min_keep, widths, step_keep)

    def choose(target_ms: float) -> Choice:
        return choose_channels(graph, table, scores, target_ms, min_keep, curves, widths, step_keep)

    choice, measured = choose(target), None
    if calibrate:
        timer = _Timer(module, pruned, graph, input_shape, runtime)
        choice, measured = _calibrated(choose, choice, timer.speedup, speedup)
    shrink(pruned, graph, set(choice.removed))
    plan = SpeedPlan(chosen, len(choice.removed), (before, after_blocks, choice.after_ms), seconds, measured)
    return pruned.eval(), graph, plan


def _calibrated(
    choose: Callable[[float], Choice], choice: Choice, measure: Callable[[Choice], float], speedup: float
) -> tuple[Choice, float]:
    """Of up to CALIBRATION_PLANS choices, each aimed by the last one's measured/predicted ratio until one lands
    within CALIBRATION_TOLERANCE of `speedup`, the one whose measured speed-up lies closest to `speedup` (as a
    factor), with that speed-up: the table's predictions drift with the machine's load, and one re-aim can
    overshoot as far as the first plan missed."""
    tried: list[tuple[float, Choice, float]] = []
    for _ in range(CALIBRATION_PLANS):
        measured = measure(choice)
        miss = max(measured / speedup, speedup / measured)
        tried.append((miss, choice, measured))
        if miss <= CALIBRATION_TOLERANCE:
            break
        aimed = choose(choice.after_ms * measured / speedup)  # the predicted time that would run `speedup`
        if aimed.removed == choice.removed:
            break
        choice = aimed
    _, choice, measured = min(tried, key=lambda entry: entry[0])
    return choice, measured


class _Timer:
    """What timing a channel choice against the input model needs; the input model is exported once."""

    def __init__(
        self, module: nn.Module, pruned: nn.Module, graph: ChannelGraph, input_shape: tuple[int, ...], runtime: Runtime
    ):
        self.baseline = module_onnx(module, input_shape)
        self.pruned = pruned  # the input model with its blocks removed, before any channel
        self.graph, self.input_shape, self.runtime = graph, input_shape, runtime

    def speedup(self, choice: Choice) -> float:
        """The input model's time over `choice`'s, A/B on the runtime (the median ratio, even within the noise)."""
        candidate = shrink(copy.deepcopy(self.pruned), self.graph, set(choice.removed))
        comparison = compare_onnx(
            self.baseline,
            module_onnx(candidate, self.input_shape),
            self.input_shape,
            batch=self.runtime.batch,
            runtime=self.runtime.name,
            threads=self.runtime.threads,
        )
        return comparison.ratio
