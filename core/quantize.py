"""int8 post-training quantization of weights and activations, through onnxruntime's maintained tools.

The model is exported to float ONNX and quantized with `onnxruntime.quantization.quantize_static` into QDQ form
(QuantizeLinear/DequantizeLinear pairs that onnxruntime fuses into int8 kernels): weights int8, per output channel;
activations uint8, their ranges calibrated on samples of the job's own training data. The result is scored in
onnxruntime, since that is where it runs: no torch model computes exactly what the int8 kernels compute.
"""

import dataclasses
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch

from squeezer.core.artifacts.onnx_export import export_onnx
from squeezer.core.config import Int8Config, SpeedTarget
from squeezer.core.events import Guard, StopCheck, stop_point
from squeezer.core.measure.compare import compare_on_target
from squeezer.core.measure.runtime import onnx_score
from squeezer.core.quantize_layers import LayerSpeed, exclusion_choices, layer_speeds, name_nodes, qdq_quantize


@dataclass(frozen=True)
class Int8Model:
    onnx: bytes  # the QDQ model, ready to write as model.onnx
    accuracy: float  # `metric` of that model in onnxruntime on the validation split
    # With a per-layer choice: every quantizable layer's float/int8 comparison, the layers left float, and each
    # whole-model choice tried with its measured speed-up over the float model (the fastest was kept).
    layer_speeds: list[LayerSpeed] = field(default_factory=list)
    float_layers: list[str] = field(default_factory=list)
    choices: dict[str, float] = field(default_factory=dict)
    chosen: str = "all"


class _Batches:
    """onnxruntime's CalibrationDataReader protocol over a tensor of samples; each batch is handed out after a
    `should_stop` check, so a stop or the time limit ends the calibration between two batches."""

    def __init__(self, name: str, x: torch.Tensor, batch: int, should_stop: StopCheck | None = None):
        self._feeds = iter([{name: x[start : start + batch].numpy()} for start in range(0, len(x), batch)])
        self._should_stop = should_stop

    def get_next(self) -> dict[str, np.ndarray] | None:
        stop_point(self._should_stop)
        return next(self._feeds, None)


def calibration_samples(x_train: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """`count` training samples drawn without replacement (all of them when there are fewer)."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(x_train), generator=generator)[:count]
    return x_train[order].float().contiguous()


def quantize_int8(
    model,
    data,
    settings: Int8Config,
    metric: str,
    seed: int = 0,
    should_stop: StopCheck | None = None,
    *,
    faster_on: SpeedTarget | None = None,
) -> Int8Model:
    """`model` (a LoadedModel) as int8 QDQ ONNX calibrated on `data.x_train` (already normalized), and its score;
    `should_stop` is checked before every calibration and evaluation batch. With `faster_on`, the layers to quantize
    are chosen for speed on that target (`choose_layers`)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    samples = calibration_samples(data.x_train, settings.calibration_samples, seed)
    with tempfile.TemporaryDirectory(prefix="squeezer-int8-") as tmp:
        float_path, prepared = Path(tmp) / "float.onnx", Path(tmp) / "prepared.onnx"
        export_onnx(model, float_path, compact=False)  # the quantizer reads float32 weights
        quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
        graph = onnx.load(str(prepared))
        name_nodes(graph)
        onnx.save(graph, str(prepared))
        quantize = _Quantizer(prepared, graph.graph.input[0].name, samples, settings, should_stop)
        if faster_on is None:
            chosen = Int8Model(onnx=quantize([]), accuracy=0.0)
        else:
            chosen = choose_layers(graph, quantize, model.input_shape, faster_on, should_stop)
    accuracy = onnx_score(chosen.onnx, data.x_val, data.y_val, metric, should_stop)
    return dataclasses.replace(chosen, accuracy=accuracy)


class _Quantizer:
    """The prepared float graph quantized with some of its nodes left float, calibrated on `samples`."""

    def __init__(
        self,
        prepared: Path,
        input_name: str,
        samples: torch.Tensor,
        settings: Int8Config,
        should_stop: StopCheck | None,
    ):
        self.prepared, self.input_name, self.samples = prepared, input_name, samples
        self.settings, self.should_stop = settings, should_stop

    def __call__(self, float_nodes: list[str]) -> bytes:
        quantized = self.prepared.with_name(f"int8-{len(float_nodes)}.onnx")
        batches = _Batches(self.input_name, self.samples, 64, self.should_stop)
        qdq_quantize(self.prepared, quantized, batches, self.settings, float_nodes)
        return quantized.read_bytes()


def choose_layers(graph, quantize: _Quantizer, input_shape, target: SpeedTarget, should_stop) -> Int8Model:
    """Which layers to quantize for speed on `target`. Each layer is timed float against int8 on its own
    (core.quantize_layers); that alone misleads, since every float layer between int8 ones adds conversions
    around it, so the whole models of each distinct choice (`exclusion_choices`) are compared A/B with the float
    model and the fastest is kept. When none is faster than the float model, every layer stays float."""
    guard = Guard.of(should_stop, None) if should_stop is not None else None
    sample = quantize.samples[:1].numpy()
    speeds = layer_speeds(graph, sample, quantize.settings, target, guard)
    every = [layer.node for layer in speeds]
    float_bytes = graph.SerializeToString()
    tried: dict[str, tuple[list[str], bytes, float]] = {}
    for label, float_nodes in exclusion_choices(graph, speeds).items():
        content = quantize(float_nodes)
        comparison = compare_on_target(float_bytes, content, input_shape, target, guard=guard)
        tried[label] = (float_nodes, content, comparison.speedup)
    label = max(tried, key=lambda name: tried[name][2])  # ties: the earliest, which quantizes the most layers
    float_nodes, content, speedup = tried[label]
    if speedup <= 1.0:  # the float model itself: no conversions left around float layers
        label, float_nodes, content = "float", every, float_bytes
    choices = {name: value[2] for name, value in tried.items()}
    return Int8Model(content, 0.0, speeds, float_nodes, choices, label)
