"""Reference workload: LeNet-5 on Fashion-MNIST (the bundled sample baseline, core.samples), accuracy budget 1.0
point absolute on the 10k validation split. lwct against global L1 unstructured pruning and int8 weight-only
quantization (bench/baselines.py) at the same budget. Every size is the byte length of the packed `.sqz` file;
compression ratio = float32 bytes of the baseline / packed bytes. The lwct artifact is loaded back with load_sqz
and re-evaluated, so its accuracy is the one a user downloads. Writes bench/results/lwct_reference.json.

    .venv/bin/python bench/lwct_reference.py      # the user defaults, as `squeezer compress` runs them
    .venv/bin/python bench/lwct_reference.py --epochs-per-step 3 --prune-epochs 3 --lr 0.05 --name lwct_reference_tuned
        [--sparsity-grid ...] [--max-train-samples N] [--float-precision float16|float32] [--option walk=layer]
        [--no-baselines] [--save-sqz PATH]
    Any tuning flag labels the run "tuned" (its flags are printed and saved); none: "defaults".
    .venv/bin/python bench/lwct_reference.py --quick      # smoke run, 2k samples per epoch, nothing written
"""

import argparse
import json
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from _common import machine, write_result
from baselines import global_l1_pruning, int8_weight_only

from squeezer.core.artifacts.sqz import load_sqz, write_sqz
from squeezer.core.config import AccuracyTarget, CompressConfig, LwctConfig
from squeezer.core.intake.data import load_dataset, normalize
from squeezer.core.intake.models import load_model
from squeezer.core.measure import float32_bytes, top1_accuracy
from squeezer.core.methods.lwct import compress_lwct
from squeezer.core.samples import ensure_sample_model
from squeezer.core.train import stage_epochs

TARGET_RATIO = 40.0
TUNING_FLAGS = (
    "epochs_per_step",
    "prune_epochs",
    "sparsity_grid",
    "max_train_samples",
    "prune_budget_share",
    "distill",
    "lr",
    "float_precision",
)


def parse_value(text: str):
    """An --option value: JSON when it parses (numbers, lists, booleans), else the plain string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def print_event(event) -> None:
    if event.stage in ("step", "baseline"):
        print(f"  [{time.strftime('%H:%M:%S')}] {event.stage}: {event.message} {event.data}", flush=True)


def run_lwct(model, data, config: CompressConfig, save_sqz: Path | None) -> dict:
    start = time.perf_counter()
    result = compress_lwct(model, data, config, on_event=print_event)
    wall = time.perf_counter() - start
    with tempfile.TemporaryDirectory(prefix="squeezer-bench-") as tmp:
        path = Path(tmp) / "model.sqz"
        packed = write_sqz(path, model.with_module(result.module), result.layers)
        reloaded = top1_accuracy(load_sqz(path).module, data.x_val, data.y_val)
        if save_sqz is not None:
            shutil.copyfile(path, save_sqz)
    return {
        "accuracy": reloaded,
        "accuracy_reported": result.accuracy,
        "packed_bytes": packed,
        "wall_s": wall,
        "sparsity": next((t.sparsity for t in reversed(result.trials) if t.stage == "prune" and t.accepted), None),
        "target_met": result.target_met,
        "layers": [
            {k: v for k, v in asdict(layer).items() if k in ("name", "params", "sparsity", "representation", "bits")}
            for layer in result.layers
        ],
        "trials": [asdict(t) for t in result.trials],
    }


def timed(function, *args) -> dict:
    start = time.perf_counter()
    result = function(*args)
    return {
        "accuracy": result.accuracy,
        "packed_bytes": result.packed_bytes,
        "wall_s": time.perf_counter() - start,
        "sparsity": result.sparsity,
        "trials": result.trials,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    tuning = parser.add_argument_group("tuning (unset: the user defaults of core.config.LwctConfig)")
    tuning.add_argument("--epochs-per-step", type=int)
    tuning.add_argument("--prune-epochs", type=int)
    tuning.add_argument("--sparsity-grid", type=lambda s: [float(v) for v in s.split(",")])
    tuning.add_argument("--max-train-samples", type=int)
    tuning.add_argument("--prune-budget-share", type=float)
    tuning.add_argument("--distill", type=float)
    tuning.add_argument("--lr", type=float)
    tuning.add_argument(
        "--float-precision",
        choices=["float16", "float32"],
        help="storage precision of the weights left in float (lwct and the L1 pruning baseline)",
    )
    tuning.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other LwctConfig field, e.g. walk=layer (JSON values)",
    )
    parser.add_argument("--save-sqz", type=Path, help="also keep lwct's model.sqz here")
    parser.add_argument("--budget", type=float, default=1.0, help="allowed absolute drop, percentage points")
    parser.add_argument("--no-baselines", action="store_true", help="lwct only (for settings sweeps)")
    parser.add_argument("--no-lwct", action="store_true", help="the baselines only, at the same settings")
    parser.add_argument("--name", default="lwct_reference", help="results file bench/results/<name>.json")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2048 samples/epoch, 1 epoch, 2 levels")
    args = parser.parse_args()
    if args.quick:
        args.epochs_per_step, args.prune_epochs, args.sparsity_grid, args.max_train_samples = 1, 1, [0.5, 0.9], 2048

    model_dir, _ = ensure_sample_model("fashion-mnist")
    model = load_model(model_dir)
    data = normalize(load_dataset("sample:fashion-mnist"), model.preprocessing)
    baseline_accuracy = top1_accuracy(model.module, data.x_val, data.y_val)
    original_bytes = float32_bytes(model.module)
    flags = {name: getattr(args, name) for name in TUNING_FLAGS if getattr(args, name) is not None}
    flags |= {key: parse_value(value) for key, value in (option.split("=", 1) for option in args.option)}
    settings = LwctConfig(**flags)
    label = "defaults" if not flags else "tuned: " + " ".join(f"{k}={v}" for k, v in flags.items())
    config = CompressConfig(target=AccuracyTarget(max_drop=args.budget), device="cpu", lwct=settings)
    print(
        f"baseline lenet5 / fashion-mnist: top-1 {baseline_accuracy:.2f} %, {original_bytes} float32 bytes; "
        f"lwct {label}"
    )

    runs = {} if args.no_lwct else {"lwct": run_lwct(model, data, config, args.save_sqz)}
    if not args.no_baselines:
        runs["global_l1_pruning"] = timed(global_l1_pruning, model, data, settings, baseline_accuracy, args.budget)
        runs["int8_weight_only"] = timed(int8_weight_only, model, data)
    for run in runs.values():
        run["drop"] = baseline_accuracy - run["accuracy"]
        run["within_budget"] = run["drop"] <= args.budget
        run["compression_ratio"] = original_bytes / run["packed_bytes"]

    print(f"\n{'method':<18} {'top-1 %':>8} {'drop':>6} {'sparsity':>8} {'.sqz bytes':>10} {'ratio':>7} {'wall s':>7}")
    for name, run in runs.items():
        sparsity = "-" if run["sparsity"] is None else f"{run['sparsity']:.2f}"
        print(
            f"{name:<18} {run['accuracy']:>8.2f} {run['drop']:>6.2f} {sparsity:>8} {run['packed_bytes']:>10} "
            f"{run['compression_ratio']:>6.1f}x {run['wall_s']:>7.0f}"
        )
    versus, passed = {}, None
    if "lwct" in runs:
        ours = runs["lwct"]["compression_ratio"]
        versus = {name: ours / run["compression_ratio"] for name, run in runs.items() if name != "lwct"}
        for name, ratio in versus.items():
            print(f"lwct / {name}: {ratio:.2f}x smaller")
        passed = ours >= TARGET_RATIO and runs["lwct"]["within_budget"]
        print(f"lwct {ours:.1f}x (target ≥ {TARGET_RATIO:.0f}x within the budget) -> {'PASS' if passed else 'FAIL'}")
    if args.quick:
        return
    path = write_result(
        args.name,
        {
            "benchmark": "lwct reference workload: lenet5 / Fashion-MNIST, budget 1.0 point absolute",
            "setup": (
                "baseline = core.samples.ensure_sample_model('fashion-mnist'); accuracy = top-1 on the 10k validation "
                "split (also the split lwct and the pruning search select on); sizes = .sqz file bytes via pack_sqz; "
                "lwct accuracy measured on the module loaded back from its .sqz; CPU"
            ),
            "machine": machine(),
            "baseline": {"accuracy": baseline_accuracy, "float32_bytes": original_bytes},
            "budget_points": args.budget,
            "lwct_settings": settings.model_dump(),
            "lwct_label": label,
            "max_train_samples": args.max_train_samples,
            "effective_epochs": {
                "per_pruning_level": stage_epochs(settings, settings.prune_epochs, len(data.y_train)),
                "per_ternary_step": stage_epochs(settings, settings.epochs_per_step, len(data.y_train)),
            },
            "runs": runs,
            "lwct_over_baseline": versus,
            "target_ratio": TARGET_RATIO,
            "pass": passed,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
