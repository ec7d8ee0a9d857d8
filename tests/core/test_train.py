"""core.train's learning-rate range test and divergence guard (issue 12) on a model as users bring it: a residual
CNN trained with Adam on real digits, exported in eval mode (BatchNorm folded), whose weight scale makes the default
rate of 0.01 wreck it."""

import copy
import math

import pytest
import torch

from core.intake.data import load_dataset
from core.intake.models import load_model
from core.measure import metric_function
from core.train import Diverged, DivergenceRule, choose_lr, fit, fit_guarded
from tests.core.wild import export_eval, rescaled, residual_cnn, train_on_digits

top1 = metric_function("top1")
CHANCE = 20.0  # ten classes: a wrecked model scores about 10 %


@pytest.fixture(scope="module")
def digits():
    return load_dataset("sample:digits")


@pytest.fixture(scope="module")
def folded(tmp_path_factory):
    path = tmp_path_factory.mktemp("wild") / "folded.onnx"
    path.write_bytes(rescaled(export_eval(train_on_digits(residual_cnn())), 100.0))
    return load_model(path).module


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
