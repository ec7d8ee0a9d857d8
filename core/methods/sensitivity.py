"""How much accuracy each channel group's thinning costs before recovery (issue 28, item 2): per group, the
channels of least importance are removed down to a few kept counts and the model is scored each time, all other
groups whole. The latency choice then spends points where they buy the most milliseconds, instead of treating a
channel of a group that every prediction leans on like one of a group the network barely uses.

A group's curve is made non-decreasing as it thins (a smaller score on fewer channels is noise) and read by linear
interpolation between its measured counts.
"""

import copy
from bisect import bisect_left
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from torch import nn

from squeezer.core.graph import ChannelGraph, shrink
from squeezer.core.methods.latency_table import allowed_counts

# Shares of a group's channels kept at the measured points (each rounded up to a count the runtime runs fast).
KEPT_SHARES = (0.75, 0.5, 0.25)


@dataclass(frozen=True)
class Sensitivity:
    """Points lost (before recovery) at each measured kept count of one group, ascending counts."""

    counts: list[int]
    drops: list[float]

    def drop(self, kept: int) -> float:
        """Points lost with `kept` channels: interpolated between the measured counts, the ends held flat."""
        index = bisect_left(self.counts, kept)
        if index < len(self.counts) and self.counts[index] == kept:
            return self.drops[index]
        if index == 0:
            return self.drops[0]
        if index == len(self.counts):
            return self.drops[-1]
        low, high = self.counts[index - 1], self.counts[index]
        share = (kept - low) / (high - low)
        return self.drops[index - 1] + share * (self.drops[index] - self.drops[index - 1])


def least_kept(full: int, min_keep: float, reference: int | None = None, step_keep: float = 0.0) -> float:
    """The fewest channels a group of `full` may keep: `min_keep` of it (of `reference` channels where given: its
    width where a walk of plans started, so steps do not compound the floor) and `step_keep` of it (one step thins
    it by at most the rest)."""
    return max(min_keep * (reference or full), step_keep * full)


def measured_counts(full: int, min_keep: float, reference: int | None = None, step_keep: float = 0.0) -> list[int]:
    """The kept counts measured for a group of `full` channels: the allowed count at or above each share, no fewer
    than `least_kept`, descending."""
    allowed = allowed_counts(full)
    least = least_kept(full, min_keep, reference, step_keep)
    floor = next(count for count in allowed if count >= least or count == full)
    counts = {next(c for c in allowed if c >= max(share * full, floor)) for share in KEPT_SHARES}
    return sorted(counts - {full}, reverse=True)


def measure_sensitivity(
    module: nn.Module,
    graph: ChannelGraph,
    scores: dict[int, float],
    score: Callable[[nn.Module], float],
    min_keep: float,
    widths: Mapping[str, int] | None = None,
    step_keep: float = 0.0,
) -> dict[str, Sensitivity]:
    """Each channel group's curve of points lost against channels kept, the least important channels (by `scores`)
    removed first, down to `least_kept` (`widths`: each group's width where a walk started, by key); `score` rates
    a module (higher is better)."""
    reference = score(module)
    curves = {}
    for key, roots in sorted(graph.channel_groups().items()):
        order = sorted(roots, key=lambda root: (scores[root], root))
        counts = measured_counts(len(roots), min_keep, (widths or {}).get(key), step_keep)
        drops: list[float] = []
        for count in counts:
            thinned = copy.deepcopy(module)
            shrink(thinned, graph, set(order[: len(roots) - count]))
            drops.append(max(reference - score(thinned.eval()), drops[-1] if drops else 0.0))
        curves[key] = Sensitivity([*reversed(counts), len(roots)], [*reversed(drops), 0.0])
    return curves
