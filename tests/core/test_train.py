"""core.train's learning-rate range test and divergence guard (issue 12) on a model as users bring it: a residual
CNN trained with Adam on real digits, exported in eval mode (BatchNorm folded), whose weight scale makes the default
rate of 0.01 wreck it."""

import copy
import io
import math
import time

import pytest
import torch

from squeezer.core.config import AccuracyTarget, CompressConfig, FilterConfig, LwctConfig
from squeezer.core.errors import Cancelled
from squeezer.core.intake.data import load_dataset
from squeezer.core.intake.models import load_model
from squeezer.core.measure import metric_function
from squeezer.core.pipeline import ModelSource, compress_files
from squeezer.core.train import (
    LR_CANDIDATE_FACTORS,
    Diverged,
    DivergenceRule,
    augmented,
    choose_lr,
    fit,
    fit_guarded,
    stage_epochs,
)
from tests.core.wild import export_eval, rescaled, residual_cnn, train_on_digits

pytestmark = pytest.mark.slow  # trains models: in the full suite, not the fast tier


top1 = metric_function("top1")
CHANCE = 20.0  # ten classes: a wrecked model scores about 10 %


@pytest.fixture(scope="module")
def digits():
    return load_dataset("sample:digits")


@pytest.fixture(scope="module")
def folded_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("wild") / "folded.onnx"
    path.write_bytes(rescaled(export_eval(train_on_digits(residual_cnn())), 100.0))
    return path


@pytest.fixture(scope="module")
def folded(folded_file):
    return load_model(folded_file).module


def test_the_default_rate_wrecks_the_folded_export(folded, digits):
    assert top1(folded, digits.x_val, digits.y_val) > 95
    wrecked = copy.deepcopy(folded)
    fit(wrecked, digits.x_train, digits.y_train, epochs=1, lr=0.01, max_samples=2000)
    assert top1(wrecked, digits.x_val, digits.y_val) < CHANCE


def test_the_range_test_picks_a_rate_that_keeps_the_model(folded, digits):
    before = copy.deepcopy(folded.state_dict())
    test = choose_lr(folded, digits.x_train, digits.y_train, lr=0.01)
    assert all(torch.equal(before[k], v) for k, v in folded.state_dict().items())  # the probe trains copies only
    assert test.lr < 0.01 and math.isinf(test.losses[0.01]) and len(test.losses) == 5
    tuned = copy.deepcopy(folded)
    fit(tuned, digits.x_train, digits.y_train, epochs=10, lr=test.lr, max_samples=2000)
    assert top1(tuned, digits.x_val, digits.y_val) > 95


def test_a_diverging_stage_rolls_back_and_retries_lower(folded, digits):
    model = copy.deepcopy(folded)
    outcome = fit_guarded(model, digits.x_train, digits.y_train, lr=0.01, epochs=6, max_samples=2000)
    assert outcome.recovered and outcome.retries and outcome.retries[0]["lr"] == 0.01
    assert outcome.lr == pytest.approx(0.01 * 0.3 ** len(outcome.retries))
    assert top1(model, digits.x_val, digits.y_val) > 95


def test_a_stage_that_never_recovers_leaves_the_starting_weights(folded, digits):
    model = copy.deepcopy(folded)
    outcome = fit_guarded(model, digits.x_train, digits.y_train, lr=10.0, max_retries=1, epochs=1, max_samples=512)
    assert not outcome.recovered and len(outcome.retries) == 2
    assert all(torch.equal(folded.state_dict()[k], v) for k, v in model.state_dict().items())


def test_a_non_finite_loss_is_divergence(digits):
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    with torch.no_grad():
        model[1].weight.fill_(math.inf)
    with pytest.raises(Diverged):
        fit(model, digits.x_train, digits.y_train, epochs=1, lr=0.01, divergence=DivergenceRule())


@pytest.fixture(scope="module")
def adam_file(tmp_path_factory):
    """A residual CNN trained with Adam, BatchNorm kept (exported in training-free eval form, unfolded)."""
    path = tmp_path_factory.mktemp("adam") / "adam.onnx"
    buffer = io.BytesIO()
    module = train_on_digits(residual_cnn(), lr=1e-2)
    torch.onnx.export(
        module,
        torch.zeros(1, 1, 8, 8),
        buffer,
        dynamo=False,
        opset_version=13,
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
        do_constant_folding=False,
        training=torch.onnx.TrainingMode.PRESERVE,
    )
    path.write_bytes(buffer.getvalue())
    return path


QUICK_LWCT = LwctConfig(sparsity_grid=[0.5, 0.8], prune_epochs=1, epochs_per_step=1, min_steps_per_stage=60)
QUICK_FILTER = FilterConfig(
    init=["l1"], importance_epochs=1, epochs_per_step=1, min_steps_per_stage=60, levels=[0.1, 0.2], refinements=0
)


@pytest.mark.parametrize("method", ["lwct", "filter"])
@pytest.mark.parametrize("model", ["folded_file", "adam_file"])
def test_jobs_on_uploaded_models_compress_without_collapsing(model, method, request, tmp_path):
    events = []
    own_options = {"lwct": {"lwct": QUICK_LWCT}, "filter": {"filter": QUICK_FILTER}}[method]
    config = CompressConfig(method=method, device="cpu", target=AccuracyTarget(max_drop=2.0), **own_options)
    report = compress_files(
        ModelSource(request.getfixturevalue(model)), "sample:digits", tmp_path, config, on_event=events.append
    )
    assert report["baseline"]["accuracy"] > 95
    assert report["compressed"]["accuracy"] > report["baseline"]["accuracy"] - 2.0 and report["target_met"]
    assert report["compression_ratio"] > 1  # compressed, not the baseline handed back
    if method == "filter":
        assert report["compressed"]["flops"] < report["baseline"]["flops"]
    tuning = report["fine_tuning"]
    assert tuning["lr"] is not None and tuning["stages"] > 0 and not tuning["no_stage_recovered"]
    assert any(e.data.get("lr") == tuning["lr"] for e in events)  # the rate used is announced
    if model == "folded_file":
        losses = tuning["range_test"]["losses"]
        assert tuning["lr"] < 0.01 and losses[max(losses, key=float)] is None  # the configured rate diverged


def test_a_job_whose_stages_all_diverge_says_so(folded_file, tmp_path):
    events = []
    lwct = QUICK_LWCT.model_copy(update={"lr": 1000.0, "lr_search": False, "sparsity_grid": [0.5]})
    config = CompressConfig(device="cpu", target=AccuracyTarget(max_drop=100), lwct=lwct)
    report = compress_files(ModelSource(folded_file), "sample:digits", tmp_path, config, on_event=events.append)
    tuning = report["fine_tuning"]
    assert tuning["no_stage_recovered"] and tuning["unrecovered_stages"] and tuning["retries"]
    assert tuning["lr"] == 1000.0 and all(not r["recovered"] for r in tuning["retries"])
    assert any(e.level == "warning" and "no training stage" in e.message for e in events)
    untrained = lwct.model_copy(update={"prune_epochs": 0, "epochs_per_step": 0})
    same = compress_files(
        ModelSource(folded_file), "sample:digits", tmp_path / "untrained", config.model_copy(update={"lwct": untrained})
    )
    assert report["compressed"]["accuracy"] == same["compressed"]["accuracy"]  # every wrecked try was rolled back


def test_augmentation_moves_masks_with_their_images_and_keeps_shapes():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    masks = (x[:, 0] > 10).long()
    generator = torch.Generator().manual_seed(3)
    for augment in ("flip", "crop+flip"):
        xa, ya = augmented(x, masks, augment, generator)
        assert xa.shape == x.shape and ya.shape == masks.shape
        assert torch.equal(ya, (xa[:, 0] > 10).long())  # every pixel's label followed it
    flips = [augmented(x, torch.arange(2), "flip", torch.Generator().manual_seed(s))[0] for s in range(8)]
    assert any(torch.equal(f[0], x[0].flip(-1)) for f in flips) and any(torch.equal(f[0], x[0]) for f in flips)
    assert LwctConfig(augment="crop+flip").augment == "crop+flip" and LwctConfig().augment == "none"


def test_stages_stretch_to_min_steps_by_the_model_and_at_most_the_cap_by_the_data():
    small = LwctConfig(min_steps_per_stage=300, batch_size=128)  # digits: 1,437 training samples = 12 batches
    assert stage_epochs(small, 1, 1437) == 25  # ⌈300 / 12⌉ passes
    assert stage_epochs(small, 1, 1437, params=4_800_000) == 7  # 300·√(300k/4.8M) = 75 steps
    assert stage_epochs(small, 3, 60_000) == 3  # a large data set reaches 300 steps in its own epochs
    capped = small.model_copy(update={"max_stretch_epochs": 8})
    assert stage_epochs(capped, 1, 1437) == 8 and stage_epochs(capped, 12, 1437) == 12  # never below epochs
    assert stage_epochs(capped, 0, 1437) == 0


def test_a_batch_larger_than_the_data_is_the_whole_data(digits):
    """A batch size is clamped to the samples there are: the range test runs its steps on the whole training set
    (an unclamped 10^12 asked for 10^10 passes over it), and a stage takes the same steps as with the exact size."""
    x, y = digits.x_train[torch.arange(300)], digits.y_train[:300]
    module = residual_cnn()  # the range test trains copies of it
    tests = [
        choose_lr(module, x, y, lr=0.01, steps=3, candidates=(1.0, 0.1), batch_size=size, seed=3)
        for size in (10**12, len(y))
    ]
    assert tests[0] == tests[1] and len(tests[0].losses) == 2
    trained = []
    for size in (10**12, len(y)):
        torch.manual_seed(0)
        module = residual_cnn()
        fit(module, x, y, epochs=2, lr=0.01, batch_size=size, lr_schedule="cosine")
        trained.append(module.state_dict())
    assert all(torch.equal(trained[0][key], trained[1][key]) for key in trained[0])


def test_the_range_test_stops_on_request(digits):
    calls = []

    def stop_on_the_fifth_batch() -> bool:
        calls.append(1)
        return len(calls) >= 5

    with pytest.raises(Cancelled):
        choose_lr(residual_cnn(), digits.x_train, digits.y_train, lr=0.01, should_stop=stop_on_the_fifth_batch)
    assert len(calls) == 5  # the probe's evaluation and the first rate's steps, each batch after a check


def test_the_range_test_fits_its_budget_with_fewer_steps_or_is_skipped(digits):
    """Under a time limit the test takes a share of the time left: fewer steps where they fit, none where even the
    shortest useful run would not (the configured rate is kept, and the report says why)."""
    x, y = digits.x_train, digits.y_train
    started = time.monotonic()
    skipped = choose_lr(residual_cnn(), x, y, lr=0.01, budget_s=1e-6)
    assert time.monotonic() - started < 1.0  # the probe's first evaluation, nothing trained
    assert (skipped.lr, skipped.losses) == (0.01, {}) and "would take" in (skipped.skipped or "")
    full = choose_lr(residual_cnn(), x, y, lr=0.01, steps=8, budget_s=600.0)
    assert full.skipped is None and len(full.losses) == len(LR_CANDIDATE_FACTORS)
