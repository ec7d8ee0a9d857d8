"""Typed dependencies. Everything a route needs comes from here; `current_tenant` is where authentication happens.
The objects live on `app.state` (set by api.app.create_app); only this module reads them there."""

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker

from squeezer.api.slots import TenantSlots
from squeezer.store.blobs import BlobStore
from squeezer.store.job_reads import JobReader
from squeezer.store.logging_setup import set_log_field
from squeezer.store.models import DEFAULT_TENANT
from squeezer.store.settings import Settings
from squeezer.worker.dispatch import Dispatcher


# The getters below are `async` although they wait for nothing: FastAPI runs a plain `def` dependency in a worker
# thread, a hand-off that cost more than a cached key check (bench/api_poll.py).
async def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_session_factory(request: Request) -> sessionmaker[Session]:
    return request.app.state.session_factory


async def get_job_reader(request: Request) -> JobReader:
    return request.app.state.job_reader


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.session_factory() as session:
        yield session


def get_blobs(request: Request) -> BlobStore:
    return request.app.state.blobs


def get_dispatcher(request: Request) -> Dispatcher:
    return request.app.state.dispatcher


def get_upload_slots(request: Request) -> TenantSlots:
    return request.app.state.upload_slots


def get_submission_checks(request: Request) -> TenantSlots:
    return request.app.state.submission_checks


# Declares the bearer scheme in the OpenAPI document; missing or malformed headers are answered below, as problems.
bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="`Authorization: Bearer <api key>`; create keys with `squeezer keys create --tenant NAME`.",
)


async def current_tenant(
    request: Request,
    settings: Annotated[Settings, Depends(get_app_settings)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> str:
    """The caller's tenant: the owner of the bearer key when auth is on, else the default tenant. Every query a route
    makes is filtered by it, so another tenant's ids answer 404. The key itself is verified by api.keycheck before
    the body is read, for every /v1 path; `credentials` is here only to declare the scheme."""
    tenant = getattr(request.state, "tenant", None) if settings.auth else DEFAULT_TENANT
    if tenant is None:  # a route outside api.keycheck.PROTECTED_PREFIX: refuse rather than guess
        raise HTTPException(401, "send `Authorization: Bearer <api key>`", headers={"WWW-Authenticate": "Bearer"})
    set_log_field("tenant", tenant)  # the request's later log lines name it (store.logging_setup)
    return tenant


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
SessionFactoryDep = Annotated[sessionmaker[Session], Depends(get_session_factory)]
JobReaderDep = Annotated[JobReader, Depends(get_job_reader)]
SessionDep = Annotated[Session, Depends(get_session)]
BlobsDep = Annotated[BlobStore, Depends(get_blobs)]
DispatcherDep = Annotated[Dispatcher, Depends(get_dispatcher)]
UploadSlotsDep = Annotated[TenantSlots, Depends(get_upload_slots)]
SubmissionChecksDep = Annotated[TenantSlots, Depends(get_submission_checks)]
CurrentTenant = Annotated[str, Depends(current_tenant)]
