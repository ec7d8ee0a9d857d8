"""/v1/artifacts: streamed upload, metadata, streamed download, delete."""

import anyio.to_thread
from fastapi import APIRouter, Request, Response, status
from fastapi.responses import RedirectResponse, StreamingResponse
from sqlalchemy.orm import object_session

from squeezer.api.artifacts.schemas import ArtifactOut
from squeezer.api.artifacts.service import (
    content_disposition,
    ready_artifact,
    receive_upload,
    remove_artifact,
    storage_quota_left,
)
from squeezer.api.deps import BlobsDep, CurrentTenant, SessionDep, SessionFactoryDep, SettingsDep, UploadSlotsDep
from squeezer.api.errors import ProblemError, problem_response, problem_responses
from squeezer.api.ranges import RangeNotSatisfiable, content_range, requested_range
from squeezer.store.blobs import BlobStore
from squeezer.store.models import UPLOAD_KINDS, Artifact, ArtifactKind

router = APIRouter(prefix="/v1/artifacts", tags=["artifacts"])

UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "title": "ArtifactUpload",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "The file: an .onnx model, a .zip of a Squeezer model directory, "
                            "weights, or a dataset.",
                        },
                        "kind": {
                            "type": "string",
                            "enum": list(UPLOAD_KINDS),
                            "default": ArtifactKind.MODEL,
                        },
                    },
                }
            }
        },
    }
}


@router.post(
    "",
    operation_id="createArtifact",
    status_code=status.HTTP_201_CREATED,
    response_model=ArtifactOut,
    responses=problem_responses(400, 413, 415, 422, 429),
    description="413 `payload_too_large` past the upload size limit, 413 `storage_quota_exceeded` past the tenant's "
    "stored-bytes quota; nothing is stored either way. 429 `upload_quota_exceeded` while the tenant already streams "
    "`max_concurrent_uploads_per_tenant` uploads.",
    openapi_extra=UPLOAD_BODY,
    summary="Upload a file (streamed)",
)
async def create_artifact(
    request: Request,
    settings: SettingsDep,
    session_factory: SessionFactoryDep,
    blobs: BlobsDep,
    tenant: CurrentTenant,
    upload_slots: UploadSlotsDep,
) -> ArtifactOut:
    with upload_slots.hold(tenant):
        artifact = await receive_upload(
            request,
            session_factory,
            blobs,
            tenant=tenant,
            max_bytes=settings.max_upload_bytes,
            quota_left=await anyio.to_thread.run_sync(
                storage_quota_left,
                session_factory,
                tenant,
                settings.max_stored_bytes_per_tenant,
            ),
            quota=settings.max_stored_bytes_per_tenant,
        )
    return ArtifactOut.model_validate(artifact)


@router.get(
    "/{artifact_id}",
    operation_id="getArtifact",
    response_model=ArtifactOut,
    responses=problem_responses(404),
)
def get_artifact(artifact_id: str, session: SessionDep, tenant: CurrentTenant) -> ArtifactOut:
    return ArtifactOut.model_validate(ready_artifact(session, artifact_id, tenant))


def file_responses(description: str) -> dict:
    """OpenAPI responses of a download: binary bytes (all, or the one range asked for), a redirect to the storage
    itself (S3 with presigned downloads), or a problem."""
    binary = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
    return {
        200: {"content": binary, "description": description},
        206: {"content": binary, "description": "The byte range the `Range` header asked for."},
        307: {"description": "Download it from `Location`: a short-lived URL of the storage (presigned S3)."},
        **problem_responses(404, 416),
    }


def stream_artifact(
    artifact: Artifact, blobs: BlobStore, byte_range: tuple[int, int] | None = None
) -> StreamingResponse:
    """Chunk by chunk from storage (all of it, or the bytes [start, stop) of `byte_range` as a 206); the length is
    known, so clients can show progress and detect truncation. The session that found the artifact is closed first:
    a client that reads slowly holds no database connection (each chunk is read in a session of its own) and no
    worker thread (Starlette awaits the client on the event loop)."""
    session = object_session(artifact)
    if session is not None:
        session.close()
    start, stop = byte_range or (0, artifact.size_bytes)
    headers = {
        "Content-Length": str(stop - start),
        "Content-Disposition": content_disposition(artifact.filename),
        "X-Content-Type-Options": "nosniff",
        "Accept-Ranges": "bytes",
        "ETag": f'"{artifact.sha256}"',
    }
    if byte_range is not None:
        headers["Content-Range"] = content_range(start, stop, artifact.size_bytes)
    return StreamingResponse(
        blobs.iter_chunks(artifact.id, start, stop),
        status_code=status.HTTP_206_PARTIAL_CONTENT if byte_range else status.HTTP_200_OK,
        media_type=artifact.content_type or "application/octet-stream",
        headers=headers,
    )


def download(request: Request, artifact: Artifact, blobs: BlobStore) -> Response:
    """A download as the storage allows: 307 to a presigned URL where the storage serves downloads itself (ranges
    and all), else streamed through the API, honouring `Range` (unless an `If-Range` names another version)."""
    media_type = artifact.content_type or "application/octet-stream"
    url = blobs.download_url(artifact.id, media_type, content_disposition(artifact.filename))
    if url is not None:
        # The URL expires within a minute or so: no cache may keep the redirect.
        return RedirectResponse(
            url, status_code=status.HTTP_307_TEMPORARY_REDIRECT, headers={"Cache-Control": "no-store"}
        )
    if_range = request.headers.get("if-range")
    header = request.headers.get("range") if if_range in (None, f'"{artifact.sha256}"') else None
    try:
        byte_range = requested_range(header, artifact.size_bytes)
    except RangeNotSatisfiable:
        error = ProblemError(416, "range_not_satisfiable", f"the file has {artifact.size_bytes} bytes")
        return problem_response(request, error, headers={"Content-Range": f"bytes */{artifact.size_bytes}"})
    return stream_artifact(artifact, blobs, byte_range)


@router.get(
    "/{artifact_id}/content",
    operation_id="downloadArtifact",
    response_class=StreamingResponse,
    responses=file_responses("The file's bytes."),
)
def download_artifact(
    artifact_id: str, request: Request, session: SessionDep, blobs: BlobsDep, tenant: CurrentTenant
) -> Response:
    return download(request, ready_artifact(session, artifact_id, tenant), blobs)


@router.delete(
    "/{artifact_id}",
    operation_id="deleteArtifact",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problem_responses(404),
)
def delete_artifact(
    artifact_id: str,
    session: SessionDep,
    session_factory: SessionFactoryDep,
    blobs: BlobsDep,
    tenant: CurrentTenant,
) -> Response:
    remove_artifact(session, session_factory, blobs, artifact_id, tenant)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
