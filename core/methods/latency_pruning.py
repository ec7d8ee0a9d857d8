"""Latency-aware pruning, filter's mode with `filter.latency` set: tries its speed-up targets (and the job's
`speed_target.speedup`) in increasing order. Each is planned by core.methods.speed (residual blocks, then channels,
against the latency table measured on the target runtime with `speed_target.threads`) and recovered with distillation
from the baseline (filter's training settings), for longer the more the plan removed. Gradually (the default), each
target is planned from the last result within the budget, so every step removes a little from a recovered model,
and a target more than `max_step` away is reached through steps of that size; otherwise each is planned from the
baseline. Keeps the fastest result within the accuracy budget and stops at the
first target past it, after up to `refinements` targets between the two. A checkpoint after each target holds the
best model so far, packed as a .sqz, so a restarted job goes on from the next target (the latency tables are cached
in the job's folder too)."""

import itertools
import math
from collections.abc import Callable, Iterator
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

# A refinement target less than this factor above the speed-up kept is not worth a recovery.
MIN_REFINEMENT = 1.1
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
    best, tried, ended = _resumed(run, original)
    with run.time_limited("prune"):
        if not ended:
            best = _walk(run, original, best, tried)
    return run.result(best.module, layer_states(run.base, best.module, best.blocks), best.accuracy)


def _walk(run: MethodRun, original: _Reached, best: _Reached, tried: int) -> _Reached:
    """The targets after the first `tried`, from `best`: the best result within the budget when one step leaves it
    (and its refinements are done) or the last target is tried."""
    settings = _latency(run.config)
    targets = _targets(settings, run.config)
    attempts = itertools.count(1)  # each attempt recovers with its own seed

    def start() -> _Reached:
        return best if settings.gradual else original

    for index, speedup in enumerate(targets[tried:], start=tried + 1):
        fraction = progress(BASELINE_DONE, 1.0, index, len(targets))
        for aim, last in step_aims(settings, lambda: start().speedup, speedup):
            planned_from = start()
            reached = _attempt(run, planned_from, aim, fraction, next(attempts))
            accepted = run.within(reached.accuracy) and reached.speedup > planned_from.speedup
            best = reached if accepted else best
            _save(run, best, index if last else index - 1, not accepted, fraction)
            if not accepted:
                return _refined(run, original, best, aim, index, fraction, attempts)
    return best


def step_aims(settings: LatencyPruning, position: Callable[[], float], speedup: float) -> Iterator[tuple[float, bool]]:
    """Each step's aim from where the walk stands (`position()`, read again before each step) to `speedup`, with
    whether it is the target's last step: one step when not gradual, else as few as keep each within `max_step`,
    the rest of the way in equal factors and never over `max_step`, even where earlier steps landed short (the
    target is then left short). None once an earlier plan reached `speedup`."""
    ratio = speedup / position()
    steps = 1 if not settings.gradual or ratio <= 1 else math.ceil(math.log(ratio) / math.log(settings.max_step) - 1e-9)
    for left in range(max(steps, 1), 0, -1):
        start = position()
        if start >= speedup:
            return
        factor = (speedup / start) ** (1 / left)
        yield start * (min(factor, settings.max_step) if settings.gradual else factor), left == 1


def _refined(
    run: MethodRun,
    original: _Reached,
    best: _Reached,
    missed: float,
    tried: int,
    fraction: float,
    attempts: Iterator[int],
) -> _Reached:
    """After a target past the budget: up to `filter.refinements` targets between the speed-up kept and the missed
    one (geometric midpoints, each planned like a target), so one step too far does not end the walk where it
    stood. Not resumed: a rerun keeps the best result checkpointed."""
    gradual = _latency(run.config).gradual
    for _ in range(run.config.filter.refinements):
        midpoint = refinement_target(best.speedup, missed)
        if midpoint is None:
            break
        reached = _attempt(run, best if gradual else original, midpoint, fraction, next(attempts))
        if run.within(reached.accuracy):
            best = reached
        else:
            missed = midpoint
        _save(run, best, tried, True, fraction)
    return best


def refinement_target(kept: float, missed: float) -> float | None:
    """The geometric midpoint between the speed-up kept and the one missed, or None where it lies less than
    MIN_REFINEMENT above the speed-up kept."""
    midpoint = (kept * missed) ** 0.5
    return midpoint if midpoint >= kept * MIN_REFINEMENT else None


def _save(run: MethodRun, best: _Reached, tried: int, ended: bool, fraction: float) -> None:
    """A checkpoint after each target tried: the best model so far as a .sqz (unless it is the baseline), how many
    targets were tried and whether one left the budget."""
    tensors = {}
    if best.packed:
        tensors[_BEST_SQZ] = torch.frombuffer(bytearray(best.packed), dtype=torch.uint8)
    blocks = [[block.name, block.without_branch] for block in best.blocks]
    meta = {"tried": tried, "ended": ended, "speedup": best.speedup, "blocks": blocks, "channels": best.channels}
    run.save(tensors, meta | {"accuracy": best.accuracy}, fraction)


def _resumed(run: MethodRun, original: _Reached) -> tuple[_Reached, int, bool]:
    """The best result, the targets tried and whether one left the budget, from the last checkpoint (a rerun of a
    stopped job); the baseline and nothing tried without one."""
    saved = run.resume()
    if saved is None:
        return original, 0, False
    tensors, meta = saved
    best = original
    if _BEST_SQZ in tensors:
        packed = tensors[_BEST_SQZ].numpy().tobytes()
        blocks = [Block(str(name), str(kind)) for name, kind in meta["blocks"]]
        speedup, channels, accuracy = float(meta["speedup"]), int(meta["channels"]), float(meta["accuracy"])
        best = _Reached(read_sqz(packed).module.eval(), speedup, blocks, channels, accuracy, packed)
    return best, int(meta["tried"]), bool(meta["ended"])


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
    run.train(pruned, epochs, seed, "prune", fraction, scale=1.0 + settings.recovery_scale * removed)
    blocks, channels = [*start.blocks, *plan.blocks], start.channels + plan.removed_channels
    packed = pack_sqz(with_architecture(run.model, pruned), [])
    reached = _Reached(pruned, reaches, blocks, channels, run.evaluate(pruned), packed)
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
