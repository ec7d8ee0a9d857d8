"""Shared-nothing scale-out: two Celery workers, separate processes with separate folders (data, temporary files,
caches) and no filesystem in common with each other or the API, against one PostgreSQL, one Redis and one S3
server. Four jobs submitted through the API each run exactly once, on either worker (both take jobs, and one at
least takes another after finishing its first); every result is an object in the bucket and downloads through the
API. The S3 secret reaches the workers but never a jailed engine."""

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from squeezer.api.app import create_app
from squeezer.store.models import Job
from squeezer.store.s3_blobs import S3BlobStore
from squeezer.store.settings import Settings
from tests.api.conftest import tiny_job, upload
from tests.worker.conftest import REPO, running_processes

JOBS = 4


def start_worker(root: Path, env: dict[str, str]) -> subprocess.Popen:
    """A worker whose every folder is its own: nothing it writes is seen by the other worker or the API."""
    for folder in ("data", "tmp", "cache"):
        (root / folder).mkdir(parents=True)
    own = {
        **env,
        "SQUEEZER_DATA_DIR": str(root / "data"),
        "SQUEEZER_CACHE_DIR": str(root / "cache"),
        "TMPDIR": str(root / "tmp"),
    }
    log = (root / "worker.log").open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "squeezer.worker"], cwd=REPO, env=own, stdout=log, stderr=subprocess.STDOUT
    )


def wait_until_consuming(roots: list[Path], workers: list[subprocess.Popen], timeout_s: float = 180) -> None:
    """Both workers listen to the queue before any job is sent, so either may take any of them."""
    deadline = time.monotonic() + timeout_s
    logs = [root / "worker.log" for root in roots]
    while not all(" ready." in log.read_text() for log in logs):
        if time.monotonic() > deadline or any(worker.poll() is not None for worker in workers):
            raise AssertionError(f"a worker did not start: {[log.read_text()[-2000:] for log in logs]}")
        time.sleep(0.2)


def descendants(pid: int) -> list[int]:
    processes = running_processes()
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, (ppid, *_) in processes.items() if ppid == parent]
        found += children
        frontier += children
    return found


def environments_holding(secret: str, pids: list[int]) -> list[int]:
    """The processes among `pids` whose environment holds `secret` (those gone meanwhile skipped)."""
    holding = []
    for pid in pids:
        try:
            if secret.encode() in Path(f"/proc/{pid}/environ").read_bytes():
                holding.append(pid)
        except OSError:
            continue
    return holding


@pytest.mark.slow
def test_two_workers_share_nothing_but_the_database_the_broker_and_the_bucket(
    postgres_url, redis_url, s3_settings, sample_model_zip, tmp_path
):
    secret = s3_settings["s3_secret_access_key"]
    env = {
        **os.environ,
        **{f"SQUEEZER_{key.upper()}": value for key, value in s3_settings.items()},
        "SQUEEZER_DATABASE_URL": postgres_url,
        "SQUEEZER_BROKER_URL": redis_url,
        "SQUEEZER_WORKER_DEVICE": "cpu",
        "SQUEEZER_HEARTBEAT_INTERVAL_S": "0.5",
        # Both workers run jobs on this machine at once: each job's engine gets half its cores, not all of them each
        # (OpenMP threads spinning against each other made a job many times slower).
        "SQUEEZER_JOBS_PER_MACHINE": "2",
        "OMP_NUM_THREADS": "1",
    }
    roots = [tmp_path / f"worker-{index}" for index in range(2)]
    workers = [start_worker(root, env) for root in roots]
    settings = Settings(
        **s3_settings, database_url=postgres_url, broker_url=redis_url, data_dir=tmp_path / "api", worker_device="cpu"
    )
    try:
        with TestClient(create_app(settings), raise_server_exceptions=False) as client:
            model = upload(client, sample_model_zip)["id"]
            wait_until_consuming(roots, workers)
            jobs = []
            for _ in range(JOBS):
                response = client.post("/v1/jobs", json=tiny_job(model))
                assert response.status_code == 202, response.text
                jobs.append(response.json()["id"])
            jailed_seen = wait_for_jobs(client, jobs, workers, secret, tmp_path)
            assert jailed_seen >= 2, "the workers' jailed engines were not seen"
            with client.app.state.session_factory() as session:
                rows = {job_id: session.get(Job, job_id) for job_id in jobs}
            results = check_results(client, jobs)
        ran_on = [row.worker_id.split(":")[1] for row in rows.values()]
        assert all(row.attempts == 1 for row in rows.values()), {job: row.attempts for job, row in rows.items()}
        assert set(ran_on) == {str(worker.pid) for worker in workers}, ran_on  # both took jobs
        check_bucket(settings, model, results)
        for root in roots:
            assert not (root / "data" / "blobs").exists(), "a worker stored bytes on its own disk"
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait(30)


def wait_for_jobs(client, jobs: list[str], workers, secret: str, tmp_path: Path, timeout_s: float = 600) -> int:
    """Polls the API until every job is final, checking meanwhile that no process under a worker (its jailed
    engines) holds the S3 secret in its environment; returns how many such processes were seen."""
    deadline = time.monotonic() + timeout_s
    seen: set[int] = set()
    while True:
        under_workers = [pid for worker in workers for pid in descendants(worker.pid)]
        seen.update(under_workers)
        assert environments_holding(secret, under_workers) == []
        statuses = {job_id: client.get(f"/v1/jobs/{job_id}").json()["status"] for job_id in jobs}
        if all(status in ("succeeded", "failed", "cancelled") for status in statuses.values()):
            break
        if time.monotonic() > deadline or any(worker.poll() is not None for worker in workers):
            logs = [(tmp_path / f"worker-{index}" / "worker.log").read_text()[-2000:] for index in range(len(workers))]
            raise AssertionError(f"jobs not finished: {statuses}; worker logs: {logs}")
        time.sleep(0.5)
    assert set(statuses.values()) == {"succeeded"}, statuses
    return len(seen)


def check_results(client, jobs: list[str]) -> dict[str, dict]:
    """Every result downloads through the API with the size and sha256 its listing gives; artifact id → listing."""
    results = {}
    for job_id in jobs:
        listing = client.get(f"/v1/jobs/{job_id}/artifacts").json()
        assert {"model.sqz", "report.json", "model.onnx"} <= {item["name"] for item in listing}
        for item in listing:
            body = client.get(item["url"]).content
            assert (len(body), hashlib.sha256(body).hexdigest()) == (item["size_bytes"], item["sha256"]), item
            results[item["artifact_id"]] = item
    tail = client.get(listing[0]["url"], headers={"Range": "bytes=-16"})
    assert tail.status_code == 206 and len(tail.content) == min(16, listing[0]["size_bytes"])
    return results


def check_bucket(settings: Settings, model: str, results: dict[str, dict]) -> None:
    """The bucket holds the upload and every result, at their sizes, and nothing else (no stray checkpoint, no
    unfinished multipart upload)."""
    blobs = S3BlobStore.from_settings(settings)
    objects = blobs.client.list_objects_v2(Bucket=blobs.bucket).get("Contents", [])
    sizes = {entry["Key"].removeprefix("blobs/"): entry["Size"] for entry in objects}
    assert set(sizes) == {model, *results}
    assert all(sizes[artifact_id] == item["size_bytes"] for artifact_id, item in results.items())
    assert blobs.client.list_multipart_uploads(Bucket=blobs.bucket).get("Uploads", []) == []
    assert httpx.get(f"{settings.s3_endpoint_url}/{blobs.bucket}/blobs/{model}").status_code == 403  # not public
