"""Structured logs of a real API (`squeezer api`) and a real Celery worker (`python -m squeezer.worker`), in both
formats: JSON lines parse with time, level and event; the X-Request-ID of a submission is echoed and reaches the
worker's lines for that job, with the tenant and the job id; an API key, a webhook secret and the database password
never appear in any line, although a request puts all three in its URL (which the access log writes)."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from squeezer.store.db import make_engine, make_session_factory
from squeezer.store.keys import create_key
from squeezer.store.logging_setup import redact
from tests.api.conftest import FLOW_OPTIONS, tiny_job
from tests.helpers import final_job, wait_until
from tests.servers import free_port

REPO = Path(__file__).resolve().parents[2]
DATABASE_PASSWORD = "Db-Pass-5ecret"


def start(command: list[str], env: dict[str, str], logs: Path) -> subprocess.Popen:
    """The logs go to stderr; stdout gets what a library prints itself (Celery's "worker: Warm shutdown")."""
    return subprocess.Popen(
        command, cwd=REPO, env=env, stdout=logs.with_suffix(".out").open("wb"), stderr=logs.open("wb")
    )


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def run_service(log_format: str, postgres_url: str, redis_url: str, model_zip: Path, tmp_path: Path) -> dict:
    """Runs one job through a real API and worker logging in `log_format`; returns what the test checks."""
    with make_session_factory(make_engine(postgres_url))() as session:
        _, api_key = create_key(session, "acme")
    database_url = postgres_url.replace("postgres@", f"postgres:{DATABASE_PASSWORD}@")  # the test server trusts
    env = {
        **os.environ,
        "SQUEEZER_DATABASE_URL": database_url,
        "SQUEEZER_BROKER_URL": redis_url,
        "SQUEEZER_STORAGE_BACKEND": "database",
        "SQUEEZER_DATA_DIR": str(tmp_path / "data"),
        "SQUEEZER_WORKER_DEVICE": "cpu",
        "SQUEEZER_LOG_FORMAT": log_format,
        "SQUEEZER_WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
        "SQUEEZER_WEBHOOK_ALLOW_HTTP": "true",
        "OMP_NUM_THREADS": "1",
    }
    port = free_port()
    squeezer = str(Path(sys.executable).with_name("squeezer"))
    api = start([squeezer, "api", "--host", "127.0.0.1", "--port", str(port)], env, tmp_path / "api.log")
    worker = start([sys.executable, "-m", "squeezer.worker"], env, tmp_path / "worker.log")
    request_id = f"logging-test-{log_format}"
    headers = {"Authorization": f"Bearer {api_key}"}
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=120) as client:
            wait_until(
                lambda: client.get("/healthz").status_code == 200, 180, "the API", 0.3, not_yet=(httpx.TransportError,)
            )
            hook = client.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/hook", "events": ["job.queued"]})
            webhook_secret = hook.json()["secret"]
            with model_zip.open("rb") as file:
                model = client.post("/v1/artifacts", data={"kind": "model"}, files={"file": ("m.zip", file)}).json()
            submitted = client.post(
                "/v1/jobs", json=tiny_job(model["id"], options=FLOW_OPTIONS), headers={"X-Request-ID": request_id}
            )
            assert submitted.status_code == 202, submitted.text
            assert submitted.headers["x-request-id"] == request_id
            job_id = submitted.json()["id"]
            leaky = client.get("/v1/jobs", params={"key": api_key, "secret": webhook_secret, "db": database_url})
            assert leaky.status_code == 200
            final_job(client, job_id)
    finally:
        stop(api)
        stop(worker)
    return {
        "api": (tmp_path / "api.log").read_text().splitlines(),
        "worker": (tmp_path / "worker.log").read_text().splitlines(),
        "stdout": (tmp_path / "api.out").read_text().splitlines() + (tmp_path / "worker.out").read_text().splitlines(),
        "secrets": [api_key, api_key.removeprefix("sqz_"), webhook_secret, DATABASE_PASSWORD],
        "request_id": request_id,
        "job_id": job_id,
    }


@pytest.mark.slow
@pytest.mark.parametrize("log_format", ["text", "json"])
def test_logs_carry_the_request_id_to_the_worker_and_never_a_secret(
    log_format, postgres_url, redis_url, sample_model_zip, tmp_path
):
    run = run_service(log_format, postgres_url, redis_url, sample_model_zip, tmp_path)
    lines = run["api"] + run["worker"] + run["stdout"]
    assert len(run["api"]) > 3 and len(run["worker"]) > 3, lines
    for secret in run["secrets"]:
        assert not [line for line in lines if secret in line], f"a secret reached the {log_format} logs"
    assert any("sqz_***" in line and "whsec_***" in line for line in run["api"]), "the leaky URL was not logged"
    request_id, job_id = run["request_id"], run["job_id"]
    if log_format == "text":
        assert any(f"request_id={request_id}" in line and "tenant=acme" in line for line in run["api"])
        assert any(f"request_id={request_id}" in line and f"job_id={job_id}" in line for line in run["worker"])
        return
    records = {name: [json.loads(line) for line in run[name] if line.strip()] for name in ("api", "worker")}
    for record in records["api"] + records["worker"]:
        assert {"time", "level", "event"} <= record.keys(), record
    assert any(r.get("request_id") == request_id and r.get("tenant") == "acme" for r in records["api"])
    job_lines = [r for r in records["worker"] if r.get("job_id") == job_id]
    assert job_lines and all(r.get("request_id") == request_id and r.get("tenant") == "acme" for r in job_lines)


def test_redaction_masks_each_kind_of_secret_plain_and_percent_encoded():
    key, secret = "sqz_" + "k3y-Value_" * 4, "whsec_c2VjcmV0+/c2VjcmV0=="
    url = f"postgresql+psycopg://squeezer:{DATABASE_PASSWORD}@db:5432/squeezer"
    line = f"{key} {secret} {url} " + httpx.QueryParams({"k": key, "s": secret, "u": url}).__str__()
    masked = redact(line)
    for leaked in (key, key[4:], secret[6:], "c2VjcmV0", DATABASE_PASSWORD):
        assert leaked not in masked, masked
    assert "postgresql+psycopg://squeezer:***@db:5432/squeezer" in masked
    assert redact("https://example.com/a@b redis://h:6379/0") == "https://example.com/a@b redis://h:6379/0"
