"""int8 quantization as a method: weights and activations to int8 QDQ ONNX (core.quantize), kept only when its
onnxruntime accuracy stays within the budget. Alone it quantizes the baseline; as auto's last stage it quantizes the
channel-removed model with what the earlier stages left of the budget.

The result's `onnx` is the quantized file, written as model.onnx: the accuracy the budget was judged on is that
file's. The module stays float (model.sqz holds the weights it was quantized from).
"""

from typing import Unpack

from squeezer.core.config import CompressConfig
from squeezer.core.events import EventStage
from squeezer.core.methods.harness import BASELINE_DONE, MethodHooks, MethodRun
from squeezer.core.methods.lwct import prunable_layers
from squeezer.core.methods.registry import MethodName
from squeezer.core.methods.results import ChannelLayerState, MethodResult
from squeezer.core.quantize import quantize_int8


def int8_rows(module, accepted: bool) -> list[ChannelLayerState]:
    """One row per convolution and linear layer: int8 when the quantized file was kept, float otherwise."""
    rows = []
    for rank, (name, layer) in enumerate(prunable_layers(module).items()):
        weight = layer.weight.detach()
        reason = (
            "int8 weights (one scale per output channel) and int8 activations; no channels removed"
            if accepted
            else "kept float: the int8 model fell outside the budget"
        )
        rows.append(
            ChannelLayerState.of(
                name,
                layer,
                weight,
                representation="int8" if accepted else "float",
                sigma=None,
                bits=8.0 if accepted else 32.0,
                significance_rank=rank,
                accepted=accepted,
                channels_before=weight.shape[0],
                channels_kept=weight.shape[0],
                channels_removed=0,
                reason=reason,
            )
        )
    return rows


def compress_int8(model, data, config: CompressConfig, **hooks: Unpack[MethodHooks]) -> MethodResult:
    """Quantize `model` to int8 and keep it when it scores within `config.target`; seconds, nothing to checkpoint."""
    run = MethodRun(model, data, config, None, name=MethodName.INT8, **hooks)
    run.measure_baseline()
    quantized = None
    with run.time_limited(EventStage.INT8):
        run.emit(EventStage.INT8, BASELINE_DONE, f"calibrating on {config.int8.calibration_samples} training samples")
        quantized = quantize_int8(model, data, config.int8, config.metric, seed=config.seed, should_stop=run.guard)
    if quantized is None:  # the time limit ran out first: the float model is the result
        return run.result(run.base, int8_rows(run.base, False), run.baseline)
    accepted = run.within(quantized.accuracy)
    run.record(
        "int8",
        quantized.onnx,
        layers=list(prunable_layers(run.base)),
        accuracy=quantized.accuracy,
        accepted=accepted,
        fraction=1.0,
        sparsity=None,
        summary=f"int8 QDQ, {len(quantized.onnx):,} bytes",
    )
    result = run.result(run.base, int8_rows(run.base, accepted), quantized.accuracy if accepted else run.baseline)
    if accepted:
        result.onnx = quantized.onnx
    return result
