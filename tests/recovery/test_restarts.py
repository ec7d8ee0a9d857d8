"""Crash and restart recovery with real servers and processes: Redis restarted with jobs queued, PostgreSQL restarted
under a running job and a live API, the API killed in the middle of an upload. (A worker killed mid-job:
tests/worker/test_celery_worker.py.)"""

import contextlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from squeezer.api.app import create_app
from squeezer.store.db import make_engine, make_session_factory
from squeezer.store.jobs import create_job
from squeezer.store.models import DEFAULT_TENANT, Artifact, BlobChunk
from squeezer.store.settings import Settings
from squeezer.worker.celery_app import QUEUE_NAME
from squeezer.worker.context import WorkerContext
from squeezer.worker.reaper import recover_once
from tests.api.conftest import FLOW_OPTIONS, LONG_OPTIONS, assert_problem
from tests.helpers import wait_until
from tests.servers import free_port
from tests.worker.conftest import REPO, start_service, tiny_spec

RESULT_NAMES = {"model.sqz", "model.onnx", "model.zip", "report.json", "report.html"}
# A job whose training outlasts the PostgreSQL outage (about 10 s on an idle machine: stop, the API's 503s, start) by
# as much as the whole sparsity grid did, with a fixed amount of work: one level, four stages of 1000 steps.
OUTLASTS_A_RESTART = {**LONG_OPTIONS, "sparsity": 0.5, "min_steps_per_stage": 1000}


@pytest.mark.slow
def test_jobs_queued_when_redis_restarts_are_not_lost(own_redis, postgres_url, tmp_path, sample_model_zip):
    """Redis runs without persistence: a restart drops every queued message. The job rows are the truth, and the
    worker's reaper sends them again; each job runs exactly once."""
    service = start_service(postgres_url, own_redis.url, tmp_path)
    try:
        model_id = service.upload(sample_model_zip)
        running_id = service.create(tiny_spec(model_id))
        queued_ids = [service.create(tiny_spec(model_id, **FLOW_OPTIONS["lwct"])) for _ in range(2)]  # no training
        for job_id in (running_id, *queued_ids):
            service.dispatcher.enqueue(job_id)
        service.start_worker()
        service.wait(running_id, lambda job: job.status == "running")
        own_redis.stop()
        own_redis.start()
        assert redis.Redis.from_url(own_redis.url).llen(QUEUE_NAME) == 0  # the messages are gone
        jobs = [service.wait_final(job_id, timeout_s=180) for job_id in (running_id, *queued_ids)]
        assert [(job.status, job.attempts) for job in jobs] == [("succeeded", 1)] * 3
        assert all(set(service.results(job.id)) == RESULT_NAMES for job in jobs)
    finally:
        service.stop()


@pytest.mark.slow
def test_postgres_restart_answers_503_meanwhile_and_everything_recovers_by_itself(
    own_postgres, redis_url, tmp_path, sample_model_zip
):
    url = own_postgres.create_migrated_database("squeezer")
    service = start_service(url, redis_url, tmp_path)
    # Longer than the outage, as in production (120 s): else the worker's reaper may take the job for dead once the
    # server is back, before its heartbeat is, and run it again.
    service.env["SQUEEZER_HEARTBEAT_TIMEOUT_S"] = "30"
    settings = Settings(database_url=url, broker_url=redis_url, storage_backend="database", data_dir=tmp_path / "api")
    try:
        with TestClient(create_app(settings), raise_server_exceptions=False) as client:
            job_id = service.create(tiny_spec(service.upload(sample_model_zip), **OUTLASTS_A_RESTART))
            service.dispatcher.enqueue(job_id)
            service.start_worker()
            service.wait(
                job_id,
                lambda job: job.status == "running" and job.progress.get("stage") not in (None, "queued", "intake"),
            )
            own_postgres.stop(remove=False)
            for response in (
                client.get(f"/v1/jobs/{job_id}"),
                client.get("/v1/jobs"),
                client.post("/v1/artifacts", files={"file": ("m.onnx", b"x" * 1000)}),
                client.post(f"/v1/jobs/{job_id}/cancel"),
            ):
                assert_problem(response, 503, "service_unavailable")
                assert response.headers["retry-after"] == "5"
            assert_problem(client.get("/readyz"), 503, "service_unavailable")
            worker_log = service.log_dir / "worker-0.log"
            wait_until(lambda: "heartbeat failed" in worker_log.read_text(), 60, "the worker to miss the database")
            own_postgres.start()
            wait_until(  # the same app: no restart needed
                lambda: client.get(f"/v1/jobs/{job_id}").status_code == 200, 20, "the API to recover by itself", 0.2
            )
            assert client.get("/readyz").status_code == 200
            job = service.wait_final(job_id, timeout_s=240)
            assert job.status == "succeeded", (job.status, job.error_code, job.error_message)
            assert set(service.results(job_id)) == RESULT_NAMES
            assert client.get(f"/v1/jobs/{job_id}/report").status_code == 200
    finally:
        service.stop()


def start_api(env: dict, port: int, log) -> subprocess.Popen:
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from squeezer.cli.main import app; app()",
            "api",
            "--no-auth",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until(
            lambda: httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200,
            60,
            "the API to start",
            0.2,
            not_yet=(httpx.TransportError,),
        )
    except AssertionError:
        process.kill()
        raise
    return process


def spooled_bytes(pid: int) -> int:
    """Bytes in the unlinked files process `pid` holds open: the uploads it is spooling."""
    total = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):  # a file closed meanwhile
            if os.readlink(fd).endswith(" (deleted)"):
                total += fd.stat().st_size
    return total


@pytest.mark.slow
def test_an_upload_cut_by_an_api_restart_leaves_nothing(postgres_url, redis_url, tmp_path):
    """The API process dies (SIGKILL) with half a file received. Uploads are spooled to an unlinked temporary file
    until their body is whole, so nothing of it reached the database: no row, no chunk (an upload cut while it is
    being stored is removed by the workers' sweep: tests/store/test_blobs.py)."""
    settings = Settings(
        database_url=postgres_url,
        broker_url=redis_url,
        storage_backend="database",
        storage_chunk_bytes=64 * 1024,
        data_dir=tmp_path,
    )
    env = {
        **os.environ,
        "SQUEEZER_DATABASE_URL": postgres_url,
        "SQUEEZER_BROKER_URL": redis_url,
        "SQUEEZER_STORAGE_BACKEND": "database",
        "SQUEEZER_STORAGE_CHUNK_BYTES": str(64 * 1024),
        "SQUEEZER_DATA_DIR": str(tmp_path),
    }
    ctx = WorkerContext.from_settings(settings)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = (tmp_path / "api.log").open("wb")
    api = start_api(env, port, log)
    try:
        boundary = "squeezerboundary"
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="kind"\r\n\r\nmodel\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.onnx"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        declared = len(head) + (4 << 20)
        with socket.create_connection(("127.0.0.1", port)) as upload:
            upload.sendall(
                f"POST /v1/artifacts HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n"
                f"Content-Length: {declared}\r\n\r\n".encode()
                + head
                + b"\x01" * (1 << 20)
            )
            wait_until(lambda: spooled_bytes(api.pid) >= 1 << 19, 30, "the API to spool the upload")
            with ctx.session_factory() as session:
                assert session.scalar(select(func.count()).select_from(Artifact)) == 0  # still spooling
            api.send_signal(signal.SIGKILL)
            api.wait(10)
        api = start_api(env, port, log)
        recover_once(ctx)
        with ctx.session_factory() as session:
            assert session.scalar(select(func.count()).select_from(Artifact)) == 0
            assert session.scalar(select(func.count()).select_from(BlobChunk)) == 0
        fresh = httpx.post(f"{base}/v1/artifacts", files={"file": ("m.onnx", b"x" * 1000)})
        assert fresh.status_code == 201 and fresh.json()["size_bytes"] == 1000
    finally:
        api.kill()
        api.wait()
        ctx.session_factory.kw["bind"].dispose()


def chunk_count(ctx: WorkerContext, artifact_id: str) -> int:
    with ctx.session_factory() as session:
        return session.scalar(select(func.count()).select_from(BlobChunk).where(BlobChunk.artifact_id == artifact_id))


def test_the_first_poll_after_a_postgres_restart_is_answered(own_postgres, tmp_path):
    """Polls on PostgreSQL reuse their own connections (store.job_reads): the reader's retry must hide the ones the
    restart dropped, so not even one poll fails once the server is back."""
    url = own_postgres.create_migrated_database("squeezer")
    settings = Settings(database_url=url, auth=False, storage_backend="database", data_dir=tmp_path / "api")
    with make_session_factory(make_engine(url))() as session:
        job_id = create_job(
            session, tenant=DEFAULT_TENANT, spec={}, idempotency_key=None, request_hash=None, max_attempts=1
        )[0].id
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        assert client.get(f"/v1/jobs/{job_id}").status_code == 200  # the read pool now holds a connection
        own_postgres.stop(remove=False)
        own_postgres.start()
        response = client.get(f"/v1/jobs/{job_id}")
        assert response.status_code == 200, response.text
        assert response.json()["id"] == job_id
