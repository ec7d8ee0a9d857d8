"""Which channels to remove for a latency target (issue 28, item 2): per channel group (a convolution, or every
layer of a residual stage that shares channels), the kept count steps down through the counts the runtime runs
fastest, and each step is chosen greedily by what it costs per millisecond saved, as the latency table predicts
it, until the predicted time meets the target. A step's cost is the points its group's measured sensitivity
(core.methods.sensitivity) says it loses, or without one, the importance of the channels it removes. Layers lose
different shares, unlike one global level.

Given the same graph, table and scores the choice is the same: the data decide it, ties go to the group named
first in sorted order.
"""

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from squeezer.core.graph import ChannelGraph
from squeezer.core.graph.dependency import TRANSPOSED, producer
from squeezer.core.methods.latency_table import LatencyTable, allowed_counts
from squeezer.core.methods.sensitivity import Sensitivity, least_kept

# Points a step costs per unit of the importance it removes, beside its measured points: among steps a curve rates
# as free, the least important channels still go first.
IMPORTANCE_POINTS = 1e-3


@dataclass(frozen=True)
class Choice:
    """The removed channel classes, the predicted convolution time before and after (ms), and the kept count of
    each channel group."""

    removed: frozenset[int]
    before_ms: float
    after_ms: float
    kept: dict[str, int]


class _Estimate:
    """The table's prediction of the convolutions' total time for a set of removed classes."""

    def __init__(self, graph: ChannelGraph, table: LatencyTable):
        self.table = table
        self.layers = {
            name: (graph.root(graph.consumers[name]).tolist(), graph.root(graph.producers[name]).tolist())
            for name in table.layers
            if name in graph.producers
        }
        self.fixed = sum(  # convolutions the graph does not reach keep their width
            self._full(name) for name in table.layers if name not in graph.producers
        )

    def _full(self, name: str) -> float:
        geometry = self.table.geometries[self.table.layers[name]]
        return geometry.at(geometry.inputs[-1], geometry.outputs[-1])

    def layer(self, name: str, removed: set[int]) -> float:
        ins, outs = self.layers[name]
        return self.table.layer_ms(name, sum(r not in removed for r in ins), sum(r not in removed for r in outs))

    def total(self, removed: set[int]) -> float:
        return self.fixed + sum(self.layer(name, removed) for name in self.layers)

    def touching(self, roots: list[int]) -> list[str]:
        members = set(roots)
        return [name for name, (ins, outs) in self.layers.items() if members & set(ins) or members & set(outs)]


def choose_channels(
    graph: ChannelGraph,
    table: LatencyTable,
    scores: dict[int, float],
    target_ms: float,
    min_keep: float = 0.25,
    sensitivity: dict[str, Sensitivity] | None = None,
    widths: Mapping[str, int] | None = None,
    step_keep: float = 0.0,
) -> Choice:
    """Removes channel classes until the predicted convolution time is at most `target_ms` or no step saves time.
    `scores` gives each removable class's importance (comparable across groups), `sensitivity` each group's points
    lost by kept count; a group always keeps at least the smallest allowed count that holds `min_keep` of its
    channels (a layer cut to one channel loses what no recovery brings back: six points on LeNet-5), counted in
    `widths` (a group's width in the model a walk of plans started from, by its key) where given, so that steps
    planned one after another do not compound their floors; and at least `step_keep` of its channels now, so one
    step thins many groups a little rather than a few to their floor."""
    estimate = _Estimate(graph, table)
    groups = dict(sorted(graph.channel_groups().items()))
    order = {key: sorted(roots, key=lambda r: (scores[r], r)) for key, roots in groups.items()}
    kept = {key: len(roots) for key, roots in groups.items()}
    floors = {
        key: least_kept(len(roots), min_keep, (widths or {}).get(key), step_keep) for key, roots in groups.items()
    }
    touching = {key: estimate.touching(roots) for key, roots in groups.items()}
    removed: set[int] = set()
    before = current = estimate.total(removed)
    while current > target_ms:
        step = _best_step(estimate, order, kept, touching, removed, _Cost(scores, sensitivity), floors)
        if step is None:
            break
        key, count, saved = step
        removed |= set(order[key][: len(order[key]) - count])
        kept[key] = count
        current -= saved
    return Choice(frozenset(removed), before, estimate.total(removed), kept)


@dataclass(frozen=True)
class _Cost:
    """What thinning a group from one kept count to another costs."""

    scores: dict[int, float]
    sensitivity: dict[str, Sensitivity] | None

    def __call__(self, key: str, dropped: list[int], kept: int, count: int) -> float:
        importance = sum(self.scores[root] for root in dropped)
        if self.sensitivity is None:
            return importance
        curve = self.sensitivity[key]
        return curve.drop(count) - curve.drop(kept) + IMPORTANCE_POINTS * importance


def _best_step(estimate, order, kept, touching, removed, cost, floors) -> tuple[str, int, float] | None:
    """The (group, new kept count, ms saved) that costs least per millisecond saved."""
    best: tuple[float, str, int, float] | None = None
    for key, roots in order.items():
        now = sum(estimate.layer(name, removed) for name in touching[key])
        for count in allowed_counts(len(roots)):
            if count < floors[key]:
                continue
            if count >= kept[key]:
                break
            dropped = roots[len(roots) - kept[key] : len(roots) - count]
            trial = removed | set(roots[: len(roots) - count])
            saved = now - sum(estimate.layer(name, trial) for name in touching[key])
            if saved <= 1e-9:
                continue
            ratio = cost(key, dropped, kept[key], count) / saved
            if best is None or ratio < best[0]:
                best = (ratio, key, count, saved)
    return None if best is None else best[1:]


@torch.no_grad()
def group_norm_scores(module: nn.Module, graph: ChannelGraph) -> dict[int, float]:
    """Each removable class's importance: the L2 norm of every weight that reads or writes its channels (the
    producers' filters, the consumers' input slices), divided by its channel group's mean so groups compare."""
    squares: dict[int, float] = {}
    for name in graph.producers:
        weight = producer(module, name).weight.detach().float()
        transposed = isinstance(module.get_submodule(name), TRANSPOSED)
        out_axis, in_axis = (1, 0) if transposed else (0, 1)
        for axis, ids in ((out_axis, graph.producers[name]), (in_axis, graph.consumers[name])):
            if axis == in_axis and name in graph.grouped:
                continue  # a grouped layer's input slices are its own filters
            norms = weight.transpose(0, axis).flatten(1).pow(2).sum(1).tolist()
            for root, value in zip(graph.root(ids).tolist(), norms, strict=True):
                squares[root] = squares.get(root, 0.0) + value
    scores: dict[int, float] = {}
    for roots in graph.channel_groups().values():
        values = [squares.get(r, 0.0) ** 0.5 for r in roots]
        mean = max(sum(values) / len(values), 1e-12)
        scores.update({r: v / mean for r, v in zip(roots, values, strict=True)})
    return scores
