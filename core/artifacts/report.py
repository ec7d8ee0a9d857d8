"""report.json: the numbers a user needs to judge a compression run, as one typed document (`Report`).

`build_report` computes the derived figures (drop, ratios) from the measures; the pipeline validates the result as a
`Report` before writing it, and the API serves a stored report.json through the same model, so the file, the OpenAPI
document and what a client receives cannot drift apart. A change to the keys bumps SCHEMA_VERSION.
"""

from dataclasses import asdict
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from squeezer.core.methods.results import ChannelLayerState, Trial

# The version of Report's keys. A stored report without the field has this version's keys (schema_version aside).
SCHEMA_VERSION = 1
MEASURE_KEYS = ("accuracy", "params", "nonzero_params", "macs", "size_bytes", "latency_ms", "latency_ms_batch32")
# An alias of "macs" with the same value (it always held multiply-accumulates, not FLOPs), as "flops_reduction" is of
# "macs_reduction", so that scripts reading either key work.
MACS_ALIAS = "flops"


def with_macs_alias(measures: dict[str, Any]) -> dict[str, Any]:
    """`measures` with both "macs" and its alias "flops" set, from whichever of the two it holds."""
    macs = measures.get("macs", measures.get(MACS_ALIAS))
    return {**measures, "macs": macs, MACS_ALIAS: macs} if macs is not None else measures


class _Part(BaseModel):
    """A section of the report; keys it does not declare are kept, never dropped from report.json."""

    model_config = ConfigDict(extra="allow")


class Measures(_Part):
    """One model's figures, measured on CPU; "accuracy" is the report's metric, in percent."""

    accuracy: float
    params: int
    nonzero_params: int
    macs: int = Field(description="Multiply-accumulates per sample.")
    flops: int = Field(description="The same count as macs, under its alias.")
    size_bytes: int = Field(description="Baseline: float32 bytes of the weights; compressed: bytes of the deployable.")
    latency_ms: float = Field(description="Median CPU latency of one sample.")
    latency_ms_batch32: float = Field(description="Median CPU latency of a batch of 32.")

    @model_validator(mode="before")
    @classmethod
    def _alias(cls, value: Any) -> Any:
        return with_macs_alias(value) if isinstance(value, dict) else value


class Target(_Part):
    max_drop: float
    drop_type: str = Field(description="absolute (percentage points) or relative (percent of the baseline).")


class ArtifactFigures(_Part):
    """A file handed out, loaded back from its bytes and measured under the runtime it is meant for."""

    bytes: int
    accuracy: float
    runtime: Literal["torch", "onnxruntime"]
    latency_ms: float
    latency_ms_batch32: float


class DatasetSummary(_Part):
    name: str
    task: str
    train_samples: int
    val_samples: int
    input_shape: list[int]
    num_classes: int


def _optional_keys(schema: dict[str, Any]) -> None:
    """Keys written for one method only are not required in the served document's schema."""
    schema["required"] = [key for key in schema.get("required", []) if key not in ("objective", "candidates")]


class Report(BaseModel):
    """The whole of report.json. Keys this model does not declare are kept, so that nothing a stored report holds
    is lost when it is served."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_serialization_defaults_required=True,
        json_schema_extra=_optional_keys,
        ser_json_inf_nan="null",  # a served report is strict JSON; report.json itself keeps what json.dumps writes
    )

    schema_version: int = Field(SCHEMA_VERSION, description="The version of these keys; 1 where a report lacks it.")
    method: str
    metric: str
    target: Target
    target_met: bool
    baseline: Measures
    compressed: Measures
    accuracy_drop: float = Field(description="Baseline minus compressed accuracy, in points of the metric.")
    compression_ratio: float = Field(description="Baseline size_bytes over compressed size_bytes: a ratio of bytes.")
    macs_reduction: float | None = Field(description="Baseline over compressed MACs; null when no MAC is left.")
    flops_reduction: float | None = Field(description="The same as macs_reduction, under its alias.")
    layers: list[ChannelLayerState]
    trials: list[Trial]
    task: str | None = None
    dataset: DatasetSummary | None = None
    onnx_accuracy: float | None = None
    artifacts: dict[str, ArtifactFigures] | None = Field(None, description="model.sqz, model/ and model.onnx.")
    baseline_onnx: ArtifactFigures | None = Field(None, description="The uploaded model exported to ONNX.")
    speed: dict[str, Any] | None = Field(
        None, description="The files' speed against the baseline's on the target runtime (core.measure.speed_report)."
    )
    deployable: str | None = Field(None, description="The file whose figures are the compressed ones.")
    settings: dict[str, Any] | None = Field(None, description="The job's whole configuration.")
    objective: str | None = Field(None, exclude_if=lambda value: value is None, description="auto only.")
    candidates: list[dict[str, Any]] | None = Field(None, exclude_if=lambda value: value is None)
    stopped_early: str | None = None
    fine_tuning: dict[str, Any] | None = None
    device: str | None = None
    seed: int | None = None
    preprocessing: dict[str, Any] | None = None
    onnx_layer_names: dict[str, str] | None = None
    squeezer_version: str | None = None
    duration_s: float | None = None
    timings_s: dict[str, float] | None = Field(
        None, description="Seconds spent loading, in the method, writing and verifying, and measuring speed."
    )

    def as_dict(self) -> dict[str, Any]:
        """report.json's content, as json.dumps writes it."""
        return self.model_dump()


def build_report(
    *,
    method: str,
    metric: str,
    max_drop: float,
    drop_type: str,
    target_met: bool,
    baseline: dict[str, Any],
    compressed: dict[str, Any],
    layers: list,
    trials: list,
    extras: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Assembles the report's keys; `baseline`/`compressed` must hold every key of MEASURE_KEYS, "accuracy" being
    `metric` (top1, pixel_accuracy or miou) and "latency_ms" the batch-1 median.

        compressed["size_bytes"] is the on-disk size of model.sqz and baseline["size_bytes"] the
        float32 bytes of the input weights, so compression_ratio is a file-bytes ratio, never a bit count.
        "macs" counts multiply-accumulates per sample; either it or its alias "flops" may be given, the report has both.
    """
    baseline, compressed = with_macs_alias(baseline), with_macs_alias(compressed)
    for side, measures in (("baseline", baseline), ("compressed", compressed)):
        missing = [key for key in MEASURE_KEYS if key not in measures]
        if missing:
            raise ValueError(f"{side} measures lack {missing}")
    macs_reduction = baseline["macs"] / compressed["macs"] if compressed["macs"] else None
    return {
        "schema_version": SCHEMA_VERSION,
        "method": method,
        "metric": metric,
        "target": {"max_drop": max_drop, "drop_type": drop_type},
        "target_met": target_met,
        "baseline": baseline,
        "compressed": compressed,
        "accuracy_drop": baseline["accuracy"] - compressed["accuracy"],
        "compression_ratio": baseline["size_bytes"] / compressed["size_bytes"],
        "macs_reduction": macs_reduction,
        "flops_reduction": macs_reduction,
        "layers": [asdict(layer) for layer in layers],
        "trials": [asdict(trial) for trial in trials],
        **(extras or {}),
    }
