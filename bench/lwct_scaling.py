"""How lwct's σ-constraining walk scales with depth: training stages, wall and CPU time, compression ratio and
accuracy of walk=group (the default) and walk=layer (the paper's one layer per stage) on CIFAR-style ResNets of 20,
56 and 110 layers (core.intake.registry.CifarResNet, one input channel), in the same run. Small data on CPU, short
stages:
sklearn digits (8×8; 1,437 training, 360 validation images), each baseline trained here (15 epochs), then pruned to
one fixed sparsity (one stage) and walked with 512 training samples per epoch, 2 epochs per stage; 2-point budget.
Size = bytes of the .sqz file (pack_sqz); CPU s = the process's CPU time (one thread), which other jobs on the machine
inflate less than the wall time. Writes bench/results/lwct_scaling.json after every run.

    OMP_NUM_THREADS=1 .venv/bin/python bench/lwct_scaling.py [--depths 20,56,110] [--walks group,layer] [--quick]

A walk is group, layer, or group:<group_training> (group:paced, group:sqrt), each against layer and paced against
group (linear, the default) when both ran.
"""

import argparse
import time

import torch
from _common import machine, write_result

from squeezer.core.artifacts.sqz import pack_sqz
from squeezer.core.config import AccuracyTarget, CompressConfig, LwctConfig
from squeezer.core.intake.data import load_dataset
from squeezer.core.intake.models import LoadedModel
from squeezer.core.intake.registry import CifarResNet
from squeezer.core.measure import float32_bytes, top1_accuracy
from squeezer.core.methods.lwct import compress_lwct, prunable_layers
from squeezer.core.train import fit

BUDGET = 2.0
STAGE = {"sparsity": 0.5, "prune_epochs": 1, "epochs_per_step": 2, "max_train_samples": 512, "min_steps_per_stage": 0}


def baseline(depth: int, data, epochs: int) -> LoadedModel:
    torch.manual_seed(depth)
    module = CifarResNet(depth, num_classes=10, in_channels=1, input_size=8)
    fit(module, data.x_train, data.y_train, epochs=epochs, lr=0.05, lr_schedule="cosine", seed=depth)
    return LoadedModel.built(module.eval(), {"name": f"resnet{depth}", "args": {"in_channels": 1}}, (1, 8, 8), 10)


def walk(model: LoadedModel, data, name: str, stage: dict) -> dict:
    """One walk: `name` is group or layer, or group:<group_training> (group:paced)."""
    walk_name, _, training = name.partition(":")
    lwct = LwctConfig(walk=walk_name, **({"group_training": training} if training else {}), **stage)
    config = CompressConfig(target=AccuracyTarget(max_drop=BUDGET), device="cpu", lwct=lwct)
    rounds: list[int] = []  # training rounds per walk stage (group_training=paced stops early; others train one)

    def count_rounds(event) -> None:
        if event.stage == "train" and "layers" in event.data:
            rounds.append(1)
        elif event.stage == "train" and "round" in event.data:
            rounds[-1] = event.data["round"]

    start, cpu_start = time.perf_counter(), time.process_time()
    result = compress_lwct(model, data, config, on_event=count_rounds)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    packed = len(pack_sqz(model.with_module(result.module), result.layers))
    ternary = [t for t in result.trials if t.stage == "ternary"]
    return {
        "walk": name,
        "stages": len(result.trials),
        "walk_stages": len(ternary),
        "wall_s": wall,
        "cpu_s": cpu,
        "accuracy": result.accuracy,
        "drop": result.baseline_accuracy - result.accuracy,
        "target_met": result.target_met,
        "packed_bytes": packed,
        "compression_ratio": float32_bytes(model.module) / packed,
        "ternary_layers": sum(layer.representation == "ternary" for layer in result.layers),
        "group_sizes": [len(t.layers) for t in ternary],
        "accepted": [t.accepted for t in ternary],
        "rounds": rounds,
        "accuracies": [round(t.accuracy, 2) for t in ternary],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depths", default="20,56,110")
    parser.add_argument("--walks", default="group,layer")
    parser.add_argument("--name", default="lwct_scaling", help="results file: bench/results/<name>.json")
    parser.add_argument("--quick", action="store_true", help="smoke run: depth 20, 1 baseline epoch, nothing written")
    args = parser.parse_args()
    data = load_dataset("sample:digits")
    depths, epochs, stage = [int(d) for d in args.depths.split(",")], 15, STAGE
    if args.quick:
        depths, epochs, stage = [20], 1, {**STAGE, "max_train_samples": 128, "epochs_per_step": 1}
    nets: dict = {}
    for depth in depths:
        model = baseline(depth, data, epochs)
        layers = len(prunable_layers(model.module))
        runs: dict[str, dict] = {}
        nets[f"resnet{depth}"] = net = {
            "prunable_layers": layers,
            "baseline_accuracy": top1_accuracy(model.module, data.x_val, data.y_val),
            "runs": runs,
        }
        for name in args.walks.split(","):
            run = runs[name] = walk(model, data, name, stage)
            print(
                f"resnet{depth:<4} {layers:>4} layers  walk={name:<6} {run['walk_stages']:>4} walk stages "
                f"{run['wall_s']:>7.0f} s ({run['cpu_s']:.0f} s CPU)  {run['compression_ratio']:6.1f}x  "
                f"drop {run['drop']:5.2f}  "
                f"{run['ternary_layers']} ternary",
                flush=True,
            )
        for name, reference in [(name, "layer") for name in runs if name != "layer"] + [("group:paced", "group")]:
            if {name, reference} <= set(runs):
                ratios = net[f"{name}_over_{reference}".replace(":", "_")] = {
                    key: runs[name][key] / max(runs[reference][key], 1e-9)
                    for key in ("walk_stages", "wall_s", "cpu_s", "compression_ratio")
                }
                print(
                    f"resnet{depth:<4} {name} / {reference}: {ratios['walk_stages']:.2f}x the stages, "
                    f"{ratios['wall_s']:.2f}x the time ({ratios['cpu_s']:.2f}x the CPU), "
                    f"{ratios['compression_ratio']:.2f}x the ratio",
                    flush=True,
                )
        if not args.quick:
            write_result(
                args.name,
                {
                    "benchmark": "lwct walk=group vs walk=layer against depth (CIFAR-style ResNets, digits 8x8, CPU)",
                    "setup": {"budget_points": BUDGET, "baseline_epochs": epochs, "lwct": stage},
                    "machine": machine(),
                    "nets": nets,
                },
            )


if __name__ == "__main__":
    main()
