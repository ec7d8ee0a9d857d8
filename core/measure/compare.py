"""Speed compared, never timed apart: a candidate's latency is only meaningful next to its baseline's measured in the
same process at the same moment, because a shared machine's load shifts both by far more than the differences that
matter (two byte-identical files timed a minute apart were reported at 6.57 and 3.75 ms).

`compare_runs` times two callables A/B interleaved after a warm-up: each round runs the baseline and the candidate
(their order alternates every round, so drift and cache effects hit both alike), each as many times as make its share
of the round last about ROUND_SIDE_S, and keeps the round's ratio baseline time / candidate time. On one CPU thread
runs are timed in the thread's CPU time (`clock_for`), which other processes do not inflate. The speed-up is the
median of the ratios, with a distribution-free confidence interval (the sign test's order statistics). A difference
is claimed only when the whole interval lies more than MIN_EFFECT beyond 1 on one side; otherwise the verdict is "no
difference" and the speed-up reported is exactly 1.0, so noise never decides a choice. The interval is looked at
after MIN_ROUNDS rounds and each doubling of them; rounds stop at the first decisive look (faster, slower, or within
MIN_EFFECT of 1), once the time budget is spent, or at a guard's deadline: a comparison costs at most a few seconds,
much less for small models.

`compare_onnx` compares two .onnx files (the files handed out) on a target runtime, `compare_modules` two torch
modules."""

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from torch import nn

from squeezer.core.errors import InputError
from squeezer.core.events import Guard

if TYPE_CHECKING:
    from squeezer.core.config import SpeedTarget

CONFIDENCE = 0.95
# The interval is looked at after MIN_ROUNDS rounds and each doubling of them (at most LOOKS times), each look at
# LOOK_CONFIDENCE: by Bonferroni's bound the verdict errs with probability at most LOOKS × (1 − LOOK_CONFIDENCE).
LOOKS = 5
LOOK_CONFIDENCE = 1 - (1 - CONFIDENCE) / LOOKS
# Differences below this are never claimed: two sessions of one file differ by a few percent (memory placement).
MIN_EFFECT = 0.05
MIN_ROUNDS = 8  # the fewest rounds whose sign-test interval has LOOK_CONFIDENCE coverage
MAX_ROUNDS = MIN_ROUNDS * 2 ** (LOOKS - 1)
BUDGET_S = 2.0  # seconds one comparison may spend timing once MIN_ROUNDS have run
ROUND_SIDE_S = 0.005  # each side's share of a round lasts at least this long: many runs of a fast model per round
MAX_RUNS_PER_SIDE = 1000
WARMUP_RUNS = 3

Verdict = Literal["faster", "slower", "no difference"]
RuntimeName = Literal["onnxruntime-cpu", "onnxruntime-cuda"]
RUNTIME_PROVIDERS: dict[str, str] = {
    "onnxruntime-cpu": "CPUExecutionProvider",
    "onnxruntime-cuda": "CUDAExecutionProvider",
}


@dataclass(frozen=True)
class SpeedComparison:
    """One A/B comparison. Times are medians per run over the rounds, in milliseconds; `ratio` the median of the
    rounds' baseline/candidate time ratios (above 1: the candidate is faster), `low`..`high` its confidence
    interval; `speedup` is `ratio` when the verdict claims a difference, else exactly 1.0."""

    baseline_ms: float
    candidate_ms: float
    ratio: float
    low: float
    high: float
    verdict: Verdict
    rounds: int
    runs_per_round: tuple[int, int]  # (baseline, candidate): each side's runs last about ROUND_SIDE_S
    seconds: float  # wall time the comparison took, warm-up and session set-up included
    identical: bool = False  # the two files were byte-identical: no difference by construction

    @property
    def speedup(self) -> float:
        return self.ratio if self.verdict != "no difference" else 1.0

    def as_dict(self) -> dict:
        """The report's form: the figures, the verdict and how it was reached."""
        figures = asdict(self) | {"runs_per_round": list(self.runs_per_round)}  # as JSON reads it back
        return figures | {"speedup": self.speedup, "confidence": CONFIDENCE, "min_effect": MIN_EFFECT}


def median_interval(values: list[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """A confidence interval of the median of `values` that assumes nothing of their distribution: the order
    statistics the sign test gives (coverage at least `confidence`); the whole range when there are too few."""
    ordered = sorted(values)
    n = len(ordered)
    tail, k = 0.0, 0
    for j in range(n):
        tail += math.comb(n, j) / 2**n
        if tail > (1 - confidence) / 2:
            break
        k = j + 1
    if k == 0:
        return ordered[0], ordered[-1]
    return ordered[k - 1], ordered[n - k]


def verdict_of(low: float, high: float) -> Verdict | None:
    """faster or slower when the whole interval lies beyond MIN_EFFECT on one side of 1; no difference when it lies
    within MIN_EFFECT of 1; None while it straddles a boundary (more rounds may decide)."""
    if low > 1 + MIN_EFFECT:
        return "faster"
    if high < 1 / (1 + MIN_EFFECT):
        return "slower"
    if low >= 1 / (1 + MIN_EFFECT) and high <= 1 + MIN_EFFECT:
        return "no difference"
    return None


Clock = Callable[[], float]


def _time(run: Callable[[], object], repeats: int, clock: Clock) -> float:
    start = clock()
    for _ in range(repeats):
        run()
    return (clock() - start) / repeats


def clock_for(threads: int, runtime: str = "onnxruntime-cpu") -> Clock:
    """What to time runs with: on one CPU thread the thread's CPU time, which other processes of a busy machine do
    not inflate (a preemption in the middle of a run is not counted, and longer runs would catch more of them);
    with more threads, or a GPU, wall time (the other threads' work and the device's are not the caller's CPU time)."""
    return time.thread_time if threads == 1 and not runtime.endswith("cuda") else time.perf_counter


def _is_look(rounds: int) -> bool:
    """MIN_ROUNDS, 2 × MIN_ROUNDS, 4 × MIN_ROUNDS, ...: few looks keep the chance of a false verdict small."""
    return rounds >= MIN_ROUNDS and rounds % MIN_ROUNDS == 0 and (rounds // MIN_ROUNDS).bit_count() == 1


def _cut_short(guard: Guard, rounds: int) -> bool:
    """Checks `guard` (a stop request raises); past its deadline the rounds end at MIN_ROUNDS, and at once when half
    of the grace after it is spent (the job's results must be written within it)."""
    guard.check()
    if not guard.overtime():
        return False
    return rounds >= MIN_ROUNDS or (rounds > 0 and time.monotonic() > guard.hard_deadline - guard.grace_s / 2)


def compare_runs(
    baseline: Callable[[], object],
    candidate: Callable[[], object],
    *,
    budget_s: float = BUDGET_S,
    guard: Guard | None = None,
    identical: bool = False,
    clock: Clock = time.perf_counter,
) -> SpeedComparison:
    """`baseline` against `candidate`, A/B interleaved (see the module docstring); `identical`: the two are known to
    be the same (their times are still measured, the verdict is no difference); `clock` times the runs
    (`clock_for`). Past `guard`'s deadline the rounds
    end early (`_cut_short`; fewer than MIN_ROUNDS: no difference claimed, the interval is their range); a stop
    request raises as every guard check does."""
    started = time.perf_counter()
    warmup: tuple[list[float], list[float]] = ([], [])
    for _ in range(WARMUP_RUNS):
        for side, run in enumerate((baseline, candidate)):
            warmup[side].append(_time(run, 1, clock))
    runs = tuple(max(1, min(MAX_RUNS_PER_SIDE, math.ceil(ROUND_SIDE_S / max(min(t), 1e-9)))) for t in warmup)
    times: tuple[list[float], list[float]] = ([], [])
    ratios: list[float] = []
    verdict: Verdict | None = None
    while True:
        if guard is not None and _cut_short(guard, len(ratios)):
            break
        order = (0, 1) if len(ratios) % 2 == 0 else (1, 0)
        for side in order:
            times[side].append(_time((baseline, candidate)[side], runs[side], clock))
        ratios.append(times[0][-1] / times[1][-1])
        rounds = len(ratios)
        last = rounds >= MAX_ROUNDS or (rounds >= MIN_ROUNDS and time.perf_counter() - started > budget_s)
        if _is_look(rounds) or last:  # the last look replaces the doubling it comes before: at most LOOKS in all
            verdict = verdict_of(*median_interval(ratios, LOOK_CONFIDENCE))
            if verdict is not None or last:
                break
    low, high = median_interval(ratios, LOOK_CONFIDENCE)
    return SpeedComparison(
        baseline_ms=1000.0 * float(np.median(times[0])),
        candidate_ms=1000.0 * float(np.median(times[1])),
        ratio=float(np.median(ratios)),
        low=low,
        high=high,
        verdict="no difference" if identical or verdict is None else verdict,
        rounds=len(ratios),
        runs_per_round=(runs[0], runs[1]),
        seconds=time.perf_counter() - started,
        identical=identical,
    )


def check_runtime(runtime: str) -> None:
    """Raises InputError (runtime_unavailable) when this machine cannot run `runtime`: an unknown name, or CUDA without
    onnxruntime's CUDA provider or without a GPU."""
    import onnxruntime as ort

    provider = RUNTIME_PROVIDERS.get(runtime)
    if provider is None:
        raise InputError(
            f"unknown target runtime {runtime!r}; known: {', '.join(RUNTIME_PROVIDERS)}", code="invalid_options"
        )
    if provider not in ort.get_available_providers() or (runtime.endswith("cuda") and not torch.cuda.is_available()):
        raise InputError(
            f"target runtime {runtime} needs a GPU and onnxruntime-gpu on the machine that runs the job; this one "
            f"offers {', '.join(ort.get_available_providers())} (use onnxruntime-cpu)",
            code="runtime_unavailable",
        )


def runtime_session(model: Path | bytes, runtime: str = "onnxruntime-cpu", threads: int = 1):
    """An onnxruntime session of `model` on `runtime` with `threads` intra-op threads (one inter-op thread)."""
    import onnxruntime as ort

    check_runtime(runtime)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=[RUNTIME_PROVIDERS[runtime]])


def _file_bytes(model: Path | bytes) -> bytes:
    return model if isinstance(model, bytes) else Path(model).read_bytes()


def compare_onnx(
    baseline: Path | bytes,
    candidate: Path | bytes,
    input_shape: tuple[int, ...],
    *,
    batch: int = 1,
    runtime: str = "onnxruntime-cpu",
    threads: int = 1,
    budget_s: float = BUDGET_S,
    guard: Guard | None = None,
) -> SpeedComparison:
    """Two .onnx files (paths or bytes) compared on `runtime` at `batch` on random inputs of `input_shape` (C, H, W);
    byte-identical files share one session and compare as no difference."""
    baseline_bytes, candidate_bytes = _file_bytes(baseline), _file_bytes(candidate)
    identical = baseline_bytes == candidate_bytes
    sessions = [runtime_session(baseline_bytes, runtime, threads)]
    sessions.append(sessions[0] if identical else runtime_session(candidate_bytes, runtime, threads))
    x = np.random.default_rng(0).standard_normal((batch, *input_shape), dtype=np.float32)
    feeds = [{session.get_inputs()[0].name: x} for session in sessions]
    return compare_runs(
        lambda: sessions[0].run(None, feeds[0]),
        lambda: sessions[1].run(None, feeds[1]),
        budget_s=budget_s,
        guard=guard,
        identical=identical,
        clock=clock_for(threads, runtime),
    )


def compare_on_target(
    baseline: Path | bytes,
    candidate: Path | bytes,
    input_shape: tuple[int, ...],
    target: "SpeedTarget",
    *,
    budget_s: float = BUDGET_S,
    guard: Guard | None = None,
) -> SpeedComparison:
    """`compare_onnx` on a job's speed target: its runtime, thread count and batch."""
    return compare_onnx(
        baseline,
        candidate,
        input_shape,
        batch=target.batch,
        runtime=target.runtime,
        threads=target.threads,
        budget_s=budget_s,
        guard=guard,
    )


@torch.no_grad()
def compare_modules(
    baseline: nn.Module,
    candidate: nn.Module,
    input_shape: tuple[int, ...],
    *,
    batch: int = 1,
    threads: int = 1,
    budget_s: float = BUDGET_S,
    guard: Guard | None = None,
) -> SpeedComparison:
    """Two torch modules compared on CPU at `batch` with `threads` intra-op threads (the process's own setting is
    restored after); both are left in eval mode on the CPU."""
    x = torch.randn(batch, *input_shape)
    baseline, candidate = baseline.to("cpu").eval(), candidate.to("cpu").eval()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return compare_runs(
            lambda: baseline(x), lambda: candidate(x), budget_s=budget_s, guard=guard, clock=clock_for(threads)
        )
    finally:
        torch.set_num_threads(previous)
