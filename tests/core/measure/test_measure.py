import pytest
import torch
from torch import nn

from squeezer.core.errors import InputError
from squeezer.core.measure import (
    CPU_BATCH_ELEMENTS,
    MAX_BATCH,
    count_macs,
    count_nonzero,
    count_params,
    evaluation_batch,
    float32_bytes,
    largest_activation,
    predict,
    resolve_device,
    top1_accuracy,
)


def test_macs_of_conv_and_linear_are_counted_by_hand():
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 5 * 5, 3))
    assert count_macs(model, (2, 5, 5)) == 4 * 5 * 5 * 2 * 9 + 100 * 3


def test_grouped_conv_macs():
    assert count_macs(nn.Conv2d(4, 4, 3, groups=4), (4, 3, 3)) == 4 * 1 * 9


@pytest.mark.parametrize(
    "layer, shape",
    [
        (nn.ConvTranspose1d(2, 3, 2, stride=2), (2, 5)),
        (nn.ConvTranspose2d(2, 3, 2, stride=2), (2, 5, 5)),
        (nn.ConvTranspose3d(2, 3, 2, stride=2), (2, 5, 5, 5)),
    ],
)
def test_transposed_conv_macs_count_every_input_position(layer, shape):
    positions = 1
    for size in shape[1:]:
        positions *= size
    assert count_macs(layer, shape) == positions * 2 * 3 * 2 ** (len(shape) - 1)


def test_sizes_and_nonzeros():
    layer = nn.Linear(4, 2)
    with torch.no_grad():
        layer.weight.zero_()
    assert count_params(layer) == 10 and count_nonzero(layer) == int(torch.count_nonzero(layer.bias))
    assert float32_bytes(nn.BatchNorm2d(3)) == 4 * (3 + 3 + 3 + 3)


def test_top1_accuracy_in_percent():
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    assert top1_accuracy(model, x, torch.tensor([0, 1, 1, 1]), batch_size=3) == pytest.approx(75.0)


def test_a_cpu_batch_keeps_the_largest_activation_within_the_caches_and_a_gpu_takes_the_largest_batch():
    wide = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    assert largest_activation(wide, torch.rand(1, 3, 224, 224)) == 16 * 224 * 224
    assert evaluation_batch(16 * 224 * 224) == CPU_BATCH_ELEMENTS // (16 * 224 * 224) == 1
    assert evaluation_batch(6 * 28 * 28) == CPU_BATCH_ELEMENTS // (6 * 28 * 28)
    assert evaluation_batch(10) == MAX_BATCH and evaluation_batch(10**9) == 1
    assert evaluation_batch(16 * 224 * 224, "cuda") == MAX_BATCH


def test_predictions_do_not_depend_on_the_batch():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 32, 3), nn.BatchNorm2d(32), nn.ReLU(), nn.Flatten(), nn.Linear(32 * 62 * 62, 4))
    x = torch.rand(70, 1, 64, 64)
    assert evaluation_batch(largest_activation(model.eval(), x[:1])) < len(x)  # the default splits these 70
    assert torch.equal(predict(model, x), predict(model, x, batch_size=len(x)))


def test_device_checks():
    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(InputError):
            resolve_device("cuda")
