"""Liveness and readiness probes (unversioned: they describe the process, not the API)."""

import anyio.to_thread
from fastapi import APIRouter
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from squeezer.api.deps import BlobsDep, DispatcherDep, SessionFactoryDep
from squeezer.api.errors import ProblemError, problem_responses

router = APIRouter(tags=["health"])


@router.get("/healthz", operation_id="healthz", summary="The process is alive")
async def healthz() -> dict:
    """On the event loop, not in the thread pool: it answers while every worker thread is busy."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    operation_id="readyz",
    summary="The database, the broker and the blob storage answer",
    responses=problem_responses(503),
)
async def readyz(session_factory: SessionFactoryDep, dispatcher: DispatcherDep, blobs: BlobsDep) -> dict:
    def database_ok() -> bool:
        try:
            with session_factory() as session:
                session.execute(text("SELECT 1"))
            return True
        except SQLAlchemyError:
            return False

    if not await anyio.to_thread.run_sync(database_ok):
        raise ProblemError(503, "service_unavailable", "the database does not answer")
    if not await anyio.to_thread.run_sync(dispatcher.is_ready):
        raise ProblemError(
            503,
            "service_unavailable",
            "the job queue (broker or in-process worker) does not answer",
        )
    if not await anyio.to_thread.run_sync(blobs.is_ready):
        raise ProblemError(503, "service_unavailable", "the blob storage (its bucket or folder) does not answer")
    return {"status": "ready"}
