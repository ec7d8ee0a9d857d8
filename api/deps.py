"""Typed dependencies. Everything a route needs comes from here, so auth (issue 5) replaces `current_tenant` alone."""

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session, sessionmaker

from store.blobs import BlobStore
from store.models import DEFAULT_TENANT
from store.settings import Settings
from worker.dispatch import Dispatcher


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_session_factory(request: Request) -> sessionmaker[Session]:
    return request.app.state.session_factory


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.session_factory() as session:
        yield session


def get_blobs(request: Request) -> BlobStore:
    return request.app.state.blobs


def get_dispatcher(request: Request) -> Dispatcher:
    return request.app.state.dispatcher


def current_tenant() -> str:
    """The caller's tenant. Always the default tenant until API keys exist (issue 5)."""
    return DEFAULT_TENANT


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionFactoryDep = Annotated[sessionmaker[Session], Depends(get_session_factory)]
SessionDep = Annotated[Session, Depends(get_session)]
BlobsDep = Annotated[BlobStore, Depends(get_blobs)]
DispatcherDep = Annotated[Dispatcher, Depends(get_dispatcher)]
CurrentTenant = Annotated[str, Depends(current_tenant)]
