"""What a job costs in time, this build against a previous one in the same run: each workload runs as
`squeezer compress` with default settings on one compute thread (OMP_NUM_THREADS=1), once per build per round, the
builds' order drawn anew each round. A job's fixed cost is its report's timings_s for loading, writing and verifying,
and measuring speed; the rest is the method. Workloads:

- digits-lwct: the bundled digits LeNet-5, default method (lwct);
- digits-auto-latency: the same model, `auto` with `auto.objective=latency`;
- resnet-onnx-lwct: a ResNet-20 for 8×8 digits trained here for 4 epochs, handed over as an ONNX file, lwct.

    OMP_NUM_THREADS=1 .venv/bin/python bench/job_time.py [--previous 95d5e10] [--rounds 1] [--only digits-lwct]

Writes bench/results/job_time.json (or --results NAME.json, so a partial run leaves the whole one): per workload and
build, the wall seconds of each run, the report's duration and timings, the fixed cost's share, and the median wall
time's ratio (previous / this build: above 1, this one is faster).
"""

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import REPO, WORKTREE, build_tree, machine, write_result

FIXED = ("load", "write_and_verify", "measure_speed")
WORKLOADS = {
    "digits-lwct": ("digits", []),
    "digits-auto-latency": ("digits", ["--method", "auto", "--option", "auto.objective=latency"]),
    "resnet-onnx-lwct": ("resnet.onnx", []),
}
_CLI = "import sys; from squeezer.cli.main import app; sys.argv[0] = 'squeezer'; app()"


def _models(folder: Path) -> None:
    """The digits sample model directory, and a small residual CNN trained on digits exported to ONNX."""
    subprocess.run([sys.executable, "-c", _CLI, "sample", "digits", "--out", str(folder / "digits")], check=True)
    from squeezer.core.artifacts.onnx_export import module_onnx
    from squeezer.core.intake.data import load_dataset
    from squeezer.core.intake.registry import build_architecture
    from squeezer.core.train import fit

    torch.manual_seed(0)
    data = load_dataset("sample:digits")
    module = build_architecture("resnet20", {"in_channels": 1, "input_size": 8, "num_classes": 10})
    fit(module, data.x_train, data.y_train, epochs=4, lr=0.05, seed=0)
    (folder / "resnet.onnx").write_bytes(module_onnx(module, (1, 8, 8)))


def run_job(tree: Path, model: Path, options: list[str], out: Path) -> dict:
    """One job as `squeezer compress` from `tree`'s sources: its wall seconds and its report's duration and timings."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    command = [sys.executable, "-c", _CLI, "compress", str(model), "--data", "sample:digits", "--out", str(out)]
    started = time.monotonic()
    subprocess.run([*command, *options], cwd=tree, env=env, check=True, capture_output=True)
    wall = time.monotonic() - started
    report = json.loads((out / "report.json").read_text())
    timings = report.get("timings_s") or {}
    duration = report.get("duration_s") or wall
    return {
        "wall_s": round(wall, 2),
        "duration_s": round(duration, 2),
        "timings_s": {key: round(value, 2) for key, value in timings.items()},
        "fixed_share": round(sum(timings.get(key, 0.0) for key in FIXED) / duration, 3) if timings else None,
        "accuracy_drop": report.get("accuracy_drop"),
        "compression_ratio": report.get("compression_ratio"),
    }


def _revision() -> str:
    """This checkout's commit, marked when it has uncommitted changes."""
    git = ["git", "-C", str(REPO)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
    dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
    return head.stdout.strip() + (" with changes" if dirty.stdout.strip() else "")


def summary(runs: dict[str, list[dict]], previous: str, current: str) -> dict:
    medians = {build: statistics.median(run["wall_s"] for run in rows) for build, rows in runs.items()}
    return {
        "median_wall_s": medians,
        "speedup": round(medians[previous] / medians[current], 2),
        "fixed_share": {build: [run["fixed_share"] for run in rows] for build, rows in runs.items()},
        "runs": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--previous", default="95d5e10", help="the build to compare with: a git revision")
    parser.add_argument("--rounds", type=int, default=1, help="runs of each workload per build")
    parser.add_argument("--only", action="append", choices=WORKLOADS, help="a workload to run (repeatable)")
    parser.add_argument("--results", default="job_time", help="results file name in bench/results (no .json)")
    args = parser.parse_args()
    builds = [args.previous, WORKTREE]
    names = args.only or list(WORKLOADS)
    order = random.Random(0)
    results = {}
    with tempfile.TemporaryDirectory(prefix="squeezer-job-time-") as tmp:
        root = Path(tmp)
        trees = {build: build_tree(build, root / "trees") for build in builds}
        _models(root)
        for name in names:
            model, options = WORKLOADS[name]
            runs: dict[str, list[dict]] = {build: [] for build in builds}
            for round_ in range(args.rounds):
                for build in order.sample(builds, len(builds)):
                    out = root / "out" / f"{name}-{build}-{round_}"
                    runs[build].append(run_job(trees[build], root / model, options, out))
                    print(f"[{time.strftime('%H:%M:%S')}] {name} {build}: {runs[build][-1]}", flush=True)
            results[name] = summary(runs, args.previous, WORKTREE)
            print(f"{name}: previous/this build wall time {results[name]['speedup']}×", flush=True)
    write_result(
        args.results,
        {
            "benchmark": "issue 28: wall time of default jobs (squeezer compress, one thread), this build against "
            "a previous one in the same run, and each job's fixed cost (load, write and verify, measure speed)",
            "command": "OMP_NUM_THREADS=1 python bench/job_time.py " + " ".join(sys.argv[1:]),
            "machine": machine(),
            "previous_build": args.previous,
            "this_build": _revision(),
            "load_average_at_end": os.getloadavg(),
            "workloads": results,
        },
    )


if __name__ == "__main__":
    main()
