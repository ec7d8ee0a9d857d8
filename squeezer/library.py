"""The engine as a Python library: `compress`, `evaluate` and `load`, the calls `squeezer compress` and
`squeezer evaluate` make, for pipelines that would rather call Python than a command.

Keyword arguments follow NNCF's accuracy-aware API (`max_drop`, `drop_type`), so the budget reads the same in
either; errors are the engine's own `InputError`s, with the stable codes the CLI and the service report.

Example:
    >>> from squeezer import compress, evaluate
    >>> result = compress("lenet-digits", "sample:digits", max_drop=1.0, output_dir="out")
    >>> result.target_met, result.compression_ratio
    >>> evaluate(result.model_sqz, "sample:digits").accuracy
"""

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from squeezer.core.artifacts.sqz import load_sqz
from squeezer.core.config import CompressConfig, Normalization, validated_config
from squeezer.core.errors import InputError, ModelFormatError
from squeezer.core.events import EventCallback, no_events
from squeezer.core.intake.models import LoadedModel, load_model
from squeezer.core.pipeline import ModelSource, compress_files, evaluate_file

PathLike = str | Path


@dataclass(frozen=True)
class CompressionResult:
    """What `compress` wrote: the report (report.json's content) and the path of every file in `output_dir`."""

    report: Any  # what core.pipeline.compress_files returns: report.json's content
    output_dir: Path

    @property
    def model_sqz(self) -> Path:
        """The compact container; `load` and `evaluate` read it."""
        return self.output_dir / "model.sqz"

    @property
    def model_dir(self) -> Path:
        """The model as safetensors plus architecture.json."""
        return self.output_dir / "model"

    @property
    def model_onnx(self) -> Path:
        return self.output_dir / "model.onnx"

    @property
    def report_json(self) -> Path:
        return self.output_dir / "report.json"

    @property
    def report_html(self) -> Path:
        return self.output_dir / "report.html"

    @property
    def target_met(self) -> bool:
        return bool(self._field("target_met"))

    @property
    def compression_ratio(self) -> float:
        """Input float32 bytes over the deployable file's bytes."""
        return float(self._field("compression_ratio"))

    @property
    def accuracy_drop(self) -> float:
        """Baseline minus compressed, in the report's metric (percentage points)."""
        return float(self._field("accuracy_drop"))

    def _field(self, name: str) -> Any:
        """A top-level report field, whether the report is a mapping or a typed model."""
        return self.report[name] if isinstance(self.report, Mapping) else getattr(self.report, name)

    @classmethod
    def from_dir(cls, output_dir: PathLike) -> "CompressionResult":
        """The result a finished `compress` (or a downloaded job) left in `output_dir`; reads report.json only."""
        path = Path(output_dir)
        try:
            report = json.loads((path / "report.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise InputError(f"{path.name}: no readable report.json ({error})", code="invalid_result") from None
        if not isinstance(report, dict):
            raise InputError(f"{path.name}: report.json is not an object", code="invalid_result")
        return cls(report=report, output_dir=path)


@dataclass(frozen=True)
class Evaluation:
    metric: str  # top1, pixel_accuracy, miou or iou
    accuracy: float  # percent


def build_config(
    *,
    method: str = "lwct",
    max_drop: float = 1.0,
    drop_type: str = "absolute",
    metric: str | None = None,
    task: str = "classification",
    device: str = "auto",
    seed: int = 0,
    time_limit_s: float | None = None,
    normalization: Normalization | None = None,
    options: Mapping[str, Any] | None = None,
) -> CompressConfig:
    """The engine's CompressConfig from keyword arguments; `options` holds per-method settings as nested mappings
    (`{"lwct": {"sparsity": 0.8}}`, the keys of `--option lwct.sparsity=0.8`). Invalid values are an InputError
    `invalid_options` naming each field."""
    target: dict[str, Any] = {"max_drop": max_drop, "drop_type": drop_type}
    if metric is not None:
        target["metric"] = metric
    fields: dict[str, Any] = dict(options or {})
    fields |= {"method": method, "task": task, "target": target, "device": device, "seed": seed}
    if time_limit_s is not None:
        fields["time_limit_s"] = time_limit_s
    if normalization is not None:
        fields["normalization"] = normalization
    return validated_config(fields)


def compress(
    model: PathLike,
    data: PathLike,
    *,
    max_drop: float = 1.0,
    drop_type: str = "absolute",
    method: str = "lwct",
    output_dir: PathLike = "squeezer-results",
    metric: str | None = None,
    task: str = "classification",
    device: str = "auto",
    seed: int = 0,
    time_limit_s: float | None = None,
    architecture: str | None = None,
    arch_args: Mapping[str, Any] | None = None,
    normalization: Normalization | None = None,
    options: Mapping[str, Any] | None = None,
    on_event: EventCallback = no_events,
) -> CompressionResult:
    """Compresses `model` on `data` within the accuracy budget and writes model.sqz, model/, model.onnx,
    report.json and report.html to `output_dir`.

    Args:
        model: a Squeezer model directory or .zip, an .onnx, model.sqz, or weights (.safetensors, a .pt state dict)
            with `architecture` (a registry name such as "lenet5") and its `arch_args`.
        data: "sample:digits", "sample:fashion-mnist", "sample:shapes", an .npz or an image folder.
        max_drop: the largest allowed drop of `metric`: points (`drop_type="absolute"`) or percent of the baseline
            ("relative").
        method: "lwct", "filter", "group", "int8" or "auto".
        options: per-method settings, e.g. `{"lwct": {"sparsity": 0.8}}` (docs/METHODS.md lists them).
        on_event: called with every core.events.Event (stage, fraction, message), e.g. to show progress.

    A missed target is not an error: the result is written and `result.target_met` is False. Unusable inputs raise
    squeezer.core.errors.InputError (`.code` is stable)."""
    config = build_config(
        method=method,
        max_drop=max_drop,
        drop_type=drop_type,
        metric=metric,
        task=task,
        device=device,
        seed=seed,
        time_limit_s=time_limit_s,
        normalization=normalization,
        options=options,
    )
    out = Path(output_dir)
    report = compress_files(_source(model, architecture, arch_args), data, out, config, on_event=on_event)
    return CompressionResult(report=report, output_dir=out)


def evaluate(
    model: PathLike,
    data: PathLike,
    *,
    metric: str | None = None,
    task: str | None = None,
    device: str = "cpu",
    architecture: str | None = None,
    arch_args: Mapping[str, Any] | None = None,
    normalization: Normalization | None = None,
) -> Evaluation:
    """`metric` of a model file on the validation split of `data` (the task's first metric unless given). On CPU, the
    default, it reproduces report.json's accuracy of the same file exactly; an .onnx runs under onnxruntime."""
    answer = evaluate_file(
        _source(model, architecture, arch_args),
        data,
        normalization=normalization,
        device=device,
        task=task,
        metric=metric,
    )
    return Evaluation(metric=answer["metric"], accuracy=answer["accuracy"])


def load(path: PathLike, *, architecture: str | None = None, arch_args: Mapping[str, Any] | None = None) -> LoadedModel:
    """A model file as a runnable module (`.module`) with its input preprocessing (`.preprocessing`): model.sqz, a
    model directory or .zip, an .onnx, or weights with `architecture`. The file is treated as untrusted: nothing in it
    is unpickled or becomes code, and a pickled model is refused with an InputError naming the safe formats."""
    path = Path(path)
    if path.suffix.lower() != ".sqz":
        return load_model(path, architecture=architecture, arch_args=dict(arch_args or {}) or None)
    if not path.is_file():
        raise ModelFormatError(f"model file {path.name} does not exist")
    return load_sqz(path)


def _source(path: PathLike, architecture: str | None, arch_args: Mapping[str, Any] | None) -> ModelSource:
    return ModelSource(path=Path(path), architecture=architecture, arch_args=dict(arch_args or {}))
