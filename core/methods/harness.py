"""The machinery every compression method runs on, so that each method module holds only what is its own.

A method builds one `MethodRun` (or a subclass that adds its own state) and uses this small API:

- `measure_baseline()`: the baseline's score and the budget in absolute points (announced as events);
- `train(module, epochs, seed, stage, fraction, after_step=None, scale=1.0)`: one training stage; the only place a
  method trains, so a learning-rate choice or a divergence rollback added to `fit_stage` applies to every method;
- `evaluate(module)`: the budget's metric on the validation split;
- `within(accuracy)`: whether a score stays within the budget;
- `record(stage, packed, ...)`: appends a `Trial` (its compression ratio from the packed `.sqz` bytes) and reports it;
- `save(tensors, meta, fraction)` / `resume()`: a checkpoint of the method's state, with the trials so far;
- `run.guard` (core.events.Guard): the caller's stop check and the time limit, checked before every training and
  evaluation batch (Cancelled on a stop request); a loop that neither trains nor evaluates calls `run.guard.check()`;
- `with run.time_limited(stage):` around the stages: when the configured time limit runs out, the run stops there
  and `result()` returns the best state the method kept, with `stopped_early="time_limit"`; the evaluations a result
  needs outside it (`evaluate(module, essential=True)`) run on into the guard's grace;
- `train(..., until_cut=True)`: a recovery whose stage the time limit cuts ends with the weights it reached; the
  method scores it (`essential=True`) and records it as any other, then `end_if_time_up()` ends its search;
- `result(module, layers, accuracy)`: the `MethodResult`.

Progress fractions are the method's own share of the bar, from 0 to 1 (the pipeline maps them onto the job's).
"""

import contextlib
import copy
import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypedDict, Unpack

import torch
from torch import nn

from squeezer.core.checkpoint import load_checkpoint, save_checkpoint
from squeezer.core.config import CompressConfig, StructuredTraining
from squeezer.core.events import (
    CheckpointCallback,
    Event,
    EventCallback,
    EventLevel,
    EventStage,
    Guard,
    StopCheck,
    TimeLimitReached,
    never_stop,
    no_checkpoints,
    no_events,
)
from squeezer.core.measure import float32_bytes, metric_function, resolve_device
from squeezer.core.methods.results import LayerState, MethodResult, Trial
from squeezer.core.train import choose_lr, fit_guarded, fit_options, stage_epochs

# Progress while the baseline is evaluated: every method starts its own stages at BASELINE_DONE.
BASELINE_START, BASELINE_DONE = 0.01, 0.05
# Fine-tuning after a removal step draws other shuffles than the stage before it (which uses seed + attempt).
FINETUNE_SEED_OFFSET = 100
# A stage's epoch events (its first and last always) come at most this often: a stage of many one-batch epochs (a
# small data set stretched to min_steps_per_stage, a batch as large as the data) would report thousands a second.
EPOCH_EVENT_INTERVAL_S = 0.25
# Under a time limit the learning-rate range test may take this share of the time left: on a 224×224 MobileNet its
# 5 × 20 steps of 128 samples took 7 of a 20-minute job's minutes, and the recovery it was for never finished.
RANGE_TEST_SHARE = 0.05

AfterStep = Callable[[torch.optim.Optimizer], None]


def progress(start: float, end: float, done: int, total: int) -> float:
    """The fraction `done`/`total` of the way from `start` to `end` of the progress bar."""
    return start + (end - start) * done / total


class MethodHooks(TypedDict, total=False):
    """What a caller may pass every method besides model, data and config, as keywords: `compress_lwct(model, data,
    config, on_event=..., should_stop=..., checkpoint_dir=...)`, and so for each method."""

    on_event: EventCallback  # progress and trials, as they happen
    should_stop: StopCheck  # polled before every batch: a cancelled job stops at its next one (or the job's Guard)
    checkpoint_dir: Path | None  # where the method saves its state, so that a restarted job resumes
    on_checkpoint: CheckpointCallback  # called after each checkpoint is written, before the method goes on


class MethodRun:
    """State of one compression run: the float CPU copy of the baseline, the budget, events, the time limit, the
    trials tried and the checkpoint they are saved in (kept in one place so checkpoints and events see the same)."""

    def __init__(
        self,
        model,
        data,
        config: CompressConfig,
        settings: StructuredTraining | None,
        *,
        name: str,
        **hooks: Unpack[MethodHooks],
    ):
        unknown = set(hooks) - set(MethodHooks.__annotations__)
        if unknown:
            raise TypeError(
                f"unknown method hooks {sorted(unknown)}; a method takes {sorted(MethodHooks.__annotations__)}"
            )
        self.model, self.data, self.config, self.settings, self.name = model, data, config, settings, name
        self.on_event: EventCallback = hooks.get("on_event", no_events)
        # the time limit counts from here, and never past the deadline of a job's guard passed as should_stop
        self.guard = Guard.of(hooks.get("should_stop", never_stop), config.time_limit_s)
        self.checkpoint_dir: Path | None = hooks.get("checkpoint_dir")
        self.on_checkpoint: CheckpointCallback = hooks.get("on_checkpoint", no_checkpoints)
        self.device = resolve_device(config.device)
        self.score = metric_function(config.metric)  # the one metric the budget is measured in
        self.original_bytes = float32_bytes(model.module)
        self.base = copy.deepcopy(model.module).float().cpu().eval()
        self.trials: list[Trial] = []
        self.baseline = math.nan
        self.budget = math.nan
        self.stopped_early: str | None = None
        self.lr: float | None = None  # the job's learning rate, chosen before its first stage (`learning_rate`)
        # For the report: the rate used, the range test behind it, every rolled-back try and the stages none saved.
        self.fine_tuning: dict = {"lr": None, "range_test": None, "retries": [], "stages": 0, "unrecovered_stages": []}

    # -- time limit and events -------------------------------------------------------------------------------
    def emit(self, stage: str, fraction: float, message: str = "", *, severity: EventLevel = "info", **data) -> None:
        """An event at `fraction` of the method's progress; `severity` is the event's level, so that "level" stays
        free as a data key (filter's removal level)."""
        self.on_event(
            Event(stage=stage, fraction=min(max(fraction, 0.0), 1.0), message=message, level=severity, data=data)
        )

    @contextlib.contextmanager
    def time_limited(self, stage: str) -> Iterator[None]:
        """Runs the body until the time limit cuts it; then records `stopped_early` and warns under `stage`."""
        try:
            yield
        except TimeLimitReached:
            self.stopped_early = "time_limit"
            self.emit(stage, 1.0, "time limit reached; keeping the best state so far", severity="warning")

    @property
    def time_up(self) -> bool:
        """Whether the time limit has cut the run or its deadline has passed: what is left is scoring what it reached
        and writing it."""
        return self.guard.reached or self.guard.overtime()

    def end_if_time_up(self) -> None:
        """Ends a search (through `time_limited`) once its time is up, after its last stage was scored and recorded."""
        if self.guard.reached:
            raise TimeLimitReached
        self.guard.check()  # past the deadline: raises TimeLimitReached, and the guard notes it

    # -- training and scoring --------------------------------------------------------------------------------
    def measure_baseline(self, *, announce: bool = True, **data) -> tuple[float, float]:
        """The baseline's score and the budget in absolute points, both announced as events unless `announce` is
        False (`data` joins the first event)."""
        if announce:
            self.emit("baseline", BASELINE_START, "evaluating the baseline", **data)
        self.baseline = self.evaluate(self.base, essential=True)
        self.budget = self.config.target.allowed_drop(self.baseline)
        if announce:
            self.emit(
                "baseline",
                BASELINE_DONE,
                f"baseline accuracy {self.baseline:.2f}",
                accuracy=self.baseline,
                allowed_drop=self.budget,
            )
        return self.baseline, self.budget

    def within(self, accuracy: float, budget: float | None = None) -> bool:
        """Whether `accuracy` stays within `budget` (default: the whole budget) of the baseline."""
        return self.baseline - accuracy <= (self.budget if budget is None else budget)

    def train(
        self,
        module: nn.Module,
        epochs: int,
        seed: int,
        stage: str,
        fraction: float,
        after_step: AfterStep | None = None,
        scale: float = 1.0,
        *,
        until_cut: bool = False,
    ) -> None:
        """One training stage of `epochs` (stretched to at least `core.train.min_steps` SGD steps, so small data sets
        recover; none when `epochs` is 0), then `scale` times that, rounded up (a stage that changes more trains
        longer), with distillation from the baseline; the module ends on CPU. `until_cut`: a stage worth scoring
        however far it got (a recovery of minutes may already hold the budget): one the time limit cuts ends with the
        weights it reached instead of raising, and once the time is up none trains."""
        assert self.settings is not None, "a run that trains has training settings"
        if until_cut and self.time_up:
            return
        try:
            self.guard.check()  # also when the stage has no epochs: a search's loop stops here
            params = sum(p.numel() for p in self.base.parameters())
            epochs = math.ceil(stage_epochs(self.settings, epochs, len(self.data.y_train), params) * scale)
            if epochs > 0:
                on_epoch = self._epoch_events(stage, fraction, epochs)
                self.fit_stage(module, epochs, seed, after_step, on_epoch, stage=stage, fraction=fraction)
        except TimeLimitReached:
            if not until_cut:
                raise
        finally:
            module.cpu()

    def _epoch_events(self, stage: str, fraction: float, epochs: int) -> Callable[[int, float], None]:
        """A stage's epoch callback: an event at most every EPOCH_EVENT_INTERVAL_S, and for its last epoch."""
        reported = -math.inf

        def on_epoch(epoch: int, loss: float) -> None:
            nonlocal reported
            now = time.monotonic()
            if epoch + 1 < epochs and now - reported < EPOCH_EVENT_INTERVAL_S:
                return
            reported = now
            self.emit(stage, fraction, f"epoch {epoch + 1}/{epochs}", epoch=epoch + 1, loss=loss)

        return on_epoch

    def fit_stage(
        self,
        module: nn.Module,
        epochs: int,
        seed: int,
        after_step: AfterStep | None,
        on_epoch: Callable[[int, float], None],
        *,
        stage: str = "train",
        fraction: float = 0.0,
    ) -> None:
        """The one training call of every method: at the job's own rate, rolled back and retried at a lower one when
        it diverges (core.train.fit_guarded); a later stage starts at the rate the last retry settled on. A stage
        that no retry saves keeps its starting weights and is reported at warning level."""
        assert self.settings is not None
        lr = self.learning_rate(fraction)
        outcome = fit_guarded(
            module,
            self.data.x_train,
            self.data.y_train,
            epochs=epochs,
            device=self.device,
            seed=seed,
            after_step=after_step,
            should_stop=self.guard,
            on_epoch=on_epoch,
            teacher=self.base if self.settings.distill else None,
            distill_weight=self.settings.distill,
            **{**fit_options(self.settings), "lr": lr},
        )
        self.fine_tuning["stages"] += 1
        if outcome.retries:
            self.fine_tuning["retries"].append(
                {"stage": stage, "tries": outcome.retries, "lr": outcome.lr, "recovered": outcome.recovered}
            )
        if not outcome.recovered:
            self.fine_tuning["unrecovered_stages"].append(stage)
            self.emit(
                stage,
                fraction,
                f"training diverged at every rate from {lr:g} to {outcome.lr:g}; the stage keeps its starting weights",
                severity="warning",
                lr=lr,
                retries=outcome.retries,
            )
        elif outcome.retries:
            self.lr = outcome.lr
            self.emit(
                stage,
                fraction,
                f"training diverged at lr {lr:g}; rolled back and retrained at {outcome.lr:g}",
                severity="warning",
                lr=outcome.lr,
                retries=outcome.retries,
            )

    def learning_rate(self, fraction: float = 0.0) -> float:
        """The job's rate: the configured one, or (lr_search) the one a short range test on the job's own training
        data picks from it and lower ones, tried on copies of the baseline (core.train.choose_lr); announced once."""
        assert self.settings is not None
        if self.lr is not None:
            return self.lr
        settings, lr, test = self.settings, self.settings.lr, None
        if settings.lr_search:
            test = choose_lr(
                self.base,
                self.data.x_train,
                self.data.y_train,
                lr=settings.lr,
                steps=max(5, min(20, settings.min_steps_per_stage // 10)),
                momentum=settings.momentum,
                weight_decay=settings.weight_decay,
                batch_size=settings.batch_size,
                device=self.device,
                seed=self.config.seed,
                should_stop=self.guard,
                budget_s=None if (left := self.guard.seconds_left()) is None else RANGE_TEST_SHARE * left,
            )
            lr = test.lr
            self.fine_tuning["range_test"] = {
                "start_loss": test.start_loss,
                "losses": {f"{rate:g}": (loss if math.isfinite(loss) else None) for rate, loss in test.losses.items()},
            } | ({"skipped": test.skipped} if test.skipped else {})
        self.lr = self.fine_tuning["lr"] = lr
        how = "chosen by a range test" if test is not None and not test.skipped else "as configured"
        self.emit(
            "train",
            fraction,
            f"learning rate {self.lr:g} ({how})",
            lr=self.lr,
            range_test=self.fine_tuning["range_test"],
        )
        return self.lr

    def evaluate(self, module: nn.Module, *, essential: bool = False, samples: int | None = None) -> float:
        """The budget's metric of `module` on the validation split (its first `samples`, for a quick estimate); the
        module ends on CPU. `essential`: a score the result needs (the baseline's, the starting point's), which runs
        into the time limit's grace."""
        guard = self.guard.essential() if essential else self.guard
        guard.check()
        x, y = self.data.x_val[:samples], self.data.y_val[:samples]
        accuracy = self.score(module, x, y, device=self.device, should_stop=guard)
        module.cpu()
        return accuracy

    # -- trials and checkpoints ------------------------------------------------------------------------------
    def record(
        self,
        stage: str,
        packed: bytes,
        *,
        layers: list[str],
        accuracy: float,
        accepted: bool,
        fraction: float,
        sparsity: float | None,
        summary: str = "",
        **data,
    ) -> Trial:
        """A point on the trade-off curve; `packed` is the trial's model as a `.sqz`, its ratio's denominator.
        The event's message is "<stage>: [<summary>, ]accepted|rejected"; `data` joins the event."""
        trial = Trial(
            step=len(self.trials) + 1,
            stage=stage,
            layers=layers,
            accuracy=accuracy,
            compression_ratio=self.original_bytes / len(packed),
            accepted=accepted,
            sparsity=sparsity,
        )
        self.trials.append(trial)
        outcome = "accepted" if accepted else "rejected"
        self.emit(
            "step",
            fraction,
            f"{stage}: {summary}, {outcome}" if summary else f"{stage}: {outcome}",
            step=trial.step,
            accuracy=accuracy,
            compression_ratio=trial.compression_ratio,
            accepted=accepted,
            layers=layers,
            **data,
        )
        return trial

    def save(self, tensors: dict[str, torch.Tensor], meta: dict, fraction: float) -> None:
        """A checkpoint of the method's state (with the trials so far) that `resume` hands back after a restart."""
        if self.checkpoint_dir is None:
            return
        trials = [dataclasses.asdict(trial) for trial in self.trials]
        meta = {**meta, "trials": trials, "fraction": fraction}
        save_checkpoint(self.checkpoint_dir, self.name, tensors, meta)
        self.emit(EventStage.CHECKPOINT, fraction, "checkpoint written")
        self.on_checkpoint()

    def resume(self) -> tuple[dict[str, torch.Tensor], dict] | None:
        """The last checkpoint's tensors and metadata (its trials restored into this run), or None."""
        saved = load_checkpoint(self.checkpoint_dir, self.name)
        if saved is not None:
            self.trials = [Trial(**trial) for trial in saved[1]["trials"]]
            self.emit(EventStage.CHECKPOINT, saved[1]["fraction"], "resumed from checkpoint")
        return saved

    def result(self, module: nn.Module, layers: Sequence[LayerState], accuracy: float) -> MethodResult:
        tuning = self.fine_tuning
        tuning["no_stage_recovered"] = tuning["stages"] > 0 and len(tuning["unrecovered_stages"]) == tuning["stages"]
        if tuning["no_stage_recovered"]:
            self.emit(
                "train",
                1.0,
                "no training stage could be run without diverging, at any rate tried: the "
                "result is the uploaded weights in compressed storage, not a fine-tuned model",
                severity="warning",
            )
        return MethodResult(
            module=module,
            layers=list(layers),
            trials=self.trials,
            baseline_accuracy=self.baseline,
            accuracy=accuracy,
            target_met=self.within(accuracy),
            stopped_early=self.stopped_early,
            fine_tuning=tuning,
        )
