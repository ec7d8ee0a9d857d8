"""Progress events the engine reports to whoever runs it (CLI progress bar, worker → database)."""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class Event:
    """One progress report.

    stage, in the order a job meets them:
      "intake"      the pipeline loads and checks the model and the data, and measures the baseline's report figures;
      "baseline"    a method scores the baseline and sets the budget in absolute points (data: accuracy, allowed_drop);
      "importance"  filter: importance weights learned under the L1 penalty, once per initialisation;
      "prune"       lwct: a global magnitude-pruning level; filter: a removal level being fine-tuned;
      "rank"        lwct: the layers ranked by significance;
      "train"       lwct: one layer σ-constrained and trained (also the stage of lwct's time-limit warning);
      "sparse"      group: group-sparse training with one λ;
      "finetune"    group: fine-tuning after the zeroed neurons were removed;
      "int8"        int8: calibration and quantization;
      "step"        any method: a trial recorded, accepted or rejected (data: step, accuracy, compression_ratio,
                    accepted, layers);
      "checkpoint"  a method's state written, or a run resumed from it (data: path);
      "filter", "group"  auto: a structural stage skipped because the model has nothing it can remove (a warning);
      "export"      the pipeline writes model.sqz, model/ and model.onnx and measures them;
      "done"        the report is written; the message says whether the target was met.
    Training stages also report every epoch under their own stage (data: epoch, loss).
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


def no_events(_: Event) -> None:
    """Default callback: drop events."""


def never_stop() -> bool:
    """Default stop check: run to the end."""
    return False
