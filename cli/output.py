"""What every `squeezer` command shares: exit codes, consoles, option parsing and the report summary.

Exit codes are a contract with users' scripts: 0 target met, 3 result written but target missed, 2 bad input (one
line on stderr), 1 job failed or cancelled."""

import json
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TextIO

import typer
from rich.console import Console
from rich.table import Column, Table

from squeezer.core.artifacts.report import with_macs_alias
from squeezer.core.errors import short_description

EXIT_TARGET_MET, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_TARGET_MISSED = 0, 1, 2, 3

console = Console()
err_console = Console(stderr=True)


LogFormat = Literal["text", "json"]
LOG_FORMAT_HELP = (
    "Progress on stdout when it is not a terminal: text, a plain line per stage and every few seconds; "
    "json, one JSON object per line (always)."
)
PROGRESS_INTERVAL_S = 5.0  # a pipeline's log gets a line at least this often while a job runs (and at every stage)
HEARTBEAT_MIN_WAIT_S = 0.05  # the heartbeat's shortest sleep, so a due line never turns it into a busy loop


class ProgressLines:
    """Progress for pipelines and log files: a plain line on stdout at every change of stage (or of a job's status)
    and at least every `interval` seconds (stage, percentage, best accuracy and compression ratio so far); `json`:
    one JSON object per line. Text lines are written only when stdout is not a terminal (a terminal has the live
    bar); JSON always.

    Used as a context manager, a heartbeat thread repeats the latest state whenever `interval` passes without a line:
    a long stage (an epoch, an evaluation, the ONNX export, one blocking request) sends no update, and a pipeline's
    watchdog must still see the job alive."""

    def __init__(
        self,
        log_format: LogFormat = "text",
        *,
        metric: str = "accuracy",
        interval: float = PROGRESS_INTERVAL_S,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.format, self.metric, self.interval, self.clock = log_format, metric, interval, clock
        self.stream = stream if stream is not None else sys.stdout
        self.enabled = log_format == "json" or not self.stream.isatty()
        self.last_stage: tuple[str, Any] | None = None  # the stage, and the job's status where there is one
        self.last_time = -float("inf")
        self.last_line: str | None = None
        self.lock = threading.Lock()  # the heartbeat and the caller write whole lines, one at a time
        self.stopped = threading.Event()
        self.heartbeat: threading.Thread | None = None

    def __enter__(self) -> "ProgressLines":
        if self.enabled:
            self.heartbeat = threading.Thread(target=self._beat, name="progress-heartbeat", daemon=True)
            self.heartbeat.start()
        return self

    def __exit__(self, *_) -> None:
        self.stopped.set()
        if self.heartbeat is not None:
            self.heartbeat.join()

    def update(
        self,
        stage: str,
        fraction: float,
        *,
        best_accuracy: float | None = None,
        best_ratio: float | None = None,
        **extra: Any,
    ) -> None:
        if not self.enabled:
            return
        line = self._line(stage, fraction, best_accuracy, best_ratio, extra)
        with self.lock:
            self.last_line = line
            if (stage, extra.get("status")) != self.last_stage or self.clock() - self.last_time >= self.interval:
                self.last_stage = (stage, extra.get("status"))
                self._write(line)

    def _line(
        self, stage: str, fraction: float, best_accuracy: float | None, best_ratio: float | None, extra: dict
    ) -> str:
        if self.format == "json":
            return json.dumps(
                {
                    "stage": stage,
                    "progress": round(fraction, 4),
                    "best_accuracy": best_accuracy,
                    "best_compression_ratio": best_ratio,
                    "metric": self.metric,
                    **extra,
                }
            )
        best = (
            f"  best {self.metric} {best_accuracy:.2f}% ×{best_ratio:.1f}"
            if best_accuracy is not None and best_ratio is not None
            else ""
        )
        status = f"[{extra['status']}] " if extra.get("status") else ""
        return f"{status}{stage} {fraction:.0%}{best}"

    def _write(self, line: str) -> None:
        """Writes one line; the caller holds the lock."""
        print(line, file=self.stream, flush=True)
        self.last_time = self.clock()

    def _beat(self) -> None:
        """The heartbeat: the latest line again once `interval` has passed since the last one. A closed pipe ends it
        quietly (the reader has gone; the job goes on)."""
        while not self.stopped.wait(self._until_due()):
            with self.lock:
                if self.last_line is None or self.clock() - self.last_time < self.interval:
                    continue
                try:
                    self._write(self.last_line)
                except (OSError, ValueError):  # a broken pipe, or a stream already closed
                    return

    def _until_due(self) -> float:
        with self.lock:
            return max(self.interval - (self.clock() - self.last_time), HEARTBEAT_MIN_WAIT_S)


@dataclass
class CliState:
    """What the top-level options (`squeezer --debug …`) tell every command."""

    debug: bool = False


def cli_state(context: typer.Context) -> CliState:
    """The state the `squeezer` callback stored, or the defaults when a command runs without it."""
    state = context.find_root().obj
    return state if isinstance(state, CliState) else CliState()


def print_error_line(code: str, message: str, error: BaseException, *, debug: bool = False) -> None:
    """The one stderr line of a failed command; with `debug`, the traceback (and its causes) above it."""
    if debug:
        err_console.print("".join(traceback.format_exception(error)), markup=False, highlight=False, end="")
    print_one_line(f"error: {code}: {message}")


def print_one_line(message: str) -> None:
    """A message on one stderr line: a library's (or a server's) message may span lines; the contract is one."""
    err_console.print(" ".join(message.split()), markup=False, highlight=False, soft_wrap=True)


def report_internal_error(error: Exception, *, debug: bool = False) -> None:
    """A bug of ours, not the input's: one line naming the failure and where its traceback is (a log file, or the
    terminal with `debug`), never a raw traceback."""
    if debug:
        print_error_line("internal_error", short_description(error), error, debug=True)
        return
    try:
        with tempfile.NamedTemporaryFile("w", prefix="squeezer-error-", suffix=".log", delete=False) as log:
            log.write("".join(traceback.format_exception(error)))
        details = f"the traceback is in {log.name}, or rerun with --debug"
    except OSError:  # no writable temporary folder: the terminal is the only place left
        details = "rerun with --debug for the traceback"
    print_error_line("internal_error", f"{short_description(error)} (a Squeezer bug; {details})", error)


class ClientError(Exception):
    """A problem answer from the server (or no server): printed on one line, exit code attached."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def parse_options(pairs: list[str]) -> dict[str, Any]:
    """KEY=VALUE pairs with dotted keys (lwct.sparsity=0.5) into nested options; values are JSON when they parse."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--option {pair!r}: expected KEY=VALUE")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        *parents, leaf = key.split(".")
        node = options
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return options


def print_rows(columns: list[str], rows: list[list[str]]) -> None:
    """A listing: a table on a terminal; elsewhere (a pipe, a file, CI) a header line and one tab-separated line
    per row, nothing cut to a width, so that scripts can grep and cut it."""
    if not console.is_terminal:
        for line in (columns, *rows):
            print("\t".join(cell.replace("\t", " ").replace("\n", " ") for cell in line))
        return
    table = Table(*(Column(name, no_wrap=True, overflow="fold") for name in columns))
    for row in rows:
        table.add_row(*row)
    console.print(table)


def print_report(report: dict, out_dir: Path | None) -> None:
    """The summary table of a report: baseline against compressed, then the verdict."""
    baseline, compressed = with_macs_alias(report["baseline"]), with_macs_alias(report["compressed"])  # old: "flops"
    table = Table(title=f"{report['method']}: {'target met' if report['target_met'] else 'target missed'}")
    table.add_column("")
    table.add_column("baseline", justify="right")
    table.add_column("compressed", justify="right")
    metric = report.get("metric", "top1")
    for key, label, fmt in (
        ("accuracy", f"{metric} (%)", "{:.2f}"),
        ("size_bytes", "size (bytes)", "{:,}"),
        ("params", "parameters", "{:,}"),
        ("nonzero_params", "non-zero parameters", "{:,}"),
        ("macs", "MACs per sample", "{:,}"),
        ("latency_ms", "CPU latency, batch 1 (ms)", "{:.3f}"),
        ("latency_ms_batch32", "CPU latency, batch 32 (ms)", "{:.3f}"),
    ):
        if key in baseline:  # reports of older versions lack the batch-32 latency
            table.add_row(label, fmt.format(baseline[key]), fmt.format(compressed[key]))
    onnx, baseline_onnx = report.get("artifacts", {}).get("model.onnx"), report.get("baseline_onnx")
    if onnx and baseline_onnx:  # what a deployment runs: the ONNX files in onnxruntime, measured side by side
        for key, label, fmt in (
            ("bytes", "ONNX file (bytes)", "{:,}"),
            ("latency_ms", "onnxruntime, batch 1 (ms)", "{:.3f}"),
            ("latency_ms_batch32", "onnxruntime, batch 32 (ms)", "{:.3f}"),
        ):
            table.add_row(label, fmt.format(baseline_onnx[key]), fmt.format(onnx[key]))
    console.print(table)
    target = report["target"]
    unit = "points" if target["drop_type"] == "absolute" else "% of the baseline"
    console.print(
        f"compression ×{report['compression_ratio']:.1f}, accuracy drop {report['accuracy_drop']:.2f} points "
        f"(allowed {target['max_drop']} {unit})"
        + (f", model.onnx {metric} {report['onnx_accuracy']:.2f}%" if "onnx_accuracy" in report else ""),
        highlight=False,
        soft_wrap=True,  # one line, also in a pipe's 80 columns
    )
    if "speed" in report:
        console.print(speed_line(report["speed"]), highlight=False, soft_wrap=True)
    if out_dir is not None:
        console.print(f"results in {out_dir}", highlight=False)


def speed_line(speed: dict) -> str:
    """model.onnx's speed-up on the target as measured A/B against the baseline, and the goal's outcome."""
    target, measured = speed["target"], speed["on_target"]
    threads = target["threads"]
    where = f"{target['runtime']}, {threads} thread{'s' if threads > 1 else ''}, batch {target['batch']}"
    verdict = "within noise" if measured["verdict"] == "no difference" else measured["verdict"]
    interval = f"{measured['low']:.2f}-{measured['high']:.2f}"
    line = f"model.onnx speed-up ×{measured['speedup']:.2f} on {where} ({verdict}; interval {interval})"
    if target["speedup"] is not None:
        goal = f"×{target['speedup']}"
    elif target["latency_ms"] is not None:
        goal = f"{target['latency_ms']} ms"
    else:
        return line
    return f"{line}, goal {goal} {'met' if speed['goal_met'] else 'missed'}"
