"""Job resources as the API shows them. The submission body is the job spec (store.job_spec), whose options are
derived from core.config.CompressConfig, so the engine's config documents the API."""

from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from store.job_spec import JobSpec
from store.statuses import JobStatus

# The status values as the OpenAPI document has always shown them, an inline enum (a JobStatus enum field would
# become a `$ref`, renaming the status types of generated clients), and as 422 messages have always listed them.
if TYPE_CHECKING:
    JobStatusValue = JobStatus
else:
    JobStatusValue = Literal[tuple(status.value for status in JobStatus)]


JOB_EXAMPLE: dict[str, Any] = {
    "model": {"artifact_id": "art_3f2c9a"},
    "dataset": {"sample": "digits"},
    "method": "lwct",
    "accuracy_target": {"max_drop": 1.0, "drop_type": "absolute"},
    "options": {"lwct": {"sparsity": 0.5}},
    "metadata": {"pipeline": "nightly"},
}


# A job submission is the spec the worker reads back (store.job_spec), under the name the API has always given it; no
# docstring, so the OpenAPI document stays as it was.
class JobCreate(JobSpec):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [JOB_EXAMPLE]})


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
    report_html: str
    artifacts: str
    cancel: str


JOB_LINKS_EXAMPLE = {
    "self": "/v1/jobs/job_7d1e",
    "events": "/v1/jobs/job_7d1e/events",
    "report": "/v1/jobs/job_7d1e/report",
    "report_html": "/v1/jobs/job_7d1e/report.html",
    "artifacts": "/v1/jobs/job_7d1e/artifacts",
    "cancel": "/v1/jobs/job_7d1e/cancel",
}
JOB_SUMMARY_EXAMPLE: dict[str, Any] = {
    "id": "job_7d1e",
    "status": "running",
    "progress": {"stage": "step", "fraction": 0.4, "best_accuracy": 97.2, "best_compression_ratio": 11.8},
    "attempts": 1,
    "target_met": None,
    "error": None,
    "created_at": "2026-01-01T12:00:00Z",
    "started_at": "2026-01-01T12:00:02Z",
    "finished_at": None,
    "duration_s": None,
    "links": JOB_LINKS_EXAMPLE,
}


class JobSummary(BaseModel):
    """A job as lists show it: its state without its spec (GET /v1/jobs/{id} has the spec), so a page stays small
    whatever the jobs' metadata."""

    model_config = ConfigDict(json_schema_extra={"examples": [JOB_SUMMARY_EXAMPLE]})

    id: str
    status: JobStatusValue
    progress: Progress
    attempts: int
    target_met: bool | None
    error: JobError | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    duration_s: float | None
    links: JobLinks


class JobOut(JobSummary):
    """A job: its state and the spec it was submitted with."""

    model_config = ConfigDict(json_schema_extra={"examples": [{**JOB_SUMMARY_EXAMPLE, "spec": JOB_EXAMPLE}]})

    spec: dict[str, Any]


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
