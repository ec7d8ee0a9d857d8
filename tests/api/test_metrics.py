"""GET /metrics: scraped and parsed with prometheus_client's own parser while a job runs on the in-process worker
and after it ends; every family the operators rely on is there, no label carries an id or a raw path, and the
token is enforced when set."""

import os
import sys
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from squeezer.api.app import create_app
from squeezer.store.models import WebhookEndpoint
from squeezer.store.settings import Settings
from squeezer.worker.dispatch import CeleryDispatcher
from tests.api.conftest import LONG_OPTIONS, upload
from tests.api.test_auth import insert_job
from tests.api.test_logging import start, stop
from tests.helpers import wait_until
from tests.servers import free_port

API_FAMILIES = {
    "squeezer_jobs",
    "squeezer_queue_depth",
    "squeezer_http_requests",
    "squeezer_http_request_duration_seconds",
    "squeezer_upload_bytes",
    "squeezer_submission_checks",
    "squeezer_submission_check_duration_seconds",
    # The in-process worker's, served by the API in the embedded mode (worker.metrics).
    "squeezer_job_duration_seconds",
    "squeezer_job_stage_duration_seconds",
    "squeezer_webhook_deliveries",
    "squeezer_worker_busy",
}


def scrape(client: TestClient, **headers: str) -> dict[str, list]:
    """Family name → its samples (name, labels, value)."""
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {family.name: family.samples for family in text_string_to_metric_families(response.text)}


def value(families: dict[str, list], sample: str, **labels: str) -> float:
    family = next(name for name in families if sample.startswith(name))
    matches = [s.value for s in families[family] if s.name == sample and labels.items() <= s.labels.items()]
    return sum(matches)


def wait_for_scrape(client: TestClient, condition, timeout_s: float = 120) -> dict[str, list]:
    deadline = time.monotonic() + timeout_s
    while True:
        families = scrape(client)
        if condition(families):
            return families
        assert time.monotonic() < deadline, "the metrics never showed the expected state"
        time.sleep(0.3)


def assert_labels_bounded(families: dict[str, list], ids: list[str], routes: set[str]) -> None:
    for samples in families.values():
        for sample in samples:
            for name, label in sample.labels.items():
                assert not any(identifier in label for identifier in ids), (sample.name, name, label)
                if name == "route":
                    assert label in routes, f"{label!r} is not a route template"


def route_templates(client: TestClient) -> set[str]:
    return set(client.app.openapi()["paths"]) | {"/metrics", "unmatched"}


@pytest.mark.slow
def test_metrics_while_a_job_runs_and_after(client, sample_model_zip):
    routes = route_templates(client)
    before = scrape(client)
    uploaded_before = value(before, "squeezer_upload_bytes_total")
    model = upload(client, sample_model_zip)
    job = {
        "model": {"artifact_id": model["id"]},
        "dataset": {"sample": "digits"},
        "method": "lwct",
        "accuracy_target": {"max_drop": 5.0},
        "options": {"lwct": LONG_OPTIONS},
    }
    submitted = client.post("/v1/jobs", json=job)
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["id"]
    client.get(f"/v1/jobs/{job_id}")
    client.get(f"/v1/no-such-thing/{job_id}")

    running = wait_for_scrape(
        client, lambda f: value(f, "squeezer_jobs", status="running", method="lwct") >= 1, timeout_s=180
    )
    assert API_FAMILIES <= running.keys(), API_FAMILIES - running.keys()
    assert value(running, "squeezer_worker_busy") == 1
    assert value(running, "squeezer_upload_bytes_total") - uploaded_before == model["size_bytes"]
    assert value(running, "squeezer_submission_checks_total", outcome="passed") >= 1
    assert value(running, "squeezer_submission_check_duration_seconds_count", outcome="passed") >= 1
    assert value(running, "squeezer_http_requests_total", method="GET", route="/v1/jobs/{job_id}", status="200") >= 1
    assert value(running, "squeezer_http_requests_total", route="unmatched", status="404") >= 1
    assert value(running, "squeezer_http_request_duration_seconds_count", method="POST", route="/v1/jobs") >= 1
    assert_labels_bounded(running, [job_id, model["id"], "no-such-thing"], routes)

    deadline = time.monotonic() + 180
    while client.get(f"/v1/jobs/{job_id}").json()["progress"]["stage"] in ("queued", "intake"):  # one stage done
        assert time.monotonic() < deadline, "the job never got past its intake"
        time.sleep(0.3)
    assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
    done = wait_for_scrape(
        client,
        lambda f: (
            value(f, "squeezer_jobs", status="cancelled", method="lwct") >= 1
            and value(f, "squeezer_job_duration_seconds_count", method="lwct", outcome="cancelled") >= 1
        ),
    )
    assert value(done, "squeezer_worker_busy") == 0
    assert value(done, "squeezer_jobs", status="running") == 0
    assert value(done, "squeezer_job_stage_duration_seconds_count", method="lwct", stage="intake") >= 1
    assert_labels_bounded(done, [job_id, model["id"], "no-such-thing"], routes)


@pytest.mark.slow
def test_queue_depth_counts_the_queued_jobs(queued_client, sample_model_zip):
    model = upload(queued_client, sample_model_zip)
    job = {"model": {"artifact_id": model["id"]}, "dataset": {"sample": "digits"}, "method": "int8"}
    for _ in range(2):
        assert queued_client.post("/v1/jobs", json=job).status_code == 202
    families = wait_for_scrape(queued_client, lambda f: value(f, "squeezer_queue_depth") == 2, timeout_s=30)
    assert value(families, "squeezer_jobs", status="queued", method="int8") == 2


@pytest.mark.parametrize("header", [None, "Bearer wrong-token", "Basic c2VjcmV0", "metrics-s3cret"])
def test_the_token_is_required_when_set(api_settings, header):
    settings = api_settings.model_copy(update={"metrics_token": SecretStr("metrics-s3cret")})
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        refused = client.get("/metrics", headers={"Authorization": header} if header else {})
        assert refused.status_code == 401
        assert refused.json()["type"].endswith("/unauthorized")
        assert "metrics-s3cret" not in refused.text
        allowed = client.get("/metrics", headers={"Authorization": "Bearer metrics-s3cret"})
        assert allowed.status_code == 200
        assert "squeezer_jobs" in {family.name for family in text_string_to_metric_families(allowed.text)}


def test_metrics_is_open_without_a_token_and_not_in_the_schema(client):
    assert client.get("/metrics").status_code == 200
    assert "/metrics" not in client.get("/openapi.json").json()["paths"]


def test_every_answer_carries_a_request_id(client):
    given = client.get("/healthz", headers={"X-Request-ID": "trace-1.2_3"})
    assert given.headers["x-request-id"] == "trace-1.2_3"
    for unsafe in ("has space", "x" * 129, "semi;colon"):
        answer = client.get("/healthz", headers={"X-Request-ID": unsafe})
        assert answer.headers["x-request-id"] != unsafe
        assert len(answer.headers["x-request-id"]) == 32
    refused = client.get("/v1/jobs/job_missing")
    assert refused.status_code == 404 and refused.headers["x-request-id"]


def test_webhook_deliveries_are_counted_by_outcome(client):
    """A receiver the SSRF guard refuses at delivery: each attempt fails and is retried, counted as "retry"."""
    before = value(scrape(client), "squeezer_webhook_deliveries_total", outcome="retry")
    with client.app.state.session_factory() as session:
        endpoint = WebhookEndpoint(
            tenant="default", url="https://10.0.0.1/hook", events=["job.queued"], secret="whsec_" + "QUJD" * 8
        )
        session.add(endpoint)
        session.commit()
    job_id = insert_job(client, "default")
    families = wait_for_scrape(
        client, lambda f: value(f, "squeezer_webhook_deliveries_total", outcome="retry") > before, timeout_s=30
    )
    assert_labels_bounded(families, [job_id, endpoint.id], route_templates(client))


def test_several_api_processes_answer_for_all_in_multiprocess_mode(postgres_url, tmp_path):
    """Two `squeezer api` processes sharing PROMETHEUS_MULTIPROC_DIR: requests one of them answered are in the other's
    scrape."""
    shared = tmp_path / "prometheus"
    shared.mkdir()
    env = {
        **os.environ,
        "SQUEEZER_DATABASE_URL": postgres_url,
        "SQUEEZER_DATA_DIR": str(tmp_path / "data"),
        "PROMETHEUS_MULTIPROC_DIR": str(shared),
    }
    squeezer = str(Path(sys.executable).with_name("squeezer"))
    ports = [free_port(), free_port()]
    processes = [
        start([squeezer, "api", "--no-auth", "--host", "127.0.0.1", "--port", str(port)], env, tmp_path / f"{port}.log")
        for port in ports
    ]
    try:
        first, second = (httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) for port in ports)
        for client in (first, second):
            wait_until(
                lambda client=client: client.get("/healthz").status_code == 200,
                180,
                "the API",
                0.3,
                not_yet=(httpx.TransportError,),
            )
        for _ in range(5):
            assert first.get("/v1/jobs").status_code == 200
        answer = second.get("/metrics")
        assert answer.status_code == 200
        families = {family.name: family.samples for family in text_string_to_metric_families(answer.text)}
        assert value(families, "squeezer_http_requests_total", method="GET", route="/v1/jobs", status="200") == 5
        assert len(families["squeezer_queue_depth"]) == 1
    finally:
        for process in processes:
            stop(process)


def test_a_scrape_answers_without_the_database(tmp_path):
    settings = Settings(data_dir=tmp_path, database_url=f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/none")
    with TestClient(create_app(settings, dispatcher=CeleryDispatcher("redis://127.0.0.1:1/0"))) as client:
        families = scrape(client)
    assert "squeezer_http_requests" in families and "squeezer_jobs" not in families
