"""The engine's one entry point for files: load and check a model and its data, compress, write the results
(model.sqz, model/, model.onnx, report.json) and verify that every figure in the report comes back from the files
handed out.

The CLI, the API's submission check and the worker run the engine through these functions (beside them they use
only its config, errors, events and helpers such as safe archive extraction), so all three accept the same inputs and
reject the same ones with the same error codes.
"""

import dataclasses
import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import torch

from squeezer.core import memory_budget
from squeezer.core.artifacts.onnx_export import export_onnx
from squeezer.core.artifacts.report import Report, build_report
from squeezer.core.artifacts.report_html import render_report_html
from squeezer.core.artifacts.sqz import load_sqz, write_sqz
from squeezer.core.config import METRICS_BY_TASK, CompressConfig, Normalization
from squeezer.core.errors import InputError, MismatchError, ModelFormatError, SqueezerError, UnsupportedLayerError
from squeezer.core.events import (
    CheckpointCallback,
    Event,
    EventCallback,
    Guard,
    StopCheck,
    never_stop,
    no_checkpoints,
    no_events,
)
from squeezer.core.intake.data import Dataset, check_compatible, load_dataset, normalize
from squeezer.core.intake.models import LoadedModel, load_model, save_model_dir
from squeezer.core.intake.onnx_normalize import with_free_dims_named
from squeezer.core.measure import (
    count_macs,
    count_nonzero,
    count_params,
    float32_bytes,
    metric_function,
    resolve_device,
    score_predictions,
)
from squeezer.core.measure.compare import check_runtime
from squeezer.core.measure.runtime import onnx_binary_threshold, onnx_predictions
from squeezer.core.measure.speed_report import File, SpeedFindings, comparison_budget, measure_speed
from squeezer.core.methods.depth import with_architecture
from squeezer.core.methods.lwct import prunable_layers
from squeezer.core.methods.registry import MethodName, method
from squeezer.core.methods.results import ChannelLayerState, LayerState, MethodResult

# The report's figures are measured on CPU whatever device trained the model: CUDA kernels (TF32, other reduction
# orders) can flip near-tied predictions, and `squeezer evaluate` on any CPU must reproduce the reported accuracy.
REPORT_DEVICE = "cpu"
PREPROCESSING_KEY = "squeezer.preprocessing"  # ONNX metadata_props entry holding the input normalization as JSON
ONNX_TOLERANCE_POINTS = 0.1
# Share of the progress bar the method gets; loading comes before it and export/verification after it.
_METHOD_START, _METHOD_END = 0.02, 0.95
# Under a time limit, writing the results reads the validation split about this many times over (model.sqz reloaded
# in torch, model.onnx and the baseline's file in onnxruntime, the method's own wrap-up) beside the export: the
# method stops that long before the limit (at most half the time left), and the grace covers as much (at most
# MAX_GRACE_S, under the worker's overtime allowance), so a job on a large network still hands out its best result.
FINISH_EVALUATIONS = 4
MAX_GRACE_S = 120.0


@dataclass
class ModelSource:
    """A model file as the user gave it; weights-only files (.safetensors, .pt state dicts) also name their
    architecture."""

    path: Path
    architecture: str | None = None
    arch_args: dict = field(default_factory=dict)


@dataclass(frozen=True)
class InputSummary:
    """What check_inputs found: enough for the API to confirm a submission and for a user to spot a wrong file."""

    model_format: str
    architecture: str
    input_shape: tuple[int, ...]
    num_classes: int
    task: str
    train_samples: int
    val_samples: int
    layers: list[str]  # the compressible (convolution and linear) layers
    memory_bytes: int  # what the job will need on a worker (core.memory_budget), at most its job_memory_bytes


def _open_model(source: ModelSource) -> LoadedModel:
    """Any model file the engine reads, Squeezer's own model.sqz included."""
    path = Path(source.path)
    if not path.exists():
        raise ModelFormatError(f"model file {path.name} does not exist")
    if path.suffix.lower() == ".sqz":
        return load_sqz(path)
    return load_model(path, architecture=source.architecture, arch_args=source.arch_args or None)


def _load(
    model: ModelSource, data: str | Path, normalization: Normalization | None, task: str | None
) -> tuple[LoadedModel, Dataset, Dataset]:
    """(model, raw data, normalized data), checked against each other and against `task` (None: the data's own).
    The model's own preprocessing applies unless `normalization` overrides it; the returned model carries the one
    used, so it is saved beside the weights."""
    loaded = _open_model(model)
    raw = load_dataset(data)
    if task is not None and raw.task != task:
        hint = (
            "pass --task segmentation (options.task in the API)"
            if raw.task == "segmentation"
            else "segmentation data holds masks: y_* of shape (N, H, W), or images/ and masks/ folders"
        )
        raise MismatchError(f"task is {task} but {raw.name} is a {raw.task} data set; {hint}")
    normalization = normalization or loaded.preprocessing
    prepared = normalize(raw, normalization)
    check_compatible(loaded, prepared)  # also fills in the input shape and class count where only the data tells them
    loaded.preprocessing = normalization
    return loaded, raw, prepared


def _input_shape(model: LoadedModel) -> tuple[int, ...]:
    """The model's (C, H, W): known once check_compatible has run, and recorded with every model Squeezer writes."""
    assert model.input_shape is not None, "check_compatible fills in the input shape"
    return tuple(model.input_shape)


def check_inputs(model: ModelSource, data: str | Path, config: CompressConfig) -> InputSummary:
    """Loads and cross-checks the inputs without training anything; raises the InputError a job would fail with."""
    loaded, _, prepared = _load(model, data, config.normalization, config.task)
    layers = list(prunable_layers(loaded.module))
    if not layers:
        raise UnsupportedLayerError("the model has no Conv or Linear layer to compress")
    assert loaded.num_classes is not None  # check_compatible filled it
    need = memory_budget.check_fits(
        loaded.module, prepared.x_val, config, train_samples=len(prepared.x_train), val_samples=len(prepared.x_val)
    )
    return InputSummary(
        model_format=loaded.source_format,
        architecture=loaded.architecture["name"],
        input_shape=_input_shape(loaded),
        num_classes=loaded.num_classes,
        task=prepared.task,
        train_samples=len(prepared.x_train),
        val_samples=len(prepared.x_val),
        layers=layers,
        memory_bytes=need.bytes,
    )


def _measures(
    module: torch.nn.Module, input_shape: tuple[int, ...], data: Dataset, size_bytes: int, metric: str, guard: Guard
) -> dict:
    return {
        "accuracy": metric_function(metric)(module, data.x_val, data.y_val, device=REPORT_DEVICE, should_stop=guard),
        "params": count_params(module),
        "nonzero_params": count_nonzero(module),
        "macs": count_macs(module, input_shape),  # the report adds its alias "flops"
        "size_bytes": size_bytes,
    }


def _version() -> str:
    try:
        return metadata.version("squeezer")
    except metadata.PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


@dataclass
class _Inputs:
    """What the method starts from: the checked model, the data as uploaded and as the model reads it, and the
    baseline's figures."""

    model: LoadedModel
    raw: Dataset
    prepared: Dataset
    baseline: dict
    evaluation_s: float  # measuring the baseline on the validation split took this long


@dataclass
class _Outputs:
    """The files written, loaded back and measured: model.sqz reloaded, the headline figures of the deployable and
    every file's own."""

    reloaded: LoadedModel
    compressed: dict
    artifacts: dict
    onnx_accuracy: float
    baseline_onnx: dict
    deployable: str
    speed: dict  # the report's speed section (core.measure.speed_report)


def compress_files(
    model: ModelSource,
    data: str | Path,
    out_dir: Path,
    config: CompressConfig,
    *,
    on_event: EventCallback = no_events,
    should_stop: StopCheck = never_stop,
    checkpoint_dir: Path | None = None,
    on_checkpoint: CheckpointCallback = no_checkpoints,
) -> dict:
    """Compresses `model` on `data` under `config` and writes model.sqz, model/, model.onnx and report.json to
    `out_dir`. Returns the report. Raises InputError subclasses for unusable inputs, Cancelled when stopped.

    `config.time_limit_s` counts from here (and ends at the deadline of a core.events.Guard passed as `should_stop`,
    if that comes first): the method stops at it and keeps its best state, whose results are then written and
    measured (latency repetitions cut short) within the guard's grace (GRACE_S, or FINISH_EVALUATIONS evaluations
    of the validation split, which the method leaves before the limit), or TimeLimitExceeded ends the job
    there."""
    started = time.monotonic()
    guard = Guard.of(should_stop, config.time_limit_s)
    torch.manual_seed(config.seed)
    check_runtime(config.speed_target.runtime)  # before anything is trained for a target this machine lacks
    inputs = _load_inputs(model, data, config, guard.essential(), on_event)
    loaded = time.monotonic()
    method_guard = _method_guard(guard, inputs.evaluation_s)
    finishing = guard.essential()  # what the report needs: the results' figures, within the grace
    result = _run_method(inputs, config, method_guard, on_event, checkpoint_dir, on_checkpoint)
    compressed = time.monotonic()
    on_event(Event(stage="export", fraction=_METHOD_END, message="writing model.sqz, model/ and model.onnx"))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs = _write_outputs(inputs, result, out_dir, config, finishing, comparison_budget(compressed - loaded))
    finished = time.monotonic()
    timings = {  # the job's fixed cost (load, write, measure speed) beside the method's own time
        "load": loaded - started,
        "method": compressed - loaded,
        "write_and_verify": finished - compressed - outputs.speed["seconds"],
        "measure_speed": outputs.speed["seconds"],
    }
    report = _report(config, inputs, result, outputs, finished - started, timings)
    _write_report(report, out_dir)
    on_event(_done_event(report))
    return report.as_dict()


def _load_inputs(
    model: ModelSource, data: str | Path, config: CompressConfig, guard: Guard, on_event: EventCallback
) -> _Inputs:
    """Loads and checks the inputs, and measures the baseline."""
    on_event(Event(stage="intake", fraction=0.0, message="loading the model and the data"))
    loaded, raw, prepared = _load(model, data, config.normalization, config.task)
    metric = config.metric
    started = time.monotonic()
    baseline = _measures(loaded.module, _input_shape(loaded), prepared, float32_bytes(loaded.module), metric, guard)
    evaluation_s = time.monotonic() - started
    on_event(
        Event(
            stage="intake",
            fraction=_METHOD_START,
            message=f"baseline {metric} {baseline['accuracy']:.2f}%",
            data={"accuracy": baseline["accuracy"]},
        )
    )
    return _Inputs(loaded, raw, prepared, baseline, evaluation_s)


def _method_guard(guard: Guard, evaluation_s: float) -> Guard:
    """The method's guard: the job's, its deadline brought forward by the time writing the results will take (see
    FINISH_EVALUATIONS), whose grace is extended to as much."""
    finish_s = FINISH_EVALUATIONS * evaluation_s
    guard.extend_grace(min(finish_s, MAX_GRACE_S))
    left = guard.seconds_left()
    return guard if left is None else guard.within(max(left - min(finish_s, left / 2), 1e-3))


def _run_method(
    inputs: _Inputs,
    config: CompressConfig,
    guard: Guard,
    on_event: EventCallback,
    checkpoint_dir: Path | None,
    on_checkpoint: CheckpointCallback,
) -> MethodResult:
    """The configured method, its progress mapped onto the method's share of the job's bar."""

    def method_event(event: Event) -> None:
        on_event(dataclasses.replace(event, fraction=_METHOD_START + (_METHOD_END - _METHOD_START) * event.fraction))

    return method(config.method).run(
        inputs.model,
        inputs.prepared,
        config,
        on_event=method_event,
        should_stop=guard,
        checkpoint_dir=checkpoint_dir,
        on_checkpoint=on_checkpoint,
    )


def _write_outputs(
    inputs: _Inputs, result: MethodResult, out_dir: Path, config: CompressConfig, guard: Guard, speed_budget_s: float
) -> _Outputs:
    """Writes model.sqz, model/ and model.onnx, each loaded back and measured, its speed compared with the
    baseline's (each comparison within `speed_budget_s`); int8 exists only as model.onnx, whose accuracy and bytes
    are then the headline figures (latency_ms stays torch's, as for every method: onnxruntime's is in artifacts and
    baseline_onnx)."""
    metric = config.metric
    reloaded, compressed = _write_sqz(inputs, result, out_dir / "model.sqz", metric, guard)
    model_dir = out_dir / "model"
    shutil.rmtree(model_dir, ignore_errors=True)
    save_model_dir(reloaded, model_dir)
    model_dir_loaded = load_model(model_dir)
    onnx_path = out_dir / "model.onnx"
    onnx_accuracy = _write_onnx(inputs, result, reloaded, compressed["accuracy"], onnx_path, metric, guard)
    artifacts = {
        "model.sqz": {"bytes": compressed["size_bytes"], "accuracy": compressed["accuracy"], "runtime": "torch"},
        "model/": _model_dir_entry(model_dir, model_dir_loaded, inputs.prepared, metric, guard),
        "model.onnx": _onnx_entry(onnx_path, onnx_accuracy),
    }
    with tempfile.TemporaryDirectory(prefix="squeezer-baseline-") as tmp:
        baseline_path, baseline_onnx = _baseline_onnx(inputs, Path(tmp), metric, guard)
        files: dict[str, File] = {
            "model.sqz": reloaded.module,
            "model/": model_dir_loaded.module,
            "model.onnx": onnx_path,
        }
        shape, target = _input_shape(inputs.model), config.speed_target
        speed = measure_speed(inputs.model.module, baseline_path, files, shape, target, guard, speed_budget_s)
    _fill_latencies(speed, inputs.baseline, compressed, artifacts, baseline_onnx)
    deployable = "model.sqz" if result.onnx is None else "model.onnx"
    if result.onnx is not None:
        compressed |= {"accuracy": artifacts["model.onnx"]["accuracy"], "size_bytes": artifacts["model.onnx"]["bytes"]}
    return _Outputs(reloaded, compressed, artifacts, onnx_accuracy, baseline_onnx, deployable, speed.section)


def _fill_latencies(speed: SpeedFindings, baseline: dict, compressed: dict, artifacts: dict, baseline_onnx: dict):
    """Every latency of the report from the A/B comparisons: the baseline's and model.sqz's from the one between
    them (the headline figures), each file's from its own, the baseline ONNX's from the one against model.onnx."""
    baseline |= speed.latencies["baseline"]
    compressed |= speed.latencies["model.sqz"]
    for name, entry in artifacts.items():
        entry |= speed.latencies[name]
    baseline_onnx |= speed.latencies["baseline.onnx"]


def _write_sqz(
    inputs: _Inputs, result: MethodResult, path: Path, metric: str, guard: Guard
) -> tuple[LoadedModel, dict]:
    """model.sqz written, loaded back and measured; it must score exactly what the method's module scores."""
    sqz_bytes = write_sqz(path, with_architecture(inputs.model, result.module), result.layers)
    reloaded = load_sqz(path)
    compressed = _measures(reloaded.module, reloaded.input_shape, inputs.prepared, sqz_bytes, metric, guard)
    produced = metric_function(metric)(
        result.module, inputs.prepared.x_val, inputs.prepared.y_val, device=REPORT_DEVICE, should_stop=guard
    )
    if compressed["accuracy"] != produced:
        raise RuntimeError(f"model.sqz scores {compressed['accuracy']}% but the compressed module {produced}%")
    return reloaded, compressed


def _write_onnx(
    inputs: _Inputs,
    result: MethodResult,
    reloaded: LoadedModel,
    sqz_accuracy: float,
    path: Path,
    metric: str,
    guard: Guard,
) -> float:
    """model.onnx (model.sqz exported, or the method's own file: int8) with its preprocessing stamped in; returns
    its accuracy under onnxruntime, which must agree with the file it stands for."""
    if result.onnx is None:
        export_onnx(reloaded, path, should_stop=guard)
    else:
        path.write_bytes(result.onnx)
    _stamp_preprocessing(path, reloaded.preprocessing)
    onnx_accuracy = _onnx_accuracy(path, inputs.raw, None, metric, guard)
    expected, source = (sqz_accuracy, "model.sqz") if result.onnx is None else (result.accuracy, "the method")
    if abs(onnx_accuracy - expected) > ONNX_TOLERANCE_POINTS:
        raise RuntimeError(f"model.onnx scores {onnx_accuracy}% but {source} {expected}%")
    return onnx_accuracy


def _baseline_onnx(inputs: _Inputs, folder: Path, metric: str, guard: Guard) -> tuple[Path, dict]:
    """The uploaded model exported to ONNX in `folder` and its entry, measured like model.onnx (its latencies come
    from the comparison with model.onnx)."""
    path = export_onnx(inputs.model, folder / "baseline.onnx", should_stop=guard)
    _stamp_preprocessing(path, inputs.model.preprocessing)
    return path, _onnx_entry(path, _onnx_accuracy(path, inputs.raw, None, metric, guard))


def _report(
    config: CompressConfig,
    inputs: _Inputs,
    result: MethodResult,
    outputs: _Outputs,
    duration_s: float,
    timings: dict[str, float],
) -> Report:
    """The report's figures and how they were obtained, validated as the served document."""
    target, baseline, compressed = config.target, inputs.baseline, outputs.compressed
    method_only = (
        {"objective": config.objective, "candidates": result.candidates} if config.method == MethodName.AUTO else {}
    )
    extras = {
        "task": config.task,
        "dataset": inputs.raw.summary(),
        "onnx_accuracy": outputs.onnx_accuracy,
        "artifacts": outputs.artifacts,
        "baseline_onnx": outputs.baseline_onnx,
        "speed": outputs.speed,
        "deployable": outputs.deployable,
        "settings": config.model_dump(mode="json"),
        **method_only,
        "stopped_early": result.stopped_early,
        "fine_tuning": result.fine_tuning,
        "device": str(resolve_device(config.device)),
        "seed": config.seed,
        "preprocessing": outputs.reloaded.preprocessing.model_dump() if outputs.reloaded.preprocessing else None,
        "onnx_layer_names": _uploaded_layer_names(inputs.model, result.layers),
        "squeezer_version": _version(),
        "duration_s": duration_s,
        "timings_s": timings,
    }
    keys = build_report(
        method=config.method,
        metric=config.metric,
        max_drop=target.max_drop,
        drop_type=target.drop_type,
        target_met=baseline["accuracy"] - compressed["accuracy"] <= target.allowed_drop(baseline["accuracy"]),
        baseline=baseline,
        compressed=compressed,
        layers=_with_channel_counts(result.layers),
        trials=result.trials,
        extras=extras,
    )
    return Report.model_validate(keys)


def _write_report(report: Report, out_dir: Path) -> None:
    content = report.as_dict()
    (out_dir / "report.json").write_text(json.dumps(content, indent=2))
    (out_dir / "report.html").write_text(render_report_html(content), encoding="utf-8")


def _done_event(report: Report) -> Event:
    return Event(
        stage="done",
        fraction=1.0,
        message="target met" if report.target_met else "target missed",
        data={
            "accuracy": report.compressed.accuracy,
            "compression_ratio": report.compression_ratio,
            "target_met": report.target_met,
        },
    )


def _onnx_entry(path: Path, accuracy: float) -> dict:
    """An .onnx file's report entry: its bytes and its accuracy (measured on the file by the caller); its
    onnxruntime latencies (CPU, one thread) come from the speed comparison."""
    return {"bytes": path.stat().st_size, "accuracy": accuracy, "runtime": "onnxruntime"}


def _model_dir_entry(model_dir: Path, loaded: LoadedModel, data: Dataset, metric: str, guard: Guard) -> dict:
    """model/ (served as model.zip), `loaded` back from it, measured like model.sqz."""
    return {
        "bytes": sum(f.stat().st_size for f in model_dir.rglob("*") if f.is_file()),
        "accuracy": metric_function(metric)(
            loaded.module, data.x_val, data.y_val, device=REPORT_DEVICE, should_stop=guard
        ),
        "runtime": "torch",
    }


def _uploaded_layer_names(loaded: LoadedModel, layers: list[LayerState]) -> dict[str, str]:
    """Each reported layer's name in the uploaded ONNX graph, as data: the module names are generated ones, so that no
    uploaded string ever becomes code (core/intake/onnx_names.py); originals are already capped there."""
    return {layer.name: loaded.onnx_names[layer.name] for layer in layers if layer.name in loaded.onnx_names}


def _with_channel_counts(layers: list[LayerState]) -> list[ChannelLayerState]:
    """Every report row says how many channels its layer kept and why; lwct's layers keep them all."""
    return [
        layer
        if isinstance(layer, ChannelLayerState)
        else ChannelLayerState(
            **dataclasses.asdict(layer),
            channels_before=layer.shape[0],
            channels_kept=layer.shape[0],
            channels_removed=0,
            reason="kept: lwct prunes and ternarises weights, it removes no channels",
        )
        for layer in layers
    ]


def _stamp_preprocessing(onnx_path: Path, normalization: Normalization | None) -> None:
    """Records the input normalization in the ONNX file itself, so a bare model.onnx is evaluated like model.sqz."""
    import onnx

    proto = onnx.load(str(onnx_path))
    onnx.helper.set_model_props(
        proto, {PREPROCESSING_KEY: json.dumps(normalization.model_dump() if normalization else None)}
    )
    onnx.save(proto, str(onnx_path))


def _onnx_accuracy(
    path: Path, raw: Dataset, normalization: Normalization | None, metric: str, guard: Guard | None = None
) -> float:
    """`metric` of an .onnx file under onnxruntime on CPU; without an explicit normalization, the file's own applies."""
    import onnxruntime as ort

    try:
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # the job's share of the cores (core.jail)
        session = ort.InferenceSession(
            with_free_dims_named(path.read_bytes()), options, providers=["CPUExecutionProvider"]
        )
    except Exception as error:  # onnxruntime raises its own unrelated exception types for unreadable files
        raise ModelFormatError(f"{path.name} is not a readable ONNX model: {error}") from None
    stored = session.get_modelmeta().custom_metadata_map.get(PREPROCESSING_KEY)
    if normalization is None and stored:
        stored = json.loads(stored)
        normalization = Normalization.model_validate(stored) if stored else None
    data = normalize(raw, normalization)
    try:
        threshold = onnx_binary_threshold(path)
        predictions = onnx_predictions(session, data.x_val.numpy(), threshold=threshold, should_stop=guard)
    except SqueezerError:  # a stop request or the time limit, between two batches
        raise
    except Exception as error:  # shape or type mismatch, reported by onnxruntime as InvalidArgument/Fail
        shape = session.get_inputs()[0].shape
        raise MismatchError(f"the data does not fit the ONNX model's input {shape}: {error}") from None
    return score_predictions(metric, torch.from_numpy(predictions), data.y_val)


def evaluate_file(
    model: ModelSource | Path | str,
    data: str | Path,
    *,
    normalization: Normalization | None = None,
    device: str = REPORT_DEVICE,
    task: str | None = None,
    metric: str | None = None,
) -> dict:
    """`metric` of a model file on the validation split of `data`: model.sqz, a model directory or .zip, .onnx (under
    onnxruntime), or weights plus an architecture. The task is the data's own unless given (then they must agree);
    the metric defaults to the task's first (top1, pixel_accuracy). The model's own preprocessing applies unless
    `normalization` overrides it. On CPU (the default) this reproduces the report's accuracy exactly."""
    source = model if isinstance(model, ModelSource) else ModelSource(path=Path(model))
    raw = load_dataset(data)
    if task is not None and raw.task != task:
        raise MismatchError(f"task is {task} but the data set is a {raw.task} one")
    allowed = METRICS_BY_TASK[raw.task]
    metric = metric or allowed[0]
    if metric not in allowed:
        raise InputError(
            f"metric {metric!r} does not apply to {raw.task}; use {' or '.join(allowed)}", code="invalid_options"
        )
    if Path(source.path).suffix.lower() == ".onnx":
        return {"metric": metric, "accuracy": _onnx_accuracy(Path(source.path), raw, normalization, metric)}
    loaded = _open_model(source)
    prepared = normalize(raw, normalization or loaded.preprocessing)
    check_compatible(loaded, prepared)
    accuracy = metric_function(metric)(loaded.module, prepared.x_val, prepared.y_val, device=resolve_device(device))
    return {"metric": metric, "accuracy": accuracy}
