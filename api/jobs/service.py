"""Jobs for the routes: submission (reference checks, quota, the engine's input checks on the inputs fetched as the
worker will fetch them, idempotent insert; the route then hands the id to the dispatcher), reads, cancel and results.
Every query is a store/ repository function."""

import hashlib
import json
import logging

import anyio.to_thread
from pydantic import ValidationError
from sqlalchemy import Row
from sqlalchemy.orm import Session, sessionmaker

from squeezer.api.errors import ProblemError, not_found
from squeezer.api.jobs.schemas import EventOut, JobCreate, JobOut, JobSummary
from squeezer.api.metrics import submission_check_timer
from squeezer.api.pagination import event_cursor
from squeezer.api.slots import TenantSlots
from squeezer.core.artifacts.report import Report
from squeezer.core.errors import InputError, redact_paths
from squeezer.store.artifacts import QuotaExceeded, delete_artifact, get_ready_artifact
from squeezer.store.blobs import BlobStore
from squeezer.store.job_document import job_document, job_fields
from squeezer.store.job_inputs import fetch_inputs
from squeezer.store.job_reads import JobReader
from squeezer.store.jobs import (
    as_utc,
    count_queued_jobs,
    count_unfinished_jobs,
    create_job,
    delete_final_job,
    find_job,
    find_job_by_key,
    find_job_result,
    list_job_events,
    list_job_results,
    list_tenant_jobs,
    request_cancel,
)
from squeezer.store.logging_setup import current_log_fields
from squeezer.store.models import Artifact, Job, JobEvent
from squeezer.store.settings import Settings
from squeezer.store.statuses import FINAL_STATUSES
from squeezer.worker.dispatch import Dispatcher

log = logging.getLogger(__name__)
# The longest a submission waits for the broker to take its job before it answers anyway.
ENQUEUE_TIMEOUT_S = 10.0


def request_hash(body: JobCreate) -> str:
    canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def check_references(session: Session, body: JobCreate, tenant: str) -> None:
    for artifact_id in body.artifact_ids():
        if get_ready_artifact(session, artifact_id, tenant) is None:
            raise ProblemError(
                422,
                "artifact_not_found",
                f"artifact {artifact_id} does not exist (upload it with POST /v1/artifacts first)",
            )


def check_job_quota(session: Session, tenant: str, settings: Settings, checks_in_progress: int = 0) -> None:
    """429 when the tenant already has `max_concurrent_jobs_per_tenant` unfinished jobs (submission checks still
    running count as jobs) or `max_queued_jobs_per_tenant` queued ones. Checked before the (slow) input validation;
    two submissions racing at the limit in two API processes may both pass, which a quota tolerates."""
    limit = settings.max_concurrent_jobs_per_tenant
    if limit is not None:
        unfinished = count_unfinished_jobs(session, tenant) + checks_in_progress
        if unfinished >= limit:
            raise ProblemError(
                429,
                "job_quota_exceeded",
                f"this tenant already has {unfinished} unfinished jobs or submissions being checked (limit {limit}); "
                "wait for one to finish or cancel one",
            )
    queued_limit = settings.max_queued_jobs_per_tenant
    if queued_limit is not None and (queued := count_queued_jobs(session, tenant)) >= queued_limit:
        raise ProblemError(
            429,
            "queued_job_quota_exceeded",
            f"this tenant already has {queued} queued jobs (limit {queued_limit}); wait for one to start",
        )


def check_time_limit(body: JobCreate, settings: Settings) -> None:
    """A job may not ask for more compute than the server grants (the worker caps jobs that ask for none)."""
    limit, asked = settings.max_job_time_limit_s, body.compress_config().time_limit_s
    if limit is not None and asked is not None and asked > limit:
        raise ProblemError(
            422,
            "time_limit_too_long",
            f"options.time_limit_s is {asked:g} s; this server allows at most {limit:g} s per job",
        )


def validate_inputs(
    body: JobCreate,
    tenant: str,
    settings: Settings,
    session_factory: sessionmaker[Session],
    blobs: BlobStore,
) -> None:
    """Fetches the inputs as the worker will (store.job_inputs) and runs the engine's input checks on them in a
    disposable child with memory, CPU and wall-clock limits, an empty working directory and no secrets, in the
    engine's jail (core.sandbox, core.jail): the API process never parses an upload. Blocking: threadpool."""
    from squeezer.core.jail import configured_jail
    from squeezer.core.sandbox import SandboxLimits
    from squeezer.core.submission import TARGET, check_request, check_workspace

    limits = SandboxLimits(settings.check_memory_bytes, settings.check_cpu_s, settings.check_timeout_s)
    jail = configured_jail(settings.jail, allow_unjailed=settings.allow_unjailed_engine)
    with check_workspace(limits, jail) as workspace:
        inputs = fetch_inputs(
            body, tenant=tenant, session_factory=session_factory, blobs=blobs, dest_dir=workspace.folder
        )
        request = check_request(inputs.model, inputs.data, inputs.config, settings.intake_limits())
        workspace.run(TARGET, request)


async def submit_job(
    body: JobCreate,
    *,
    idempotency_key: str | None,
    tenant: str,
    settings: Settings,
    session_factory: sessionmaker[Session],
    blobs: BlobStore,
    checks: TenantSlots,
) -> tuple[Job, bool]:
    """Returns (job, created). Raises 422 problems for unknown artifacts, unusable inputs and a reused key."""
    digest = request_hash(body)
    spec = body.model_dump(mode="json")
    request_id = current_log_fields().get("request_id")  # api.metrics.RequestContextMiddleware set it
    check_time_limit(body, settings)

    def look_up() -> Job | None:
        with session_factory() as session:
            if idempotency_key is not None:
                existing = find_job_by_key(session, tenant, idempotency_key)
                if existing is not None:
                    return _same_request(existing, digest)
            check_references(session, body, tenant)
            check_job_quota(session, tenant, settings, checks.in_flight(tenant))
        return None

    # Database work in threads: an async route must not block the event loop (other clients' requests).
    existing = await anyio.to_thread.run_sync(look_up)
    if existing is not None:
        return existing, False
    try:
        with checks.hold(tenant), submission_check_timer():
            await anyio.to_thread.run_sync(validate_inputs, body, tenant, settings, session_factory, blobs)
    except InputError as error:
        raise ProblemError(422, error.code, redact_paths(error.message), title="Unusable input") from None

    def insert() -> tuple[Job, bool]:
        with session_factory() as session:
            try:
                return create_job(
                    session,
                    tenant=tenant,
                    spec=spec,
                    idempotency_key=idempotency_key,
                    request_hash=digest,
                    max_attempts=settings.max_attempts,
                    quota_bytes=settings.max_stored_bytes_per_tenant,
                    request_id=request_id,
                )
            except QuotaExceeded as error:
                raise ProblemError(
                    413,
                    "storage_quota_exceeded",
                    f"this tenant's storage quota leaves {max(error.left, 0)} bytes, too few for this job's spec; "
                    "delete artifacts or finished jobs to make room",
                ) from None

    job, created = await anyio.to_thread.run_sync(insert)
    return (job, True) if created else (_same_request(job, digest), False)


async def enqueue(dispatcher: Dispatcher, job_id: str) -> None:
    """Publishes the job in a thread, waiting at most ENQUEUE_TIMEOUT_S: a slow broker must not block the event loop
    nor hold the client. The row is already queued, so a publish that does not finish is sent again by the reaper."""
    try:
        with anyio.fail_after(ENQUEUE_TIMEOUT_S):
            await anyio.to_thread.run_sync(dispatcher.enqueue, job_id, abandon_on_cancel=True)
    except TimeoutError:
        log.warning("job %s: publishing took over %s s; the reaper will send it again", job_id, ENQUEUE_TIMEOUT_S)


def _same_request(job: Job, digest: str) -> Job:
    if job.request_hash != digest:
        raise ProblemError(
            422,
            "idempotency_key_reused",
            "this Idempotency-Key was already used with a different request body",
        )
    return job


def get_job(session: Session, job_id: str, tenant: str) -> Job:
    job = find_job(session, job_id, tenant)
    if job is None:
        raise not_found("job", job_id)
    return job


async def poll_job(reader: JobReader, job_id: str, tenant: str) -> Row:
    """`get_job` for GET /v1/jobs/{id}: the row alone, one round trip, no session (store.job_reads)."""
    job = await reader.job_row(job_id, tenant)
    if job is None:
        raise not_found("job", job_id)
    return job


def list_jobs(session: Session, tenant: str, *, after: str | None, limit: int, status: str | None) -> list[Job]:
    """Newest first; the cursor is the last job id of the previous page. One row more than `limit` tells the page
    that another follows."""
    cursor = get_job(session, after, tenant) if after else None
    return list_tenant_jobs(session, tenant, before=cursor, limit=limit + 1, status=status)


def list_events(session: Session, job_id: str, tenant: str, *, after: str | None, limit: int) -> list[JobEvent]:
    """The job's events in order; the cursor is the last event id of the previous page."""
    get_job(session, job_id, tenant)
    return list_job_events(session, job_id, after_id=event_cursor(after), limit=limit + 1)


def remove_job(
    session: Session, session_factory: sessionmaker[Session], blobs: BlobStore, job_id: str, tenant: str
) -> None:
    """Deletes the tenant's final job, its events and its result files (their bytes count toward the quota no more).
    A job still queued or running is a 409: cancel it first. The request's session is closed before the artifacts'
    own sessions delete them."""
    job = get_job(session, job_id, tenant)
    artifact_ids = delete_final_job(session, job_id, tenant) if job.status in FINAL_STATUSES else None
    if artifact_ids is None:
        raise ProblemError(
            409,
            "job_not_final",
            f"job {job_id} is {job.status}; cancel it (POST /v1/jobs/{job_id}/cancel) and delete it once it has ended",
        )
    session.close()
    for artifact_id in artifact_ids:
        delete_artifact(session_factory, blobs, artifact_id)


def request_job_cancel(session: Session, job_id: str, tenant: str) -> Job:
    get_job(session, job_id, tenant)
    job = request_cancel(session, job_id)
    if job is None:  # deleted since the lookup
        raise not_found("job", job_id)
    return job


def result_artifacts(session: Session, job_id: str, tenant: str) -> list[tuple[str, Artifact]]:
    get_job(session, job_id, tenant)
    return list_job_results(session, job_id)


def result_artifact(session: Session, job_id: str, tenant: str, name: str) -> Artifact:
    get_job(session, job_id, tenant)
    artifact = find_job_result(session, job_id, name)
    if artifact is None:
        raise ProblemError(
            404,
            "result_not_found",
            f"job {job_id} has no result {name!r} (yet): results appear when the job has succeeded (or failed on its "
            "time limit, keeping its best result)",
        )
    return artifact


def job_report(session: Session, blobs: BlobStore, job_id: str, tenant: str) -> Report:
    """The stored report.json as the typed report (one written without a schema_version is version 1); a stored file
    that is not such a report is a 409 `report_unreadable`, its bytes still downloadable as a result file."""
    artifact = result_artifact(session, job_id, tenant, "report.json")
    try:
        return Report.model_validate_json(b"".join(blobs.iter_chunks(artifact.id)))
    except ValidationError as error:
        log.warning("job %s: report.json is not a report: %s", job_id, error.errors(include_input=False)[:3])
        raise ProblemError(
            409,
            "report_unreadable",
            f"job {job_id}'s report.json does not match the report's schema; download the file itself from "
            f"/v1/jobs/{job_id}/artifacts/report.json",
        ) from None


def etag(job: Job | Row) -> str:
    return f'"{job.id}-{job.version}"'


def event_out(event: JobEvent) -> EventOut:
    return EventOut(
        id=event.id,
        level=event.level,
        stage=event.stage,
        message=event.message,
        data=event.data or {},
        created_at=as_utc(event.created_at),
    )


def job_out(job: Job | Row) -> JobOut:
    """From the ORM object or from the poll's row (store.job_reads), which has the same attributes."""
    return job_document(job)


def job_summary(job: Job | Row) -> JobSummary:
    """A job without its spec, for lists."""
    return JobSummary(**job_fields(job))
