import copy
import random

import pytest
import torch
from torch import nn

from squeezer.core.graph import apply_channel_overrides, mask_consumers, producer_widths, shrink, trace, with_channels
from squeezer.core.intake.models import LoadedModel, load_model, save_model_dir
from squeezer.core.intake.registry import build_architecture

MODELS = [
    ("lenet5", {"input_size": 8}, (1, 8, 8)),
    ("vgg-small", {"width": 8}, (3, 16, 16)),
    ("resnet20", {}, (3, 16, 16)),
    ("torchvision:resnet18", {"num_classes": 10}, (3, 32, 32)),
    ("torchvision:mobilenet_v2", {"num_classes": 10}, (3, 32, 32)),
]


def _random_model(name, args):
    """A built model with non-trivial batch-norm statistics, so a wrongly sliced channel shows in the output."""
    torch.manual_seed(0)
    module = build_architecture(name, args).eval()
    for layer in module.modules():
        if isinstance(layer, nn.BatchNorm2d):
            for tensor, low, high in (
                (layer.running_mean, -1, 1),
                (layer.running_var, 0.5, 2),
                (layer.weight, 0.5, 1.5),
                (layer.bias, -1, 1),
            ):
                nn.init.uniform_(tensor, low, high)
    return module


def _half_of_every_group(graph, seed=0):
    rng = random.Random(seed)
    return {root for roots in graph.channel_groups().values() for root in rng.sample(roots, len(roots) // 2)}


@pytest.mark.slow
@pytest.mark.parametrize(("name", "args", "shape"), MODELS, ids=[m[0] for m in MODELS])
def test_shrunk_model_computes_what_the_masked_model_computed(name, args, shape):
    module = _random_model(name, args)
    graph = trace(module, shape)
    removed = _half_of_every_group(graph)
    assert removed and not graph.unsupported
    masked = copy.deepcopy(module)
    mask_consumers(masked, graph, removed)
    shrunk = shrink(copy.deepcopy(module), graph, removed)
    x = torch.randn(2, *shape)
    with torch.no_grad():
        expected, actual = masked(x), shrunk(x)
    assert actual.shape == module(x).shape
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)
    assert sum(p.numel() for p in shrunk.parameters()) < sum(p.numel() for p in module.parameters())


def test_residual_channels_go_together_and_depthwise_groups_shrink():
    resnet = trace(_random_model("resnet20", {}), (3, 16, 16))
    stage1 = next(roots for key, roots in resnet.channel_groups().items() if key == "conv1")
    assert len(stage1) == 16  # the stem, every block's second conv of stage 1 share 16 channel classes
    mobilenet = _random_model("torchvision:mobilenet_v2", {"num_classes": 10})
    graph = trace(mobilenet, (3, 32, 32))
    shrink(mobilenet, graph, _half_of_every_group(graph))
    depthwise = mobilenet.features[2].conv[1][0]
    assert depthwise.groups == depthwise.in_channels == depthwise.out_channels < 96


class ChannelSoftmax(nn.Module):
    """A layer mixing channels in a way the graph does not model (softmax over channels)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x = self.conv1(x).softmax(1)
        return self.fc(self.conv2(x).relu().mean((2, 3)))


def test_unsupported_operations_are_reported_and_their_layers_left_alone():
    graph = trace(ChannelSoftmax(), (1, 6, 6))
    assert any("softmax" in op for op in graph.unsupported)
    assert "softmax" in graph.why_frozen("conv1")
    assert graph.why_frozen("conv2") is None  # after the softmax, channels can go again
    assert graph.why_frozen("fc") == "feeds the model's output"


@pytest.mark.slow
@pytest.mark.parametrize(("name", "args", "shape"), [MODELS[2], MODELS[4]], ids=["resnet20", "mobilenet_v2"])
def test_saved_shrunk_model_rebuilds_from_its_channels_record(tmp_path, name, args, shape):
    module = _random_model(name, args)
    graph = trace(module, shape)
    shrunk = shrink(copy.deepcopy(module), graph, _half_of_every_group(graph))
    model = LoadedModel(module, {"name": name, "args": args}, "squeezer", shape, 10, None, None)
    save_model_dir(with_channels(model, shrunk), tmp_path / "model")
    loaded = load_model(tmp_path / "model")
    assert producer_widths(loaded.module) == producer_widths(shrunk)
    x = torch.randn(2, *shape)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), shrunk(x))


def test_onnx_model_shrinks_and_rebuilds(tmp_path):
    module = _random_model("lenet5", {"input_size": 8})
    torch.onnx.export(
        module,
        (torch.zeros(1, 1, 8, 8),),
        str(tmp_path / "lenet.onnx"),
        input_names=["x"],
        dynamic_axes={"x": {0: "batch"}},
        dynamo=False,
    )
    model = load_model(tmp_path / "lenet.onnx")
    graph = trace(model.module, (1, 8, 8))
    assert not graph.unsupported, graph.unsupported
    shrunk = shrink(copy.deepcopy(model.module), graph, _half_of_every_group(graph))
    save_model_dir(with_channels(model, shrunk), tmp_path / "model")
    loaded = load_model(tmp_path / "model")
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), shrunk(x))


def test_inconsistent_channel_record_is_a_model_format_error():
    from squeezer.core.errors import ModelFormatError

    with pytest.raises(ModelFormatError):
        build_architecture("resnet20", {"channels": {"conv1": 8, "layer1.0.conv2": 12}})
    with pytest.raises(ModelFormatError):
        apply_channel_overrides(build_architecture("lenet5", {"input_size": 8}), {"classifier.5": 4}, (1, 8, 8))
