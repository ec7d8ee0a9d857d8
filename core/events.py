"""Progress events the engine reports to whoever runs it (CLI progress bar, worker → database), and the guard that
stops a job when its caller asks or its time limit runs out."""

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

from squeezer.core.errors import Cancelled, SqueezerError


class EventStage(StrEnum):
    """What an event reports, in the order a job meets the stages. Training stages also report their epochs under
    their own stage (data: epoch, loss), the first and last always and the others at most every
    core.methods.harness.EPOCH_EVENT_INTERVAL_S."""

    INTAKE = "intake"  # the pipeline loads and checks the model and the data, and measures the baseline's figures
    RESUME = "resume"  # the worker resumes a job from its previous attempt's checkpoint
    BASELINE = "baseline"  # a method scores the baseline and sets the budget (data: accuracy, allowed_drop)
    IMPORTANCE = "importance"  # filter: importance weights learned under the L1 penalty, once per initialisation
    PRUNE = "prune"  # lwct: a global magnitude-pruning level; filter: a removal level being fine-tuned
    TIGHTEN = "tighten"  # lwct: further sparsity on the walked model
    GRID = "grid"  # lwct: coarser integer grids tried on the layers still float
    RANK = "rank"  # lwct: the layers ranked by significance
    TRAIN = "train"  # lwct: one layer σ-constrained and trained (also lwct's time-limit warning)
    SPARSE = "sparse"  # group: group-sparse training with one λ
    FINETUNE = "finetune"  # group: fine-tuning after the zeroed neurons were removed
    INT8 = "int8"  # int8: calibration and quantization
    STEP = (
        "step"  # any method: a trial, accepted or rejected (data: step, accuracy, compression_ratio, accepted, layers)
    )
    CHECKPOINT = "checkpoint"  # a method's state written (see CheckpointCallback), or a run resumed from it
    EXPORT = "export"  # the pipeline writes model.sqz, model/ and model.onnx and measures them
    DONE = "done"  # the report is written; the message says whether the target was met


@dataclass(frozen=True)
class Event:
    """One progress report.

    stage: an EventStage, or the name of a method (core.methods.registry.MethodName) when auto warns that it skipped
    that stage (nothing to remove, or no time left).
    fraction: overall progress of the whole job in [0, 1].
    data: stage-specific figures, e.g. {"epoch": 1, "loss": .., "accuracy": ..} or an accepted step
    {"step": 3, "accuracy": 97.1, "compression_ratio": 12.3, "accepted": True}.
    """

    stage: str
    fraction: float
    message: str = ""
    level: "EventLevel" = "info"
    data: dict[str, Any] = field(default_factory=dict)


EventLevel = Literal["debug", "info", "warning", "error"]
EventCallback = Callable[[Event], None]
StopCheck = Callable[[], bool]
# Called once a method's state is on disk under the caller's checkpoint_dir; when it returns, the caller has kept
# what it needs and the method writes on. A hook of its own, so that no caller reads a protocol into event stages.
CheckpointCallback = Callable[[], None]


def no_events(_: Event) -> None:
    """Default callback: drop events."""


def no_checkpoints() -> None:
    """Default checkpoint callback: the checkpoint stays where it was written."""


def never_stop() -> bool:
    """Default stop check: run to the end."""
    return False


def stop_point(should_stop: StopCheck | None) -> None:
    """Raises Cancelled when `should_stop` asks to stop; a Guard raises its time-limit exceptions itself. Loops call
    it before every unit of work (a batch, a trial, a timed repetition)."""
    if should_stop is not None and should_stop():
        raise Cancelled("stopped by request")


# After its time limit, a job has this long to turn its best state into results (pack, export, measure): it ends
# within this grace of its limit either way.
GRACE_S = 20.0


class TimeLimitReached(Exception):
    """Internal: the time limit ran out; the method keeps its best state so far (MethodRun.time_limited)."""


class TimeLimitExceeded(SqueezerError):
    """The job ran past its time limit and the grace given to write its best result."""

    code = "time_limit_exceeded"


class Guard:
    """One job's stop request and time limit, checked between units of work: before every training, evaluation and
    calibration batch, every trial and every timed repetition, so no stretch between two checks is longer than one
    batch. A check is a clock read and a call of the caller's stop check.

    Called, a Guard is a StopCheck: True when the caller asks to stop (the loop raises Cancelled); the first check
    past the deadline raises TimeLimitReached, which a method catches to keep its best state. From then on, and in
    `essential()` work (the baseline's score, the results of the best state), checks go on until the deadline plus
    its grace (GRACE_S) and raise TimeLimitExceeded there, while measurements cut their repetitions short (`overtime`).
    A guard `within(seconds)` of another stops at the earlier of the two deadlines (auto's stages)."""

    def __init__(
        self, should_stop: StopCheck = never_stop, time_limit_s: float | None = None, *, grace_s: float = GRACE_S
    ):
        self.should_stop = should_stop
        self.time_limit_s, self.grace_s = time_limit_s, grace_s
        self.deadline = math.inf if time_limit_s is None else time.monotonic() + time_limit_s
        self.hard_deadline = self.deadline + grace_s
        self.is_essential = False
        self.reached = False  # TimeLimitReached was raised: the rest is wrap-up

    @classmethod
    def of(cls, should_stop: StopCheck, time_limit_s: float | None) -> "Guard":
        """A guard for a run given `should_stop` (a caller's check, or the guard of the job it is part of) and its
        own time limit, counted from now."""
        if isinstance(should_stop, Guard):
            return should_stop.within(time_limit_s)
        return cls(should_stop, time_limit_s)

    def within(self, seconds: float | None) -> "Guard":
        """A guard with the same stop check, whose deadline is `seconds` from now unless this one's comes first."""
        child = Guard(self.should_stop, seconds, grace_s=self.grace_s)
        child.time_limit_s = self.time_limit_s or seconds  # the job's limit, which its messages name
        child.deadline = min(child.deadline, self.deadline)
        child.hard_deadline = min(child.deadline + self.grace_s, self.hard_deadline)
        return child

    def extend_grace(self, seconds: float) -> None:
        """Gives the wrap-up after the deadline at least `seconds` (a job whose results take longer to write)."""
        if seconds > self.grace_s:
            self.hard_deadline += seconds - self.grace_s
            self.grace_s = seconds

    def essential(self) -> "Guard":
        """A guard for work a result cannot do without: it honours stop requests and the grace, never the deadline
        itself."""
        child = self.within(None)
        child.is_essential = True
        return child

    def __call__(self) -> bool:
        if self.should_stop():
            return True
        now = time.monotonic()
        if now > self.deadline:
            if now > self.hard_deadline:
                raise TimeLimitExceeded(
                    f"the job ran past its time limit of {self.time_limit_s:g} s and the {self.grace_s:g} s given "
                    "to write its best result"
                )
            if not (self.is_essential or self.reached):
                self.reached = True
                raise TimeLimitReached
        return False

    def check(self) -> None:
        """Raises Cancelled on a stop request, or the time limit's exceptions (see the class)."""
        stop_point(self)

    def overtime(self) -> bool:
        """Whether the deadline has passed: repeated measurements then stop after their first timed run."""
        return time.monotonic() > self.deadline

    def seconds_left(self) -> float | None:
        """Time left before the deadline, or None without one."""
        return None if math.isinf(self.deadline) else self.deadline - time.monotonic()
