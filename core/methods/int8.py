"""int8 quantization as a method: weights and activations to int8 QDQ ONNX (core.quantize), kept only when its
onnxruntime accuracy stays within the budget. Alone it quantizes the baseline; as auto's last stage it quantizes the
channel-removed model with what the earlier stages left of the budget.

The result's `onnx` is the quantized file, written as model.onnx: the accuracy the budget was judged on is that
file's. The module stays float (model.sqz holds the weights it was quantized from).
"""

from typing import Unpack

from squeezer.core.config import CompressConfig, Int8Layers
from squeezer.core.events import EventStage
from squeezer.core.methods.harness import BASELINE_DONE, MethodHooks, MethodRun
from squeezer.core.methods.lwct import prunable_layers
from squeezer.core.methods.registry import MethodName
from squeezer.core.methods.results import ChannelLayerState, MethodResult
from squeezer.core.quantize import Int8Model, quantize_int8
from squeezer.core.quantize_layers import module_name

_INT8_REASON = "int8 weights (one scale per output channel) and int8 activations; no channels removed"


def int8_rows(module, reasons: dict[str, str | None]) -> list[ChannelLayerState]:
    """One row per convolution and linear layer: int8 where `reasons` has None for it, else float for that
    reason."""
    rows = []
    for rank, (name, layer) in enumerate(prunable_layers(module).items()):
        weight = layer.weight.detach()
        reason = reasons[name]
        rows.append(
            ChannelLayerState.of(
                name,
                layer,
                weight,
                representation="int8" if reason is None else "float",
                sigma=None,
                bits=8.0 if reason is None else 32.0,
                significance_rank=rank,
                accepted=reason is None,
                channels_before=weight.shape[0],
                channels_kept=weight.shape[0],
                channels_removed=0,
                reason=reason or _INT8_REASON,
            )
        )
    return rows


def layer_reasons(module, quantized: Int8Model | None, within_budget: bool) -> dict[str, str | None]:
    """Per layer name, None where the quantized file runs it in int8, else why it stayed float."""
    names = list(prunable_layers(module))
    if quantized is None or not within_budget:
        why = "kept float: the int8 model fell outside the budget" if quantized else "kept float: no time left"
        return dict.fromkeys(names, why)
    if quantized.chosen == "float":
        best = max(quantized.choices.values(), default=1.0)
        why = f"kept float: no choice of int8 layers ran the whole model faster (best {best:.2f}×)"
        return dict.fromkeys(names, why)
    reasons: dict[str, str | None] = dict.fromkeys(names)  # a layer no timing names is as the chosen file has it
    speeds = quantized.layer_speeds
    mapped = [module_name(layer.node) for layer in speeds]
    if not set(mapped) <= set(names) and len(speeds) == len(names):  # not exported by torch: the graph's order
        mapped = names
    for name, layer in zip(mapped, speeds, strict=True):
        if name in reasons and layer.node in quantized.float_layers:
            reasons[name] = (
                f"kept float: int8 ran it {layer.comparison.speedup:.2f}× as fast ({layer.comparison.verdict}) on "
                "its own"
            )
    return reasons


def compress_int8(model, data, config: CompressConfig, **hooks: Unpack[MethodHooks]) -> MethodResult:
    """Quantize `model` to int8 and keep it when it scores within `config.target`; seconds, nothing to checkpoint."""
    run = MethodRun(model, data, config, None, name=MethodName.INT8, **hooks)
    run.measure_baseline()
    quantized = None
    faster_on = config.speed_target if config.int8_layers == Int8Layers.FASTER else None
    with run.time_limited(EventStage.INT8):
        run.emit(EventStage.INT8, BASELINE_DONE, _plan_message(config, faster_on is not None))
        quantized = quantize_int8(
            model, data, config.int8, config.metric, seed=config.seed, should_stop=run.guard, faster_on=faster_on
        )
    if quantized is None:  # the time limit ran out first: the float model is the result
        return run.result(run.base, int8_rows(run.base, layer_reasons(run.base, None, False)), run.baseline)
    within_budget = run.within(quantized.accuracy)
    accepted = within_budget and quantized.chosen != "float"
    run.record(
        "int8",
        quantized.onnx,
        layers=list(prunable_layers(run.base)),
        accuracy=quantized.accuracy,
        accepted=accepted,
        fraction=1.0,
        sparsity=None,
        summary=f"int8 QDQ, {len(quantized.onnx):,} bytes{_choice_summary(quantized)}",
    )
    rows = int8_rows(run.base, layer_reasons(run.base, quantized, within_budget))
    result = run.result(run.base, rows, quantized.accuracy if accepted else run.baseline)
    if accepted:
        result.onnx = quantized.onnx
    return result


def _plan_message(config: CompressConfig, per_layer: bool) -> str:
    message = f"calibrating on {config.int8.calibration_samples} training samples"
    if per_layer:
        target = config.speed_target
        return f"timing each layer float against int8 on {target.runtime} ({target.threads} thread(s)), then {message}"
    return message


def _choice_summary(quantized: Int8Model) -> str:
    if not quantized.layer_speeds:
        return ""
    layers = len(quantized.layer_speeds)
    tried = ", ".join(f"{name} {speedup:.2f}×" for name, speedup in quantized.choices.items())
    return f"; {layers - len(quantized.float_layers)} of {layers} layers int8 ({quantized.chosen}; tried {tried})"
