"""The search filter and group share: increasing compression levels (filter's share of channels, group's penalty λ)
until one misses the accuracy budget, then bisection towards the edge, keeping the best state within the budget.

`LevelSearch` holds what a run of it owns (the best state, the outcome of every level tried, its checkpoint); a
method subclasses it with how one level is tried (`try_level`) and what its checkpoint holds besides. A search
resumed from a checkpoint replays the outcomes of the levels tried before the restart instead of training them again.
"""

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import torch

from squeezer.core.methods.harness import progress
from squeezer.core.methods.structured import StructuredRun

Midpoint = Callable[[float, float], float]


def search_levels(
    levels: list[float],
    attempt: Callable[[float, int], bool],
    refinements: int,
    midpoint: Midpoint,
) -> None:
    """Tries `levels` in increasing order until one misses the budget, then bisects `refinements` times between the
    last level within it (0 when none was) and the one that missed. `attempt(level, index)` runs and records one
    trial and says whether it stayed within the budget; `index` counts attempts, for progress."""
    low, high, index = 0.0, None, 0
    for level in sorted(levels):
        index += 1
        if not attempt(level, index):
            high = level
            break
        low = level
    if high is None:
        return
    for _ in range(refinements):
        level = midpoint(low, high)
        if not low < level < high:
            return
        index += 1
        if attempt(level, index):
            low = level
        else:
            high = level


def arithmetic_midpoint(low: float, high: float) -> float:
    return (low + high) / 2


def geometric_midpoint(low: float, high: float) -> float:
    """For scale parameters such as a penalty weight; from zero, half the upper end."""
    return math.sqrt(low * high) if low > 0 else high / 2


class LevelSearch(ABC):
    """One search over `levels` on `run`, its progress from `start` to the end of the method's bar. The best state
    starts as the baseline (`best_removed` empty, `best_accuracy` the baseline's score)."""

    def __init__(
        self,
        run: StructuredRun,
        levels: list[float],
        refinements: int,
        midpoint: Midpoint,
        *,
        start: float,
        baseline: float,
    ):
        self.run, self.levels, self.refinements, self.midpoint, self.start = run, levels, refinements, midpoint, start
        self.outcomes: list[bool] = []  # whether each level tried so far stayed within the budget
        self.best_removed: set[int] = set()
        self.best_accuracy = baseline

    @abstractmethod
    def try_level(self, level: float, index: int, fraction: float) -> bool:
        """Trains and measures `level` (the `index`-th attempt), records its trial, keeps it as the best state when
        it stays within the budget, and says whether it did. Its recovery runs until the time limit cuts it
        (`run.train(..., until_cut=True)`) and is scored as it stands; the search then ends."""

    @abstractmethod
    def best_tensors(self) -> dict[str, torch.Tensor]:
        """What a checkpoint holds of the best state (prefixed keys, core.checkpoint)."""

    def checkpoint_meta(self) -> dict[str, Any]:
        """What a checkpoint holds besides the outcomes and the best state's removals and accuracy."""
        return {}

    def changes_nothing(self, level: float) -> bool:
        """A level that would change nothing on the best state counts as within the budget, without a trial."""
        return False

    def search(self) -> None:
        if self.run.graph.removable():
            search_levels(self.levels, self._attempt, self.refinements, self.midpoint)

    def _attempt(self, level: float, index: int) -> bool:
        if index <= len(self.outcomes):
            return self.outcomes[index - 1]  # tried before the restart
        if self.changes_nothing(level):
            self.outcomes.append(True)
            return True
        fraction = progress(self.start, 1.0, index, len(self.levels) + self.refinements)
        within = self.try_level(level, index, fraction)
        self.outcomes.append(within)
        self.save(fraction)
        self.run.end_if_time_up()
        return within

    def save(self, fraction: float) -> None:
        meta = {"outcomes": self.outcomes, "removed": sorted(self.best_removed), "accuracy": self.best_accuracy}
        self.run.save(self.best_tensors(), self.checkpoint_meta() | meta, fraction)

    def restore(self, meta: dict[str, Any]) -> None:
        """The outcomes and the best state's removals and accuracy of a resumed checkpoint."""
        self.outcomes, self.best_removed, self.best_accuracy = meta["outcomes"], set(meta["removed"]), meta["accuracy"]
