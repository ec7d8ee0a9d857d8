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
measured for bytes and its model.onnx compared A/B with the baseline's on the speed target (core.measure.compare: a
speed-up within the noise is 1.0); the one returned is the candidate within the budget best by `auto.objective`: size
(smallest file, the default), latency (fastest; the objective whenever `speed_target` sets a goal) or balanced
(smallest product of the size ratio and the inverse speed-up). Under latency, candidates that reach the goal come
first, candidates whose speed-ups cannot be told apart from the best's count as equally fast (the smallest of them is
returned), and a candidate slower than the baseline never is: when every one within the budget is, the original
model is returned. Otherwise, when none is within the budget, the most accurate. Under a latency objective the
plan is built for speed: lwct is left out (it buys size; its model.onnx runs at its input's speed), filter prunes
blocks and channels against the latency table (`filter.latency`, unless the job set it) and int8 keeps float the
layers it would slow down (core.quantize.choose_layers). The time limit is shared by the stages still to run (int8,
which trains nothing, takes a tenth of a training stage's share); once it has run out, the stages not yet started
are skipped.
"""

import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Unpack, cast

from squeezer.core.artifacts.onnx_export import export_onnx
from squeezer.core.artifacts.sqz import pack_sqz
from squeezer.core.config import AccuracyTarget, CompressConfig, DropType, LatencyPruning, SpeedTarget
from squeezer.core.errors import UnsupportedLayerError
from squeezer.core.events import Event, EventCallback, Guard
from squeezer.core.graph import with_channels
from squeezer.core.intake.models import LoadedModel
from squeezer.core.measure import float32_bytes
from squeezer.core.measure.compare import SpeedComparison, compare_onnx
from squeezer.core.measure.speed_report import comparison_budget, goal_met
from squeezer.core.methods.harness import MethodHooks, MethodRun
from squeezer.core.methods.lwct import prunable_layers
from squeezer.core.methods.registry import Method, MethodName, method
from squeezer.core.methods.results import ChannelLayerState, LayerState, MethodResult, Trial

# The methods auto runs, from its registration: the structural ones the job names, then lwct, then int8.
STAGES: dict[MethodName, Method] = {name: method(name) for name in method(MethodName.AUTO).combines}


# int8's share of the time relative to a training stage's: it calibrates, scores and times, seconds to a minute.
INT8_TIME_WEIGHT = 0.1


@dataclasses.dataclass(frozen=True)
class _Stage:
    label: str  # what its events, trials and checkpoint folder are named by ("lwct-alone" for lwct on the original)
    method: Method
    allowed: float  # its budget in absolute points below the original baseline
    fresh: bool  # it starts from the original model instead of the previous stage's result


@dataclasses.dataclass
class _Outcome:
    stage: str
    result: MethodResult
    channel_rows: list[list[ChannelLayerState]]  # the structural stages' per-layer rows up to this one
    packed_bytes: int  # of the stage's deployable file (.sqz, or the int8 .onnx): what "most compressed" is judged by
    speed: SpeedComparison  # of its model.onnx against the baseline's on the speed target


@dataclasses.dataclass
class _Chain:
    """What the stages run so far left: the latest channel-removed model, its rows, the candidates and the trials."""

    current: LoadedModel
    channel_rows: list[list[ChannelLayerState]] = dataclasses.field(default_factory=list)
    outcomes: list[_Outcome] = dataclasses.field(default_factory=list)
    trials: list[Trial] = dataclasses.field(default_factory=list)
    started: float = dataclasses.field(default_factory=time.monotonic)
    baseline_onnx: bytes | None = None  # the original model exported, once a candidate is compared with it


def compress_auto(model, data, config: CompressConfig, **hooks: Unpack[MethodHooks]) -> MethodResult:
    """Compress `model` on `data` under `config.target`; see the module docstring. Each stage checkpoints under
    `checkpoint_dir`/<stage>: after a restart, finished stages replay from their checkpoints (no training) and the
    interrupted one resumes from its last."""
    run = MethodRun(model, data, config, None, name=MethodName.AUTO, **hooks)
    baseline, allowed = run.measure_baseline(announce=False)  # the stages announce their own
    plan = _plan(config, allowed)
    chain = _Chain(current=model)
    for index, stage in enumerate(plan):
        if chain.outcomes and run.guard.overtime():  # the stages run so far hold the best state
            run.stopped_early = "time_limit"
            message = f"time limit reached: {stage.label} and the stages after it skipped"
            run.emit(stage.method.name, index / len(plan), message, severity="warning")
            break
        _run_stage(run, chain, plan, index, baseline)
    return _chosen(run, chain, baseline)


def _plan(config: CompressConfig, allowed: float) -> list[_Stage]:
    """The structural stages the job names on their share of the budget, lwct on the whole (unless the objective is
    latency), then the optional ones."""
    plan = [
        _Stage(name, STAGES[name], allowed * config.auto.structural_share, False) for name in config.auto.structural
    ]
    if config.objective != "latency":  # lwct buys size: its model.onnx runs at the speed of the model it started from
        plan.append(_Stage(MethodName.LWCT, STAGES[MethodName.LWCT], allowed, False))
        if config.auto.compare_lwct_alone:
            plan.append(_Stage("lwct-alone", STAGES[MethodName.LWCT], allowed, True))
    if config.auto.int8:
        plan.append(_Stage(MethodName.INT8, STAGES[MethodName.INT8], allowed, False))
    return plan


def _run_stage(run: MethodRun, chain: _Chain, plan: list[_Stage], index: int, baseline: float) -> None:
    """Runs `plan[index]` on its source and adds its trials and, unless it has no deployable result, its candidate."""
    stage = plan[index]
    source, rows = (run.model, []) if stage.fresh else (chain.current, chain.channel_rows)
    try:
        result = stage.method.run(
            source,
            run.data,
            _stage_config(run, stage, source, baseline, remaining=plan[index:]),
            should_stop=run.guard,  # the stage's own time limit ends at auto's deadline at the latest
            on_event=_stage_events(run.on_event, stage.label, index, len(plan)),
            checkpoint_dir=run.checkpoint_dir / stage.label if run.checkpoint_dir else None,
            on_checkpoint=run.on_checkpoint,
        )
    except UnsupportedLayerError as error:
        if stage.method.name == MethodName.LWCT:
            raise
        message = f"{stage.method.name} skipped: {error.message}"
        run.emit(stage.method.name, (index + 1) / len(plan), message, severity="warning")
        return
    scale = run.original_bytes / float32_bytes(source.module)  # the stage's ratios count from its own input
    chain.trials += [
        dataclasses.replace(
            t,
            step=len(chain.trials) + i + 1,
            stage=f"{stage.label}:{t.stage}",
            compression_ratio=t.compression_ratio * scale,
        )
        for i, t in enumerate(result.trials)
    ]
    if stage.method.structural:
        rows = [*rows, cast(list[ChannelLayerState], result.layers)]  # structural methods report channel rows
        chain.channel_rows, chain.current = rows, with_channels(chain.current, result.module)
    if stage.method.name == MethodName.INT8 and result.onnx is None:
        return  # outside the budget: the float model it started from is already a candidate
    packed = len(result.onnx) if result.onnx else len(pack_sqz(with_channels(source, result.module), result.layers))
    speed = _speed(run, chain, with_channels(source, result.module), result.onnx)
    chain.outcomes.append(_Outcome(stage.label, result, rows, packed, speed))


def _stage_config(run: MethodRun, stage: _Stage, source, baseline: float, *, remaining: list[_Stage]) -> CompressConfig:
    """The job's config for one stage: its method, its budget against the original baseline (from the score of the
    model it starts from) and its share of the time left: the training stages share it evenly, int8 (which only
    calibrates and times) takes a small part."""
    start = run.evaluate(source.module, essential=True)
    seconds_left = run.guard.seconds_left()  # time a stage leaves goes to the later ones
    target = AccuracyTarget(
        max_drop=min(100.0, max(0.0, stage.allowed - (baseline - start))),
        drop_type=DropType.ABSOLUTE,
        metric=run.config.target.metric,
    )
    share = _time_weight(stage) / sum(_time_weight(later) for later in remaining)
    time_limit_s = None if seconds_left is None else max(1e-3, seconds_left * share)
    update = {"method": stage.method.name, "target": target, "time_limit_s": time_limit_s}
    return run.config.model_copy(update=update | _for_speed(run.config, stage))


def _time_weight(stage: _Stage) -> float:
    return INT8_TIME_WEIGHT if stage.method.name == MethodName.INT8 else 1.0


def _for_speed(config: CompressConfig, stage: _Stage) -> dict:
    """Under a latency objective, filter prunes for speed (blocks and channels against the latency table) unless
    the job set its latency options itself."""
    if stage.method.name != MethodName.FILTER or config.objective != "latency" or config.filter.latency is not None:
        return {}
    return {"filter": config.filter.model_copy(update={"latency": LatencyPruning()})}


def _chosen(run: MethodRun, chain: _Chain, baseline: float) -> MethodResult:
    """The candidate best by the objective among those within the budget (else the most accurate; under latency the
    original model), with every candidate and the baseline listed for the report."""
    within = [o for o in chain.outcomes if run.within(o.result.accuracy)]
    objective, target = run.config.objective, run.config.speed_target
    rank = {
        "size": lambda o: o.packed_bytes,
        "balanced": lambda o: (o.packed_bytes / run.original_bytes) / o.speed.speedup,
    }
    if objective == "latency":
        chosen = _fastest(within, target)
    elif within:
        chosen = min(within, key=rank[objective])
    else:
        chosen = max(chain.outcomes, key=lambda o: o.result.accuracy)
    run.trials = chain.trials
    if run.guard.overtime():  # a stage that only used up its own share of the time did not stop the job early
        run.stopped_early = run.stopped_early or next(
            (o.result.stopped_early for o in chain.outcomes if o.result.stopped_early), None
        )
    if chosen is None:
        returned = run.result(run.model.module, _untouched_rows(run.model.module), baseline)
    else:
        result = chosen.result
        returned = run.result(result.module, merge_layers(chosen.channel_rows, result.layers), result.accuracy)
        returned.onnx = result.onnx
        returned.fine_tuning = result.fine_tuning
    returned.candidates = [
        _candidate(o, o.result.accuracy, run.within(o.result.accuracy), o is chosen, target) for o in chain.outcomes
    ] + [_baseline_candidate(chain, baseline, run.original_bytes, chosen is None)]
    return returned


def _fastest(candidates: list[_Outcome], target: SpeedTarget) -> _Outcome | None:
    """The fastest of `candidates` not slower than the baseline (those reaching the goal first); among those whose
    speed-up cannot be told apart from the best's (intervals that overlap), the smallest. None when every one is
    slower."""
    candidates = [o for o in candidates if o.speed.verdict != "slower"]
    reaching = [o for o in candidates if goal_met(target, o.speed)]
    pool = reaching or candidates
    if not pool:
        return None
    best = max(pool, key=lambda o: o.speed.speedup).speed
    tied = [
        o
        for o in pool
        if o.speed.speedup == best.speedup or (o.speed.verdict == best.verdict and o.speed.high >= best.low)
    ]
    return min(tied, key=lambda o: o.packed_bytes)


def _untouched_rows(module) -> list[LayerState]:
    """The original model's layers as report rows: every one float, nothing removed."""
    return [
        LayerState.of(
            name,
            layer,
            layer.weight,
            representation="float",
            sigma=None,
            bits=32.0,
            significance_rank=rank,
            accepted=False,
        )
        for rank, (name, layer) in enumerate(prunable_layers(module).items())
    ]


def _candidate(outcome: _Outcome, accuracy: float, within_budget: bool, chosen: bool, target: SpeedTarget) -> dict:
    speed = outcome.speed
    return {
        "stage": outcome.stage,
        "accuracy": accuracy,
        "bytes": outcome.packed_bytes,
        "latency_ms": speed.candidate_ms,
        "baseline_latency_ms": speed.baseline_ms,
        "speedup": speed.speedup,
        "verdict": speed.verdict,
        "speed_interval": [speed.low, speed.high],
        "goal_met": goal_met(target, speed),
        "within_budget": within_budget,
        "chosen": chosen,
    }


def _baseline_candidate(chain: _Chain, accuracy: float, original_bytes: int, chosen: bool) -> dict:
    """The original model's row: its latency the median of its side of every comparison."""
    times = sorted(o.speed.baseline_ms for o in chain.outcomes)
    return {
        "stage": "baseline",
        "accuracy": accuracy,
        "bytes": original_bytes,
        "latency_ms": times[len(times) // 2] if times else None,
        "speedup": 1.0,
        "within_budget": True,
        "chosen": chosen,
    }


def _speed(run: MethodRun, chain: _Chain, model: LoadedModel, onnx: bytes | None) -> SpeedComparison:
    """A candidate's model.onnx (`onnx`, or `model` exported as model.onnx is) against the original model's, A/B on
    the speed target, within a budget proportionate to the time auto has run."""
    guard = run.guard.essential()
    assert model.input_shape is not None  # the pipeline's check_compatible filled it
    if chain.baseline_onnx is None:
        chain.baseline_onnx = _onnx_bytes(run.model, guard)
    target = run.config.speed_target
    return compare_onnx(
        chain.baseline_onnx,
        onnx if onnx is not None else _onnx_bytes(model, guard),
        tuple(model.input_shape),
        batch=target.batch,
        runtime=target.runtime,
        threads=target.threads,
        guard=guard,
        budget_s=comparison_budget(time.monotonic() - chain.started),
    )


def _onnx_bytes(model: LoadedModel, guard: Guard) -> bytes:
    """`model` exported as the pipeline exports model.onnx."""
    with tempfile.TemporaryDirectory(prefix="squeezer-auto-") as tmp:
        path = Path(tmp) / "candidate.onnx"
        export_onnx(model, path, should_stop=guard)
        return path.read_bytes()


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
