"""Job resources. `JobOptions` is derived from core.config.CompressConfig, so the engine's config documents the API."""

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from core.config import AccuracyTarget, CompressConfig, MethodName
from store.statuses import JobStatus

# The status values as the OpenAPI document has always shown them, an inline enum (a JobStatus enum field would
# become a `$ref`, renaming the status types of generated clients), and as 422 messages have always listed them.
JobStatusValue = Literal[tuple(status.value for status in JobStatus)]  # type: ignore[valid-type]
RESULT_NAMES = ("model.sqz", "model.onnx", "model.zip", "report.json")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelArtifactRef(_Strict):
    """An uploaded `.onnx` file or `.zip` of a Squeezer model directory."""

    artifact_id: str


class ArchitectureRef(_Strict):
    name: str = Field(examples=["lenet5"])
    args: dict[str, Any] = Field(
        default_factory=dict,
        examples=[{"num_classes": 10, "in_channels": 1, "input_size": 8}],
    )


class WeightsArtifactRef(_Strict):
    """Uploaded weights (.safetensors or a weights-only state dict) for a known architecture."""

    weights_artifact_id: str
    architecture: ArchitectureRef


class DatasetArtifactRef(_Strict):
    artifact_id: str


class SampleDataset(_Strict):
    sample: Literal["digits", "fashion-mnist", "shapes"] = Field(description="shapes is synthetic (segmentation).")


# Everything CompressConfig takes besides the method and the target, which are top-level fields of a job.
JobOptions = create_model(
    "JobOptions",
    __config__=ConfigDict(extra="forbid"),
    __doc__="Engine options (core.config.CompressConfig without `method` and `target`).",
    **{
        name: (field.annotation, field)
        for name, field in CompressConfig.model_fields.items()
        if name not in ("method", "target")
    },
)

JOB_EXAMPLE = {
    "model": {"artifact_id": "art_3f2c9a"},
    "dataset": {"sample": "digits"},
    "method": "lwct",
    "accuracy_target": {"max_drop": 1.0, "drop_type": "absolute"},
    "options": {"lwct": {"sparsity": 0.5}},
    "metadata": {"pipeline": "nightly"},
}


class JobCreate(_Strict):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [JOB_EXAMPLE]}
    )

    model: ModelArtifactRef | WeightsArtifactRef
    dataset: DatasetArtifactRef | SampleDataset
    method: MethodName = "lwct"
    accuracy_target: AccuracyTarget = Field(default_factory=AccuracyTarget)
    options: JobOptions = Field(default_factory=JobOptions)  # type: ignore[valid-type]
    metadata: dict[str, Any] = Field(
        default_factory=dict, description="Free-form labels, returned unchanged."
    )

    @model_validator(mode="after")
    def _fits_the_engine(self) -> "JobCreate":
        """Rules across fields (a metric must fit the task) answer 422 at submission like any other bad field."""
        try:
            self.compress_config()
        except ValidationError as error:
            problems = (str(e.get("ctx", {}).get("error", e["msg"])) for e in error.errors(include_url=False))
            raise ValueError("; ".join(problems)) from None
        return self

    def compress_config(self) -> CompressConfig:
        return CompressConfig(
            method=self.method,
            target=self.accuracy_target,
            **self.options.model_dump(exclude_unset=True),
        )


class Progress(BaseModel):
    stage: str = JobStatus.QUEUED  # until the first event names a stage
    fraction: float = 0.0
    best_accuracy: float | None = None
    best_compression_ratio: float | None = None


class JobError(BaseModel):
    code: str
    message: str | None


class JobLinks(BaseModel):
    self: str
    events: str
    report: str
    artifacts: str
    cancel: str


class JobOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "job_7d1e",
                    "status": "running",
                    "progress": {
                        "stage": "step",
                        "fraction": 0.4,
                        "best_accuracy": 97.2,
                        "best_compression_ratio": 11.8,
                    },
                    "spec": JOB_EXAMPLE,
                    "attempts": 1,
                    "target_met": None,
                    "error": None,
                    "created_at": "2026-01-01T12:00:00Z",
                    "started_at": "2026-01-01T12:00:02Z",
                    "finished_at": None,
                    "duration_s": None,
                    "links": {
                        "self": "/v1/jobs/job_7d1e",
                        "events": "/v1/jobs/job_7d1e/events",
                        "report": "/v1/jobs/job_7d1e/report",
                        "artifacts": "/v1/jobs/job_7d1e/artifacts",
                        "cancel": "/v1/jobs/job_7d1e/cancel",
                    },
                }
            ]
        }
    )

    id: str
    status: JobStatusValue
    progress: Progress
    spec: dict[str, Any]
    attempts: int
    target_met: bool | None
    error: JobError | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    duration_s: float | None
    links: JobLinks


class EventOut(BaseModel):
    id: int
    level: str
    stage: str
    message: str
    data: dict[str, Any]
    created_at: datetime


class JobArtifactOut(BaseModel):
    name: str = Field(examples=["model.sqz"])
    artifact_id: str
    size_bytes: int
    sha256: str | None
    content_type: str
    url: str
