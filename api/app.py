"""The FastAPI application: wiring of settings, database, blob storage and the dispatcher."""

from contextlib import asynccontextmanager

from fastapi import FastAPI

from squeezer.api import health
from squeezer.api.artifacts.routes import router as artifacts_router
from squeezer.api.errors import install_problem_handlers, problem_responses
from squeezer.api.jobs.routes import router as jobs_router
from squeezer.api.keycheck import KeyCheckMiddleware
from squeezer.api.limits import BodyLimitMiddleware
from squeezer.api.metrics import install_metrics
from squeezer.api.slots import TenantSlots
from squeezer.api.webhooks.routes import router as webhooks_router
from squeezer.core.jail import configured_jail
from squeezer.store.blobs import make_blob_store
from squeezer.store.db import make_engine, make_session_factory
from squeezer.store.job_reads import make_job_reader
from squeezer.store.keys import KeyCache
from squeezer.store.settings import Settings, get_settings
from squeezer.worker.dispatch import Dispatcher, make_dispatcher

DESCRIPTION = (
    "Upload a trained CNN and its data, set an accuracy budget, and download a smaller model with a report. "
    "Errors are RFC 9457 problem documents."
)


def create_app(settings: Settings | None = None, *, dispatcher: Dispatcher | None = None) -> FastAPI:
    """One app per process. Without a dispatcher, one is made from the settings (Celery with a broker URL, else the
    in-process worker); the app starts and stops it with its lifespan."""
    settings = settings or get_settings()
    # An API that cannot jail its submission checks refuses to start (core.jail.JailUnavailable says how to fix it).
    configured_jail(settings.jail, allow_unjailed=settings.allow_unjailed_engine)
    engine = make_engine(settings.resolved_database_url)
    session_factory = make_session_factory(engine)
    job_reader = make_job_reader(settings.resolved_database_url)  # polls: on the event loop where the driver allows
    blobs = make_blob_store(settings, session_factory)
    dispatcher = dispatcher or make_dispatcher(settings, session_factory, blobs)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        dispatcher.start()
        try:
            yield
        finally:
            dispatcher.stop()
            engine.dispose()
            await job_reader.close()

    app = FastAPI(title="Squeezer", version="1.0.0", description=DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings
    app.state.session_factory = session_factory
    app.state.job_reader = job_reader
    app.state.blobs = blobs
    app.state.dispatcher = dispatcher
    app.state.key_cache = KeyCache(settings.api_key_cache_s)
    install_problem_handlers(app)
    app.state.upload_slots = TenantSlots(settings.max_concurrent_uploads_per_tenant, "upload_quota_exceeded", "uploads")
    app.state.submission_checks = TenantSlots(None)
    # The outermost runs first: the key is checked before the body limits read a byte of the body.
    app.add_middleware(BodyLimitMiddleware)
    app.add_middleware(KeyCheckMiddleware)
    install_metrics(app, session_factory)  # GET /metrics; its middleware is the outermost (X-Request-ID, timing)
    app.include_router(health.router)
    # Every /v1 route takes the bearer key (api.deps.current_tenant): the scheme comes with the dependency.
    for router in (artifacts_router, jobs_router, webhooks_router):
        app.include_router(router, responses=problem_responses(401))
    return app
