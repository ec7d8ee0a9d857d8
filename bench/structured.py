"""Issue 4's structured-compression figures, each at a 1-point absolute accuracy budget, every run through
core.pipeline.compress_files (so every figure is the report's own: .sqz bytes, MACs via core.measure.count_macs,
single-thread CPU latency of the model loaded back from model.sqz):

- resnet20-filter: resnet20 (1 input channel, 28×28) trained here on Fashion-MNIST, method=filter: FLOPs removed
  (paper: −85 %) and CPU latency speedup at batch 32;
- unet-filter: unet-small trained here on sample:shapes, method=filter, metric pixel_accuracy: FLOPs removed;
- lenet5-group: the bundled LeNet-5 Fashion-MNIST sample, method=group: neurons kept in the first fully-connected
  layer (paper: 30 %);
- lenet5-auto: auto against lwct, filter and group alone on that LeNet-5: compression ratio and FLOPs;
- torch-pruning: Torch-Pruning's global group-norm (GroupMagnitudeImportance, p=2) channel pruning, walked over the
  same levels with the same fine-tuning (distillation from the baseline included) as our filter method's pruning
  stage, without our bisection steps, against filter (resnet20, lenet5) and
  group (lenet5); sizes are the packed .sqz of the pruned dense model, measured like ours.

Training data are subsets where the time budget needs it (recorded under "data" and "settings" in the JSON);
baselines trained here are cached under ~/.cache/squeezer/bench (SQUEEZER_CACHE_DIR) so reruns skip them. The full
run took 1,356 s (23 min) with the baselines cached, one thread; training the ResNet-20 baseline (4 epochs) adds
about 12 min on a cold cache. A --part run merges its part into the existing
results file.

    OMP_NUM_THREADS=1 .venv/bin/python bench/structured.py           # every part -> bench/results/structured.json
    OMP_NUM_THREADS=1 .venv/bin/python bench/structured.py --part resnet20-filter --part torch-pruning
    OMP_NUM_THREADS=1 .venv/bin/python bench/structured.py --quick          # smoke run, tiny subsets, nothing written

Parts: resnet20-filter, unet-filter, lenet5-group, lenet5-auto, torch-pruning. Options: --budget POINTS (1.0).
"""

import argparse
import copy
import functools
import hashlib
import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch_pruning as tp
from _common import REPO, machine, write_result
from torch import nn

from squeezer.core.artifacts.report import build_report
from squeezer.core.artifacts.sqz import load_sqz, write_sqz
from squeezer.core.config import AccuracyTarget, CompressConfig, FilterConfig
from squeezer.core.graph import producer_widths, with_channels
from squeezer.core.intake.data import load_dataset, normalize
from squeezer.core.intake.models import LoadedModel, load_model, save_model_dir
from squeezer.core.intake.registry import build_architecture
from squeezer.core.measure import float32_bytes, metric_function
from squeezer.core.pipeline import ModelSource, _measures, compress_files
from squeezer.core.samples import cache_root, ensure_sample_model
from squeezer.core.train import fit, fit_options, stage_epochs

PARTS = ("resnet20-filter", "unet-filter", "lenet5-group", "lenet5-auto", "torch-pruning")
PAPER = {"filter_flops_removed_pct": 85.0, "group_first_fc_kept_pct": 30.0}
SEGMENTATION = {"task": "segmentation", "metric": "pixel_accuracy"}
CLASSIFICATION = {"task": "classification", "metric": "top1"}
TITLES = {
    "lenet5": "lenet5 / Fashion-MNIST",
    "resnet20": "resnet20 / Fashion-MNIST",
    "unet": "unet-small / sample:shapes",
}

# Per workload: how its baseline is trained (None: the bundled sample), how many validation samples the budget is
# judged on (None: all), and the methods' training settings. Stage lengths are capped so every part fits the budget.
FULL = {
    "resnet20": {
        "baseline": {"epochs": 4, "lr": 0.05, "lr_schedule": "cosine", "batch_size": 128},  # 4 full epochs
        "val_samples": 2000,
        "filter": {
            "init": ["ones", "l1"],
            "penalty": 0.2,
            "importance_epochs": 1,
            "epochs_per_step": 1,
            "min_steps_per_stage": 0,
            "max_train_samples": 15360,
            "levels": [0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8],
        },  # small steps: each level recovers
    },
    "unet": {
        "baseline": {"epochs": 15, "lr": 0.05, "lr_schedule": "cosine", "batch_size": 32},
        "val_samples": None,
        "filter": {"importance_epochs": 1, "epochs_per_step": 2, "min_steps_per_stage": 0, "batch_size": 32},
    },
    "lenet5": {
        "baseline": None,
        "val_samples": None,
        "filter": {"max_train_samples": 20000},
        "group": {"max_train_samples": 20000},
        "lwct": {"max_train_samples": 20000},
    },
}
_QUICK_STAGE = {"min_steps_per_stage": 0, "max_train_samples": 256, "epochs_per_step": 1}
QUICK = {
    "resnet20": {
        "baseline": {"epochs": 1, "lr": 0.05, "batch_size": 128, "max_samples": 1024},
        "val_samples": 256,
        "filter": {**_QUICK_STAGE, "init": ["l1"], "importance_epochs": 1, "levels": [0.3, 0.6]},
    },
    "unet": {
        "baseline": {"epochs": 2, "lr": 0.05, "batch_size": 32},
        "val_samples": None,
        "filter": {**_QUICK_STAGE, "init": ["l1"], "importance_epochs": 1, "levels": [0.3, 0.6], "batch_size": 32},
    },
    "lenet5": {
        "baseline": None,
        "val_samples": None,
        "filter": {**_QUICK_STAGE, "init": ["l1"], "importance_epochs": 1, "levels": [0.3, 0.6]},
        "group": {**_QUICK_STAGE, "penalties": [0.1, 0.5], "sparse_epochs": 1},
        "lwct": {**_QUICK_STAGE, "sparsity_grid": [0.5, 0.9], "prune_epochs": 1},
    },
}


@dataclass(frozen=True)
class Workload:
    key: str
    title: str
    model_dir: Path
    data: str  # a sample name or an .npz path, as compress_files takes it
    task: str
    metric: str
    baseline: dict  # how the baseline was made and what it scores
    data_note: str


def cache_dir() -> Path:
    return cache_root() / "bench"


def digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:10]


def publish(entry: Path, build) -> Path:
    """`build(staging_dir)` once into `entry` (atomically: a half-written cache is never reused)."""
    if not entry.exists():
        entry.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=entry.parent))
        try:
            build(staging)
            staging.rename(entry)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return entry


def val_subset(sample: str, count: int | None) -> str:
    """`sample` with only the first `count` validation samples, as an .npz (uint8 images are stored exactly)."""
    if count is None:
        return sample

    def build(staging: Path) -> None:
        data = load_dataset(sample)

        def as_uint8(x: torch.Tensor) -> np.ndarray:  # the samples are uint8 / 255
            return (x * 255).round().to(torch.uint8).numpy()

        np.savez(
            staging / "data.npz",
            x_train=as_uint8(data.x_train),
            y_train=data.y_train.numpy(),
            x_val=as_uint8(data.x_val[:count]),
            y_val=data.y_val[:count].numpy(),
        )

    name = sample.removeprefix("sample:")
    return str(publish(cache_dir() / f"{name}-val{count}", build) / "data.npz")


def trained_baseline(architecture: dict, data_source: str, recipe: dict, metric: str) -> tuple[Path, dict]:
    """(model directory, {accuracy, recipe, train_s}) of `architecture` trained on `data_source` with `fit(**recipe)`,
    seed 0, one thread; cached by everything that shapes the weights."""
    key = {"architecture": architecture, "data": data_source, "recipe": recipe}

    def build(staging: Path) -> None:
        data = load_dataset(data_source)
        torch.manual_seed(0)
        module = build_architecture(architecture["name"], architecture["args"])
        start = time.perf_counter()
        fit(module, data.x_train, data.y_train, seed=0, **recipe)
        train_s = time.perf_counter() - start
        model = LoadedModel.built(module, architecture, data.input_shape, data.num_classes)
        save_model_dir(model, staging / "model")
        accuracy = metric_function(metric)(module, data.x_val, data.y_val)
        (staging / "baseline.json").write_text(
            json.dumps({**key, "metric": metric, "accuracy": accuracy, "train_s": train_s})
        )

    entry = publish(cache_dir() / f"{architecture['name']}-{digest(key)}", build)
    return entry / "model", json.loads((entry / "baseline.json").read_text())


@functools.cache
def workload(key: str, quick: bool) -> Workload:
    plan = (QUICK if quick else FULL)[key]
    if key == "lenet5":
        model_dir, accuracy = ensure_sample_model("fashion-mnist")
        return Workload(
            key,
            TITLES[key],
            model_dir,
            "sample:fashion-mnist",
            **CLASSIFICATION,
            baseline={"source": "core.samples.ensure_sample_model('fashion-mnist')", "accuracy": accuracy},
            data_note="60k train, full 10k validation",
        )
    if key == "resnet20":
        data = val_subset("sample:fashion-mnist", plan["val_samples"])
        architecture = {"name": "resnet20", "args": {"in_channels": 1, "num_classes": 10, "input_size": 28}}
        model_dir, baseline = trained_baseline(architecture, data, plan["baseline"], "top1")
        return Workload(
            key,
            TITLES[key],
            model_dir,
            data,
            **CLASSIFICATION,
            baseline=baseline,
            data_note=f"60k train; validation = the first {plan['val_samples']} of the 10k test split",
        )
    architecture = {"name": "unet-small", "args": {"in_channels": 3, "num_classes": 3, "width": 16}}
    model_dir, baseline = trained_baseline(architecture, "sample:shapes", plan["baseline"], "pixel_accuracy")
    return Workload(
        key,
        TITLES[key],
        model_dir,
        "sample:shapes",
        **SEGMENTATION,
        baseline=baseline,
        data_note="sample:shapes (synthetic): 1000 train, 200 validation images, 32×32",
    )


def method_settings(key: str, quick: bool) -> dict:
    plan = (QUICK if quick else FULL)[key]
    return {name: value for name, value in plan.items() if name in ("filter", "group", "lwct")}


def config_for(work: Workload, method: str, quick: bool, budget: float) -> CompressConfig:
    target = AccuracyTarget(max_drop=budget, metric=work.metric)
    return CompressConfig(
        method=method, task=work.task, device="cpu", target=target, **method_settings(work.key, quick)
    )


def print_event(event) -> None:
    if event.stage in ("step", "done"):
        print(f"    [{time.strftime('%H:%M:%S')}] {event.message}", flush=True)


@functools.cache
def ours(key: str, method: str, quick: bool, budget: float) -> dict:
    """The report of compress_files for `method` on workload `key` (memoised: parts share runs)."""
    work = workload(key, quick)
    print(f"  {method} on {work.title} ...", flush=True)
    with tempfile.TemporaryDirectory(prefix="squeezer-bench-") as out:
        report = compress_files(
            ModelSource(path=work.model_dir),
            work.data,
            Path(out),
            config_for(work, method, quick, budget),
            on_event=print_event,
        )
    return summarize(report, {row["name"]: [row["channels_kept"], row["channels_before"]] for row in report["layers"]})


def summarize(report: dict, channels: dict) -> dict:
    """The figures compared across methods, derived from a report the same way for ours and Torch-Pruning's."""
    base, comp = report["baseline"], report["compressed"]
    return {
        "accuracy": comp["accuracy"],
        "baseline_accuracy": base["accuracy"],
        "accuracy_drop": report["accuracy_drop"],
        "target_met": report["target_met"],
        "params": comp["params"],
        "baseline_params": base["params"],
        "flops": comp["flops"],
        "baseline_flops": base["flops"],
        "flops_removed_pct": 100.0 * (1 - comp["flops"] / base["flops"]),
        "flops_reduction": report["flops_reduction"],
        "size_bytes": comp["size_bytes"],
        "baseline_float32_bytes": base["size_bytes"],
        "compression_ratio": report["compression_ratio"],
        "latency_ms": comp["latency_ms"],
        "baseline_latency_ms": base["latency_ms"],
        "latency_ms_batch32": comp["latency_ms_batch32"],
        "baseline_latency_ms_batch32": base["latency_ms_batch32"],
        "latency_speedup": base["latency_ms"] / comp["latency_ms"],
        "latency_speedup_batch32": base["latency_ms_batch32"] / comp["latency_ms_batch32"],
        "wall_s": report["duration_s"],
        "channels_kept_of": channels,
        "trials": [
            {k: t[k] for k in ("stage", "accuracy", "compression_ratio", "accepted", "sparsity")}
            for t in report["trials"]
        ],
    }


def torch_pruning(key: str, quick: bool, budget: float) -> dict:
    """Torch-Pruning global group-norm pruning at the filter method's levels and per-level fine-tuning; the most
    pruned level within the budget, measured exactly as compress_files measures (from its .sqz, loaded back)."""
    work = workload(key, quick)
    print(f"  torch-pruning on {work.title} ...", flush=True)
    started = time.monotonic()
    model = load_model(work.model_dir)
    data = normalize(load_dataset(work.data), model.preprocessing)
    settings = FilterConfig(**method_settings(key, quick)["filter"])
    score = metric_function(work.metric)
    baseline_accuracy = score(model.module, data.x_val, data.y_val)
    module = copy.deepcopy(model.module).float().cpu().eval()
    output_layer = [m for m in module.modules() if isinstance(m, nn.Conv2d | nn.Linear)][-1]
    levels = sorted(settings.levels)
    pruner = tp.pruner.BasePruner(
        module,
        torch.zeros(1, *model.input_shape),
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        global_pruning=True,
        pruning_ratio=levels[-1],
        max_pruning_ratio=0.95,
        iterative_steps=len(levels),
        iterative_pruning_ratio_scheduler=lambda ratio, steps: [0.0, *levels],
        ignored_layers=[output_layer],
    )
    epochs = stage_epochs(settings, settings.epochs_per_step, len(data.y_train))
    best, best_accuracy, trials = copy.deepcopy(module), baseline_accuracy, []
    teacher = copy.deepcopy(model.module).float().cpu().eval() if settings.distill else None  # as ours fine-tune
    for i, level in enumerate(levels):
        pruner.step()
        fit(
            module,
            data.x_train,
            data.y_train,
            epochs=epochs,
            seed=100 + i,
            teacher=teacher,
            distill_weight=settings.distill,
            **fit_options(settings),
        )
        accuracy = score(module, data.x_val, data.y_val)
        within = baseline_accuracy - accuracy <= budget
        trials.append(
            {"stage": "prune", "sparsity": level, "accuracy": accuracy, "accepted": within, "compression_ratio": None}
        )
        print(
            f"    [{time.strftime('%H:%M:%S')}] level {level:.2f}: {accuracy:.2f} "
            f"({'accepted' if within else 'rejected'})",
            flush=True,
        )
        if not within:
            break
        best, best_accuracy = copy.deepcopy(module).eval(), accuracy
    with tempfile.TemporaryDirectory(prefix="squeezer-bench-") as out:
        path = Path(out) / "model.sqz"
        packed = write_sqz(path, with_channels(model, best), [])
        reloaded = load_sqz(path)
        baseline = _measures(model.module, model.input_shape, data, float32_bytes(model.module), work.metric)
        compressed = _measures(reloaded.module, reloaded.input_shape, data, packed, work.metric)
    if compressed["accuracy"] != best_accuracy:
        raise RuntimeError(f"the pruned model scores {best_accuracy} but its .sqz {compressed['accuracy']}")
    report = build_report(
        method="torch-pruning",
        metric=work.metric,
        max_drop=budget,
        drop_type="absolute",
        target_met=baseline["accuracy"] - compressed["accuracy"] <= budget,
        baseline=baseline,
        compressed=compressed,
        layers=[],
        trials=[],
        extras={"duration_s": time.monotonic() - started},
    )
    before, after = producer_widths(model.module), producer_widths(reloaded.module)
    return {**summarize(report, {name: [after[name], before[name]] for name in before}), "trials": trials}


def part_resnet20_filter(quick: bool, budget: float) -> dict:
    run = ours("resnet20", "filter", quick, budget)
    return {
        "figure": "FLOPs removed and CPU latency speedup at batch 32 (paper: -85 % FLOPs)",
        "runs": {"filter": run},
        "paper_flops_removed_pct": PAPER["filter_flops_removed_pct"],
    }


def part_unet_filter(quick: bool, budget: float) -> dict:
    run = ours("unet", "filter", quick, budget)
    return {
        "figure": "FLOPs removed at a 1-point pixel-accuracy budget (paper: -85 % FLOPs)",
        "runs": {"filter": run},
        "paper_flops_removed_pct": PAPER["filter_flops_removed_pct"],
    }


def first_linear(run: dict, work: Workload) -> str:
    module = load_model(work.model_dir).module
    linear = [name for name, layer in module.named_modules() if isinstance(layer, nn.Linear)]
    return next(name for name in linear if name in run["channels_kept_of"])


def part_lenet5_group(quick: bool, budget: float) -> dict:
    run = ours("lenet5", "group", quick, budget)
    layer = first_linear(run, workload("lenet5", quick))
    kept, before = run["channels_kept_of"][layer]
    return {
        "figure": "neurons kept in the first fully-connected layer (paper: AlexNet fc6 keeps 30 %)",
        "runs": {"group": run},
        "first_fc": {"layer": layer, "kept": kept, "of": before, "kept_pct": 100.0 * kept / before},
        "paper_first_fc_kept_pct": PAPER["group_first_fc_kept_pct"],
    }


def part_lenet5_auto(quick: bool, budget: float) -> dict:
    runs = {method: ours("lenet5", method, quick, budget) for method in ("auto", "lwct", "filter", "group")}
    return {
        "figure": "auto against each single method on the same model: compression ratio and FLOPs",
        "runs": runs,
        "auto_over": {
            method: {
                "compression_ratio": runs["auto"]["compression_ratio"] / run["compression_ratio"],
                "flops": runs["auto"]["flops"] / run["flops"],
            }
            for method, run in runs.items()
            if method != "auto"
        },
    }


def part_torch_pruning(quick: bool, budget: float) -> dict:
    sides = {}
    for key, methods in (("lenet5", ("filter", "group")), ("resnet20", ("filter",))):
        runs = {method: ours(key, method, quick, budget) for method in methods}
        runs["torch-pruning"] = torch_pruning(key, quick, budget)
        theirs = runs["torch-pruning"]
        sides[key] = {
            "runs": runs,
            "ours_over_torch_pruning": {
                method: {
                    "flops_reduction": runs[method]["flops_reduction"] / theirs["flops_reduction"],
                    "compression_ratio": runs[method]["compression_ratio"] / theirs["compression_ratio"],
                }
                for method in methods
            },
        }
    return {
        "figure": (
            "Torch-Pruning global group-norm pruning (GroupMagnitudeImportance p=2, BasePruner, "
            "global_pruning, max_pruning_ratio 0.95, output layer kept) at the filter method's levels and "
            "per-level fine-tuning, stopped at the first level over budget"
        ),
        "models": sides,
    }


PART_FUNCTIONS = {
    "resnet20-filter": part_resnet20_filter,
    "unet-filter": part_unet_filter,
    "lenet5-group": part_lenet5_group,
    "lenet5-auto": part_lenet5_auto,
    "torch-pruning": part_torch_pruning,
}


def print_runs(title: str, runs: dict) -> None:
    print(f"\n{title}")
    print(
        f"{'method':<14} {'acc %':>6} {'drop':>5} {'params':>8} {'MACs':>10} {'FLOPs -%':>8} {'.sqz B':>8} "
        f"{'ratio':>6} {'b32 ms':>7} {'speedup':>7} {'b1 ms':>6} {'wall s':>6}"
    )
    base = next(iter(runs.values()))
    print(
        f"{'baseline':<14} {base['baseline_accuracy']:>6.2f} {'':>5} {base['baseline_params']:>8} "
        f"{base['baseline_flops']:>10} {'':>8} {base['baseline_float32_bytes']:>8} {'':>6} "
        f"{base['baseline_latency_ms_batch32']:>7.2f} {'':>7} {base['baseline_latency_ms']:>6.2f}"
    )
    for name, run in runs.items():
        print(
            f"{name:<14} {run['accuracy']:>6.2f} {run['accuracy_drop']:>5.2f} {run['params']:>8} {run['flops']:>10} "
            f"{run['flops_removed_pct']:>7.1f}% {run['size_bytes']:>8} {run['compression_ratio']:>5.1f}x "
            f"{run['latency_ms_batch32']:>7.2f} {run['latency_speedup_batch32']:>6.2f}x {run['latency_ms']:>6.2f} "
            f"{run['wall_s']:>6.0f}"
        )


def print_part(name: str, result: dict) -> None:
    if name == "torch-pruning":
        for key, side in result["models"].items():
            print_runs(f"{name}: {TITLES[key]}", side["runs"])
            for method, ratios in side["ours_over_torch_pruning"].items():
                print(
                    f"  {method} / torch-pruning: FLOPs reduction {ratios['flops_reduction']:.2f}x, "
                    f"compression ratio {ratios['compression_ratio']:.2f}x"
                )
        return
    print_runs(f"{name}: {result['workload']}", result["runs"])
    if "first_fc" in result:
        fc = result["first_fc"]
        print(f"  {fc['layer']} keeps {fc['kept']} of {fc['of']} neurons ({fc['kept_pct']:.1f} %; paper 30 %)")
    for method, ratios in result.get("auto_over", {}).items():
        print(f"  auto / {method}: compression ratio {ratios['compression_ratio']:.2f}x, FLOPs {ratios['flops']:.2f}x")


PART_WORKLOAD = {
    "resnet20-filter": "resnet20",
    "unet-filter": "unet",
    "lenet5-group": "lenet5",
    "lenet5-auto": "lenet5",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", action="append", choices=PARTS, help="run only this part (repeatable)")
    parser.add_argument("--budget", type=float, default=1.0, help="allowed absolute drop, percentage points")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny subsets and grids, nothing written")
    args = parser.parse_args()
    torch.set_num_threads(1)  # training on two shared cores with two threads is ~10x slower
    parts = args.part or list(PARTS)
    started = time.monotonic()
    results = {}
    for name in parts:
        print(f"[{time.strftime('%H:%M:%S')}] part {name}", flush=True)
        part_start = time.monotonic()
        result = PART_FUNCTIONS[name](args.quick, args.budget)
        if name in PART_WORKLOAD:
            work = workload(PART_WORKLOAD[name], args.quick)
            result = {
                "workload": work.title,
                "data": work.data_note,
                "baseline": work.baseline,
                "settings": method_settings(work.key, args.quick),
                **result,
            }
        else:
            result["settings"] = {key: method_settings(key, args.quick) for key in result["models"]}
            result["baselines"] = {key: workload(key, args.quick).baseline for key in result["models"]}
        result["part_wall_s"] = time.monotonic() - part_start  # runs shared with an earlier part count there
        results[name] = result
        print_part(name, result)
    total = time.monotonic() - started
    print(f"\ntotal {total:.0f} s for {', '.join(parts)}")
    if args.quick:
        return
    path = REPO / "bench" / "results" / "structured.json"
    previous = json.loads(path.read_text()) if path.exists() and args.part else {}
    this_run = {"parts": parts, "wall_s": total, "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
    path = write_result(
        "structured",
        {
            "benchmark": "structured compression figures, budget 1.0 point absolute",
            "setup": (
                "every run through core.pipeline.compress_files on CPU (torch.set_num_threads(1) for training); "
                "accuracy on the validation split named per part; FLOPs = core.measure.count_macs (MACs of conv and "
                "linear layers, one sample); size = model.sqz bytes; latency = single-thread median over 30 runs of "
                "the module loaded back from model.sqz; Torch-Pruning measured by the same functions on its "
                "pruned model written to and loaded back from .sqz"
            ),
            "machine": machine(),
            "budget_points": args.budget,
            "parts": {**previous.get("parts", {}), **results},
            "runs": [*previous.get("runs", [previous["last_run"]] if "last_run" in previous else []), this_run],
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
