"""Progress events the engine reports to whoever runs it (CLI progress bar, worker → database)."""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class Event:
    """One progress report.

    stage: "intake", "baseline", "prune", "rank", "train", "step", "checkpoint", "export", "done".
    fraction: overall progress of the whole job in [0, 1].
    data: stage-specific figures, e.g. {"epoch": 1, "loss": .., "accuracy": ..} or an accepted step
    {"step": 3, "accuracy": 97.1, "compression_ratio": 12.3, "accepted": True}.
    """

    stage: str
    fraction: float
    message: str = ""
    level: Literal["debug", "info", "warning", "error"] = "info"
    data: dict[str, Any] = field(default_factory=dict)


EventCallback = Callable[[Event], None]
StopCheck = Callable[[], bool]


def no_events(_: Event) -> None:
    """Default callback: drop events."""


def never_stop() -> bool:
    """Default stop check: run to the end."""
    return False
