"""What the per-layer int8 choice (core.quantize_layers) buys: each network quantized two ways, every layer int8
(`int8.layers=all`) and the layers chosen for speed (`faster`: whole-model choices proposed by each layer's own
float/int8 timing, the fastest kept; core.quantize.choose_layers), both compared A/B with the float model
in onnxruntime (one thread, batch 1 and 32, core.measure.compare: a speed-up within the noise is 1.0), with their
accuracy in onnxruntime where the network is trained. Networks: the bundled digits LeNet-5 and a wider digits CNN
(trained here, 15 and 3 epochs), ResNet-20, the small U-Net (transposed convolutions, concatenated skips) and
MobileNetV2 at 32×32 (random weights: speed only). Writes
bench/results/int8_layers.json.

    OMP_NUM_THREADS=1 .venv/bin/python bench/int8_layers.py
"""

import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torchvision
from _common import REPO, machine, write_result
from torch import nn

from squeezer.core.artifacts.onnx_export import export_onnx
from squeezer.core.config import Int8Config, SpeedTarget
from squeezer.core.intake.data import load_dataset
from squeezer.core.intake.models import LoadedModel
from squeezer.core.intake.registry import build_architecture
from squeezer.core.measure.compare import compare_onnx
from squeezer.core.measure.runtime import onnx_score
from squeezer.core.quantize import quantize_int8
from squeezer.core.train import fit

sys.path.insert(0, str(REPO))  # the method tests' hand-built networks
from tests.core.methods.networks import wide_digits_cnn  # noqa: E402


def _networks():
    digits = load_dataset("sample:digits")
    lenet = build_architecture("lenet5", {"input_size": 8, "in_channels": 1, "num_classes": 10})
    yield "lenet5-digits", lenet, (1, 8, 8), digits, 15, "top1"
    yield "wide-cnn-digits", wide_digits_cnn(), (1, 8, 8), digits, 3, "top1"
    random = SimpleNamespace(x_train=torch.randn(64, 3, 32, 32), x_val=torch.randn(8, 3, 32, 32), y_val=torch.zeros(8))
    yield "resnet20-32x32", build_architecture("resnet20", {"num_classes": 10}), (3, 32, 32), random, 0, "top1"
    masks = SimpleNamespace(x_train=random.x_train, x_val=random.x_val, y_val=torch.zeros(8, 32, 32, dtype=torch.long))
    yield "unet-small-32x32", build_architecture("unet-small", {}), (3, 32, 32), masks, 0, "pixel_accuracy"
    mobilenet = torchvision.models.mobilenet_v2(num_classes=10)
    yield "mobilenet_v2-32x32", mobilenet, (3, 32, 32), random, 0, "top1"


def _row(name: str, module: nn.Module, shape: tuple, data, epochs: int, metric: str, float_path) -> dict:
    torch.manual_seed(0)
    if epochs:
        fit(module, data.x_train, data.y_train, epochs=epochs, lr=0.05 if epochs > 5 else 0.02, seed=0)
    model = LoadedModel.built(module.eval(), {}, shape, 10)
    export_onnx(model, float_path, compact=False)
    row: dict = {
        "float_accuracy": onnx_score(float_path.read_bytes(), data.x_val, data.y_val, "top1") if epochs else None
    }
    for choice, target in (("all", None), ("faster", SpeedTarget())):
        started = time.perf_counter()
        quantized = quantize_int8(model, data, Int8Config(), metric, faster_on=target)
        row[f"{choice}_seconds"] = time.perf_counter() - started
        if target:
            row["layers_int8_faster_alone"] = sum(s.int8_faster for s in quantized.layer_speeds)
            row["faster_choices_tried"] = quantized.choices
            row["faster_chosen"] = quantized.chosen
            row["faster_int8_layers"] = len(quantized.layer_speeds) - len(quantized.float_layers)
        row[f"{choice}_accuracy"] = quantized.accuracy if epochs else None
        for batch in (1, 32):
            comparison = compare_onnx(float_path, quantized.onnx, shape, batch=batch)
            row[f"{choice}_speedup_batch{batch}"] = comparison.speedup
    row["layers"] = len(quantized.layer_speeds)
    print(name, row, flush=True)
    return row


def main() -> None:
    torch.set_num_threads(1)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, module, shape, data, epochs, metric in _networks():
            rows[name] = _row(name, module, shape, data, epochs, metric, Path(tmp) / f"{name}.onnx")
    write_result(
        "int8_layers",
        {
            "benchmark": "int8 on every layer against int8 only where measured faster, each against the float model",
            "setup": "onnxruntime CPU, one thread; speed-ups A/B interleaved (1.0 = no difference beyond noise)",
            "command": "OMP_NUM_THREADS=1 .venv/bin/python bench/int8_layers.py",
            "machine": machine(),
            "networks": rows,
        },
    )


if __name__ == "__main__":
    main()
