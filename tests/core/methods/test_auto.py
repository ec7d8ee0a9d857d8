"""method=auto: channel removal, then lwct on what remains, one budget against the original model."""

import time

import pytest

from squeezer.core.config import (
    AccuracyTarget,
    AutoConfig,
    CompressConfig,
    FilterConfig,
    GroupConfig,
    Int8Config,
    LwctConfig,
)
from squeezer.core.errors import Cancelled
from squeezer.core.intake.models import save_model_dir
from squeezer.core.measure import count_macs, top1_accuracy
from squeezer.core.methods.auto import compress_auto
from squeezer.core.pipeline import ModelSource, compress_files

pytestmark = pytest.mark.slow  # trains models: in the full suite, not the fast tier


QUICK_FILTER = FilterConfig(
    importance_epochs=1, epochs_per_step=1, min_steps_per_stage=30, levels=[0.3, 0.6], init=["l1"]
)
QUICK_GROUP = GroupConfig(penalties=[0.1, 0.5], sparse_epochs=1, epochs_per_step=1, min_steps_per_stage=30)
QUICK_LWCT = LwctConfig(
    sparsity_grid=[0.5, 0.8], prune_epochs=1, epochs_per_step=1, min_steps_per_stage=30, prune_budget_share=1.0
)  # every lwct step may spend the whole remaining budget


@pytest.mark.slow
def test_stages_share_one_budget_measured_against_the_original(digits_model, digits):
    config = CompressConfig(
        method="auto",
        device="cpu",
        target=AccuracyTarget(max_drop=1.0),
        filter=QUICK_FILTER,
        lwct=QUICK_LWCT,
        auto=AutoConfig(structural_share=0.5, compare_lwct_alone=False),
    )
    baseline = top1_accuracy(digits_model.module, digits.x_val, digits.y_val)
    result = compress_auto(digits_model, digits, config)
    assert result.baseline_accuracy == baseline
    assert result.accuracy == top1_accuracy(result.module, digits.x_val, digits.y_val)
    assert baseline - result.accuracy <= 1.0 and result.target_met
    stages = [trial.stage.split(":")[0] for trial in result.trials]
    assert stages == sorted(stages, key=["filter", "lwct", "int8"].index) and {"filter", "lwct", "int8"} <= set(stages)
    assert [trial.step for trial in result.trials] == list(range(1, len(result.trials) + 1))
    for trial in result.trials:  # structural steps may spend half the budget, lwct and int8 steps all of it
        allowed = 0.5 if trial.stage.startswith("filter") else 1.0
        assert trial.accepted == (baseline - trial.accuracy <= allowed)
    if any(t.accepted for t in result.trials if t.stage.startswith("filter")):
        assert count_macs(result.module, (1, 8, 8)) < count_macs(digits_model.module, (1, 8, 8))
    rows = {layer.name: layer for layer in result.layers}
    assert rows["classifier.5"].channels_kept == 10
    assert any(trial.stage == "lwct:ternary" for trial in result.trials)  # lwct went on to constrain layers


def test_group_then_filter_then_lwct(digits_model, digits):
    config = CompressConfig(
        method="auto",
        device="cpu",
        target=AccuracyTarget(max_drop=2.0),
        group=QUICK_GROUP,
        filter=QUICK_FILTER,
        lwct=QUICK_LWCT,
        auto=AutoConfig(structural=["group", "filter"], compare_lwct_alone=False),
    )
    result = compress_auto(digits_model, digits, config)
    assert [s for s in dict.fromkeys(t.stage.split(":")[0] for t in result.trials)] == [
        "group",
        "filter",
        "lwct",
        "int8",
    ]
    assert result.target_met
    for layer in result.layers:
        assert layer.channels_kept + layer.channels_removed == layer.channels_before


def test_report_lists_every_step_and_the_ratio_of_the_returned_model(digits_model, tmp_path):
    save_model_dir(digits_model, tmp_path / "model")
    config = CompressConfig(method="auto", device="cpu", filter=QUICK_FILTER, lwct=QUICK_LWCT)
    report = compress_files(ModelSource(tmp_path / "model"), "sample:digits", tmp_path / "out", config)
    assert report["method"] == "auto" and report["metric"] == "top1" and report["target_met"]
    assert [s for s in dict.fromkeys(t["stage"].split(":")[0] for t in report["trials"])] == [
        "filter",
        "lwct",
        "lwct-alone",
        "int8",
    ]
    # trial ratios count from the original model, whatever stage produced them; the combination and lwct alone
    # both ran, and the returned model is the most compressed step within the budget
    accepted = [t["compression_ratio"] for t in report["trials"] if t["accepted"]]
    assert report["compression_ratio"] == pytest.approx(max(accepted), rel=1e-3)
    assert {"channels_before", "channels_kept", "channels_removed", "reason"} <= set(report["layers"][0])
    assert report["compressed"]["latency_ms_batch32"] > 0


def test_a_stopped_auto_job_replays_finished_stages_and_resumes_the_interrupted_one(digits_model, digits, tmp_path):
    config = CompressConfig(method="auto", device="cpu", filter=QUICK_FILTER, lwct=QUICK_LWCT)
    uninterrupted = compress_auto(digits_model, digits, config)
    stop = []

    def stop_in_lwct(event):
        if event.stage == "checkpoint" and event.message.startswith("lwct:"):
            stop.append(True)  # lwct has checkpointed its pruning stage

    with pytest.raises(Cancelled):
        compress_auto(
            digits_model, digits, config, on_event=stop_in_lwct, should_stop=lambda: bool(stop), checkpoint_dir=tmp_path
        )
    assert (tmp_path / "filter" / "filter.json").exists() and (tmp_path / "lwct" / "lwct.json").exists()
    events = []
    resumed = compress_auto(digits_model, digits, config, on_event=events.append, checkpoint_dir=tmp_path)
    steps = [e.message.split(":")[0] for e in events if e.stage == "step"]
    assert "filter" not in steps and "lwct-alone" in steps  # the finished stage replayed without training
    assert [(t.stage, t.accuracy, t.accepted) for t in resumed.trials] == [
        (t.stage, t.accuracy, t.accepted) for t in uninterrupted.trials
    ]
    assert resumed.accuracy == uninterrupted.accuracy


def test_objective_picks_the_within_budget_candidate_it_names(digits_model, tmp_path):
    """latency: the fastest model.onnx among the candidates within the budget (int8 after channel removal is one),
    never one slower than the baseline, a speed-up within the noise counting as none; the report states the
    objective and every candidate with its measured bytes and its A/B comparison with the baseline."""
    save_model_dir(digits_model, tmp_path / "model")
    config = CompressConfig(
        method="auto",
        device="cpu",
        filter=QUICK_FILTER,
        lwct=QUICK_LWCT,
        auto=AutoConfig(objective="latency", compare_lwct_alone=False),
        int8=Int8Config(layers="all"),  # an int8 candidate even where int8 is slower: it must not be chosen then
    )
    report = compress_files(ModelSource(tmp_path / "model"), "sample:digits", tmp_path / "out", config)
    assert report["objective"] == "latency" and report["target_met"]
    candidates = [c for c in report["candidates"] if c["stage"] != "baseline"]
    assert {c["stage"] for c in candidates} <= {"filter", "lwct", "int8"} and "int8" in {c["stage"] for c in candidates}
    within = [c for c in candidates if c["within_budget"] and c["verdict"] != "slower"]
    (chosen,) = [c for c in report["candidates"] if c["chosen"]]
    if chosen["stage"] == "baseline":  # every candidate within the budget was slower: the original comes back
        assert not within and report["compressed"]["accuracy"] == report["baseline"]["accuracy"]
        return
    assert chosen["verdict"] != "slower" and all(
        c["speedup"] == 1.0 for c in candidates if c["verdict"] == "no difference"
    )
    low, high = chosen["speed_interval"]
    assert all(c["speed_interval"][0] <= high for c in within)  # none measurably faster than the one chosen
    assert report["compressed"]["accuracy"] == pytest.approx(chosen["accuracy"], abs=0.1)
    assert report["deployable"] == ("model.onnx" if chosen["stage"] == "int8" else "model.sqz")


def test_a_stage_that_spends_its_own_share_of_the_time_does_not_stop_the_job_early(digits_model, digits):
    """Auto gives each stage its share of the time left; a stage cut at its share leaves the rest to the later
    stages, so only auto's own deadline makes the job `stopped_early` (which the worker reports as a time limit)."""
    config = CompressConfig(
        method="auto",
        device="cpu",
        time_limit_s=20,
        target=AccuracyTarget(max_drop=100.0),
        filter=FilterConfig(importance_epochs=1_000, min_steps_per_stage=30, levels=[0.3], init=["l1"]),
        lwct=LwctConfig(sparsity_grid=[0.5], prune_epochs=0, epochs_per_step=0, lr_search=False),
        auto=AutoConfig(compare_lwct_alone=False, int8=False),
    )
    started = time.monotonic()
    result = compress_auto(digits_model, digits, config)
    elapsed = time.monotonic() - started
    assert 10 <= elapsed < 20  # filter (1,000 importance epochs) was cut at its half; lwct finished within the rest
    assert result.stopped_early is None
