"""Latency-aware pruning, filter's mode with `filter.latency` set: tries its speed-up targets (and the job's
`speed_target.speedup`) in increasing order, each planned from the baseline by core.methods.speed (residual blocks,
then channels, against the latency table measured on the target runtime with `speed_target.threads`) and recovered
with distillation from the baseline (filter's training settings), for longer the more the plan removed; keeps the
fastest result within the accuracy budget and stops at the first target past it. No checkpoint: a rerun plans again
(the latency table is cached in the job's folder)."""

from typing import Unpack

from torch import nn

from squeezer.core.artifacts.sqz import pack_sqz
from squeezer.core.config import CompressConfig, LatencyPruning
from squeezer.core.graph.dependency import PRODUCERS
from squeezer.core.graph.surgery import width
from squeezer.core.methods.depth import with_architecture
from squeezer.core.methods.harness import BASELINE_DONE, FINETUNE_SEED_OFFSET, MethodHooks, MethodRun, progress
from squeezer.core.methods.latency_table import Runtime
from squeezer.core.methods.results import ChannelLayerState, MethodResult
from squeezer.core.methods.speed import SpeedPlan, plan_for_speed


def compress_latency(model, data, config: CompressConfig, **hooks: Unpack[MethodHooks]) -> MethodResult:
    """Compress `model` for speed within `config.target`, by `config.filter.latency`; see the module docstring."""
    settings = _latency(config)
    run = MethodRun(model, data, config, config.filter, name="filter", **hooks)
    baseline, _ = run.measure_baseline()
    best, best_plan, best_accuracy = run.base, None, baseline
    targets = _targets(settings, config)
    with run.time_limited("prune"):
        for index, speedup in enumerate(targets, start=1):
            pruned, plan, accuracy = _attempt(run, speedup, progress(BASELINE_DONE, 1.0, index, len(targets)), index)
            if not run.within(accuracy):
                break
            best, best_plan, best_accuracy = pruned, plan, accuracy
    return run.result(best, layer_states(run.base, best, best_plan), best_accuracy)


def _attempt(run: MethodRun, speedup: float, fraction: float, index: int) -> tuple[nn.Module, SpeedPlan, float]:
    """One target: planned from the baseline, recovered (longer the more parameters went), scored and recorded."""
    settings = _latency(run.config)
    pruned, _, plan = plan_for_speed(
        run.base,
        tuple(run.model.input_shape),
        speedup,
        score=run.evaluate if settings.depth else None,
        floor=run.baseline - settings.block_drop,
        runtime=Runtime(threads=run.config.speed_target.threads),
        cache_dir=run.checkpoint_dir,
        min_keep=settings.min_keep,
    )
    run.emit("prune", fraction, f"planned {plan.predicted_speedup:.2f}× for the target {speedup}×", target=speedup)
    removed = 1 - _parameters(pruned) / _parameters(run.base)
    seed = run.config.seed + FINETUNE_SEED_OFFSET + index
    epochs = run.config.filter.epochs_per_step
    run.train(pruned, epochs, seed, "prune", fraction, scale=1.0 + settings.recovery_scale * removed)
    accuracy = run.evaluate(pruned)
    run.record(
        "prune",
        pack_sqz(with_architecture(run.model, pruned), []),
        layers=[block.name for block in plan.blocks],
        accuracy=accuracy,
        accepted=run.within(accuracy),
        fraction=fraction,
        sparsity=removed,
        summary=f"{len(plan.blocks)} blocks and {plan.removed_channels} channels removed for {speedup}×",
        target=speedup,
        predicted_speedup=plan.predicted_speedup,
    )
    return pruned, plan, accuracy


def _targets(settings: LatencyPruning, config: CompressConfig) -> list[float]:
    """The speed-ups to try, in increasing order: the option's, and the job's goal (`speed_target.speedup`) among
    them, so a goal past every option is still tried."""
    goal = config.speed_target.speedup
    return sorted({*settings.speedups, *([goal] if goal is not None else [])})


def _latency(config: CompressConfig) -> LatencyPruning:
    assert config.filter.latency is not None, "filter runs latency-aware only with filter.latency set"
    return config.filter.latency


def _parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def layer_states(base: nn.Module, pruned: nn.Module, plan: SpeedPlan | None) -> list[ChannelLayerState]:
    """One row per convolution and linear layer of the original model: its channels before and after, and why."""
    blocks = plan.blocks if plan is not None else []
    remaining = dict(pruned.named_modules())
    states = []
    for name, layer in base.named_modules():
        if not isinstance(layer, PRODUCERS):
            continue
        block = next((b.name for b in blocks if name.startswith(f"{b.name}.")), None)
        kept = width(remaining[name]) if block is None else 0
        reason = (
            f"removed with its residual block {block}"
            if block
            else "kept fewer channels: importance per millisecond saved"
            if kept < width(layer)
            else "kept whole"
        )
        weight = (remaining[name] if block is None else layer).weight.detach()
        states.append(ChannelLayerState.kept_float(name, layer, weight, width(layer), kept, reason))
    return states
