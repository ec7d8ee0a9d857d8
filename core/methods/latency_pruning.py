"""Latency-aware pruning, filter's mode with `filter.latency` set: tries its speed-up targets (and the job's
`speed_target.speedup`) in increasing order. Each is planned by core.methods.speed (residual blocks, then channels,
against the latency table measured on the target runtime with `speed_target.threads`) and recovered with distillation
from the baseline (filter's training settings), for longer the more the plan removed. Gradually (the default), each
step is planned from the last result within the budget, so every step removes a little from a recovered model; a
step past the budget halves the step (core.methods.walk). Keeps the fastest result within the accuracy budget. A
checkpoint after each step holds the best model so far, packed as a .sqz, and where the walk stands, so a restarted
job goes on from there (the latency tables are cached in the job's folder too)."""

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Unpack

import torch
from torch import nn

from squeezer.core.artifacts.sqz import pack_sqz, read_sqz
from squeezer.core.config import CompressConfig, LatencyPruning
from squeezer.core.graph.dependency import PRODUCERS
from squeezer.core.graph.surgery import width
from squeezer.core.measure import count_macs
from squeezer.core.methods.depth import Block, with_architecture
from squeezer.core.methods.harness import BASELINE_DONE, FINETUNE_SEED_OFFSET, MethodHooks, MethodRun, progress
from squeezer.core.methods.latency_table import Runtime
from squeezer.core.methods.results import ChannelLayerState, MethodResult
from squeezer.core.methods.speed import plan_for_speed
from squeezer.core.methods.walk import Walk

_BEST_SQZ = "best.sqz"  # the checkpoint's tensor holding the best model so far, packed

# Validation samples that score a block's removal or a group's thinning (an estimate before recovery, not the
# budget): as many as SCORE_MACS allows one score, within these bounds, so a large network's scores stay short.
SENSITIVITY_SAMPLES = (64, 1_000)
SCORE_MACS = 5e10


@dataclass(frozen=True)
class _Reached:
    """A pruned model within the budget: its speed-up over the baseline (each step's as measured on the target
    runtime when the plan was made) and the blocks removed so far."""

    module: nn.Module
    speedup: float
    blocks: list[Block]
    channels: int  # channel groups' channels removed (core.methods.speed.SpeedPlan.removed_channels), all steps
    accuracy: float
    packed: bytes = b""  # the model as a .sqz (the trial's and the checkpoint's); empty for the baseline


def compress_latency(model, data, config: CompressConfig, **hooks: Unpack[MethodHooks]) -> MethodResult:
    """Compress `model` for speed within `config.target`, by `config.filter.latency`; see the module docstring."""
    run = MethodRun(model, data, config, config.filter, name="filter", **hooks)
    baseline, _ = run.measure_baseline()
    original = _Reached(run.base, 1.0, [], 0, baseline)
    walk = new_walk(config)
    best = _walk(run, original, _resumed(run, original, walk), walk)
    return run.result(best.module, layer_states(run.base, best.module, best.blocks), best.accuracy)


def new_walk(config: CompressConfig) -> Walk:
    """The walk a job's `filter.latency` (and `filter.refinements`, the misses it goes on after) asks for."""
    settings = _latency(config)
    return Walk(_targets(settings, config), settings.max_step, config.filter.refinements, settings.gradual)


def _walk(run: MethodRun, original: _Reached, best: _Reached, walk: Walk) -> _Reached:
    """Each step `walk` aims, from `best` (the baseline when not gradual): the best result within the budget once
    the walk ends (core.methods.walk), or once the time limit ends it, in a step's planning or after its recovery."""
    attempts = itertools.count(1)  # each attempt recovers with its own seed
    with run.time_limited("prune"):
        for aim in walk.aims():
            fraction = progress(BASELINE_DONE, 1.0, walk.tried + 1, len(walk.targets))
            reached = _attempt(run, best if walk.gradual else original, aim, fraction, next(attempts))
            if walk.took(reached.speedup, within=run.within(reached.accuracy)):
                best = reached
            _save(run, best, walk, fraction)
            run.end_if_time_up()
    return best


def _save(run: MethodRun, best: _Reached, walk: Walk, fraction: float) -> None:
    """A checkpoint after each step: the best model so far as a .sqz (unless it is the baseline) and where the walk
    stands."""
    tensors = {}
    if best.packed:
        tensors[_BEST_SQZ] = torch.frombuffer(bytearray(best.packed), dtype=torch.uint8)
    blocks = [[block.name, block.without_branch] for block in best.blocks]
    meta = {"walk": walk.progress(), "blocks": blocks, "channels": best.channels}  # best's speed-up: the walk's kept
    run.save(tensors, meta | {"accuracy": best.accuracy}, fraction)


def _resumed(run: MethodRun, original: _Reached, walk: Walk) -> _Reached:
    """The best result from the last checkpoint (a rerun of a stopped job), `walk` set to go on from where it
    stood; the baseline, and the walk at its start, without one."""
    saved = run.resume()
    if saved is None:
        return original
    tensors, meta = saved
    walk.resume(meta.get("walk") or {"tried": meta["tried"], "ended": meta["ended"], "kept": meta["speedup"]})
    if _BEST_SQZ not in tensors:
        return original
    packed = tensors[_BEST_SQZ].numpy().tobytes()
    blocks = [Block(str(name), str(kind)) for name, kind in meta["blocks"]]
    channels, accuracy = int(meta["channels"]), float(meta["accuracy"])
    return _Reached(read_sqz(packed).module.eval(), walk.kept, blocks, channels, accuracy, packed)


def _attempt(run: MethodRun, start: _Reached, speedup: float, fraction: float, index: int) -> _Reached:
    """One target: planned from `start` for the rest of the way, recovered (longer the more of `start`'s parameters
    went), scored and recorded."""
    settings = _latency(run.config)
    estimate = _estimator(run, start.module)
    pruned, _, plan = plan_for_speed(
        start.module,
        tuple(run.model.input_shape),
        speedup / start.speedup,
        score=estimate,
        floor=estimate(run.base) - settings.block_drop,
        runtime=Runtime(threads=run.config.speed_target.threads),
        cache_dir=run.checkpoint_dir,
        min_keep=settings.min_keep,
        widths=producer_widths(run.base),
        step_keep=settings.step_keep,
        depth=settings.depth,
        calibrate=True,
    )
    step = plan.measured_speedup or plan.predicted_speedup
    reaches = start.speedup * step
    message = f"planned {reaches:.2f}× for the target {speedup}× (measured {step:.2f}× over its start)"
    run.emit("prune", fraction, message, target=speedup)
    removed = 1 - _parameters(pruned) / _parameters(start.module)
    seed = run.config.seed + FINETUNE_SEED_OFFSET + index
    epochs = run.config.filter.epochs_per_step
    run.train(pruned, epochs, seed, "prune", fraction, scale=1.0 + settings.recovery_scale * removed, until_cut=True)
    blocks, channels = [*start.blocks, *plan.blocks], start.channels + plan.removed_channels
    packed = pack_sqz(with_architecture(run.model, pruned), [])
    accuracy = run.evaluate(pruned, essential=True)  # a recovery that ran is scored, even past the deadline
    reached = _Reached(pruned, reaches, blocks, channels, accuracy, packed)
    run.record(
        "prune",
        packed,
        layers=[block.name for block in blocks],
        accuracy=reached.accuracy,
        accepted=run.within(reached.accuracy),
        fraction=fraction,
        sparsity=1 - _parameters(pruned) / _parameters(run.base),
        summary=f"{len(blocks)} blocks and {channels} channels removed for {speedup}×",
        target=speedup,
        reached_speedup=reaches,
        predicted_step=plan.predicted_speedup,
        measured_step=plan.measured_speedup,
        planned_from=start.speedup,
    )
    return reached


def _estimator(run: MethodRun, module: nn.Module) -> Callable[[nn.Module], float]:
    """The quick score of a block's removal or a group's thinning: the validation samples SCORE_MACS pays for at
    `module`'s cost per sample, within SENSITIVITY_SAMPLES."""
    fewest, most = SENSITIVITY_SAMPLES
    macs = max(count_macs(module, tuple(run.model.input_shape)), 1)
    samples = max(fewest, min(most, int(SCORE_MACS / macs)))
    return lambda candidate: run.evaluate(candidate, samples=samples)


def _targets(settings: LatencyPruning, config: CompressConfig) -> list[float]:
    """The speed-ups to try, in increasing order: the option's, and the job's goal (`speed_target.speedup`) among
    them, so a goal past every option is still tried."""
    goal = config.speed_target.speedup
    return sorted({*settings.speedups, *([goal] if goal is not None else [])})


def _latency(config: CompressConfig) -> LatencyPruning:
    assert config.filter.latency is not None, "filter runs latency-aware only with filter.latency set"
    return config.filter.latency


def producer_widths(module: nn.Module) -> dict[str, int]:
    """Each convolution's and linear layer's output channels: what a walk of plans counts `min_keep` in."""
    return {name: width(layer) for name, layer in module.named_modules() if isinstance(layer, PRODUCERS)}


def _parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def layer_states(base: nn.Module, pruned: nn.Module, blocks: list[Block]) -> list[ChannelLayerState]:
    """One row per convolution and linear layer of the original model: its channels before and after, and why."""
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
