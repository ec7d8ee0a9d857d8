"""A job's status: the one list, shared by the API, the workers, the store and the CLI client. The values are the
API's contract (`status` in every job document), so members may be added, never renamed.

No imports beyond the standard library: the CLI client uses it without loading SQLAlchemy."""

from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"


# A worker holds the job (it heartbeats, reports progress and may finish it).
ACTIVE_STATUSES = (JobStatus.RUNNING, JobStatus.CANCELLING)
# Nothing changes any more; a job in one of these counts against no quota.
FINAL_STATUSES = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)
# Final statuses under which a job may keep results: a failed job keeps its best result when its time limit ran out.
STATUSES_WITH_RESULTS = (JobStatus.SUCCEEDED, JobStatus.FAILED)
