"""A recovery the time limit ends, annealed to the deadline against cut there (issue 28): the same pruned model
trained for the same seconds with a cosine schedule planned for far more steps than fit. Cut, the stage stops
mid-schedule at a high rate (what a time-limited job's last recovery did before `TrainOptions.deadline`); annealed,
the schedule follows the clock down to zero by the deadline.

The network: LeNet-5 on Fashion-MNIST (28×28), trained here for one epoch, its channels pruned to half its predicted
convolution time (`plan_for_speed`, 2×, importance only), then recovered as a job recovers (`filter`'s training
settings: lr 0.01, distillation from the baseline) for --seconds, once per variant per seed, the variants' order
alternating by seed. Accuracy on the 10,000 test images.

    OMP_NUM_THREADS=1 .venv/bin/python bench/time_fitted.py [--seconds 10] [--seeds 3]

Writes bench/results/time_fitted.json (or --results NAME).
"""

import argparse
import contextlib
import copy
import statistics
import time

import torch
from _common import machine, write_result

from squeezer.core.config import FilterConfig
from squeezer.core.events import Guard, TimeLimitReached
from squeezer.core.intake.data import load_dataset
from squeezer.core.intake.registry import build_architecture
from squeezer.core.measure import top1_accuracy
from squeezer.core.methods.speed import plan_for_speed
from squeezer.core.train import fit, fit_options

NOMINAL_EPOCHS = 100  # far more than any --seconds here holds: the schedule is planned for all of them
SHAPE = (1, 28, 28)


def recovered(pruned, teacher, data, settings: FilterConfig, seed: int, seconds: float, annealed: bool) -> float:
    """`pruned` trained for `seconds`, annealed to the deadline or cut at it; its test accuracy."""
    module = copy.deepcopy(pruned)
    options = fit_options(settings) | {"seed": seed, "teacher": teacher, "distill_weight": settings.distill}
    limit = {"deadline": time.monotonic() + seconds} if annealed else {"should_stop": Guard(time_limit_s=seconds)}
    with contextlib.suppress(TimeLimitReached):  # the cut one raises at its deadline
        fit(module, data.x_train, data.y_train, epochs=NOMINAL_EPOCHS, **limit, **options)
    return top1_accuracy(module.eval(), data.x_val, data.y_val)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="each recovery's time")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--baseline-epochs", type=int, default=1, help="the baseline's training (cosine from 0.05)")
    parser.add_argument("--results", default="time_fitted", help="results file name in bench/results (no .json)")
    args = parser.parse_args()
    data = load_dataset("sample:fashion-mnist")
    torch.manual_seed(0)
    baseline = build_architecture("lenet5", {"input_size": 28, "in_channels": 1, "num_classes": 10})
    fit(baseline, data.x_train, data.y_train, epochs=args.baseline_epochs, lr=0.05, lr_schedule="cosine", seed=0)
    baseline.eval()
    pruned, _, plan = plan_for_speed(baseline, SHAPE, 2.0)
    settings = FilterConfig()
    accuracies: dict[str, list[float]] = {"cut": [], "annealed": []}
    for seed in range(args.seeds):
        order = ("cut", "annealed") if seed % 2 == 0 else ("annealed", "cut")
        for variant in order:
            accuracy = recovered(pruned, baseline, data, settings, seed, args.seconds, variant == "annealed")
            accuracies[variant].append(accuracy)
            print(f"seed {seed} {variant}: {accuracy:.2f} %", flush=True)
    means = {variant: statistics.mean(values) for variant, values in accuracies.items()}
    gain = means["annealed"] - means["cut"]
    print(f"annealed {means['annealed']:.2f} % against cut {means['cut']:.2f} %: {gain:+.2f} points")
    write_result(
        args.results,
        {
            "benchmark": "issue 28: a recovery the time limit ends, annealed to the deadline against cut at it",
            "command": "OMP_NUM_THREADS=1 python bench/time_fitted.py "
            f"--seconds {args.seconds:g} --seeds {args.seeds} --baseline-epochs {args.baseline_epochs} "
            f"--results {args.results}",
            "machine": machine(),
            "baseline_accuracy": top1_accuracy(baseline, data.x_val, data.y_val),
            "pruned_unrecovered_accuracy": top1_accuracy(pruned, data.x_val, data.y_val),
            "predicted_speedup": plan.predicted_speedup,
            "seconds": args.seconds,
            "accuracy": accuracies,
            "mean_accuracy": means,
            "annealed_minus_cut_points": gain,
        },
    )


if __name__ == "__main__":
    main()
