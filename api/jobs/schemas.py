"""Job resources as the API shows them. The submission body is the job spec (store.job_spec), whose options are
derived from core.config.CompressConfig, so the engine's config documents the API; a job is the job document
(store.job_document), which webhook events carry too."""

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from squeezer.store.job_document import JOB_SPEC_EXAMPLE as JOB_EXAMPLE
from squeezer.store.job_document import JobOut, JobStatusValue, JobSummary
from squeezer.store.job_spec import JobSpec

__all__ = ["EventOut", "JobArtifactOut", "JobCreate", "JobOut", "JobStatusValue", "JobSummary"]


# A job submission is the spec the worker reads back (store.job_spec): one schema both ways. No docstring of its own:
# JobSpec's describes the worker's reading, not the request.
class JobCreate(JobSpec):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [JOB_EXAMPLE]})


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
