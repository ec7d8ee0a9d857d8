"""The report's speed figures: every latency it states is one side of an A/B comparison against the baseline in one
process (core.measure.compare), and every speed-up is that comparison's (exactly 1.0 within the noise).

Each file handed out is compared with the baseline in its own runtime at batch 1 and 32 on one thread (model.sqz
and model/ in torch against the uploaded model, model.onnx in onnxruntime against the uploaded model exported to
ONNX), and model.onnx once more on the speed target's runtime, threads and batch unless that is one of those. The
goal (`SpeedTarget`) is met when the measured speed-up reaches `speedup` (a difference within the noise reaches
none), or the measured latency is at most `latency_ms`."""

import time
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from squeezer.core.config import SpeedTarget
from squeezer.core.events import Guard
from squeezer.core.measure.compare import (
    BUDGET_S,
    SpeedComparison,
    compare_modules,
    compare_on_target,
    compare_onnx,
)

REPORT_BATCHES = {"latency_ms": 1, "latency_ms_batch32": 32}  # the report's latency keys and their batches
REPORT_RUNTIME, REPORT_THREADS = "onnxruntime-cpu", 1
# Each comparison's time budget is this share of the time the method ran, between MIN_BUDGET_S and compare.BUDGET_S:
# the report's seven comparisons cost a few percent of a job at most once their first rounds are in.
BUDGET_SHARE = 0.01
MIN_BUDGET_S = 0.25

File = nn.Module | Path  # a torch file loaded back (model.sqz, model/), or an .onnx file


@dataclass
class SpeedFindings:
    """The latencies to fill in (per file name, and the baselines under "baseline" and "baseline.onnx") and the
    report's `speed` section."""

    latencies: dict[str, dict[str, float]]
    section: dict


def comparison_budget(method_s: float) -> float:
    """Seconds one comparison may spend for a job whose method ran `method_s` seconds (see BUDGET_SHARE)."""
    return min(BUDGET_S, max(MIN_BUDGET_S, BUDGET_SHARE * method_s))


def goal_met(target: SpeedTarget, comparison: SpeedComparison) -> bool | None:
    """Whether `comparison` reaches the target's goal; None without a goal."""
    if target.speedup is not None:
        return comparison.speedup >= target.speedup
    if target.latency_ms is not None:
        return comparison.candidate_ms <= target.latency_ms
    return None


def measure_speed(
    baseline: nn.Module,
    baseline_onnx: Path,
    files: dict[str, File],
    input_shape: tuple[int, ...],
    target: SpeedTarget,
    guard: Guard,
    budget_s: float = BUDGET_S,
) -> SpeedFindings:
    """Compares every file of `files` with its baseline (`baseline` for a torch module, `baseline_onnx` for an .onnx
    path) at the report's batches, and the .onnx file named model.onnx on the target, each comparison within
    `budget_s`; see the module docstring."""
    started = time.monotonic()
    compared = {
        name: {batch: _compare(baseline, baseline_onnx, file, input_shape, batch, guard, budget_s) for batch in (1, 32)}
        for name, file in files.items()
    }
    model_onnx = files["model.onnx"]
    on_target = _on_target(compared["model.onnx"], baseline_onnx, model_onnx, input_shape, target, guard, budget_s)
    latencies = {name: _latencies(by_batch, "candidate_ms") for name, by_batch in compared.items()}
    torch_reference = next(name for name, file in files.items() if isinstance(file, nn.Module))
    latencies["baseline"] = _latencies(compared[torch_reference], "baseline_ms")
    latencies["baseline.onnx"] = _latencies(compared["model.onnx"], "baseline_ms")
    section = {
        "target": target.model_dump(mode="json"),
        "on_target": on_target.as_dict(),
        "goal_met": goal_met(target, on_target),
        "artifacts": {
            name: _artifact_speed(name, by_batch, on_target, target, isinstance(files[name], nn.Module))
            for name, by_batch in compared.items()
        },
        "seconds": time.monotonic() - started,
    }
    return SpeedFindings(latencies, section)


def _compare(
    baseline: nn.Module,
    baseline_onnx: Path,
    file: File,
    input_shape: tuple[int, ...],
    batch: int,
    guard: Guard,
    budget_s: float,
) -> SpeedComparison:
    if isinstance(file, nn.Module):
        return compare_modules(
            baseline, file, input_shape, batch=batch, threads=REPORT_THREADS, guard=guard, budget_s=budget_s
        )
    return compare_onnx(
        baseline_onnx,
        file,
        input_shape,
        batch=batch,
        runtime=REPORT_RUNTIME,
        threads=REPORT_THREADS,
        guard=guard,
        budget_s=budget_s,
    )


def _on_target(
    measured: dict[int, SpeedComparison],
    baseline_onnx: Path,
    model_onnx: File,
    input_shape: tuple[int, ...],
    target: SpeedTarget,
    guard: Guard,
    budget_s: float,
) -> SpeedComparison:
    """model.onnx against the baseline on the target: one of the report's comparisons when it is the same one."""
    if (target.runtime, target.threads) == (REPORT_RUNTIME, REPORT_THREADS) and target.batch in measured:
        return measured[target.batch]
    assert isinstance(model_onnx, Path)  # model.onnx is a file
    return compare_on_target(baseline_onnx, model_onnx, input_shape, target, guard=guard, budget_s=budget_s)


def _latencies(by_batch: dict[int, SpeedComparison], side: str) -> dict[str, float]:
    return {key: getattr(by_batch[batch], side) for key, batch in REPORT_BATCHES.items()}


def _artifact_speed(
    name: str,
    by_batch: dict[int, SpeedComparison],
    on_target: SpeedComparison,
    target: SpeedTarget,
    in_torch: bool,
) -> dict:
    """A file's comparisons at the report's batches in its own runtime, and the goal judged where it is measured:
    model.onnx on the target; a torch file on CPU at the target's batch when that is one of the report's, else
    None."""
    own_runtime = by_batch.get(target.batch) if target.runtime == REPORT_RUNTIME else None
    judged = on_target if name == "model.onnx" else own_runtime
    return {
        "runtime": "torch" if in_torch else REPORT_RUNTIME,
        "threads": REPORT_THREADS,
        **{f"batch{batch}": comparison.as_dict() for batch, comparison in by_batch.items()},
        "speedup_on_target": on_target.speedup if name == "model.onnx" else None,
        "goal_met": None if judged is None else goal_met(target, judged),
    }
