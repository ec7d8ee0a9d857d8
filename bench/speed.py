"""Issue 28's speed benchmark: latency-aware structural pruning (core.methods.speed: a latency table measured in
onnxruntime, residual blocks removed by measured sensitivity, channels chosen per group by importance per
millisecond at counts the runtime runs fastest) against Torch-Pruning's group-norm pruner (BasePruner with
GroupMagnitudeImportance(p=2), one uniform ratio searched so its MACs match ours), both fine-tuned with the same
epochs, rate and distillation from the baseline. Per network: MACs removed, accuracy drop, and the onnxruntime
speed-up over the baseline at batch 1 and 32, with one thread and with every core, each pruned file timed against
the baseline A/B interleaved in one process (core.measure.compare.compare_onnx: the median per-round ratio with its
95 % interval; a difference inside 5 % or an interval that spans it is reported as none, speed-up 1.0).

Networks: lenet5 (sample:digits, 8×8), resnet20 and resnet56 (Fashion-MNIST 28×28, a training subset),
mobilenet_v2 (torchvision, weights=None, Fashion-MNIST padded to 32×32 on three channels) and unet-small
(sample-style synthetic shapes drawn at 64×64 and scaled to --unet-size, 128×128 by default: 256×256 trains too
slowly on this 2-core machine for a default run; pass --unet-size 256 for it). Baselines are trained here,
briefly (a few thousand samples, one or two epochs), so their accuracies are far from the published ones; nothing
is cached. Each network's row is written as it finishes, replacing that network's row of an earlier run.

    OMP_NUM_THREADS=1 .venv/bin/python bench/speed.py                  # every network -> bench/results/speed.json
    OMP_NUM_THREADS=1 .venv/bin/python bench/speed.py --only resnet20 --speedup 2 --results speed_resnet20_2x
    OMP_NUM_THREADS=1 .venv/bin/python bench/speed.py --quick          # CI-sized smoke run -> speed_quick.json
"""

import argparse
import copy
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn
from torchvision import models

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write_result  # noqa: E402

from squeezer.core.artifacts.onnx_export import module_onnx  # noqa: E402
from squeezer.core.intake.data import load_dataset, synthetic_shapes  # noqa: E402
from squeezer.core.intake.registry import build_architecture  # noqa: E402
from squeezer.core.measure import count_macs, metric_function  # noqa: E402
from squeezer.core.measure.compare import compare_onnx  # noqa: E402
from squeezer.core.methods.latency_table import Runtime  # noqa: E402
from squeezer.core.methods.speed import plan_for_speed  # noqa: E402
from squeezer.core.train import fit  # noqa: E402

NETWORKS = ("lenet5", "resnet20", "resnet56", "mobilenet_v2", "unet-small")
DISTILL = 0.5


@dataclass
class Workload:
    name: str
    module: nn.Module
    input_shape: tuple[int, ...]
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    metric: str
    epochs: int  # baseline training; recovery gets `recovery_epochs`
    recovery_epochs: int
    lr: float


def _first(samples, count: int) -> torch.Tensor:
    """The first `count` samples as a float tensor (the loaders keep training images stored, converted per batch)."""
    return samples[:count].float() if isinstance(samples, torch.Tensor) else samples.batch(torch.arange(count))


def _fashion(train: int, val: int, pad_rgb: bool):
    data = load_dataset("sample:fashion-mnist")
    x_train, x_val = _first(data.x_train, train), _first(data.x_val, val)
    if pad_rgb:
        x_train, x_val = (F.pad(x, (2, 2, 2, 2)).repeat(1, 3, 1, 1) for x in (x_train, x_val))
    return x_train, data.y_train[:train], x_val, data.y_val[:val]


def workload(name: str, quick: bool, unet_size: int, val_samples: int = 2000) -> Workload:
    torch.manual_seed(0)
    scale = 0.1 if quick else 1.0
    if name == "lenet5":
        data = load_dataset("sample:digits")
        module = build_architecture("lenet5", {"input_size": 8, "in_channels": 1, "num_classes": 10})
        x = _first(data.x_train, len(data.y_train))
        return Workload(name, module, (1, 8, 8), x, data.y_train, data.x_val, data.y_val, "top1", 40, 10, 0.05)
    if name in ("resnet20", "resnet56"):
        x, y, xv, yv = _fashion(int(5000 * scale), val_samples if not quick else 500, pad_rgb=False)
        module = build_architecture(name, {"in_channels": 1, "input_size": 28})
        epochs = 1 if quick or name == "resnet56" else 2
        return Workload(name, module, (1, 28, 28), x, y, xv, yv, "top1", epochs, epochs, 0.05)
    if name == "mobilenet_v2":
        x, y, xv, yv = _fashion(int(5000 * scale), val_samples if not quick else 500, pad_rgb=True)
        module = models.mobilenet_v2(weights=None, num_classes=10)
        epochs = 1 if quick else 2
        return Workload(name, module, (3, 32, 32), x, y, xv, yv, "top1", epochs, epochs, 0.05)
    size = 64 if quick else unet_size
    count = 64 if quick else 320
    images, masks = synthetic_shapes(count + 64, size=64, seed=0)
    x = F.interpolate(torch.from_numpy(images), size=(size, size), mode="bilinear", align_corners=False)
    m = F.interpolate(torch.from_numpy(masks)[:, None].float(), size=(size, size), mode="nearest")[:, 0].long()
    module = build_architecture("unet-small", {})
    epochs = 1 if quick else 4
    return Workload(
        name, module, (3, size, size), x[:count], m[:count], x[count:], m[count:], "pixel_accuracy", epochs, 2, 0.05
    )


def train(module: nn.Module, work: Workload, epochs: int, seed: int, teacher: nn.Module | None = None) -> float:
    started = time.monotonic()
    fit(
        module,
        work.x_train,
        work.y_train,
        epochs=epochs,
        lr=work.lr,
        batch_size=32 if work.name == "unet-small" else 128,
        seed=seed,
        lr_schedule="cosine",
        teacher=teacher,
        distill_weight=DISTILL if teacher is not None else 0.0,
    )
    return time.monotonic() - started


def torch_pruning_to_macs(base: nn.Module, work: Workload, macs: int, steps: int = 8) -> tuple[nn.Module, float]:
    """Torch-Pruning's group-norm pruner at the one uniform ratio (bisected) whose MACs come closest to `macs` from
    above or equal: the output layer is left whole, as ours leaves it."""
    example = torch.zeros(1, *work.input_shape)
    low, high, best = 0.0, 0.95, (copy.deepcopy(base), 0.0)
    for _ in range(steps):
        ratio = (low + high) / 2
        module = copy.deepcopy(base)
        output = [m for m in module.modules() if isinstance(m, nn.Conv2d | nn.Linear)][-1]
        tp.pruner.BasePruner(
            module,
            example,
            importance=tp.importance.GroupMagnitudeImportance(p=2),
            pruning_ratio=ratio,
            ignored_layers=[output],
        ).step()
        if count_macs(module, work.input_shape) >= macs:
            low, best = ratio, (module, ratio)
        else:
            high = ratio
    return best


def speedups(
    files: dict[str, bytes], input_shape, batch: int, threads: int, seconds: float, runtime: str = "onnxruntime-cpu"
) -> dict:
    """Each pruned file against the baseline, A/B interleaved in this process (core.measure.compare.compare_onnx):
    the median per-round ratio, its 95 % interval and the verdict ("no difference" unless the interval clears
    5 %)."""
    return {
        name: compare_onnx(
            files["baseline"], data, input_shape, batch=batch, threads=threads, budget_s=seconds, runtime=runtime
        ).as_dict()
        for name, data in files.items()
        if name != "baseline"
    }


def run_network(name: str, args) -> dict:
    work = workload(name, args.quick, args.unet_size)
    score = metric_function(work.metric)
    print(f"[{time.strftime('%H:%M:%S')}] {name}: training the baseline ({work.epochs} epochs)", flush=True)
    base_seconds = train(work.module, work, work.epochs, seed=0)
    base = work.module.eval()
    baseline = score(base, work.x_val, work.y_val)
    macs = count_macs(base, work.input_shape)
    sensitivity = lambda m: score(m, work.x_val[:500], work.y_val[:500])  # noqa: E731
    started = time.monotonic()
    ours, _, plan = plan_for_speed(
        base,
        work.input_shape,
        args.speedup,
        score=sensitivity,
        floor=sensitivity(base) - args.block_drop,
        runtime=Runtime(threads=1),
    )
    plan_seconds = time.monotonic() - started
    theirs, ratio = torch_pruning_to_macs(base, work, count_macs(ours, work.input_shape))
    rows = {"baseline": {"accuracy": round(baseline, 2), "macs": macs, "train_s": round(base_seconds, 1)}}
    files = {"baseline": module_onnx(base, work.input_shape)}
    for label, module in (("ours", ours), ("torch_pruning", theirs)):
        print(f"[{time.strftime('%H:%M:%S')}] {name}: recovering {label} ({work.recovery_epochs} epochs)", flush=True)
        seconds = train(module, work, work.recovery_epochs, seed=1, teacher=base)
        accuracy = score(module.eval(), work.x_val, work.y_val)
        pruned_macs = count_macs(module, work.input_shape)
        rows[label] = {
            "accuracy": round(accuracy, 2),
            "drop": round(baseline - accuracy, 2),
            "macs": pruned_macs,
            "macs_removed": round(1 - pruned_macs / macs, 4),
            "recovery_s": round(seconds, 1),
        }
        files[label] = module_onnx(module, work.input_shape)
    rows["ours"] |= {
        "blocks_removed": [b.name for b in plan.blocks],
        "channels_removed": plan.removed_channels,
        "predicted_conv_speedup": round(plan.predicted_speedup, 3),
        "plan_s": round(plan_seconds, 1),
        "table_s": round(plan.table_seconds, 1),
    }
    rows["torch_pruning"]["ratio"] = round(ratio, 4)
    speed = {}
    for threads in sorted({1, os.cpu_count() or 1}):
        for batch in (1, 32):
            key = f"batch{batch}_threads{threads}"
            speed[key] = speedups(files, work.input_shape, batch, threads, args.seconds, args.runtime)
            shown = {name: (c["speedup"], c["verdict"]) for name, c in speed[key].items()}
            print(f"    {key}: {shown}", flush=True)
    return {
        "input_shape": list(work.input_shape),
        "train_samples": len(work.y_train),
        "val_samples": len(work.y_val),
        "metric": work.metric,
        "epochs": {"baseline": work.epochs, "recovery": work.recovery_epochs, "distill": DISTILL},
        **rows,
        "onnxruntime": speed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", choices=NETWORKS, help="a network to run (repeatable)")
    parser.add_argument("--quick", action="store_true", help="tiny subsets and one epoch: a smoke run")
    parser.add_argument("--speedup", type=float, default=3.0, help="our plan's predicted speed-up target")
    parser.add_argument("--block-drop", type=float, default=5.0, help="points a block's removal may cost unrecovered")
    parser.add_argument("--unet-size", type=int, default=128, help="the U-Net's input side (a multiple of 4)")
    parser.add_argument("--seconds", type=float, default=3.0, help="timing budget per comparison")
    parser.add_argument("--results", help="results file name under bench/results (default speed, or speed_quick)")
    parser.add_argument(
        "--runtime",
        default="onnxruntime-cpu",
        choices=["onnxruntime-cpu", "onnxruntime-cuda"],
        help="where the pruned files are timed (the plan's latency table is measured on the CPU either way)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    name = args.results or ("speed_quick" if args.quick else "speed")
    settings = {"speedup_target": args.speedup, "block_drop": args.block_drop, "runtime": args.runtime}
    run_and_write(name, args.only or NETWORKS, lambda network: run_network(network, args), settings)


def run_and_write(results: str, networks, run, settings: dict) -> None:
    """Runs each network and writes its row to bench/results/`results`.json as it finishes, with how it was run."""
    for network in networks:
        started = time.monotonic()
        result = run(network)
        result["run"] = {
            "command": " ".join(sys.argv),
            "machine": machine(),
            "load_average_after": [round(v, 2) for v in os.getloadavg()],
            **settings,
            "seconds": round(time.monotonic() - started, 1),
        }
        path = write_result(results, {"networks": _earlier(results) | {network: result}})
        print(f"wrote {network} to {path}", flush=True)


def _earlier(name: str) -> dict:
    """The networks an earlier run wrote to the same results file: each network's row is replaced by its own rerun."""
    path = Path(__file__).resolve().parent / "results" / f"{name}.json"
    return json.loads(path.read_text()).get("networks", {}) if path.is_file() else {}


if __name__ == "__main__":
    main()
