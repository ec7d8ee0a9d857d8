"""No job outruns its limits (issue 24): a cancel or the time limit is seen before the next batch of every loop the
engine runs (training, the learning-rate range test, evaluation, calibration, searches that do not train, timed
repetitions), a time-limited job still writes the results of its best state, and events name no server path."""

import dataclasses
import threading
import time

import numpy as np
import pytest
import torch

from squeezer.core.config import AccuracyTarget, CompressConfig, FilterConfig, GroupConfig, LwctConfig
from squeezer.core.errors import Cancelled
from squeezer.core.events import GRACE_S, Guard, TimeLimitExceeded, TimeLimitReached
from squeezer.core.intake.data import Dataset
from squeezer.core.methods.harness import EPOCH_EVENT_INTERVAL_S
from squeezer.core.methods.lwct import compress_lwct
from squeezer.core.methods.registry import method as registered_method
from squeezer.core.pipeline import FINISH_EVALUATIONS, MAX_GRACE_S, ModelSource, _method_guard, compress_files
from squeezer.core.samples import ensure_sample_model

# A check before every batch: a batch of the tiny models here takes milliseconds (one of 16,384 samples a few
# hundred), so a stop is seen well within this, where the work left would take tens of seconds.
STOP_WITHIN_S = 3.0
EVALUATION_STOP_WITHIN_S = 1.0  # one batch of 512 digits: milliseconds; the whole evaluation: seconds
METHODS = ["lwct", "filter", "group", "int8", "auto"]
RESULT_FILES = ["model.sqz", "model.onnx", "model", "report.json", "report.html"]


class StopRequest:
    """A caller's stop check: False until `request()`, which notes when; counts how often it was asked."""

    def __init__(self) -> None:
        self.requested_at: float | None = None
        self.calls = 0

    def request(self) -> None:
        if self.requested_at is None:
            self.requested_at = time.monotonic()

    def after(self, seconds: float) -> threading.Timer:
        timer = threading.Timer(seconds, self.request)
        timer.start()
        return timer

    def __call__(self) -> bool:
        self.calls += 1
        return self.requested_at is not None

    def seconds_since(self) -> float:
        assert self.requested_at is not None, "the stop was never requested"
        return time.monotonic() - self.requested_at


@pytest.fixture(scope="module")
def sample_dir():
    return ensure_sample_model("digits")[0]


def tiled(data: Dataset, train: int = 1, val: int = 1) -> Dataset:
    """`data` with its training and validation samples repeated: the digits model, many more batches."""
    x_train = data.x_train[torch.arange(len(data.x_train))]
    return dataclasses.replace(
        data,
        x_train=x_train.repeat(train, 1, 1, 1),
        y_train=data.y_train.repeat(train),
        x_val=data.x_val.repeat(val, 1, 1, 1),
        y_val=data.y_val.repeat(val),
    )


# A range test of 5 rates × 20 steps of 16,384 samples (the batch size, at most the training set): about a minute
# on two cores, where an unguarded range test ran on past every stop.
LONG_RANGE_TEST = LwctConfig(batch_size=16_384, min_steps_per_stage=200, sparsity_grid=[0.5])


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_a_cancel_ends_every_method_at_its_next_batch(sample_dir, tmp_path, method):
    """The stop comes as a method's first trial is recorded (int8: as its calibration starts); without it each method
    would run on for many seconds (lwct's defaults take about 30 s on digits, auto minutes)."""
    stop, events = StopRequest(), []

    def on_event(event):
        events.append(event)
        if event.stage == ("int8" if method == "int8" else "step"):
            stop.request()

    with pytest.raises(Cancelled):
        compress_files(
            ModelSource(sample_dir),
            "sample:digits",
            tmp_path,
            CompressConfig(method=method, device="cpu"),
            on_event=on_event,
            should_stop=stop,
        )
    assert stop.seconds_since() < STOP_WITHIN_S
    if method == "int8":  # stopped during calibration: no int8 model was scored
        assert not [e for e in events if e.stage == "step"]
    assert not (tmp_path / "report.json").exists()


def test_a_cancel_during_the_range_test_stops_it(digits_model, digits):
    stop, events, timers = StopRequest(), [], []

    def on_event(event):
        events.append(event)
        if event.stage == "prune":  # the first training stage's range test starts next
            timers.append(stop.after(1.0))

    config = CompressConfig(device="cpu", lwct=LONG_RANGE_TEST)
    try:
        with pytest.raises(Cancelled):
            compress_lwct(digits_model, tiled(digits, train=12), config, on_event=on_event, should_stop=stop)
    finally:
        for timer in timers:
            timer.cancel()
    assert stop.seconds_since() < STOP_WITHIN_S
    assert not [e for e in events if "learning rate" in e.message]  # the range test never finished


@pytest.mark.slow
def test_the_time_limit_cuts_or_skips_the_range_test_and_the_start_is_kept(sample_dir, digits, tmp_path):
    data = tiled(digits, train=12)
    path = tmp_path / "digits-x12.npz"
    np.savez(
        path,
        x_train=data.x_train.numpy(),
        y_train=data.y_train.numpy(),
        x_val=data.x_val.numpy(),
        y_val=data.y_val.numpy(),
    )
    config = CompressConfig(device="cpu", lwct=LONG_RANGE_TEST, time_limit_s=5)
    report = compress_files(ModelSource(sample_dir), path, tmp_path / "out", config)
    assert report["stopped_early"] == "time_limit"
    range_test = report["fine_tuning"]["range_test"]  # cut (None), or skipped: its shortest run would not fit
    assert (range_test is None or "would take" in range_test["skipped"]) and report["fine_tuning"]["stages"] == 0
    # no stage finished: the pruning stage the limit cut is scored as it stands, and the result if within the budget
    assert [trial["stage"] for trial in report["trials"]] == ["prune"]
    assert report["compressed"]["accuracy"] == (
        report["trials"][0]["accuracy"] if report["trials"][0]["accepted"] else report["baseline"]["accuracy"]
    )
    assert report["duration_s"] < 5 + 20
    assert all((tmp_path / "out" / name).exists() for name in RESULT_FILES)


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_a_time_limit_ends_every_method_within_its_grace_with_its_best_result(sample_dir, tmp_path, method):
    """int8 takes a quarter of a second in a warm process, so its limit runs out before its calibration (intake alone
    takes longer); the others stop mid-search. auto gives each stage its share of the time and ends when its last,
    quick stage (int8) ends, so its job may end within the limit: its stages were still cut (the warning)."""
    limit = 0.001 if method == "int8" else 4.0
    events = []
    config = CompressConfig(method=method, device="cpu", time_limit_s=limit)
    report = compress_files(ModelSource(sample_dir), "sample:digits", tmp_path, config, on_event=events.append)
    assert report["stopped_early"] == "time_limit" or (method == "auto" and report["duration_s"] < limit + 1)
    assert report["duration_s"] < limit + 20  # core.events.GRACE_S; the tiny model's results take a few seconds
    assert all((tmp_path / name).exists() for name in RESULT_FILES)
    assert any(e.level == "warning" and "time limit" in e.message for e in events)
    accepted = [trial for trial in report["trials"] if trial["accepted"]]
    if method in ("filter", "group", "int8") and not accepted:  # nothing kept yet: the baseline, unchanged
        assert report["compressed"]["accuracy"] == report["baseline"]["accuracy"]
    if method == "int8":
        assert report["deployable"] == "model.sqz" and not report["trials"]


# A recovery of this many epochs outlasts any limit here; what runs before it (importance learning, group-sparse
# training, stretched to 300 steps of the digits) takes about a second alone, and several beside other tests.
UNFINISHED = 1_000
CUT_LIMIT_S = 10.0
CUT_RECOVERIES = {
    "lwct": {"lwct": LwctConfig(sparsity=0.5, prune_epochs=UNFINISHED, lr_search=False)},
    "filter": {"filter": FilterConfig(importance_epochs=1, levels=[0.3], epochs_per_step=UNFINISHED, lr_search=False)},
    "group": {"group": GroupConfig(penalties=[1.0], sparse_epochs=1, epochs_per_step=UNFINISHED, lr_search=False)},
}


@pytest.mark.slow
@pytest.mark.parametrize("method", CUT_RECOVERIES)
def test_every_search_scores_the_recovery_the_time_limit_cuts_and_keeps_it_within_the_budget(
    digits_model, digits, method
):
    """A recovery the limit cuts may already hold the budget (minutes of it on a 224×224 network): it is scored as it
    stands, recorded, and kept when within; the search ends there. Dropped, it left the baseline as the result."""
    target = AccuracyTarget(max_drop=100.0)  # whatever the cut recovery scores, it is within
    options = CUT_RECOVERIES[method]
    config = CompressConfig(method=method, device="cpu", time_limit_s=CUT_LIMIT_S, target=target, **options)
    started = time.monotonic()
    result = registered_method(method).run(digits_model, digits, config)
    assert time.monotonic() - started < CUT_LIMIT_S + STOP_WITHIN_S
    assert result.stopped_early == "time_limit"
    assert [trial.accepted for trial in result.trials] == [True] and result.accuracy == result.trials[0].accuracy
    assert result.trials[0].compression_ratio > 1.0


def test_results_that_cannot_be_written_within_the_grace_end_the_job(sample_dir, tmp_path):
    """The work after the time limit is bounded too: with a grace shorter than the results' measurements take, the job
    ends with time_limit_exceeded at the first check past it."""
    grace = 0.02  # a warm process writes and measures the digits model's results in about a quarter of a second
    started = time.monotonic()
    with pytest.raises(TimeLimitExceeded) as error:
        compress_files(
            ModelSource(sample_dir),
            "sample:digits",
            tmp_path,
            CompressConfig(device="cpu", time_limit_s=0.001),
            should_stop=Guard(grace_s=grace),
        )
    assert error.value.code == "time_limit_exceeded"
    assert time.monotonic() - started < 0.001 + grace + STOP_WITHIN_S
    assert not (tmp_path / "report.json").exists()


def test_a_long_grid_that_trains_nothing_stops_at_the_time_limit(digits_model, digits):
    """500 pruning levels (the job schema allows 64; the engine's bound is the clock) with no training: each level is
    an evaluation and a packing, which took 151 s under a 10 s limit before they checked the clock."""
    grid = [level / 1000 for level in range(500)]
    lwct = LwctConfig(prune_epochs=0, epochs_per_step=0).model_copy(update={"sparsity_grid": grid})
    config = CompressConfig(device="cpu", target=AccuracyTarget(max_drop=100), lwct=lwct, time_limit_s=3)
    events = []
    started = time.monotonic()
    result = compress_lwct(digits_model, digits, config, on_event=events.append)
    assert time.monotonic() - started < 3 + STOP_WITHIN_S
    assert result.stopped_early == "time_limit"
    assert 0 < len(result.trials) < len(grid)
    assert len([e for e in events if e.stage == "step"]) == len(result.trials)  # one event a trial


def test_a_stage_of_many_short_epochs_reports_a_few_of_them(digits_model, digits):
    """300 epochs of one 8-sample batch (a stage stretched to min_steps_per_stage) report their epochs at most every
    EPOCH_EVENT_INTERVAL_S, the last one always: not hundreds a second (a jailed engine that sends over 1,000 events a
    second is ended by its worker)."""
    lwct = LwctConfig(
        sparsity=0.5, batch_size=8, max_train_samples=8, min_steps_per_stage=300, epochs_per_step=0, lr_search=False
    )
    events = []
    started = time.monotonic()
    compress_lwct(digits_model, digits, CompressConfig(device="cpu", lwct=lwct), on_event=events.append)
    elapsed = time.monotonic() - started
    epochs = [e.data["epoch"] for e in events if e.stage == "prune" and "epoch" in e.data]
    assert epochs[-1] == 300 and epochs == sorted(epochs)
    assert len(epochs) < 300 and len(epochs) <= 2 + elapsed / EPOCH_EVENT_INTERVAL_S


def test_evaluating_a_big_validation_split_honours_a_stop(digits_model, digits):
    data = tiled(digits, val=1500)  # 540,000 samples: 1,055 batches, seconds of evaluation
    stop = StopRequest()
    timer = stop.after(0.5)
    try:
        with pytest.raises(Cancelled):
            compress_lwct(digits_model, data, CompressConfig(device="cpu"), should_stop=stop)
    finally:
        timer.cancel()
    assert stop.seconds_since() < EVALUATION_STOP_WITHIN_S


@pytest.mark.slow
def test_events_carry_no_server_path(sample_dir, tmp_path):
    checkpoints, events = tmp_path / "checkpoint", []
    config = CompressConfig(device="cpu", lwct=LwctConfig(sparsity_grid=[0.5], prune_epochs=1, min_steps_per_stage=30))
    for _ in range(2):  # the second run resumes from the first one's checkpoint
        compress_files(
            ModelSource(sample_dir),
            "sample:digits",
            tmp_path / "out",
            config,
            on_event=events.append,
            checkpoint_dir=checkpoints,
        )
    assert [e for e in events if e.stage == "checkpoint" and "resumed" in e.message]
    assert all(str(tmp_path) not in e.message + repr(e.data) for e in events)
    assert all(e.data == {} for e in events if e.stage == "checkpoint")


def test_a_guard_within_another_stops_at_the_earlier_deadline_and_essential_work_runs_into_the_grace():
    guard = Guard(time_limit_s=0.05, grace_s=0.2)
    later, earlier = guard.within(60), guard.within(0.01)
    assert later.deadline == guard.deadline and earlier.deadline < guard.deadline
    essential = guard.essential()
    time.sleep(0.06)  # past the deadline, within the grace
    assert essential() is False  # the result's own work goes on
    with pytest.raises(TimeLimitReached):
        guard()
    assert guard() is False  # reached once: the rest is the best state's wrap-up
    time.sleep(0.2)  # past the grace
    with pytest.raises(TimeLimitExceeded):
        essential()


@pytest.mark.parametrize("evaluation_s", [1.0, 10.0, 40.0])
def test_a_method_stops_as_long_before_the_limit_as_its_results_take_to_write_and_the_grace_covers_as_much(
    evaluation_s,
):
    """Writing a large network's results reads its validation split a few times over: a job whose evaluation takes
    10 s must not have them cut off by a grace of 20 s (a 224×224 MobileNet job ended with nothing written)."""
    job = Guard(time_limit_s=100.0)
    method = _method_guard(job, evaluation_s)
    finish_s = FINISH_EVALUATIONS * evaluation_s
    assert job.deadline - method.deadline == pytest.approx(min(finish_s, 50.0), abs=0.1)  # at most half the time
    assert job.grace_s == max(GRACE_S, min(finish_s, MAX_GRACE_S))
    assert job.hard_deadline == pytest.approx(job.deadline + job.grace_s)
    assert method.hard_deadline <= job.hard_deadline
    unlimited = Guard()
    assert _method_guard(unlimited, evaluation_s) is unlimited
