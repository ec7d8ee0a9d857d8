import copy

import pytest
import torch
from torch import nn

from squeezer.core.config import AccuracyTarget, CompressConfig, GroupConfig
from squeezer.core.graph import trace
from squeezer.core.measure import top1_accuracy
from squeezer.core.methods.group import GroupLasso, compress_group, remove_zeroed

pytestmark = pytest.mark.slow  # trains models: in the full suite, not the fast tier


def test_proximal_step_zeroes_whole_groups_and_their_momentum(digits_model):
    module = copy.deepcopy(digits_model.module)
    graph = trace(module, (1, 8, 8))
    lasso = GroupLasso(module, graph)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1, momentum=0.9)
    torch.manual_seed(0)  # a fixed batch: an unlucky draw puts two groups on one threshold
    module(torch.randn(4, 1, 8, 8)).sum().backward()
    optimizer.step()
    norms = lasso.norms()
    relative = (norms / lasso.weights).sort().values  # a group reaches zero where ‖W_n‖ ≤ amount·w_n
    amount = float(relative[len(relative) // 2 : len(relative) // 2 + 2].mean())  # between two groups' thresholds
    thresholds = amount * lasso.weights
    lasso.proximal_step(optimizer, amount)
    after = lasso.norms()
    assert ((after == 0) == (norms <= thresholds)).all()
    alive = norms > thresholds
    assert torch.allclose(after[alive], norms[alive] - thresholds[alive], rtol=1e-4)
    # the weights are √(group size), mean 1: a fully-connected neuron with 4× the inputs has twice the weight
    sizes = torch.tensor([float(module.classifier[1].in_features), float(module.classifier[3].in_features)])
    first, second = (
        lasso.weights[lasso.roots.index(graph.root(graph.producers[n]).tolist()[0])]
        for n in ("classifier.1", "classifier.3")
    )
    assert float(first / second) == pytest.approx(float((sizes[0] / sizes[1]).sqrt()), rel=1e-5)
    assert float(lasso.weights.mean()) == pytest.approx(1.0)
    rows = module.classifier[1].weight.detach()
    zero_rows = (rows == 0).all(1)
    assert zero_rows.any() and ((rows != 0).all(1) | zero_rows).all()  # never a partly zeroed neuron
    momentum = optimizer.state[module.classifier[1].weight]["momentum_buffer"]
    assert (momentum[zero_rows] == 0).all() and (momentum[~zero_rows] != 0).any()


def test_removing_zeroed_neurons_folds_their_constant_output(digits_model):
    module = copy.deepcopy(digits_model.module)
    graph = trace(module, (1, 8, 8))
    with torch.no_grad():
        module.classifier[1].weight[:40] = 0  # fc neurons: output ReLU(b), folded into classifier.3's bias
        module.features[3].weight[:5] = 0  # conv filters: a constant channel into a linear layer (after flatten)
        module.features[0].weight[:2] = 0  # conv filters feeding a padded convolution
        module.features[0].bias[:2] = torch.tensor([0.5, -0.5])  # ReLU(0.5) varies at borders; ReLU(-0.5) = 0 folds
    zeroed = GroupLasso(module, graph).zeroed()
    assert len(zeroed) == 47
    x = torch.randn(16, 1, 8, 8)
    with torch.no_grad():
        expected = module(x)
        shrunk, removed = remove_zeroed(module, graph, zeroed, x)
        torch.testing.assert_close(shrunk(x), expected, rtol=1e-5, atol=1e-5)
    assert len(removed) == 46
    assert shrunk.features[0].out_channels == 5 and shrunk.classifier[1].out_features == 80


def test_lambda_search_stays_within_the_budget(digits_model, digits):
    settings = GroupConfig(penalties=[0.1, 0.3, 3.0], sparse_epochs=1, epochs_per_step=1, min_steps_per_stage=60)
    config = CompressConfig(method="group", device="cpu", target=AccuracyTarget(max_drop=1.0), group=settings)
    baseline = top1_accuracy(digits_model.module, digits.x_val, digits.y_val)
    result = compress_group(digits_model, digits, config)
    assert baseline - result.accuracy <= 1.0
    assert result.accuracy == top1_accuracy(result.module, digits.x_val, digits.y_val)
    penalties = [float(t.stage.removeprefix("group λ=")) for t in result.trials]
    first_miss = next((i for i, t in enumerate(result.trials) if not t.accepted), len(result.trials))
    assert penalties[: first_miss + 1] == [0.1, 0.3, 3.0][: first_miss + 1]  # the grid up to its first miss
    assert len(result.trials) <= first_miss + 1 + settings.refinements  # then bisection steps only
    accepted = [p for p, t in zip(penalties, result.trials, strict=False) if t.accepted]
    assert accepted == sorted(accepted)
    if accepted:
        assert result.accuracy == [t.accuracy for t in result.trials if t.accepted][-1]
    assert {layer.name: layer.channels_kept for layer in result.layers}["classifier.5"] == 10
    assert isinstance(result.module.classifier[1], nn.Linear)
