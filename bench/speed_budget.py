"""Speed at an accuracy budget, ours against Torch-Pruning, as a user meets it: bench/speed.py prunes to one fixed
target; here each method tries targets in increasing order, each planned from the trained baseline and recovered
with the same epochs, rate and distillation, and keeps the fastest result within the budget (what filter.latency
does in a job). Ours: core.methods.speed.plan_for_speed (blocks, then channels against the latency table); theirs:
Torch-Pruning's group-norm pruner at the uniform ratio matching our MACs at the same target. The speed-up of each
result is measured in onnxruntime (one thread, batch 1) against the baseline, A/B interleaved
(core.measure.compare). Baselines train longer than bench/speed.py's (--epochs), so that a point of accuracy is
more than run-to-run noise. Writes bench/results/speed_budget.json (a network's row replaces its earlier one).

    OMP_NUM_THREADS=1 .venv/bin/python bench/speed_budget.py --only resnet20 --epochs 8 --recovery-epochs 3
"""

import argparse
import copy
import dataclasses
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import NETWORKS, onnx_bytes, run_and_write, torch_pruning_to_macs, train, workload  # noqa: E402

from squeezer.core.measure import count_macs, metric_function  # noqa: E402
from squeezer.core.measure.compare import compare_onnx  # noqa: E402
from squeezer.core.methods.latency_table import Runtime  # noqa: E402
from squeezer.core.methods.speed import plan_for_speed  # noqa: E402

RESULTS = "speed_budget"


def _candidates(base, work, target: float, block_drop: float, score) -> dict:
    """Both methods' pruned copies of `base` for one target (theirs matched to our MACs)."""
    ours, _, plan = plan_for_speed(
        base,
        work.input_shape,
        target,
        score=lambda m: score(m, work.x_val[:500], work.y_val[:500]),
        floor=score(base, work.x_val[:500], work.y_val[:500]) - block_drop,
        runtime=Runtime(threads=1),
    )
    theirs, _ = torch_pruning_to_macs(base, work, count_macs(ours, work.input_shape))
    return {"ours": ours, "torch_pruning": theirs}


def _recovered(module, base, work, score, baseline_file: bytes) -> dict:
    train(module, work, work.recovery_epochs, seed=1, teacher=base)
    accuracy = score(module.eval(), work.x_val, work.y_val)
    comparison = compare_onnx(baseline_file, onnx_bytes(module, work.input_shape), work.input_shape, batch=1)
    return {
        "accuracy": round(accuracy, 2),
        "macs_removed": round(1 - count_macs(module, work.input_shape) / count_macs(base, work.input_shape), 4),
        "speedup": round(comparison.speedup, 3),
        "verdict": comparison.verdict,
    }


def run_network(name: str, args) -> dict:
    work = workload(name, False, 128)
    work = dataclasses.replace(work, epochs=args.epochs, recovery_epochs=args.recovery_epochs)
    score = metric_function(work.metric)
    print(f"[{time.strftime('%H:%M:%S')}] {name}: training the baseline ({work.epochs} epochs)", flush=True)
    train(work.module, work, work.epochs, seed=0)
    base = work.module.eval()
    baseline = score(base, work.x_val, work.y_val)
    baseline_file = onnx_bytes(base, work.input_shape)
    tried: dict[str, list[dict]] = {"ours": [], "torch_pruning": []}
    within = {"ours": True, "torch_pruning": True}
    for target in sorted(args.targets):
        if not any(within.values()):
            break
        for label, module in _candidates(base, work, target, args.block_drop, score).items():
            if not within[label]:
                continue
            row = {"target": target} | _recovered(copy.deepcopy(module), base, work, score, baseline_file)
            row["drop"] = round(baseline - row["accuracy"], 2)
            within[label] = row["drop"] <= args.budget
            tried[label].append(row)
            print(f"[{time.strftime('%H:%M:%S')}] {name} {label} {row}", flush=True)
    best = {
        label: max((r for r in rows if r["drop"] <= args.budget), key=lambda r: r["speedup"], default=None)
        for label, rows in tried.items()
    }
    return {
        "baseline": {"accuracy": round(baseline, 2), "epochs": work.epochs},
        "budget_points": args.budget,
        "recovery_epochs": work.recovery_epochs,
        "fastest_within_budget": best,
        "tried": tried,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", choices=NETWORKS, help="a network to run (repeatable)")
    parser.add_argument("--budget", type=float, default=1.0, help="largest allowed accuracy drop, in points")
    parser.add_argument("--targets", type=float, nargs="+", default=[1.5, 2.0, 3.0, 4.0], help="speed-ups tried")
    parser.add_argument("--epochs", type=int, default=8, help="baseline training epochs")
    parser.add_argument("--recovery-epochs", type=int, default=3, help="recovery epochs after each pruning")
    parser.add_argument("--block-drop", type=float, default=5.0, help="points a block's removal may cost unrecovered")
    args = parser.parse_args()
    torch.set_num_threads(1)
    run_and_write(RESULTS, args.only or ["resnet20"], lambda network: run_network(network, args), {})


if __name__ == "__main__":
    main()
