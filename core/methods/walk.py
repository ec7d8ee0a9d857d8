"""The walk through increasing speed-up targets that latency-aware pruning takes, and bench/speed_budget.py takes for
both methods (ours in speed-up, Torch-Pruning in its own unit, a MACs reduction).

Gradually (each step planned from the last result within the budget), a target more than `step` away is reached in
equal factors none over `step`; a step that lands short leaves its target short rather than making the next step
larger. A step past the budget does not end the walk: the step cap shrinks to the square root of the step that
missed (half of it in log; the larger of its aim and what its plan measured), and the walk goes on from what was
kept towards the targets at that smaller step. It ends after `retries` + 1 misses, when a halved step would be under
MIN_STEP, when a plan gains nothing over what was kept, or after the last target. Planned from the baseline every
time (not gradual), a step has no cap, and an aim at or past a speed-up already missed becomes the midpoint between
the two instead, since the same plan from the same start would miss again."""

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

# A halved step under this factor is not worth a recovery: the walk ends there.
MIN_STEP = 1.1


@dataclass
class Walk:
    """Where a walk stands: the speed-up `kept` within the budget, the targets done, the steps left towards the
    current one, the step cap and the lowest speed-up missed from the current start (`ceiling`)."""

    targets: list[float]
    max_step: float  # math.inf: no cap
    retries: int
    gradual: bool = True
    kept: float = 1.0
    tried: int = 0
    left: int = 0  # steps left towards targets[tried]; 0: not counted yet
    step: float = field(init=False)  # the cap on the next step: max_step until a miss halves it
    ceiling: float = math.inf
    misses: int = 0
    ended: bool = False
    aimed: float = field(default=1.0, compare=False)  # the last aim handed out

    def __post_init__(self) -> None:
        self.step = self.max_step if self.gradual else math.inf

    def aims(self) -> Iterator[float]:
        """Each step's aim, read after the caller has reported the step before it with `took`."""
        while (aim := self._next_aim()) is not None:
            self.aimed = aim
            yield aim

    def took(self, reached: float, *, within: bool) -> bool:
        """The step just aimed reached `reached` (the speed-up the plan measured), within the budget or not; whether
        it is kept (within, and faster than what was kept)."""
        if within and reached > self.kept:
            self.kept, self.left = reached, self.left - 1
            if self.gradual:  # a new start: what was missed from the old one says nothing about it
                self.ceiling = math.inf
            self.tried += self.left == 0 and self.ceiling > self.targets[self.tried]  # else bisect below it
            return True
        # Aimed further than it reached, a miss may still be the recovery's noise: halve the step it aimed at.
        halved = math.sqrt(max(reached, self.aimed) / self.kept) if reached > self.kept else 0.0
        self.misses += 1
        self.ended = self.misses > self.retries or halved < MIN_STEP
        if not self.ended:
            self.step = min(self.step, halved) if self.gradual else self.step
            self.ceiling = min(self.ceiling, reached)
            self.left = self._steps_to(self.targets[self.tried])
        return False

    def _next_aim(self) -> float | None:
        while not self.ended and self.tried < len(self.targets):
            target = self.targets[self.tried]
            self.left = self.left or self._steps_to(target)
            if self.kept >= target:
                self.tried, self.left = self.tried + 1, 0
                continue
            aim = self.kept * min((target / self.kept) ** (1 / self.left), self.step)
            if aim < self.ceiling:
                return aim
            midpoint = math.sqrt(self.kept * self.ceiling)
            if midpoint >= self.kept * MIN_STEP:
                return midpoint
            self.ended = True
        return None

    def _steps_to(self, target: float) -> int:
        ratio = target / self.kept
        if ratio <= 1 or math.isinf(self.step):
            return 1
        return max(1, math.ceil(math.log(ratio) / math.log(self.step) - 1e-9))

    def progress(self) -> dict[str, Any]:
        """What a checkpoint keeps to go on with `resume` (JSON: no infinities)."""
        saved = {key: getattr(self, key) for key in _PROGRESS}
        return saved | {key: None if math.isinf(saved[key]) else saved[key] for key in ("step", "ceiling")}

    def resume(self, saved: dict[str, Any]) -> None:
        """Goes on from a checkpoint's `progress()`, bounded first (a checkpoint is read back from disk)."""
        kept, step, ceiling = (_at_least_one(saved.get(key)) for key in ("kept", "step", "ceiling"))
        counts = [int(saved.get(key, 0)) for key in ("tried", "left", "misses")]
        bounded = all(0 <= count <= len(self.targets) + _MAX_STEPS for count in counts)
        if math.isinf(kept) or step < MIN_STEP or not bounded:
            raise ValueError("checkpointed walk out of bounds")
        self.kept, self.step, self.ceiling = kept, min(step, self.step), ceiling
        self.tried, self.left, self.misses = min(counts[0], len(self.targets)), counts[1], counts[2]
        self.ended = bool(saved.get("ended"))


_PROGRESS = ("kept", "tried", "left", "step", "ceiling", "misses", "ended")
_MAX_STEPS = 1_000  # far more than any walk takes: a bound on what a checkpoint may say


def _at_least_one(value: object) -> float:
    """A speed-up or step factor from a checkpoint: None is unbounded; NaN or under 1 is refused."""
    number = math.inf if value is None else float(value)  # type: ignore[arg-type]
    if not number >= 1.0:
        raise ValueError("checkpointed walk out of bounds")
    return number
