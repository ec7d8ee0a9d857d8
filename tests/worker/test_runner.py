"""The job function itself, in this process: the path the embedded mode takes, on SQLite and local storage."""

import zipfile

import pytest
from sqlalchemy import select

from squeezer.store.artifacts import store_file
from squeezer.store.db import make_engine, make_session_factory
from squeezer.store.jobs import claim_job, create_job
from squeezer.store.models import Job, JobEvent, JobResult
from squeezer.store.settings import Settings
from squeezer.worker.context import WorkerContext
from squeezer.worker.dispatch import InProcessDispatcher
from squeezer.worker.runner import run_job
from tests.helpers import wait_until
from tests.worker.conftest import tiny_spec


@pytest.fixture
def ctx(tmp_path, sqlite_url):
    settings = Settings(
        data_dir=tmp_path,
        database_url=sqlite_url,
        storage_backend="local",
        heartbeat_interval_s=0.5,
        worker_device="cpu",
    )
    engine = make_engine(settings.resolved_database_url)
    context = WorkerContext.from_settings(settings, make_session_factory(engine))
    yield context
    engine.dispose()


def submit(ctx, spec) -> str:
    with ctx.session_factory() as session:
        job, _ = create_job(
            session, tenant="default", spec=spec, idempotency_key=None, request_hash=None, max_attempts=3
        )
    return job.id


def load(ctx, job_id) -> Job:
    with ctx.session_factory() as session:
        return session.get(Job, job_id)


@pytest.mark.slow
def test_run_job_succeeds_once_and_a_second_delivery_does_nothing(ctx, sample_model_zip):
    model_id = store_file(ctx.session_factory, ctx.blobs, sample_model_zip, tenant="default", kind="model").id
    job_id = submit(ctx, tiny_spec(model_id))
    run_job(job_id, ctx)
    done = load(ctx, job_id)
    run_job(job_id, ctx)
    again = load(ctx, job_id)
    assert (done.status, done.attempts, done.error_code) == ("succeeded", 1, None)
    assert again.version == done.version and again.attempts == 1
    with ctx.session_factory() as session:
        names = set(session.scalars(select(JobResult.name).where(JobResult.job_id == job_id)))
        stages = list(session.scalars(select(JobEvent.stage).where(JobEvent.job_id == job_id)))
    assert names == {"model.sqz", "model.onnx", "model.zip", "report.json", "report.html"}
    assert "step" in stages
    assert set(done.progress) == {"stage", "fraction", "best_accuracy", "best_compression_ratio"}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model_bytes", "dataset", "code"),
    [
        (b"not a model at all", {"sample": "digits"}, "invalid_model"),
        (None, {"artifact_id": "art_missing"}, "artifact_not_found"),
        (None, {"sample": "no-such-sample"}, "invalid_dataset"),
    ],
)
def test_bad_inputs_fail_the_job_with_their_code(ctx, tmp_path, sample_model_zip, model_bytes, dataset, code):
    model_path = sample_model_zip
    if model_bytes is not None:
        model_path = tmp_path / "model.onnx"
        model_path.write_bytes(model_bytes)
    model_id = store_file(ctx.session_factory, ctx.blobs, model_path, tenant="default", kind="model").id
    job_id = submit(ctx, {**tiny_spec(model_id), "dataset": dataset})
    run_job(job_id, ctx)
    job = load(ctx, job_id)
    assert (job.status, job.error_code) == ("failed", code)
    assert job.error_message and "Traceback" not in job.error_message


@pytest.mark.slow
def test_a_hostile_model_archive_fails_the_job(ctx, tmp_path):
    archive = tmp_path / "model.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../../escape.txt", "x")
    model_id = store_file(ctx.session_factory, ctx.blobs, archive, tenant="default", kind="model").id
    job_id = submit(ctx, tiny_spec(model_id))
    run_job(job_id, ctx)
    job = load(ctx, job_id)
    assert (job.status, job.error_code) == ("failed", "invalid_archive")


def test_in_process_dispatcher_recovers_what_a_previous_process_left(ctx):
    """Embedded restart: a job left running by a dead process and a queued one both run again."""
    orphan_id = submit(ctx, {"model": {}, "dataset": {"sample": "digits"}})
    queued_id = submit(ctx, {"model": {}, "dataset": {"sample": "digits"}})
    with ctx.session_factory() as session:
        claim_job(session, orphan_id, "dead-process")
    dispatcher = InProcessDispatcher(lambda job_id: run_job(job_id, ctx), ctx)
    dispatcher.start()
    try:
        wait_until(
            lambda: {load(ctx, orphan_id).status, load(ctx, queued_id).status} == {"failed"}, 30, "both jobs to fail"
        )
    finally:
        dispatcher.stop(timeout_s=30)
    orphan, queued = load(ctx, orphan_id), load(ctx, queued_id)
    assert (orphan.status, orphan.attempts, orphan.error_code) == ("failed", 2, "invalid_job")
    assert (queued.status, queued.attempts, queued.error_code) == ("failed", 1, "invalid_job")
