"""lwct's user defaults (core.config.LwctConfig()) against the previous build's defaults (commit 6100030: 2 epochs per
step and per pruning level, lr 0.01, grid 0.5-0.97 without 0.85/0.93, float16 storage, the one-layer walk), same code
otherwise, same run, on four workloads, 1-point absolute budget:

- lenet5-fashion-mnist: the bundled sample baseline (the reference workload, bench/lwct_reference.py);
- lenet5-digits: the bundled digits sample;
- resnet20-fashion-mnist: ResNet-20 trained here on Fashion-MNIST average-pooled to 14×14 (8k training, 2k validation
  samples, 3 epochs), compressed with 2,048 training samples per epoch and no minimum step count (both settings);
- onnx-cnn-digits: a small conv-BN-ReLU CNN of this bench, trained on digits, exported to ONNX and loaded from it.

Size = bytes of the .sqz file; accuracy measured on the model loaded back from it. Writes
bench/results/lwct_defaults.json (rewritten after every run, so a cut run keeps what it measured).

    OMP_NUM_THREADS=1 .venv/bin/python bench/lwct_defaults.py [--workloads lenet5-digits,...]
        [--ablate grid_search=false] [--quick]
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from _common import machine, write_result
from torch import nn

from squeezer.core.artifacts.sqz import load_sqz, write_sqz
from squeezer.core.config import AccuracyTarget, CompressConfig, LwctConfig
from squeezer.core.intake.data import Dataset, load_dataset, normalize
from squeezer.core.intake.models import LoadedModel, load_model
from squeezer.core.intake.registry import build_architecture
from squeezer.core.measure import float32_bytes, top1_accuracy
from squeezer.core.methods.lwct import compress_lwct
from squeezer.core.samples import ensure_sample_model
from squeezer.core.train import fit

PREVIOUS_DEFAULTS = {
    "epochs_per_step": 2,
    "prune_epochs": 2,
    "lr": 0.01,
    "float_precision": "float16",
    "walk": "layer",
    "sparsity_grid": [0.5, 0.7, 0.8, 0.9, 0.95, 0.97],
    "grid_search": False,  # this build's: the previous one had none (float16 storage has no grid to coarsen anyway)
}
BUDGET = 1.0


def sample(name: str) -> tuple[LoadedModel, Dataset, dict]:
    model = load_model(ensure_sample_model(name)[0])
    return model, normalize(load_dataset(f"sample:{name}"), model.preprocessing), {}


def resnet20_fashion_mnist() -> tuple[LoadedModel, Dataset, dict]:
    full = load_dataset("sample:fashion-mnist")
    pool = nn.AvgPool2d(2)
    data = Dataset(
        name="fashion-mnist-14px",
        x_train=pool(full.x_train[:8000]),
        y_train=full.y_train[:8000],
        x_val=pool(full.x_val[:2000]),
        y_val=full.y_val[:2000],
        num_classes=10,
    )
    torch.manual_seed(0)
    args = {"num_classes": 10, "in_channels": 1, "input_size": 14}
    module = build_architecture("resnet20", args)
    fit(module, data.x_train, data.y_train, epochs=3, lr=0.05, lr_schedule="cosine", seed=0)
    model = LoadedModel.built(module.eval(), {"name": "resnet20", "args": args}, (1, 14, 14), 10)
    return model, data, {"max_train_samples": 2048, "min_steps_per_stage": 0}


def onnx_cnn_digits(tmp: Path) -> tuple[LoadedModel, Dataset, dict]:
    data = load_dataset("sample:digits")
    torch.manual_seed(0)
    module = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )
    fit(module, data.x_train, data.y_train, epochs=30, lr=0.05, lr_schedule="cosine", seed=0)
    path = tmp / "cnn.onnx"
    torch.onnx.export(
        module.eval(),
        torch.zeros(1, 1, 8, 8),
        str(path),
        dynamo=False,
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
    )
    return load_model(path), data, {}


def run(model: LoadedModel, data: Dataset, settings: LwctConfig) -> dict:
    config = CompressConfig(target=AccuracyTarget(max_drop=BUDGET), device="cpu", lwct=settings)
    start = time.perf_counter()
    result = compress_lwct(model, data, config)
    wall = time.perf_counter() - start
    with tempfile.TemporaryDirectory(prefix="squeezer-bench-") as tmp:
        path = Path(tmp) / "model.sqz"
        packed = write_sqz(path, model.with_module(result.module), result.layers)
        accuracy = top1_accuracy(load_sqz(path).module, data.x_val, data.y_val)
    baseline = result.baseline_accuracy
    return {
        "accuracy": accuracy,
        "drop": baseline - accuracy,
        "within_budget": baseline - accuracy <= BUDGET,
        "packed_bytes": packed,
        "compression_ratio": float32_bytes(model.module) / packed,
        "wall_s": wall,
        "stages": len(result.trials),
        "ternary_stages": sum(t.stage == "ternary" for t in result.trials),
        "ternary_layers": [layer.name for layer in result.layers if layer.representation == "ternary"],
        "sparsity": next((t.sparsity for t in reversed(result.trials) if t.stage == "prune" and t.accepted), None),
        "baseline_accuracy": baseline,
    }


def ablation(item: str) -> tuple[str, object]:
    key, _, value = item.partition("=")
    return key, json.loads(value)


def main() -> None:
    workloads = {
        "lenet5-fashion-mnist": lambda tmp: sample("fashion-mnist"),
        "lenet5-digits": lambda tmp: sample("digits"),
        "resnet20-fashion-mnist": lambda tmp: resnet20_fashion_mnist(),
        "onnx-cnn-digits": onnx_cnn_digits,
    }
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", default=",".join(workloads))
    parser.add_argument("--name", default="lwct_defaults")
    parser.add_argument("--quick", action="store_true", help="smoke run: 512 samples/epoch, 20 steps, nothing written")
    parser.add_argument(
        "--ablate",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="also run the defaults with one setting changed (e.g. grid_search=false), to measure what a default buys",
    )
    args = parser.parse_args()
    ablations = {f"defaults, {item}": dict([ablation(item)]) for item in args.ablate}
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="squeezer-defaults-") as tmp:
        for name in args.workloads.split(","):
            model, data, caps = workloads[name](Path(tmp))
            if args.quick:
                caps = {"max_train_samples": 512, "min_steps_per_stage": 20, "sparsity_grid": [0.5, 0.9]}
            results[name] = {"caps": caps}
            for label, settings in (("previous_defaults", PREVIOUS_DEFAULTS), ("defaults", {}), *ablations.items()):
                outcome = run(model, data, LwctConfig(**{**settings, **caps}))
                results[name][label] = outcome
                print(
                    f"{name:<24} {label:<26} top-1 {outcome['accuracy']:6.2f} (drop {outcome['drop']:5.2f}) "
                    f"{outcome['packed_bytes']:>8} B {outcome['compression_ratio']:6.1f}x {outcome['stages']:>3} "
                    f"stages {outcome['wall_s']:6.0f} s",
                    flush=True,
                )
            previous, current = results[name]["previous_defaults"], results[name]["defaults"]
            results[name]["ratio_over_previous"] = current["compression_ratio"] / previous["compression_ratio"]
            results[name]["no_worse"] = current["within_budget"] and (
                current["compression_ratio"] >= previous["compression_ratio"] or not previous["within_budget"]
            )
            print(
                f"{name:<24} defaults / previous defaults: {results[name]['ratio_over_previous']:.2f}x the ratio, "
                f"{'no worse' if results[name]['no_worse'] else 'WORSE'}",
                flush=True,
            )
            if not args.quick:
                write_result(
                    args.name,
                    {
                        "benchmark": "lwct user defaults vs the previous build's defaults, 1-point budget",
                        "previous_defaults": PREVIOUS_DEFAULTS,
                        "defaults": LwctConfig().model_dump(),
                        "machine": machine(),
                        "workloads": results,
                    },
                )


if __name__ == "__main__":
    main()
