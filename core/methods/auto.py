"""Methods combined (docs/METHODS.md, "Combining them"): structural removal first (filter and/or group), then layer-wise
compressive training on what remains, under ONE accuracy budget measured against the original model.

The structural stages may spend `auto.structural_share` of the allowed drop (they buy MACs and latency), lwct
whatever they leave of the whole (it buys size). A stage starting from a model that scores `a` runs with the
absolute budget `stage_allowed − (baseline − a)`, so its own test "start − accuracy ≤ budget" is exactly
"baseline − accuracy ≤ stage_allowed": every acceptance is judged against the original baseline. Each stage starts
from the previous stage's result and only removes channels or constrains weights, so the latest result within the
budget is the most compressed one. With `auto.compare_lwct_alone`, lwct also runs alone on the original model with the
whole budget. With `auto.int8`, the channel-removed model is last quantized to int8 with what the structural stages
left of the budget. Every stage's result is a candidate, its deployable file (model.sqz, or the int8 model.onnx)
measured for bytes and its model.onnx for onnxruntime latency; the one returned is the candidate within the budget
best by `auto.objective`: size (smallest file, the default), latency (fastest at batch 32) or balanced (smallest
product of the two ratios to the baseline). When none is within the budget, the most accurate. The time limit is
shared by the stages still to run; once it has run out, the stages not yet started are skipped.
"""

import dataclasses
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Unpack, cast

from squeezer.core.artifacts.onnx_export import export_onnx
from squeezer.core.artifacts.sqz import pack_sqz
from squeezer.core.config import AccuracyTarget, CompressConfig
from squeezer.core.errors import UnsupportedLayerError
from squeezer.core.events import Event, EventCallback, Guard
from squeezer.core.graph import with_channels
from squeezer.core.measure import float32_bytes
from squeezer.core.measure.runtime import onnx_latency_ms
from squeezer.core.methods.filter import compress_filter
from squeezer.core.methods.group import compress_group
from squeezer.core.methods.harness import MethodHooks, MethodRun
from squeezer.core.methods.int8 import compress_int8
from squeezer.core.methods.lwct import compress_lwct
from squeezer.core.methods.results import ChannelLayerState, LayerState, MethodResult, Trial

STAGES: dict[str, Callable[..., MethodResult]] = {
    "filter": compress_filter,
    "group": compress_group,
    "lwct": compress_lwct,
    "int8": compress_int8,
}
LATENCY_BATCH = 32  # the batch the latency objective ranks by


@dataclasses.dataclass
class _Outcome:
    stage: str
    result: MethodResult
    channel_rows: list[list[ChannelLayerState]]  # the structural stages' per-layer rows up to this one
    packed_bytes: int  # of the stage's deployable file (.sqz, or the int8 .onnx): what "most compressed" is judged by
    latency_ms: float  # of its model.onnx in onnxruntime at LATENCY_BATCH, CPU, one thread


def compress_auto(model, data, config: CompressConfig, **hooks: Unpack[MethodHooks]) -> MethodResult:
    """Compress `model` on `data` under `config.target`; see the module docstring. Each stage checkpoints under
    `checkpoint_dir`/<stage>: after a restart, finished stages replay from their checkpoints (no training) and the
    interrupted one resumes from its last."""
    run = MethodRun(model, data, config, None, name="auto", **hooks)
    baseline, allowed = run.measure_baseline(announce=False)  # the stages announce their own
    # (label, method, allowed drop, whether the stage starts from the original model instead of the previous result)
    plan: list[tuple[str, str, float, bool]] = [
        (name, name, allowed * config.auto.structural_share, False) for name in config.auto.structural
    ]
    plan += [("lwct", "lwct", allowed, False)]
    if config.auto.compare_lwct_alone:
        plan += [("lwct-alone", "lwct", allowed, True)]
    if config.auto.int8:
        plan += [("int8", "int8", allowed, False)]
    current = model
    outcomes: list[_Outcome] = []
    channel_rows: list[list[ChannelLayerState]] = []
    trials: list[Trial] = []
    for index, (label, name, stage_allowed, fresh) in enumerate(plan):
        if outcomes and run.guard.overtime():  # the stages run so far hold the best state
            run.stopped_early = "time_limit"
            message = f"time limit reached: {label} and the stages after it skipped"
            run.emit(name, index / len(plan), message, severity="warning")
            break
        source, rows = (model, []) if fresh else (current, channel_rows)
        start = run.evaluate(source.module, essential=True)
        # The time limit is shared evenly by the stages still to run: time a stage leaves goes to the later ones.
        seconds_left = run.guard.seconds_left()
        stage_config = config.model_copy(
            update={
                "method": name,
                "target": AccuracyTarget(
                    max_drop=min(100.0, max(0.0, stage_allowed - (baseline - start))),
                    drop_type="absolute",
                    metric=config.target.metric,
                ),
                "time_limit_s": None if seconds_left is None else max(1e-3, seconds_left / (len(plan) - index)),
            }
        )
        try:
            result = STAGES[name](
                source,
                data,
                stage_config,
                should_stop=run.guard,  # the stage's own time limit ends at auto's deadline at the latest
                on_event=_stage_events(run.on_event, label, index, len(plan)),
                checkpoint_dir=run.checkpoint_dir / label if run.checkpoint_dir else None,
            )
        except UnsupportedLayerError as error:
            if name == "lwct":
                raise
            run.on_event(
                Event(
                    stage=name,
                    fraction=(index + 1) / len(plan),
                    level="warning",
                    message=f"{name} skipped: {error.message}",
                )
            )
            continue
        scale = run.original_bytes / float32_bytes(source.module)  # the stage's ratios count from its own input
        trials += [
            dataclasses.replace(
                t, step=len(trials) + i + 1, stage=f"{label}:{t.stage}", compression_ratio=t.compression_ratio * scale
            )
            for i, t in enumerate(result.trials)
        ]
        if name in ("filter", "group"):
            rows = [*rows, cast(list[ChannelLayerState], result.layers)]  # filter and group report channel rows
            channel_rows, current = rows, with_channels(current, result.module)
        if name == "int8" and result.onnx is None:
            continue  # outside the budget: the float model it started from is already a candidate
        packed = len(result.onnx) if result.onnx else len(pack_sqz(with_channels(source, result.module), result.layers))
        latency = _latency(with_channels(source, result.module), result.onnx, run.guard.essential())
        outcomes.append(_Outcome(label, result, rows, packed, latency))

    within = [o for o in outcomes if run.within(o.result.accuracy)]
    baseline_latency = _latency(model, None, run.guard.essential())
    rank = {
        "size": lambda o: o.packed_bytes,
        "latency": lambda o: o.latency_ms,
        "balanced": lambda o: (o.packed_bytes / run.original_bytes) * (o.latency_ms / baseline_latency),
    }
    chosen = min(within, key=rank[config.auto.objective]) if within else max(outcomes, key=lambda o: o.result.accuracy)
    result = chosen.result
    run.trials = trials
    if run.guard.overtime():  # a stage that only used up its own share of the time did not stop the job early
        run.stopped_early = run.stopped_early or next(
            (o.result.stopped_early for o in outcomes if o.result.stopped_early), None
        )
    returned = run.result(result.module, merge_layers(chosen.channel_rows, result.layers), result.accuracy)
    returned.onnx = result.onnx
    returned.fine_tuning = result.fine_tuning
    returned.candidates = [
        {
            "stage": o.stage,
            "accuracy": o.result.accuracy,
            "bytes": o.packed_bytes,
            f"latency_ms_batch{LATENCY_BATCH}": o.latency_ms,
            "within_budget": run.within(o.result.accuracy),
            "chosen": o is chosen,
        }
        for o in outcomes
    ] + [
        {
            "stage": "baseline",
            "accuracy": baseline,
            "bytes": run.original_bytes,
            f"latency_ms_batch{LATENCY_BATCH}": baseline_latency,
            "within_budget": True,
            "chosen": False,
        }
    ]
    return returned


def _latency(model, onnx: bytes | None, guard: Guard) -> float:
    """onnxruntime latency at LATENCY_BATCH of `onnx`, or of `model` (a LoadedModel) exported as model.onnx is;
    fewer repetitions past `guard`'s deadline."""
    with tempfile.TemporaryDirectory(prefix="squeezer-auto-") as tmp:
        path = Path(tmp) / "candidate.onnx"
        if onnx is None:
            export_onnx(model, path, should_stop=guard)
        else:
            path.write_bytes(onnx)
        return onnx_latency_ms(path, tuple(model.input_shape), batch=LATENCY_BATCH, guard=guard)


def _stage_events(on_event: EventCallback, name: str, index: int, count: int) -> EventCallback:
    """A stage's events on its slice of the progress bar, messages prefixed with the stage."""

    def forward(event: Event) -> None:
        on_event(
            dataclasses.replace(event, fraction=(index + event.fraction) / count, message=f"{name}: {event.message}")
        )

    return forward


def merge_layers(channel_rows: list[list[ChannelLayerState]], final: list[LayerState]) -> list[LayerState]:
    """The final model's rows (representation, σ, bits) with the channels every structural stage removed, and why:
    channels_before from the first stage, channels_kept from the last."""
    if not channel_rows:
        return final
    stages = [{row.name: row for row in rows} for rows in channel_rows]
    merged = []
    for row in final:
        history = [stage[row.name] for stage in stages if row.name in stage]
        if not history:
            merged.append(row)
            continue
        before, kept = history[0].channels_before, history[-1].channels_kept
        reasons = [h.reason for h in history if h.channels_removed] or [history[-1].reason]
        own = {f.name: getattr(row, f.name) for f in dataclasses.fields(LayerState)}
        merged.append(
            ChannelLayerState(
                **own | {"accepted": row.accepted or kept < before},
                channels_before=before,
                channels_kept=kept,
                channels_removed=before - kept,
                reason="; ".join(reasons),
            )
        )
    return merged
