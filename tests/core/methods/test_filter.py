import copy

import pytest
import torch
from torch import nn

from squeezer.core.config import AccuracyTarget, CompressConfig, FilterConfig
from squeezer.core.graph import trace
from squeezer.core.intake.data import Dataset
from squeezer.core.intake.models import LoadedModel
from squeezer.core.measure import count_macs, top1_accuracy
from squeezer.core.methods.filter import ImportanceGates, combined_order, compress_filter, initial_gates
from tests.core.graph.test_surgery import ChannelSoftmax

pytestmark = pytest.mark.slow  # trains models: in the full suite, not the fast tier


QUICK = {
    "importance_epochs": 1,
    "epochs_per_step": 1,
    "min_steps_per_stage": 30,
    "levels": [0.3, 0.6, 0.9],
    "init": ["ones", "l1"],
}


def test_folding_the_gates_keeps_the_function(digits_model):
    graph = trace(digits_model.module, (1, 8, 8))
    init = torch.rand(len(graph.removable()), generator=torch.Generator().manual_seed(0))
    gated = ImportanceGates(copy.deepcopy(digits_model.module), graph, init)
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        expected = gated(x)
        torch.testing.assert_close(gated.fold()(x), expected)


def test_l1_initialisation_is_the_normalised_filter_norm(digits_model):
    graph = trace(digits_model.module, (1, 8, 8))
    gates = initial_gates("l1", digits_model.module, graph, seed=0)
    assert gates.max() == pytest.approx(1.0) and (gates > 0).all()


def test_combined_order_puts_channels_weak_under_every_strategy_first(digits_model):
    graph = trace(digits_model.module, (1, 8, 8))
    count = len(graph.removable())
    first = torch.linspace(1, 2, count)
    second = first.flip(0).clone()
    second[0] = 0.0  # channel 0 is weakest under both strategies' per-layer normalisation
    first[0] = 0.0
    assert combined_order(graph, [first, second])[0] == graph.removable()[0]


@pytest.mark.parametrize("max_drop", [0.0, 1.0])
def test_search_never_returns_a_model_outside_the_budget(digits_model, digits, max_drop):
    config = CompressConfig(
        method="filter", device="cpu", target=AccuracyTarget(max_drop=max_drop), filter=FilterConfig(**QUICK)
    )
    baseline = top1_accuracy(digits_model.module, digits.x_val, digits.y_val)
    result = compress_filter(digits_model, digits, config)
    assert result.accuracy == top1_accuracy(result.module, digits.x_val, digits.y_val)
    assert baseline - result.accuracy <= max_drop
    assert result.target_met
    rejected = [t for t in result.trials if not t.accepted]
    assert all(baseline - t.accuracy > max_drop for t in rejected)
    if max_drop and any(t.accepted for t in result.trials):
        assert count_macs(result.module, (1, 8, 8)) < count_macs(digits_model.module, (1, 8, 8))
    kept = {layer.name: layer.channels_kept for layer in result.layers}
    assert kept["classifier.5"] == 10


def test_unsupported_layers_are_reported_and_skipped():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(96, 1, 6, 6, generator=generator)
    y = (x.mean((1, 2, 3)) > 0).long() + (x[:, 0, 0, 0] > 0).long()
    data = Dataset("blobs", x[:64], y[:64], x[64:], y[64:], 3)
    model = LoadedModel(ChannelSoftmax().eval(), {"name": "custom", "args": {}}, "squeezer", (1, 6, 6), 3, None, None)
    config = CompressConfig(
        method="filter", device="cpu", target=AccuracyTarget(max_drop=100), filter=FilterConfig(**QUICK)
    )
    result = compress_filter(model, data, config)
    layers = {layer.name: layer for layer in result.layers}
    assert layers["conv1"].channels_kept == 8 and "softmax" in layers["conv1"].reason
    assert layers["conv2"].channels_kept < 8
    assert isinstance(result.module.conv2, nn.Conv2d)
