"""Issue 28's pretrained-network goal as a user meets it: a MobileNet-class classifier at 224×224, trained elsewhere
and handed over as an ONNX file, compressed by `squeezer compress` for speed with about 20 minutes of CPU recovery
training (`--time-limit`), at a 1-point budget.

The network is torchvision's MobileNetV3-Small (1.5 M parameters, 0.06 G MACs: depthwise convolutions,
squeeze-excitation, hard-swish, like PP-LCNet), trained here from random weights on Fashion-MNIST scaled to 224×224
on three channels (no hub weights can be fetched), then exported by `torch.onnx.export` as another tool would. The
job is the command a user runs, one compute thread; its speed-up is the report's own A/B measurement of `model.onnx`
against the baseline's file in onnxruntime (one thread, batch 1), its fixed cost the report's timings_s.

    OMP_NUM_THREADS=1 .venv/bin/python bench/pretrained224.py                 # auto, --speedup 2, 1200 s
    OMP_NUM_THREADS=1 .venv/bin/python bench/pretrained224.py --job-args "--method filter --option filter.latency={}"

The data and the trained network are cached under --cache (made once: about 15 minutes of training); each run's
row is written to bench/results/pretrained224.json under --label, replacing that label's earlier row.
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from _common import REPO, machine, write_result
from job_time import _CLI, FIXED
from torchvision import models

from squeezer.core.intake.data import load_dataset
from squeezer.core.measure import metric_function
from squeezer.core.train import fit

RESULTS = "pretrained224"
SIZE = 224


def _scaled(samples, count: int) -> np.ndarray:
    """The first `count` grey 28×28 images as uint8 (count, 3, 224, 224), scaled bilinearly, 500 at a time."""
    chunks = []
    for start in range(0, count, 500):
        grey = samples[start : min(start + 500, count)]
        big = F.interpolate(grey, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
        chunks.append((big.clamp(0, 1) * 255).round().to(torch.uint8).repeat(1, 3, 1, 1).numpy())
    return np.concatenate(chunks)


def make_data(path: Path, train: int, val: int) -> None:
    source = load_dataset("sample:fashion-mnist")
    arrays = {
        "x_train": _scaled(source.x_train, train),
        "y_train": source.y_train[:train].numpy(),
        "x_val": _scaled(source.x_val, val),
        "y_val": source.y_val[:val].numpy(),
    }
    np.savez(path, **arrays)  # stored, not compressed: the job memory-maps x_train


def pretrain(data_path: Path, model_path: Path, epochs: int) -> dict:
    """MobileNetV3-Small trained on the cached data and exported to ONNX; its accuracy and training time."""
    data = load_dataset(data_path)
    torch.manual_seed(0)
    module = models.mobilenet_v3_small(weights=None, num_classes=10)
    started = time.monotonic()
    fit(module, data.x_train, data.y_train, epochs=epochs, lr=0.05, batch_size=64, lr_schedule="cosine", seed=0)
    seconds = time.monotonic() - started
    accuracy = metric_function("top1")(module.eval(), data.x_val, data.y_val)
    example = data.x_val[:1]
    torch.onnx.export(
        module, (example,), str(model_path), input_names=["input"], output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False,
    )  # fmt: skip
    return {"epochs": epochs, "accuracy": round(accuracy, 2), "train_seconds": round(seconds, 1)}


def run_job(model: Path, data: Path, job_args: list[str], out: Path, log: Path) -> tuple[int, float]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    command = [sys.executable, "-c", _CLI, "compress", str(model), "--data", str(data), "--out", str(out)]
    started = time.monotonic()
    with log.open("w") as sink:
        done = subprocess.run([*command, *job_args], env=env, stdout=sink, stderr=subprocess.STDOUT, cwd=REPO)
    return done.returncode, time.monotonic() - started


def summary(report: dict, exit_code: int, wall: float) -> dict:
    on_target = report["speed"]["on_target"]
    timings = report.get("timings_s", {})
    fixed = sum(timings.get(key, 0.0) for key in FIXED)
    return {
        "exit_code": exit_code,
        "method": report["method"],
        "baseline_accuracy": report["baseline"]["accuracy"],
        "accuracy": report["compressed"]["accuracy"],
        "drop": report["accuracy_drop"],
        "target_met": report["target_met"],
        "speedup": on_target["speedup"],
        "speedup_ratio": on_target["ratio"],
        "interval": [on_target["low"], on_target["high"]],
        "verdict": on_target["verdict"],
        "goal_met": report["speed"]["goal_met"],
        "macs_reduction": report["macs_reduction"],
        "baseline_ms": on_target["baseline_ms"],
        "ms": on_target["candidate_ms"],
        "candidates": [
            {key: c.get(key) for key in ("stage", "accuracy", "speedup", "within_budget", "chosen")}
            for c in report.get("candidates") or []
        ],
        "wall_s": round(wall, 1),
        "timings_s": {key: round(value, 1) for key, value in timings.items()},
        "fixed_share": round(fixed / wall, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "squeezer-bench" / RESULTS)
    parser.add_argument("--train-samples", type=int, default=8000)
    parser.add_argument("--val-samples", type=int, default=2000)
    parser.add_argument("--pretrain-epochs", type=int, default=5)
    parser.add_argument("--time-limit", type=float, default=1200.0, help="the job's --time-limit (seconds of training)")
    parser.add_argument("--job-args", default="--method auto --speedup 2", help="the rest of the compress command")
    parser.add_argument("--label", default="auto")
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.cache.mkdir(parents=True, exist_ok=True)
    data = args.cache / f"fashion224_{args.train_samples}_{args.val_samples}.npz"
    if not data.is_file():
        make_data(data, args.train_samples, args.val_samples)
    model = args.cache / f"mobilenet_v3_small_{args.pretrain_epochs}ep.onnx"
    pretrained = args.cache / f"{model.stem}.json"
    if not model.is_file():
        pretrained.write_text(json.dumps(pretrain(data, model, args.pretrain_epochs)))
    out = args.cache / f"out_{args.label}"
    job_args = [*shlex.split(args.job_args), "--time-limit", str(args.time_limit)]
    exit_code, wall = run_job(model, data, job_args, out, args.cache / f"{args.label}.log")
    row = summary(json.loads((out / "report.json").read_text()), exit_code, wall)
    row["pretrained"] = json.loads(pretrained.read_text())
    row["run"] = {"command": " ".join(sys.argv), "job_args": job_args, "machine": machine()}
    path = REPO / "bench" / "results" / f"{RESULTS}.json"
    earlier = json.loads(path.read_text()).get("runs", {}) if path.is_file() else {}
    print(json.dumps(row, indent=1))
    print("wrote", write_result(RESULTS, {"runs": earlier | {args.label: row}}))


if __name__ == "__main__":
    main()
