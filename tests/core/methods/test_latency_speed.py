"""The speed plan (issue 28, item 2): blocks by measured sensitivity, then channels against the latency table measured
in onnxruntime, until the convolutions are predicted the target factor faster; the pruned model saves as a .sqz
that rebuilds its shape (blocks removed and widths) and computes the same outputs; filter's latency mode runs it
through the whole pipeline."""

import time

import pytest
import torch

from squeezer.core.artifacts.sqz import load_sqz, write_sqz
from squeezer.core.config import AccuracyTarget, CompressConfig, FilterConfig, LatencyPruning, SpeedTarget
from squeezer.core.errors import Cancelled
from squeezer.core.intake.models import LoadedModel, save_model_dir
from squeezer.core.intake.registry import build_architecture
from squeezer.core.measure import count_macs
from squeezer.core.methods.depth import BLOCKS_ARG, with_architecture
from squeezer.core.methods.filter import compress_filter
from squeezer.core.methods.latency_pruning import _targets
from squeezer.core.methods.latency_table import allowed_counts
from squeezer.core.methods.speed import plan_for_speed
from squeezer.core.pipeline import ModelSource, compress_files
from squeezer.core.train import fit

pytestmark = pytest.mark.slow  # trains models: in the full suite, not the fast tier


SHAPE = (3, 32, 32)
ARCH = {"name": "resnet20", "args": {}}


def _resnet20() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_architecture("resnet20", {}).eval()


def _agreement(reference: torch.nn.Module):
    x = torch.randn(64, *SHAPE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference(x).argmax(1)

    def score(module: torch.nn.Module) -> float:
        with torch.no_grad():
            return 100.0 * float((module.eval()(x).argmax(1) == expected).float().mean())

    return score


def test_channels_alone_reach_the_predicted_speedup_at_allowed_counts():
    module = _resnet20()
    pruned, graph, plan = plan_for_speed(module, SHAPE, 1.5, min_keep=0.0)  # every group at its floor: over 2×
    assert plan.blocks == [] and plan.removed_channels > 0
    assert plan.predicted_speedup >= 1.5
    widths = {name: layer.out_channels for name, layer in pruned.named_modules() if isinstance(layer, torch.nn.Conv2d)}
    for key, roots in graph.channel_groups().items():
        assert widths[key] in allowed_counts(len(roots))
    with torch.no_grad():
        assert pruned(torch.zeros(1, *SHAPE)).shape == (1, 10)


def test_blocks_go_first_within_their_floor_and_the_result_saves_and_reloads(tmp_path):
    module = _resnet20()
    score = _agreement(module)
    pruned, _, plan = plan_for_speed(module, SHAPE, 3.0, score=score, floor=60.0)
    assert plan.blocks, "no residual block removed"
    assert plan.predicted_ms[1] < plan.predicted_ms[0]
    model = LoadedModel.built(module, ARCH, SHAPE, 10)
    record = with_architecture(model, pruned)
    assert set(record.architecture["args"][BLOCKS_ARG]) == {block.name for block in plan.blocks}
    write_sqz(tmp_path / "model.sqz", record, [])
    reloaded = load_sqz(tmp_path / "model.sqz").module.eval()
    x = torch.randn(4, *SHAPE)
    with torch.no_grad():
        assert torch.equal(reloaded(x), pruned(x))


DIGITS_RESNET = {"name": "resnet20", "args": {"in_channels": 1, "input_size": 8}}


@pytest.fixture(scope="module")
def digits_resnet(digits) -> LoadedModel:
    """ResNet-20 trained briefly on digits: unlike LeNet-5 on 8×8 inputs, its plans run measurably faster."""
    torch.manual_seed(0)
    module = build_architecture(DIGITS_RESNET["name"], DIGITS_RESNET["args"])
    fit(module, digits.x_train, digits.y_train, epochs=4, lr=0.05, seed=0)
    return LoadedModel.built(module.eval(), DIGITS_RESNET, (1, 8, 8), 10)


def test_filter_latency_mode_through_the_pipeline_returns_a_faster_model_that_reloads(tmp_path, digits_resnet):
    """A residual network trained on digits, compressed by filter with `latency` set: blocks and channels go, the
    .sqz reloads to the model the report measured (ONNX agreement checked by the pipeline), a target past the
    budget is never the result, and the second target is planned from the first one's result (gradual)."""
    module = digits_resnet.module
    save_model_dir(digits_resnet, tmp_path / "model")
    training = {"epochs_per_step": 1, "min_steps_per_stage": 30, "lr_search": False}
    config = CompressConfig(
        device="cpu",
        method="filter",
        target=AccuracyTarget(max_drop=3.0),
        filter=FilterConfig(**training, latency=LatencyPruning(speedups=[2.0, 8.0], max_step=4.0, block_drop=20.0)),
    )
    events = []
    report = compress_files(
        ModelSource(tmp_path / "model"), "sample:digits", tmp_path / "out", config, on_event=events.append
    )
    trials = report["trials"]
    assert [t["accepted"] for t in trials][:1] == [True]
    assert sum(not t["accepted"] for t in trials) <= 3  # the walk ends at its third miss (refinements=2)
    steps = [event.data for event in events if event.stage == "step"]
    assert len(steps) >= 2 and steps[0]["planned_from"] == 1.0
    assert steps[1]["planned_from"] == steps[0]["reached_speedup"] > 1.0
    # Each plan is timed against its start (a later step on 8×8 inputs may measure no faster: the walk's miss).
    assert all(step["reached_speedup"] == pytest.approx(step["planned_from"] * step["measured_step"]) for step in steps)
    assert steps[0]["measured_step"] > 1.0
    assert report["target_met"] and report["macs_reduction"] > 1.5
    assert any(layer["reason"].startswith("removed with its residual block") for layer in report["layers"])
    reloaded = load_sqz(tmp_path / "out" / "model.sqz").module.eval()
    assert count_macs(reloaded, (1, 8, 8)) < count_macs(module, (1, 8, 8))


def test_the_jobs_speed_goal_is_among_the_targets_tried():
    settings = LatencyPruning(speedups=[2.0, 1.5])
    plain = CompressConfig(method="filter", filter=FilterConfig(latency=settings))
    with_goal = plain.model_copy(update={"speed_target": SpeedTarget(speedup=4.0)})
    assert _targets(settings, plain) == [1.5, 2.0]
    assert _targets(settings, with_goal) == [1.5, 2.0, 4.0]


def test_a_stopped_latency_run_goes_on_from_its_checkpoint(digits_model, digits, tmp_path):
    """The checkpoint after each target holds the best model so far: a rerun does not try the first target again,
    restores its trial, and plans the next target from the checkpointed model (its speed-up as the start)."""
    config = CompressConfig(
        method="filter",
        device="cpu",
        target=AccuracyTarget(max_drop=5.0),  # wide: the first target must be accepted for a rerun to go on from it
        filter=FilterConfig(
            epochs_per_step=1, min_steps_per_stage=30, latency=LatencyPruning(speedups=[1.2, 1.5, 2.0, 4.0])
        ),
    )
    first = []
    with pytest.raises(Cancelled):  # stopped once the first target's trial is recorded
        compress_filter(
            digits_model,
            digits,
            config,
            checkpoint_dir=tmp_path,
            should_stop=lambda: bool(first),
            on_event=lambda event: first.append(event.data) if event.stage == "step" else None,
        )
    events = []
    resumed = compress_filter(digits_model, digits, config, checkpoint_dir=tmp_path, on_event=events.append)
    assert any(e.stage == "checkpoint" and "resumed" in e.message for e in events)
    steps = [e.data for e in events if e.stage == "step"]
    assert [t.accuracy for t in resumed.trials[:1]] == [first[0]["accuracy"]] and first[0]["accepted"]
    assert len(steps) == len(resumed.trials) - 1 >= 1  # the first target is not tried again
    assert steps[0]["target"] > 1.2 and steps[0]["planned_from"] == first[0]["reached_speedup"]


def test_a_step_past_the_budget_halves_the_step_and_the_walk_goes_on_from_what_was_kept(digits_resnet, digits):
    """One step too far does not end the walk where it stood: the step shrinks to the square root of the one that
    missed, the next is planned from the result kept (gradual), and the walk ends after `refinements` + 1 misses;
    whatever the steps, the result is within budget."""
    config = CompressConfig(
        method="filter",
        device="cpu",
        target=AccuracyTarget(max_drop=2.0),
        filter=FilterConfig(
            epochs_per_step=0,  # no recovery: the step to every group's floor loses far more than the budget
            refinements=1,
            latency=LatencyPruning(speedups=[30.0], min_keep=0.05, step_keep=0.0, max_step=100, depth=False),
        ),
    )
    events = []
    result = compress_filter(digits_resnet, digits, config, on_event=events.append)
    steps = [event.data for event in events if event.stage == "step"]
    missed = next(i for i, step in enumerate(steps) if not step["accepted"])
    kept = ([1.0] + [step["reached_speedup"] for step in steps[:missed] if step["accepted"]])[-1]
    after = steps[missed + 1]
    assert 1.0 < after["target"] / kept <= (steps[missed]["reached_speedup"] / kept) ** 0.5 + 1e-6
    assert after["planned_from"] == kept
    assert sum(not step["accepted"] for step in steps) <= 2  # refinements=1: the second miss ends the walk
    assert result.target_met


def test_a_gradual_step_never_aims_further_than_max_step(digits_resnet, digits):
    """A target further than `max_step` is approached in equal factors, each step planned from where the last one
    landed, and no step aims further than `max_step` over its start, even after steps that landed short."""
    config = CompressConfig(
        method="filter",
        device="cpu",
        target=AccuracyTarget(max_drop=10.0),  # wide: the budget must not end the walk
        filter=FilterConfig(
            epochs_per_step=1,
            min_steps_per_stage=30,
            lr_search=False,
            refinements=0,  # a step that gains no speed ends the walk: every step listed is one of the walk's
            latency=LatencyPruning(speedups=[3.0], max_step=1.5, depth=False),
        ),
    )
    events = []
    compress_filter(digits_resnet, digits, config, on_event=events.append)
    steps = [event.data for event in events if event.stage == "step"]
    assert 2 <= len(steps) <= 3  # 1.5**2 < 3 <= 1.5**3; the first 1.44× plan runs faster on this network
    assert steps[0]["target"] == pytest.approx(3.0 ** (1 / 3)) and steps[0]["planned_from"] == 1.0
    for left, step in zip((2, 1), steps[1:], strict=False):
        start = step["planned_from"]
        assert step["target"] == pytest.approx(start * min(1.5, (3.0 / start) ** (1 / left)))
    assert [step["planned_from"] for step in steps[1:]] == [step["reached_speedup"] for step in steps[:-1]]


def test_a_recovery_the_time_limit_cuts_is_scored_as_it_stands_and_kept_within_the_budget(digits_resnet, digits):
    """On a large network one recovery can outlast a job's time: the limit cuts it, the pruned model is scored as it
    stands and kept if within the budget (a 224×224 MobileNet job had ended with the baseline, its one step lost)."""
    config = CompressConfig(
        method="filter",
        device="cpu",
        time_limit_s=15.0,
        target=AccuracyTarget(max_drop=100.0),  # whatever the cut recovery scores, it is within
        filter=FilterConfig(
            epochs_per_step=1_000, lr_search=False, latency=LatencyPruning(speedups=[1.5], depth=False)
        ),
    )
    events = []
    result = compress_filter(digits_resnet, digits, config, on_event=events.append)
    steps = [event.data for event in events if event.stage == "step"]
    assert result.stopped_early == "time_limit" and len(steps) == 1 and steps[0]["accepted"]
    assert count_macs(result.module, (1, 8, 8)) < count_macs(digits_resnet.module, (1, 8, 8))
    assert any(event.level == "warning" and "time limit" in event.message for event in events)


# Step 1 of the walk below (its plan, ten recovery steps and its scoring) took 2.4 s beside a one-thread benchmark.
WALK_LIMIT_S = 15.0


@pytest.mark.slow
def test_a_time_limit_that_ends_the_walk_after_a_step_keeps_that_step(digits_resnet, digits):
    """The deadline passes once the first step is recorded, as when the next step's planning outlasts it on a large
    network: the walk ends with the step it kept (a limit reached in a later step's planning used to lose it)."""
    left_after_step = []

    def on_event(event) -> None:
        if event.stage == "step" and not left_after_step:  # wait here until the time is up
            left_after_step.append(deadline - time.monotonic())
            time.sleep(max(left_after_step[0], 0.0) + 0.1)

    settings = LatencyPruning(speedups=[1.5, 3.0], depth=False)
    config = CompressConfig(
        method="filter",
        device="cpu",
        time_limit_s=WALK_LIMIT_S,
        target=AccuracyTarget(max_drop=100.0),
        filter=FilterConfig(epochs_per_step=1, min_steps_per_stage=10, lr_search=False, latency=settings),
    )
    deadline = time.monotonic() + WALK_LIMIT_S
    result = compress_filter(digits_resnet, digits, config, on_event=on_event)
    assert left_after_step[0] > 0  # the first step finished within the limit
    assert result.stopped_early == "time_limit" and [trial.accepted for trial in result.trials] == [True]
    assert count_macs(result.module, (1, 8, 8)) < count_macs(digits_resnet.module, (1, 8, 8))
