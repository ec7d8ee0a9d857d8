"""What the engine's jail (core.jail) costs: one tiny compression job (LeNet-5 on the bundled digits sample, lwct with
the worker tests' tiny options) run three ways side by side, round by round so that load from other processes hits
them alike:
- in_process: core.pipeline.compress_files in this process (how the worker ran jobs before the jail; torch already
  imported);
- child_unjailed_cold: the worker's engine child (worker.engine_process) without a jail (SQUEEZER_JAIL=none),
  started for the job: a fresh interpreter that imports the engine, events over the pipe;
- child_jailed_cold: the same child in bubblewrap under the job uid, started for the job;
- child_jailed_warm: as the worker runs jobs: the jailed child was started ahead of the job (core.jail.SparePool)
  and has imported the engine by the time the job comes (here: while the previous variants ran).
And the submission check of the same inputs as the API runs it (core.submission.check_workspace): the unjailed
forking zygote (warm) vs a fresh jail per check, started ahead of it (warm) while the previous variants ran. Prints
the medians and ratios and writes bench/results/jail_cost.json.

    OMP_NUM_THREADS=1 .venv/bin/python bench/jail_cost.py [--rounds 3]
"""

import argparse
import dataclasses
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from _common import machine, write_result

from squeezer.core import limits
from squeezer.core.config import CompressConfig
from squeezer.core.jail import Jail, JailLimits, JailMode, SparePool, python_command, start_spare
from squeezer.core.pipeline import ModelSource, compress_files
from squeezer.core.samples import ensure_sample_model
from squeezer.core.sandbox import SandboxLimits
from squeezer.core.submission import TARGET, check_request, check_workspace
from squeezer.worker.context import ENGINE_MODULES
from squeezer.worker.engine_process import EngineRun

TINY_LWCT = {
    "sparsity": 0.5,
    "prune_epochs": 1,
    "epochs_per_step": 1,
    "max_train_samples": 300,
    "min_steps_per_stage": 30,
}
DATA = "sample:digits"
CONFIG = CompressConfig.model_validate(
    {"device": "cpu", "lwct": TINY_LWCT, "target": {"max_drop": 5.0, "drop_type": "absolute"}}
)
MEMORY_BYTES = 16 << 30
ENGINE = python_command("squeezer.core.jail_entry", *ENGINE_MODULES)


def run_in_process(model_dir: Path, workdir: Path) -> float:
    started = time.perf_counter()
    with limits.using(limits.IntakeLimits()):
        compress_files(ModelSource(model_dir), DATA, workdir / "out", CONFIG, checkpoint_dir=workdir / "checkpoint")
    return time.perf_counter() - started


def run_child(model_dir: Path, spares: SparePool | None, mode: JailMode) -> float:
    """One job in an engine child: started for the job (`spares` None: cold), or ahead of it as the worker does."""
    started = time.perf_counter()
    spare = spares.take() if spares else start_spare(Jail(mode), ENGINE, JailLimits(memory_bytes=MEMORY_BYTES))
    try:
        workdir = spare.folder
        shutil.copytree(model_dir, workdir / "inputs")
        payload = {
            "model": {"path": str(workdir / "inputs"), "architecture": None, "arch_args": {}},
            "data": DATA,
            "out_dir": str(workdir / "out"),
            "checkpoint_dir": str(workdir / "checkpoint"),
            "config": CONFIG.model_dump(mode="json"),
            "limits": dataclasses.asdict(limits.IntakeLimits()),
        }
        EngineRun(spare, lambda _: None, lambda: False).run("squeezer.core.jail_entry:compress_job", payload)
    finally:
        spare.close()
    return time.perf_counter() - started


def run_check(model_dir: Path, mode: JailMode) -> float:
    """One submission check as the API runs it: inputs into the workspace, then the check (jailed, in a jail started
    ahead of it by the previous check)."""
    budgets = SandboxLimits(memory_bytes=12 << 30, cpu_s=300, wall_s=300)
    started = time.perf_counter()
    with check_workspace(budgets, Jail(mode)) as workspace:
        shutil.copytree(model_dir, workspace.folder / "model")
        request = check_request(ModelSource(workspace.folder / "model"), DATA, CONFIG, limits.IntakeLimits())
        workspace.run(TARGET, request)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    model_dir, _ = ensure_sample_model("digits")
    spares = SparePool(Jail(JailMode.BWRAP), ENGINE, JailLimits(memory_bytes=MEMORY_BYTES))
    variants = {
        "in_process": lambda work: run_in_process(model_dir, work),
        "child_unjailed_cold": lambda _: run_child(model_dir, None, JailMode.NONE),
        "child_jailed_cold": lambda _: run_child(model_dir, None, JailMode.BWRAP),
        "child_jailed_warm": lambda _: run_child(model_dir, spares, JailMode.BWRAP),
        "check_zygote_unjailed": lambda _: run_check(model_dir, JailMode.NONE),
        "check_jailed": lambda _: run_check(model_dir, JailMode.BWRAP),
    }
    for mode in JailMode:  # starts the zygote, and the first jail ahead of need, as a running API has them
        run_check(model_dir, mode)
    spares.take().close()  # the worker's first job starts the pool: the next engine is then started ahead
    times: dict[str, list[float]] = {name: [] for name in variants}
    for round_number in range(args.rounds):
        for name, variant in variants.items():
            with tempfile.TemporaryDirectory(prefix="squeezer-bench-") as tmp:
                workdir = Path(tmp) / "job"
                workdir.mkdir()
                times[name].append(variant(workdir))
            print(f"round {round_number + 1}: {name} {times[name][-1]:.2f} s", flush=True)
    medians = {name: statistics.median(values) for name, values in times.items()}
    ratios = {
        "child_jailed_warm / in_process": medians["child_jailed_warm"] / medians["in_process"],
        "child_jailed_cold / child_unjailed_cold": medians["child_jailed_cold"] / medians["child_unjailed_cold"],
        "child_jailed_warm / child_jailed_cold": medians["child_jailed_warm"] / medians["child_jailed_cold"],
        "check_jailed / check_zygote_unjailed": medians["check_jailed"] / medians["check_zygote_unjailed"],
    }
    for name, value in medians.items():
        print(f"{name:24s} median {value:6.2f} s  ({', '.join(f'{t:.2f}' for t in times[name])})")
    for name, value in ratios.items():
        print(f"{name:40s} {value:.2f}×")
    result = {
        "command": "OMP_NUM_THREADS=1 .venv/bin/python bench/jail_cost.py " + f"--rounds {args.rounds}",
        "machine": machine(),
        "load_average_at_end": os.getloadavg(),
        "workload": "LeNet-5 on sample:digits, lwct " + str(TINY_LWCT) + ", max_drop 5.0; check: check_payload",
        "seconds": times,
        "median_s": medians,
        "ratios": ratios,
    }
    spares.close()
    print(write_result("jail_cost", result))


if __name__ == "__main__":
    main()
