"""Jobs that share a machine: one small digits job alone, then two at once, each as `squeezer compress` in its own
process, first at torch's default thread count (every usable core, as two jobs ran before their threads were sized:
fifteen times slower than one on two cores), then sized as a worker sizes them (core.jail.threads_per_job: the
usable cores divided by the jobs that share them, through OMP_NUM_THREADS). Sharing fairly costs about twice the
time of one job; more is thrash. A job still running after --cap seconds is ended and counted at the cap.

    .venv/bin/python bench/concurrent_jobs.py [--cap 900] [--epochs 1] [--train-samples 300] [--min-steps 30]

Writes bench/results/concurrent_jobs.json: wall seconds per job, per setting and per count of jobs.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import machine, write_result

from squeezer.core.jail import THREAD_VARIABLES, thread_environment, threads_per_job, usable_cores

JOBS = (1, 2)


def _command(model: Path, out: Path, epochs: int, samples: int, min_steps: int) -> list[str]:
    cli = Path(sys.executable).with_name("squeezer")
    return [
        str(cli),
        "compress",
        str(model),
        "--data",
        "sample:digits",
        "--method",
        "filter",
        "--epochs-per-step",
        str(epochs),
        "--max-train-samples",
        str(samples),
        "--option",
        f"filter.min_steps_per_stage={min_steps}",
        "--option",
        "filter.refinements=0",
        "--out",
        str(out),
    ]


def _run_together(count: int, threads: int | None, args, folder: Path, model: Path) -> list[float]:
    """Wall seconds of `count` jobs started at once (each at most args.cap); `threads` None: torch's default."""
    env = {key: value for key, value in os.environ.items() if key not in THREAD_VARIABLES}
    env |= thread_environment(threads) if threads is not None else {}
    started = time.monotonic()
    processes = [
        subprocess.Popen(
            _command(model, folder / f"out-{count}-{threads}-{i}", args.epochs, args.train_samples, args.min_steps),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for i in range(count)
    ]
    times = []
    for process in processes:
        try:
            process.wait(timeout=max(0.0, args.cap - (time.monotonic() - started)))
            times.append(time.monotonic() - started)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            times.append(float(args.cap))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cap", type=float, default=900.0, help="Seconds a job may run before it is ended.")
    parser.add_argument("--epochs", type=int, default=1, help="Epochs per step of the filter job.")
    parser.add_argument("--train-samples", type=int, default=300, help="Training samples per epoch.")
    parser.add_argument("--min-steps", type=int, default=30, help="filter.min_steps_per_stage: SGD steps per stage.")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="squeezer-concurrent-"))
    model = folder / "digits"
    subprocess.run(
        [str(Path(sys.executable).with_name("squeezer")), "sample", "digits", "--out", str(model)], check=True
    )
    runs = []
    for setting in ("torch default", "sized"):
        for count in JOBS:
            job_threads = threads_per_job(count) if setting == "sized" else None
            times = _run_together(count, job_threads, args, folder, model)
            runs.append({"setting": setting, "jobs": count, "threads_per_job": job_threads, "wall_s": times})
            print(f"{setting:>13}, {count} job(s), threads {job_threads or 'default'}: {times}", flush=True)
    write_result(
        "concurrent_jobs",
        {
            "benchmark": "issue 28: two concurrent digits jobs (filter, squeezer compress) against one alone, at "
            "torch's default thread count and sized to the cores divided by the jobs",
            "command": "python bench/concurrent_jobs.py " + " ".join(sys.argv[1:]),
            "machine": machine(),
            "usable_cores": usable_cores(),
            "load_average_at_end": os.getloadavg(),
            "cap_s": args.cap,
            "runs": runs,
        },
    )


if __name__ == "__main__":
    main()
