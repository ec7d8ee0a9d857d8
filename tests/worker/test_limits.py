"""A job's limits on the worker, end to end (issue 24): the server's time limit ends a job that asks for none within
the engine's grace, its best result kept, and no event names a path of the worker."""

import time

import pytest
from sqlalchemy import select

from squeezer.core.events import GRACE_S
from squeezer.store.artifacts import store_file
from squeezer.store.db import make_engine, make_session_factory
from squeezer.store.jobs import create_job
from squeezer.store.models import Job, JobEvent, JobResult
from squeezer.store.settings import Settings
from squeezer.worker.context import WorkerContext
from squeezer.worker.runner import run_job
from tests.api.conftest import LONG_OPTIONS
from tests.worker.conftest import tiny_spec

SERVER_LIMIT_S = 2.0


@pytest.fixture
def ctx(tmp_path, sqlite_url):
    settings = Settings(
        data_dir=tmp_path,
        database_url=sqlite_url,
        storage_backend="local",
        heartbeat_interval_s=0.5,
        worker_device="cpu",
        max_job_time_limit_s=SERVER_LIMIT_S,
    )
    engine = make_engine(settings.resolved_database_url)
    ctx = WorkerContext.from_settings(settings, make_session_factory(engine))
    yield ctx
    engine.dispose()


@pytest.mark.slow
def test_the_server_time_limit_ends_a_job_that_asks_for_none_and_keeps_its_result(ctx, sample_model_zip, tmp_path):
    model_id = store_file(ctx.session_factory, ctx.blobs, sample_model_zip, tenant="default", kind="model").id
    with ctx.session_factory() as session:
        job, _ = create_job(
            session,
            tenant="default",
            spec=tiny_spec(model_id, **LONG_OPTIONS),  # about a minute of training without a limit
            idempotency_key=None,
            request_hash=None,
            max_attempts=1,
        )
    started = time.monotonic()
    run_job(job.id, ctx)
    elapsed = time.monotonic() - started
    with ctx.session_factory() as session:
        done = session.get(Job, job.id)
        names = set(session.scalars(select(JobResult.name).where(JobResult.job_id == job.id)))
        events = list(session.scalars(select(JobEvent).where(JobEvent.job_id == job.id)))
    assert (done.status, done.error_code) == ("failed", "time_limit_exceeded")
    assert names == {"model.sqz", "model.onnx", "model.zip", "report.json", "report.html"}  # the best state's
    assert elapsed < SERVER_LIMIT_S + GRACE_S
    assert events and not [e for e in events if str(tmp_path) in f"{e.message} {e.data}" or "/tmp/" in str(e.data)]
