"""int8 post-training quantization of weights and activations, through onnxruntime's maintained tools.

The model is exported to float ONNX and quantized with `onnxruntime.quantization.quantize_static` into QDQ form
(QuantizeLinear/DequantizeLinear pairs that onnxruntime fuses into int8 kernels): weights int8, per output channel;
activations uint8, their ranges calibrated on samples of the job's own training data. The result is scored in
onnxruntime, since that is where it runs: no torch model computes exactly what the int8 kernels compute.
"""

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from squeezer.core.artifacts.onnx_export import export_onnx
from squeezer.core.config import Int8Config
from squeezer.core.events import StopCheck, stop_point
from squeezer.core.measure.runtime import onnx_score


@dataclass(frozen=True)
class Int8Model:
    onnx: bytes  # the QDQ model, ready to write as model.onnx
    accuracy: float  # `metric` of that model in onnxruntime on the validation split


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
    model, data, settings: Int8Config, metric: str, seed: int = 0, should_stop: StopCheck | None = None
) -> Int8Model:
    """`model` (a LoadedModel) as int8 QDQ ONNX calibrated on `data.x_train` (already normalized), and its score;
    `should_stop` is checked before every calibration and evaluation batch."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[settings.calibration]
    with tempfile.TemporaryDirectory(prefix="squeezer-int8-") as tmp:
        float_path, prepared, quantized = Path(tmp) / "float.onnx", Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        export_onnx(model, float_path, compact=False)  # the quantizer reads float32 weights
        quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
        name = onnx.load(str(prepared)).graph.input[0].name
        samples = calibration_samples(data.x_train, settings.calibration_samples, seed)
        quantize_static(
            str(prepared),
            str(quantized),
            _Batches(name, samples, 64, should_stop),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=settings.per_channel,
            calibrate_method=method,
            calibration_providers=["CPUExecutionProvider"],
        )
        content = quantized.read_bytes()
    return Int8Model(onnx=content, accuracy=onnx_score(content, data.x_val, data.y_val, metric, should_stop))
