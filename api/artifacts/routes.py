"""/v1/artifacts: streamed upload, metadata, streamed download, delete."""

import anyio.to_thread
from fastapi import APIRouter, Request, Response, status
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import object_session

from api.artifacts.schemas import ArtifactOut
from api.artifacts.service import (
    content_disposition,
    ready_artifact,
    receive_upload,
    remove_artifact,
    storage_quota_left,
)
from api.deps import BlobsDep, CurrentTenant, SessionDep, SessionFactoryDep, SettingsDep, UploadSlotsDep
from api.errors import problem_responses
from store.blobs import BlobStore
from store.models import UPLOAD_KINDS, Artifact, ArtifactKind

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
    """OpenAPI responses of a download: binary bytes, or a 404 problem."""
    return {
        200: {
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
            "description": description,
        },
        **problem_responses(404),
    }


def stream_artifact(artifact: Artifact, blobs: BlobStore) -> StreamingResponse:
    """Chunk by chunk from storage; the length is known, so clients can show progress and detect truncation. The
    session that found the artifact is closed first: a client that reads slowly holds no database connection (each
    chunk is read in a session of its own) and no worker thread (Starlette awaits the client on the event loop)."""
    session = object_session(artifact)
    if session is not None:
        session.close()
    return StreamingResponse(
        blobs.iter_chunks(artifact.id),
        media_type=artifact.content_type or "application/octet-stream",
        headers={
            "Content-Length": str(artifact.size_bytes),
            "Content-Disposition": content_disposition(artifact.filename),
            "X-Content-Type-Options": "nosniff",
        },
    )


@router.get(
    "/{artifact_id}/content",
    operation_id="downloadArtifact",
    response_class=StreamingResponse,
    responses=file_responses("The file's bytes."),
)
def download_artifact(
    artifact_id: str, session: SessionDep, blobs: BlobsDep, tenant: CurrentTenant
) -> StreamingResponse:
    return stream_artifact(ready_artifact(session, artifact_id, tenant), blobs)


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
