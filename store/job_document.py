"""The job document: a job as GET /v1/jobs/{id} returns it, and as every webhook event carries it (store.webhooks
renders it in the transaction of the job's transition). Shared by the API and the workers, like the job spec."""

from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict
from sqlalchemy import Row

from squeezer.store.models import Job, as_utc
from squeezer.store.statuses import JobStatus

# The status values as the OpenAPI document has always shown them, an inline enum (a JobStatus enum field would
# become a `$ref`, renaming the status types of generated clients), and as 422 messages have always listed them.
if TYPE_CHECKING:
    JobStatusValue = JobStatus
else:
    JobStatusValue = Literal[tuple(status.value for status in JobStatus)]


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


# The example of a spec in the OpenAPI document (api.jobs.schemas.JobCreate's).
JOB_SPEC_EXAMPLE: dict[str, Any] = {
    "model": {"artifact_id": "art_3f2c9a"},
    "dataset": {"sample": "digits"},
    "method": "lwct",
    "accuracy_target": {"max_drop": 1.0, "drop_type": "absolute"},
    "options": {"lwct": {"sparsity": 0.5}},
    "metadata": {"pipeline": "nightly"},
}
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

    model_config = ConfigDict(json_schema_extra={"examples": [{**JOB_SUMMARY_EXAMPLE, "spec": JOB_SPEC_EXAMPLE}]})

    spec: dict[str, Any]


def job_fields(job: Job | Row) -> dict:
    """A JobSummary's fields from the ORM object or from the poll's row (store.job_reads), which has the same
    attributes."""
    base = f"/v1/jobs/{job.id}"
    error = {"code": job.error_code, "message": job.error_message} if job.error_code else None
    return dict(
        id=job.id,
        status=job.status,
        progress=job.progress or {},
        attempts=job.attempts,
        target_met=job.target_met,
        error=error,
        created_at=as_utc(job.created_at),
        started_at=as_utc(job.started_at),
        finished_at=as_utc(job.finished_at),
        duration_s=job.duration_s,
        links={
            "self": base,
            "events": f"{base}/events",
            "report": f"{base}/report",
            "report_html": f"{base}/report.html",
            "artifacts": f"{base}/artifacts",
            "cancel": f"{base}/cancel",
        },
    )


def job_document(job: Job | Row) -> JobOut:
    return JobOut(**job_fields(job), spec=job.spec)
