"""/v1/jobs: submit, list, poll (ETag), events, cancel, delete, report, result artifacts."""

from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response, status
from fastapi.responses import JSONResponse, StreamingResponse

from squeezer.api.artifacts.routes import download, file_responses, stream_artifact
from squeezer.api.deps import (
    BlobsDep,
    CurrentTenant,
    DispatcherDep,
    JobReaderDep,
    SessionDep,
    SessionFactoryDep,
    SettingsDep,
    SubmissionChecksDep,
)
from squeezer.api.errors import problem_responses
from squeezer.api.jobs.schemas import EventOut, JobArtifactOut, JobCreate, JobOut, JobStatusValue, JobSummary
from squeezer.api.jobs.service import (
    enqueue,
    etag,
    event_out,
    job_out,
    job_report,
    job_summary,
    list_events,
    list_jobs,
    poll_job,
    remove_job,
    request_job_cancel,
    result_artifact,
    result_artifacts,
    submit_job,
)
from squeezer.api.limits import MAX_JSON_BODY_BYTES, MAX_JSON_DEPTH
from squeezer.api.pagination import Page, PageDep, make_page
from squeezer.core.artifacts.report import Report

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
# The length of the column it is stored in (store.models.Job.idempotency_key).
MAX_IDEMPOTENCY_KEY_CHARS = 255
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=MAX_IDEMPOTENCY_KEY_CHARS,
        description="Same key + same body → the same job.",
    ),
]


@router.post(
    "",
    operation_id="createJob",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobOut,
    responses={
        200: {
            "model": JobOut,
            "description": "The job created earlier with this Idempotency-Key.",
        },
        **problem_responses(400, 404, 413, 422, 429),
    },
    description=f"400 for a body that is not JSON or nests deeper than {MAX_JSON_DEPTH} levels (`json_too_deep`), 413 "
    f"past {MAX_JSON_BODY_BYTES // 1024**2} MiB.",
    summary="Submit a compression job (inputs are checked before it is queued)",
)
async def create_job(
    body: JobCreate,
    response: Response,
    settings: SettingsDep,
    session_factory: SessionFactoryDep,
    blobs: BlobsDep,
    dispatcher: DispatcherDep,
    tenant: CurrentTenant,
    checks: SubmissionChecksDep,
    idempotency_key: IdempotencyKey = None,
) -> JobOut:
    job, created = await submit_job(
        body,
        idempotency_key=idempotency_key,
        tenant=tenant,
        settings=settings,
        session_factory=session_factory,
        blobs=blobs,
        checks=checks,
    )
    if created:
        await enqueue(dispatcher, job.id)
    else:
        response.status_code = status.HTTP_200_OK
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    response.headers["ETag"] = etag(job)
    return job_out(job)


@router.get(
    "",
    operation_id="listJobs",
    response_model=Page[JobSummary],
    description="Newest first. Each job comes without its spec (GET /v1/jobs/{job_id} has it).",
    responses=problem_responses(404, 422),
)
def read_jobs(
    session: SessionDep,
    tenant: CurrentTenant,
    page: PageDep,
    status: Annotated[JobStatusValue | None, Query()] = None,
) -> dict:
    return make_page(
        list_jobs(session, tenant, after=page.after, limit=page.limit, status=status),
        page.limit,
        job_summary,
    )


@router.get(
    "/{job_id}",
    operation_id="getJob",
    response_model=JobOut,
    responses={
        304: {"description": "Not modified since the ETag sent in If-None-Match."},
        **problem_responses(404),
    },
)
async def read_job(
    job_id: str,
    job_reader: JobReaderDep,
    tenant: CurrentTenant,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """The poll path: one query on an autocommit connection, on the event loop on PostgreSQL (store.job_reads),
    serialised by pydantic's own JSON encoder (bench/api_poll.py)."""
    job = await poll_job(job_reader, job_id, tenant)
    tag = etag(job)
    if if_none_match and tag in [value.strip() for value in if_none_match.split(",")]:
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers={"ETag": tag})
    return Response(
        job_out(job).model_dump_json(),
        media_type="application/json",
        headers={"ETag": tag, "Cache-Control": "no-cache"},
    )


@router.get(
    "/{job_id}/events",
    operation_id="listJobEvents",
    response_model=Page[EventOut],
    responses=problem_responses(404, 422),
    description="In order. `after` is the id of the last event of the previous page, a whole number (422 "
    "`invalid_cursor` otherwise).",
)
def read_events(job_id: str, session: SessionDep, tenant: CurrentTenant, page: PageDep) -> dict:
    rows = list_events(session, job_id, tenant, after=page.after, limit=page.limit)
    return make_page(rows, page.limit, event_out)


@router.post(
    "/{job_id}/cancel",
    operation_id="cancelJob",
    response_model=JobOut,
    responses=problem_responses(404),
    summary="Cancel a job (idempotent)",
    description="A queued job becomes `cancelled` at once and never runs; a running one becomes `cancelling` and stops "
    "at its next step boundary. Finished jobs are returned unchanged (200, no 409): cancelling is a wish about the end "
    "state, already settled.",
)
def cancel_job(job_id: str, session: SessionDep, tenant: CurrentTenant) -> JSONResponse:
    job = request_job_cancel(session, job_id, tenant)
    return JSONResponse(job_out(job).model_dump(mode="json"), headers={"ETag": etag(job)})


@router.delete(
    "/{job_id}",
    operation_id="deleteJob",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=problem_responses(404, 409),
    summary="Delete a finished job with its events and result files",
    description="Only a final job (succeeded, failed or cancelled) can be deleted; a queued or running one answers 409 "
    "`job_not_final` (cancel it first). Its result files no longer count toward the tenant's storage quota, nor does "
    "its spec. The uploads it read are kept.",
)
def delete_job(
    job_id: str, session: SessionDep, session_factory: SessionFactoryDep, blobs: BlobsDep, tenant: CurrentTenant
) -> Response:
    remove_job(session, session_factory, blobs, job_id, tenant)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/{job_id}/report",
    operation_id="getJobReport",
    response_model=Report,
    responses=problem_responses(404, 409),
    description="report.json, typed. 409 `report_unreadable` when the stored file is not a report of this schema "
    "(its bytes stay downloadable from `/v1/jobs/{job_id}/artifacts/report.json`).",
)
def read_report(job_id: str, session: SessionDep, blobs: BlobsDep, tenant: CurrentTenant) -> Report:
    return job_report(session, blobs, job_id, tenant)


# The page is our own (core.artifacts.report_html escapes every uploaded name) and needs nothing but its inline CSS:
# the policy stops anything else from running or loading should a name ever slip through.
REPORT_HTML_HEADERS = {"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:"}


@router.get(
    "/{job_id}/report.html",
    operation_id="getJobReportHtml",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"text/html": {"schema": {"type": "string"}}},
            "description": "report.html: the report as a self-contained page (summary, trade-off charts, layers).",
        },
        **problem_responses(404),
    },
)
def read_report_html(job_id: str, session: SessionDep, blobs: BlobsDep, tenant: CurrentTenant) -> StreamingResponse:
    response = stream_artifact(result_artifact(session, job_id, tenant, "report.html"), blobs)
    response.headers.update({**REPORT_HTML_HEADERS, "Content-Disposition": 'inline; filename="report.html"'})
    return response


@router.get(
    "/{job_id}/artifacts",
    operation_id="listJobArtifacts",
    response_model=list[JobArtifactOut],
    responses=problem_responses(404),
)
def read_job_artifacts(job_id: str, session: SessionDep, tenant: CurrentTenant) -> list[JobArtifactOut]:
    return [
        JobArtifactOut(
            name=name,
            artifact_id=artifact.id,
            size_bytes=artifact.size_bytes,
            sha256=artifact.sha256,
            content_type=artifact.content_type,
            url=f"/v1/jobs/{job_id}/artifacts/{name}",
        )
        for name, artifact in result_artifacts(session, job_id, tenant)
    ]


@router.get(
    "/{job_id}/artifacts/{name}",
    operation_id="downloadJobArtifact",
    response_class=StreamingResponse,
    responses=file_responses("The result file."),
)
def download_job_artifact(
    job_id: str, name: str, request: Request, session: SessionDep, blobs: BlobsDep, tenant: CurrentTenant
) -> Response:
    return download(request, result_artifact(session, job_id, tenant, name), blobs)
