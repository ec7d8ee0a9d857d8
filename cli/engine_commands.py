"""Engine commands: sample, compress, evaluate. They run the engine in this process; no service is involved.

Exit codes match `squeezer submit`: 0 target met, 3 result written but target missed, 2 bad input (one line on
stderr: "error: <code>: <message>"), 1 stopped or failed: a bug of ours is one line too, naming the log file that
holds its traceback (`squeezer --debug` prints it instead)."""

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from squeezer.cli.output import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_TARGET_MET,
    EXIT_TARGET_MISSED,
    LOG_FORMAT_HELP,
    LogFormat,
    ProgressLines,
    cli_state,
    console,
    err_console,
    parse_options,
    print_error_line,
    print_report,
    report_internal_error,
)
from squeezer.core.config import DropType, Normalization, TargetRuntime, validated_config
from squeezer.core.errors import InputError, SqueezerError
from squeezer.core.events import EventStage
from squeezer.core.methods import registry
from squeezer.core.methods.registry import MethodName

DataOption = Annotated[
    str,
    typer.Option(
        "--data",
        help="sample:digits, sample:fashion-mnist, sample:shapes (synthetic segmentation), an .npz, "
        "an image folder (dir/.zip/.tar) or images/ + masks/ folders.",
    ),
]
Task = Literal["classification", "segmentation"]
Metric = Literal["top1", "pixel_accuracy", "miou"]
MetricOption = Annotated[
    Metric | None,
    typer.Option("--metric", help="top1 (classification); pixel_accuracy (default) or miou (segmentation)."),
]
ArchOption = Annotated[
    str | None,
    typer.Option("--arch", help="Architecture of a weights-only file (.safetensors, .pt state dict), e.g. lenet5."),
]
ArchArgOption = Annotated[
    list[str] | None, typer.Option("--arch-arg", help="Architecture argument KEY=VALUE (JSON values), repeatable.")
]
MeanOption = Annotated[
    str | None, typer.Option("--normalize-mean", help="Per-channel input mean, comma-separated; overrides the model's.")
]
StdOption = Annotated[str | None, typer.Option("--normalize-std", help="Per-channel input std, comma-separated.")]


def _run(context: typer.Context, action: Callable[[], int]) -> None:
    """Runs a command body; engine errors the user can act on become one stderr line and an exit code, and so does
    any other failure (exit 1, a bug of ours)."""
    debug = cli_state(context).debug
    try:
        code = action()
    except SqueezerError as error:
        print_error_line(error.code, error.message, error, debug=debug)
        raise typer.Exit(EXIT_BAD_INPUT if isinstance(error, InputError) else EXIT_FAILED) from None
    except (typer.Exit, typer.Abort):  # typer's own ways out (Exit is a RuntimeError)
        raise
    except Exception as error:
        report_internal_error(error, debug=debug)
        raise typer.Exit(EXIT_FAILED) from None
    raise typer.Exit(code)


def _arch_args(pairs: list[str] | None) -> dict[str, Any]:
    args: dict[str, Any] = {}
    for pair in pairs or []:
        try:
            args |= parse_options([pair])
        except ValueError:
            raise InputError(f"--arch-arg {pair!r}: expected KEY=VALUE", code="invalid_options") from None
    return args


def _normalization(mean: str | None, std: str | None) -> Normalization | None:
    if mean is None and std is None:
        return None
    if mean is None or std is None:
        raise InputError("--normalize-mean and --normalize-std go together", code="invalid_options")
    try:  # one value per channel and positive stds are checked against the data by core.intake.data.normalize
        return Normalization(mean=[float(v) for v in mean.split(",")], std=[float(v) for v in std.split(",")])
    except ValueError:
        raise InputError(
            f"--normalize-mean/--normalize-std: expected comma-separated numbers, got {mean!r} and {std!r}",
            code="invalid_options",
        ) from None


METHOD_HELP = f"Compression method; {registry.summaries()}."


def sample(
    context: typer.Context,
    name: Annotated[Literal["digits", "fashion-mnist"], typer.Argument(help="Which sample data set.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the model directory.")] = Path("sample-model"),
) -> None:
    """Train (or reuse a cached) LeNet-5 baseline on a sample data set and write it as a Squeezer model directory."""

    def action() -> int:
        from squeezer.core.samples import ensure_sample_model

        with console.status(f"preparing the lenet5 baseline on {name} (trained once, then cached)…"):
            model_dir, accuracy = ensure_sample_model(name)
        shutil.copytree(model_dir, out, dirs_exist_ok=True)
        console.print(f"lenet5 on {name}: top1 {accuracy:.2f}% → {out}", highlight=False)
        return 0

    _run(context, action)


# Over 60 lines: typer reads the options from the signature, which is most of it.
def compress(
    context: typer.Context,
    model: Annotated[
        Path, typer.Argument(help="A Squeezer model directory or .zip, an .onnx, or weights with --arch.")
    ],
    data: DataOption,
    out: Annotated[
        Path, typer.Option("--out", help="Folder for model.sqz, model/, model.onnx and report.json.")
    ] = Path("squeezer-results"),
    method: Annotated[MethodName, typer.Option(help=METHOD_HELP)] = MethodName.LWCT,
    task: Annotated[Task, typer.Option("--task", help="What the model does.")] = "classification",
    metric: MetricOption = None,
    max_drop: Annotated[float, typer.Option("--max-drop", help="Largest allowed drop of the metric.")] = 1.0,
    drop_type: Annotated[
        DropType, typer.Option("--drop-type", help="absolute (points) or relative (percent of the baseline).")
    ] = DropType.ABSOLUTE,
    arch: ArchOption = None,
    arch_arg: ArchArgOption = None,
    device: Annotated[Literal["auto", "cpu", "cuda"], typer.Option(help="Training device.")] = "auto",
    seed: Annotated[int, typer.Option(help="Seed for every random choice (CPU runs are reproducible).")] = 0,
    epochs_per_step: Annotated[
        int | None, typer.Option("--epochs-per-step", help="Epochs per step (lwct, filter, group; auto: all three).")
    ] = None,
    max_train_samples: Annotated[
        int | None, typer.Option("--max-train-samples", help="Training samples per epoch (for quick runs).")
    ] = None,
    normalize_mean: MeanOption = None,
    normalize_std: StdOption = None,
    time_limit: Annotated[
        float | None, typer.Option("--time-limit", help="Seconds of training; the best result so far is kept.")
    ] = None,
    speedup: Annotated[
        float | None,
        typer.Option("--speedup", help="Speed-up over the baseline to reach on the target runtime, e.g. 3.0."),
    ] = None,
    latency_ms: Annotated[
        float | None, typer.Option("--latency-ms", help="Latency of one batch to reach on the target runtime (ms).")
    ] = None,
    target_runtime: Annotated[
        TargetRuntime | None,
        typer.Option(
            "--target-runtime",
            help="Where speed is measured: onnxruntime-cpu (default) or onnxruntime-cuda (a GPU and onnxruntime-gpu).",
        ),
    ] = None,
    target_threads: Annotated[
        int | None, typer.Option("--target-threads", help="Intra-op threads of the target runtime (default 1).")
    ] = None,
    option: Annotated[
        list[str] | None,
        typer.Option("--option", help="Any engine option KEY=VALUE, dotted keys, e.g. lwct.sparsity=0.8."),
    ] = None,
    log_format: Annotated[LogFormat, typer.Option("--log-format", help=LOG_FORMAT_HELP)] = "text",
) -> None:
    """Compress a trained model under an accuracy budget; writes model.sqz, model/, model.onnx and report.json."""

    def action() -> int:
        from squeezer.core.pipeline import ModelSource, compress_files

        try:
            fields = parse_options(option or [])
        except ValueError as error:
            raise InputError(str(error), code="invalid_options") from None
        for name in (name for name in registry.method(method).reads if registry.method(name).trains):
            method_options = fields.setdefault(name, {})
            for key, value in (("epochs_per_step", epochs_per_step), ("max_train_samples", max_train_samples)):
                if value is not None:
                    method_options[key] = value
        normalization = _normalization(normalize_mean, normalize_std)
        target = {"max_drop": max_drop, "drop_type": drop_type} | ({"metric": metric} if metric else {})
        fields |= {"method": method, "task": task, "target": target, "device": device, "seed": seed}
        if normalization is not None:
            fields["normalization"] = normalization.model_dump()
        if time_limit is not None:
            fields["time_limit_s"] = time_limit
        speed = {"speedup": speedup, "latency_ms": latency_ms, "runtime": target_runtime, "threads": target_threads}
        fields["speed_target"] = fields.get("speed_target", {}) | {k: v for k, v in speed.items() if v is not None}
        config = validated_config(fields)
        source = ModelSource(path=model, architecture=arch, arch_args=_arch_args(arch_arg))
        with ProgressReporter(config.metric, log_format) as on_event:
            report = compress_files(source, data, out, config, on_event=on_event)
        print_report(report, out)
        return EXIT_TARGET_MET if report["target_met"] else EXIT_TARGET_MISSED

    _run(context, action)


class ProgressReporter:
    """Engine events on stderr: every step tried as a line and, on a terminal, a live bar below them (a bar would
    only clutter a log file). The bar vanishes at the end, leaving the steps and the summary or the error line.
    Stdout gets the pipeline's progress lines (cli.output.ProgressLines, with its heartbeat while a stage is long)."""

    def __init__(self, metric: str, log_format: LogFormat = "text"):
        self.metric = metric
        self.lines = ProgressLines(log_format, metric=metric)
        self.best: tuple[float, float] | None = None  # (compression ratio, accuracy) of the best accepted step

    def __enter__(self) -> Callable:
        self.lines.__enter__()
        self.bar = None
        if err_console.is_terminal:
            columns = (TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn())
            self.bar = Progress(*columns, console=err_console, transient=True)
            self.bar.start()
            self.task = self.bar.add_task("starting", total=1.0)
        return self.on_event

    def __exit__(self, *_) -> None:
        self.lines.__exit__()
        if self.bar is not None:
            self.bar.stop()

    def on_event(self, event) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=event.fraction, description=f"{event.stage}: {event.message}"[:60])
        data = event.data
        better = self.best is None or data.get("compression_ratio", 0.0) > self.best[0]
        if event.stage == EventStage.STEP and data.get("accepted") and better:
            self.best = (data["compression_ratio"], data["accuracy"])
        ratio, accuracy = self.best or (None, None)
        self.lines.update(event.stage, event.fraction, best_accuracy=accuracy, best_ratio=ratio)
        if event.stage == EventStage.STEP:
            layers = " ".join(data.get("layers") or [])
            err_console.print(
                f"step {data['step']} {event.message} {layers}: {self.metric} {data['accuracy']:.2f}%  "
                f"×{data['compression_ratio']:.1f}",
                markup=False,
                highlight=False,
                soft_wrap=True,  # one line per step, whatever the width: a log's reader greps them
            )


def evaluate(
    context: typer.Context,
    model: Annotated[
        Path, typer.Argument(help="model.sqz, a model directory or .zip, an .onnx, or weights with --arch.")
    ],
    data: DataOption,
    as_json: Annotated[bool, typer.Option("--json", help='Print {"metric": ..., "accuracy": ...}.')] = False,
    task: Annotated[
        Task | None, typer.Option("--task", help="Checked against the data's own task (masks: segmentation).")
    ] = None,
    metric: MetricOption = None,
    arch: ArchOption = None,
    arch_arg: ArchArgOption = None,
    normalize_mean: MeanOption = None,
    normalize_std: StdOption = None,
    device: Annotated[
        Literal["cpu", "auto", "cuda"],
        typer.Option(help="cpu reproduces report.json exactly; .onnx always runs on CPU."),
    ] = "cpu",
) -> None:
    """Measure a model's top-1 accuracy (or, on segmentation data, pixel accuracy or mIoU) on the validation split."""

    def action() -> int:
        from squeezer.core.pipeline import ModelSource, evaluate_file

        source = ModelSource(path=model, architecture=arch, arch_args=_arch_args(arch_arg))
        result = evaluate_file(
            source,
            data,
            normalization=_normalization(normalize_mean, normalize_std),
            device=device,
            task=task,
            metric=metric,
        )
        if as_json:
            typer.echo(json.dumps(result))
        else:
            console.print(f"{result['metric']} {result['accuracy']:.2f}%", highlight=False)
        return 0

    _run(context, action)


def register(app: typer.Typer) -> None:
    """Adds the engine commands to the `squeezer` app."""
    for command in (sample, compress, evaluate):
        app.command()(command)
