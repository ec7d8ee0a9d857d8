"""Issue 13's deployable-artifact figures: for lwct, filter, int8 and auto on the reference workloads, the bytes of
the model.onnx a user deploys against the float32 baseline ONNX, its onnxruntime latency against the baseline ONNX's
(batch 1 and 32, median, CPU, one thread, both files timed in the same run), and the accuracy drop, all from
report.json of one core.pipeline.compress_files run per method (every figure measured on the written file).

Workloads:
- lenet5: the bundled LeNet-5 Fashion-MNIST sample (core.samples), full 10k validation;
- resnet20: ResNet-20 (1 input channel, 28×28) trained here on Fashion-MNIST (recipe below, cached like
  bench/structured.py's baselines), validation = the first 1,000 test images.

The machine has two shared cores, so every method trains on capped epochs (REDUCED below, recorded in the JSON as
"settings"): these are short-training figures, not the methods' defaults. Each run is written to the results file as
it finishes (a rerun of one workload or method replaces only its entries). auto runs with objective=size (its
default); its candidates, each with bytes and onnxruntime latency, are kept in the JSON, so what objective=latency
or balanced would return is read off the same run.

    OMP_NUM_THREADS=1 .venv/bin/python bench/deploy.py                 # -> bench/results/deploy.json
    OMP_NUM_THREADS=1 .venv/bin/python bench/deploy.py --workload lenet5 --keep /tmp/deploy-out   # keep the files
"""

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch
from _common import REPO, machine, write_result
from structured import trained_baseline, val_subset

from squeezer.core.config import CompressConfig
from squeezer.core.pipeline import ModelSource, compress_files
from squeezer.core.samples import ensure_sample_model

METHODS = ("lwct", "filter", "int8", "auto")
RESNET20 = {"name": "resnet20", "args": {"in_channels": 1, "num_classes": 10, "input_size": 28}}
RESNET20_RECIPE = {"epochs": 1, "lr": 0.05, "lr_schedule": "cosine", "batch_size": 128, "max_samples": 12800}
RESNET20_VAL = 1000
_STAGE = {"epochs_per_step": 1, "min_steps_per_stage": 0}
REDUCED = {
    "lenet5": {
        "lwct": {**_STAGE, "max_train_samples": 8192, "prune_epochs": 1, "sparsity_grid": [0.5, 0.7, 0.8, 0.9, 0.95]},
        "filter": {
            **_STAGE,
            "max_train_samples": 8192,
            "importance_epochs": 1,
            "init": ["l1"],
            "levels": [0.2, 0.4, 0.6, 0.8],
            "refinements": 1,
        },
    },
    "resnet20": {
        "lwct": {**_STAGE, "max_train_samples": 1024, "prune_epochs": 1, "sparsity_grid": [0.5, 0.8]},
        "filter": {
            **_STAGE,
            "max_train_samples": 1024,
            "importance_epochs": 1,
            "init": ["l1"],
            "levels": [0.2, 0.4],
            "refinements": 0,
        },
        "auto": {"compare_lwct_alone": False},  # lwct alone is the lwct row
    },
}


def workload(key: str) -> tuple[Path, str, dict]:
    """(model directory, data, baseline description)."""
    if key == "lenet5":
        model_dir, accuracy = ensure_sample_model("fashion-mnist")
        return model_dir, "sample:fashion-mnist", {"source": "bundled sample", "accuracy": accuracy}
    data = val_subset("sample:fashion-mnist", RESNET20_VAL)
    model_dir, baseline = trained_baseline(RESNET20, data, RESNET20_RECIPE, "top1")
    return model_dir, data, baseline


def figures(report: dict) -> dict:
    """What the issue asks for, from one report."""
    onnx, base = report["artifacts"]["model.onnx"], report["baseline_onnx"]
    return {
        "accuracy": report["compressed"]["accuracy"],
        "accuracy_drop": report["accuracy_drop"],
        "target_met": report["target_met"],
        "deployable": report["deployable"],
        "onnx_bytes": onnx["bytes"],
        "baseline_onnx_bytes": base["bytes"],
        "onnx_ratio": base["bytes"] / onnx["bytes"],
        "sqz_bytes": report["artifacts"]["model.sqz"]["bytes"],
        "onnx_accuracy": onnx["accuracy"],
        "onnx_latency_ms": onnx["latency_ms"],
        "baseline_onnx_latency_ms": base["latency_ms"],
        "onnx_latency_ms_batch32": onnx["latency_ms_batch32"],
        "baseline_onnx_latency_ms_batch32": base["latency_ms_batch32"],
        "onnx_speedup": base["latency_ms"] / onnx["latency_ms"],
        "onnx_speedup_batch32": base["latency_ms_batch32"] / onnx["latency_ms_batch32"],
        "macs_reduction": report.get("macs_reduction", report.get("flops_reduction")),
        "candidates": report.get("candidates"),
        "wall_s": report["duration_s"],
    }


def run(key: str, method: str, keep: Path | None) -> dict:
    model_dir, data, _ = workload(key)
    settings = REDUCED[key]
    config = CompressConfig(method=method, device="cpu", **({} if method == "int8" else settings))
    print(f"[{time.strftime('%H:%M:%S')}] {method} on {key} ...", flush=True)
    out = Path(tempfile.mkdtemp(prefix="squeezer-deploy-"))
    try:
        report = compress_files(ModelSource(model_dir), data, out, config)
        if keep is not None:
            shutil.copytree(out, keep / f"{key}-{method}", dirs_exist_ok=True)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    result = figures(report)
    print(
        f"    {result['accuracy_drop']:.2f} pts drop, model.onnx {result['onnx_bytes']:,} B "
        f"({result['onnx_ratio']:.1f}× smaller), onnxruntime {result['onnx_speedup']:.2f}× at batch 1, "
        f"{result['onnx_speedup_batch32']:.2f}× at batch 32, {result['wall_s']:.0f} s",
        flush=True,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", action="append", choices=("lenet5", "resnet20"))
    parser.add_argument("--method", action="append", choices=METHODS)
    parser.add_argument("--keep", type=Path, help="copy every run's output folder here (report.html included)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.monotonic()
    for key in args.workload or ("lenet5", "resnet20"):
        for method in args.method or METHODS:
            record(key, method, run(key, method, args.keep))
    print(f"total {time.monotonic() - started:.0f} s; wrote {RESULTS}")


RESULTS = REPO / "bench" / "results" / "deploy.json"


def record(key: str, method: str, result: dict) -> None:
    """Merges one run into the results file, so an interrupted or partial run keeps what it measured."""
    document = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    workloads = document.get("workloads", {})
    entry = workloads.setdefault(key, {"runs": {}})
    entry.update(baseline=workload(key)[2], settings=REDUCED[key])
    entry["runs"][method] = {**result, "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
    write_result(
        "deploy",
        {
            "benchmark": "deployable model.onnx bytes, onnxruntime latency and accuracy per method, 1-point budget",
            "setup": (
                "core.pipeline.compress_files per method on CPU, torch one thread; onnx bytes = model.onnx as "
                "written; latency = onnxruntime CPUExecutionProvider, one thread, median of 30 runs, the baseline "
                "ONNX (float32 export of the input model) and model.onnx timed in the same run; reduced training "
                "settings (see settings), int8 at its defaults (256 calibration samples, minmax, per channel)"
            ),
            "machine": machine(),
            "workloads": workloads,
        },
    )


if __name__ == "__main__":
    main()
