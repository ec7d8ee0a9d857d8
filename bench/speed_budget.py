"""Speed at an accuracy budget, ours against Torch-Pruning, as a user meets it: bench/speed.py prunes to one fixed
target; here each method walks through targets in increasing order, each step recovered with the same epochs, rate
and distillation, and keeps the fastest result within the budget (what filter.latency does in a job). Both methods
walk by the job's rule (core.methods.walk: gradual steps of at most --max-step, a miss halving the step, the walk
ending after --refinements + 1 misses): ours in speed-up as its plans measured it, Torch-Pruning in MACs reduction,
its own knob, with targets on to 4 times the last (a MACs reduction buys less speed-up).
Ours: core.methods.speed.plan_for_speed (blocks, then channels against the latency table); theirs: Torch-Pruning's
group-norm pruner at the uniform ratio reaching each aimed MACs reduction. The speed-up of each result is
measured in onnxruntime (one thread, batch 1) against the baseline, A/B interleaved (core.measure.compare).
Baselines train longer than bench/speed.py's (--epochs), so that a point of accuracy is more than run-to-run noise.
Each recovery peaks at a job's default learning rate (--recovery-lr, filter.lr's 0.01); rows without `recovery_lr`
recovered at the baseline's own 0.05.
Writes bench/results/speed_budget.json (a network's row replaces its earlier one).

    OMP_NUM_THREADS=1 .venv/bin/python bench/speed_budget.py --only resnet20 --epochs 8 --recovery-epochs 3
"""

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import NETWORKS, Workload, run_and_write, torch_pruning_to_macs, train, workload  # noqa: E402

from squeezer.core.artifacts.onnx_export import module_onnx  # noqa: E402
from squeezer.core.config import LatencyPruning, StructuredTraining  # noqa: E402
from squeezer.core.measure import count_macs, metric_function  # noqa: E402
from squeezer.core.measure.compare import compare_onnx  # noqa: E402
from squeezer.core.methods.latency_pruning import producer_widths  # noqa: E402
from squeezer.core.methods.latency_table import Runtime  # noqa: E402
from squeezer.core.methods.speed import plan_for_speed  # noqa: E402
from squeezer.core.methods.walk import Walk  # noqa: E402

RESULTS = "speed_budget"
LATENCY_DEFAULTS = LatencyPruning()  # a job's filter.latency defaults
THEIRS_BEYOND = (2.0, 4.0)  # Torch-Pruning's MACs targets past the last speed-up target, as factors of it


@dataclass
class Lane:
    """One method's walk: where its next step starts (the last result kept when gradual, else the baseline), the
    walk in the method's own unit (ours: speed-up as the plans measured it; Torch-Pruning: MACs reduction) and the
    rows of the steps it took."""

    theirs: bool
    start: torch.nn.Module
    walk: Walk
    sensitivity: bool = True  # ours: channels by measured sensitivity, else by importance alone
    depth: bool = True  # ours: residual blocks first where their removal costs little, else channels alone
    rows: list[dict] = field(default_factory=list)


def plan_like_a_job(start, work, step: float, score, floor: float, **options):
    """plan_for_speed as a job's filter.latency calls it (its floors, calibrated, one thread), `step` times faster
    than `start`, blocks scored on 500 validation samples; `options` override (widths, step_keep, sensitivity…)."""
    settings = {"min_keep": LATENCY_DEFAULTS.min_keep, "widths": producer_widths(work.module)}
    settings |= {"step_keep": LATENCY_DEFAULTS.step_keep} | options
    return plan_for_speed(
        start,
        work.input_shape,
        step,
        score=lambda m: score(m, work.x_val[:500], work.y_val[:500]),
        floor=floor,
        runtime=Runtime(threads=1),
        calibrate=True,
        **settings,
    )


@dataclass(frozen=True)
class Context:
    """What every step of one network's run shares: the trained baseline, its score and exported file."""

    base: torch.nn.Module
    work: Workload
    score: Callable[..., float]  # (module, x, y) -> the metric
    baseline: float
    baseline_file: bytes
    budget: float
    seed: int  # the baseline trains with it, each recovery with it + 1
    recovery_lr: float


def _ours(lane: Lane, aim: float, block_drop: float, context: Context):
    """Ours planned from the lane's start for the rest of the way to `aim` (calibrated, as a job plans), and the
    speed-up over the baseline it reaches as measured while planning."""
    kept = lane.walk.kept if lane.walk.gradual else 1.0
    options = {"sensitivity": lane.sensitivity, "depth": lane.depth}
    floor = context.baseline - block_drop
    pruned, _, plan = plan_like_a_job(lane.start, context.work, aim / kept, context.score, floor, **options)
    return pruned, kept * (plan.measured_speedup or plan.predicted_speedup)


def _theirs(lane: Lane, aim: float, context: Context):
    """Torch-Pruning from the lane's start to the baseline's MACs over `aim`, and the MACs reduction it reaches."""
    base_macs = count_macs(context.base, context.work.input_shape)
    matched, _ = torch_pruning_to_macs(lane.start, context.work, round(base_macs / aim))
    return matched, base_macs / count_macs(matched, context.work.input_shape)


def _recovered(module, context: Context) -> dict:
    base, work, score = context.base, context.work, context.score
    recovery = dataclasses.replace(work, lr=context.recovery_lr)
    train(module, recovery, work.recovery_epochs, seed=context.seed + 1, teacher=base)
    accuracy = score(module.eval(), work.x_val, work.y_val)
    comparison = compare_onnx(context.baseline_file, module_onnx(module, work.input_shape), work.input_shape, batch=1)
    return {
        "accuracy": round(accuracy, 2),
        "macs_removed": round(1 - count_macs(module, work.input_shape) / count_macs(base, work.input_shape), 4),
        "speedup": round(comparison.speedup, 3),
        "verdict": comparison.verdict,
    }


def _walk(label: str, lane: Lane, args, context: Context) -> None:
    """Every step the lane's walk aims: planned, recovered, measured, and reported back to the walk; a gradual lane
    goes on from each result it keeps."""
    for aim in lane.walk.aims():
        if lane.theirs:
            module, reached = _theirs(lane, aim, context)
        else:
            module, reached = _ours(lane, aim, args.block_drop, context)
        row = {"aim": round(aim, 3), "reached": round(reached, 3)} | _recovered(module, context)
        row["drop"] = round(context.baseline - row["accuracy"], 2)
        row["kept"] = lane.walk.took(reached, within=row["drop"] <= context.budget)
        lane.rows.append(row)
        if row["kept"] and lane.walk.gradual:
            lane.start = module
        print(f"[{time.strftime('%H:%M:%S')}] {context.work.name} {label} {row}", flush=True)


def _walk_rule(args, gradual: bool, theirs: bool = False) -> Walk:
    """The job's walk over --targets; Torch-Pruning's (in MACs reductions, which outrun speed-ups) goes on to
    THEIRS_BEYOND times the last, so that its walk ends at the budget rather than at our last target."""
    targets = sorted(args.targets)
    targets += [targets[-1] * factor for factor in THEIRS_BEYOND] if theirs else []
    return Walk(targets, args.max_step, args.refinements, gradual)


def run_network(name: str, args) -> dict:
    work = workload(name, False, args.unet_size, args.val_samples)
    work = dataclasses.replace(work, epochs=args.epochs, recovery_epochs=args.recovery_epochs)
    score = metric_function(work.metric)
    print(f"[{time.strftime('%H:%M:%S')}] {name}: training the baseline ({work.epochs} epochs)", flush=True)
    train(work.module, work, work.epochs, seed=args.seed)
    base = work.module.eval()
    baseline = score(base, work.x_val, work.y_val)
    baseline_file = module_onnx(base, work.input_shape)
    context = Context(base, work, score, baseline, baseline_file, args.budget, args.seed, args.recovery_lr)
    lanes = {
        f"{side}{suffix}": Lane(side == "torch_pruning", base, _walk_rule(args, gradual, side == "torch_pruning"))
        for gradual, suffix in ((True, ""), (False, "_one_step"))
        if gradual or args.one_step
        for side in ("ours", "torch_pruning")
    }
    if args.importance_only:
        lanes["ours_importance_only"] = Lane(False, base, _walk_rule(args, True), sensitivity=False)
    if args.channels_only:
        lanes["ours_channels_only"] = Lane(False, base, _walk_rule(args, True), depth=False)
    for label, lane in lanes.items():
        _walk(label, lane, args, context)
    best = {
        label: max((r for r in lane.rows if r["drop"] <= args.budget), key=lambda r: r["speedup"], default=None)
        for label, lane in lanes.items()
    }
    return {
        "baseline": {"accuracy": round(baseline, 2), "epochs": work.epochs},
        "budget_points": args.budget,
        "recovery_epochs": work.recovery_epochs,
        "recovery_lr": args.recovery_lr,
        "max_step": args.max_step,
        "fastest_within_budget": best,
        "tried": {label: lane.rows for label, lane in lanes.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", choices=NETWORKS, help="a network to run (repeatable)")
    parser.add_argument("--budget", type=float, default=1.0, help="largest allowed accuracy drop, in points")
    parser.add_argument("--targets", type=float, nargs="+", default=[1.5, 2.0, 3.0, 4.0], help="speed-ups tried")
    parser.add_argument("--epochs", type=int, default=8, help="baseline training epochs")
    parser.add_argument("--recovery-epochs", type=int, default=3, help="recovery epochs after each pruning")
    parser.add_argument(
        "--one-step", action="store_true", help="also plan every target from the baseline in one step (both methods)"
    )
    parser.add_argument(
        "--importance-only",
        action="store_true",
        help="also run ours choosing channels by importance alone, without the measured sensitivity",
    )
    parser.add_argument("--results", default=RESULTS, help="results file name in bench/results (no .json)")
    parser.add_argument(
        "--channels-only", action="store_true", help="also run ours removing channels only, no residual block"
    )
    parser.add_argument(
        "--refinements", type=int, default=2, help="misses a walk goes on after, halving its step (filter.refinements)"
    )
    parser.add_argument(
        "--max-step",
        type=float,
        default=LATENCY_DEFAULTS.max_step,
        help="most one gradual step aims over where it stands (filter.latency.max_step); a large value turns it off",
    )
    parser.add_argument("--block-drop", type=float, default=5.0, help="points a block's removal may cost unrecovered")
    parser.add_argument(
        "--recovery-lr",
        type=float,
        default=StructuredTraining().lr,
        help="each recovery's peak learning rate (cosine to zero); default a job's (filter.lr)",
    )
    parser.add_argument("--seed", type=int, default=0, help="the baseline's training seed (each recovery's: + 1)")
    parser.add_argument("--unet-size", type=int, default=128, help="the U-Net's input side (a multiple of 4)")
    parser.add_argument(
        "--val-samples", type=int, default=2000, help="Fashion-MNIST test images judging the budget (≤ 10,000)"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    run_and_write(args.results, args.only or ["resnet20"], lambda network: run_network(network, args), {})


if __name__ == "__main__":
    main()
