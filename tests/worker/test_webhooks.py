"""Webhook delivery end to end: a real receiver on loopback (allowed in these settings) checks every message's
signature with the `standardwebhooks` library. Jobs run on the embedded in-process worker (its webhook threads send
the messages) or, for the Celery path, a real webhooks worker process (`python -m squeezer.worker webhooks`)."""

import http.server
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from standardwebhooks import Webhook, WebhookVerificationError

from squeezer.api.app import create_app
from squeezer.store.models import DeliveryStatus, WebhookDelivery, WebhookEndpoint, utcnow
from squeezer.store.settings import Settings
from squeezer.worker.webhooks import TIMEOUT_S, retry_at
from tests.api.conftest import FLOW_OPTIONS, tiny_job, upload
from tests.api.test_auth import insert_job
from tests.helpers import final_job, wait_until
from tests.worker.conftest import REPO

WEBHOOK_SETTINGS = {
    "webhook_allowed_hosts": "127.0.0.1",
    "webhook_allow_http": True,
    "webhook_retry_base_s": 0.2,
    "webhook_retry_max_delay_s": 1.0,
}


@dataclass
class Received:
    path: str
    message_id: str
    body: dict
    headers: dict[str, str]


@dataclass
class Receiver:
    """An HTTP server on 127.0.0.1. Each path is an endpoint: /ok answers 204, /fail3 answers 500 to a message's
    first three attempts, /hang never answers (until the test ends). Every request's signature is verified with the
    endpoint's secrets (set once the endpoint is created); a request that fails verification is kept in `forged`."""

    secrets: dict[str, list[str]] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    forged: list[str] = field(default_factory=list)
    released: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: http.server.ThreadingHTTPServer | None = None

    def start(self) -> "Receiver":
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.handle(self, body)

            def log_message(self, *_):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def handle(self, request: http.server.BaseHTTPRequestHandler, body: bytes) -> None:
        headers = dict(request.headers.items())
        try:
            for secret in self.secrets[request.path]:
                payload = Webhook(secret).verify(body, headers)
        except (KeyError, WebhookVerificationError) as error:
            self.forged.append(f"{request.path}: {error!r}")
            request.send_response(400)
            request.end_headers()
            return
        with self.lock:
            self.received.append(Received(request.path, headers["webhook-id"], payload, headers))
            tries = sum(1 for got in self.received if got.message_id == headers["webhook-id"])
        if request.path == "/hang":
            self.released.wait(60)
        status = 500 if request.path == "/fail3" and tries <= 3 else 204
        request.send_response(status)
        request.end_headers()

    def events(self, path: str) -> list[str]:
        return [got.body["type"] for got in self.received if got.path == path]

    def stop(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    receiver = Receiver().start()
    yield receiver
    receiver.stop()


@pytest.fixture
def client(postgres_url, tmp_path):
    """The embedded mode on PostgreSQL: the in-process worker runs jobs and sends webhook messages."""
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=postgres_url,
        storage_backend="database",
        heartbeat_interval_s=0.5,
        worker_device="cpu",
        **WEBHOOK_SETTINGS,
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def add_endpoint(client: TestClient, receiver: Receiver, path: str, events: list[str]) -> str:
    response = client.post("/v1/webhooks", json={"url": receiver.url(path), "events": events})
    assert response.status_code == 201, response.text
    receiver.secrets[path] = [response.json()["secret"]]
    return response.json()["id"]


def deliveries(client: TestClient, endpoint_id: str) -> list[WebhookDelivery]:
    with client.app.state.session_factory() as session:
        return list(session.scalars(select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id)))


def all_sent(session_factory) -> bool:
    with session_factory() as session:
        statuses = set(session.scalars(select(WebhookDelivery.status)))
    return statuses == {DeliveryStatus.SUCCEEDED}


STATUS_EVENTS = ["job.queued", "job.running", "job.succeeded", "job.failed", "job.cancelled"]


@pytest.mark.slow
def test_each_transition_arrives_once_per_endpoint_signed_with_the_job_as_get_returns_it(
    client, receiver, sample_model_zip
):
    everything = add_endpoint(client, receiver, "/ok", STATUS_EVENTS)
    add_endpoint(client, receiver, "/ok-succeeded", ["job.succeeded"])
    deleted = add_endpoint(client, receiver, "/deleted", STATUS_EVENTS)
    assert client.delete(f"/v1/webhooks/{deleted}").status_code == 204

    job = client.post("/v1/jobs", json=tiny_job(upload(client, sample_model_zip)["id"], options=FLOW_OPTIONS)).json()
    final_job(client, job["id"])
    final = client.get(f"/v1/jobs/{job['id']}").json()
    assert final["status"] == "succeeded", final
    wait_until(lambda: all_sent(client.app.state.session_factory) and len(receiver.received) == 4, 60, "every message")

    assert receiver.forged == []
    # Messages are sent in parallel and may arrive out of order; their timestamps give the order of the transitions.
    at_ok = [got for got in receiver.received if got.path == "/ok"]
    in_order = sorted(at_ok, key=lambda got: datetime.fromisoformat(got.body["timestamp"]))
    assert [got.body["type"] for got in in_order] == ["job.queued", "job.running", "job.succeeded"]
    assert receiver.events("/ok-succeeded") == ["job.succeeded"]
    assert receiver.events("/deleted") == []
    # Each message was sent once (every one succeeded at its first attempt) and its webhook-id is its own.
    assert all(delivery.attempts == 1 for delivery in deliveries(client, everything))
    assert len({got.message_id for got in receiver.received}) == 4
    for got in receiver.received:
        data = got.body["data"]
        assert data["id"] == job["id"] and set(data) == set(final)
        assert got.body["type"] == f"job.{data['status']}"
        assert got.body["timestamp"] and got.headers["webhook-timestamp"].isdigit()
    assert [got.body["data"] for got in receiver.received if got.body["type"] == "job.succeeded"] == [final, final]


def test_a_receiver_that_fails_three_times_gets_the_message_on_the_fourth_attempt_with_the_same_id(client, receiver):
    endpoint_id = add_endpoint(client, receiver, "/fail3", ["job.queued"])
    job_id = insert_job(client, "default")
    wait_until(
        lambda: all_sent(client.app.state.session_factory) and deliveries(client, endpoint_id), 60, "the fourth attempt"
    )

    assert receiver.forged == []
    (delivery,) = deliveries(client, endpoint_id)
    assert delivery.attempts == 4
    assert [got.message_id for got in receiver.received] == [delivery.id] * 4
    assert {got.body["data"]["id"] for got in receiver.received} == {job_id}
    page = client.get(f"/v1/webhooks/{endpoint_id}/deliveries").json()
    attempts = page["data"]
    assert [a["attempt"] for a in attempts] == [4, 3, 2, 1]  # newest first
    assert [a["status_code"] for a in attempts] == [204, 500, 500, 500]
    assert {a["message_id"] for a in attempts} == {delivery.id} and {a["event"] for a in attempts} == {"job.queued"}
    assert attempts[0]["next_retry_at"] is None and all(a["next_retry_at"] for a in attempts[1:])
    older = client.get(f"/v1/webhooks/{endpoint_id}/deliveries?limit=2&after={attempts[1]['id']}").json()
    assert [a["attempt"] for a in older["data"]] == [2, 1] and not older["has_more"]


@pytest.mark.slow
def test_a_receiver_that_hangs_holds_no_worker_and_its_attempt_times_out(client, receiver):
    hanging = add_endpoint(client, receiver, "/hang", ["job.queued"])
    add_endpoint(client, receiver, "/ok", ["job.queued", "job.cancelled"])
    job_id = insert_job(client, "default")
    wait_until(lambda: receiver.events("/ok") == ["job.queued"] and receiver.events("/hang"), 30, "both messages")
    # While the one receiver hangs, the other still gets the next event and the API still answers.
    assert client.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "cancelled"
    wait_until(lambda: receiver.events("/ok") == ["job.queued", "job.cancelled"], 30, "the next event")
    assert not any(delivery.attempts for delivery in deliveries(client, hanging))  # still hanging
    started = time.monotonic()
    attempts = wait_until(
        lambda: client.get(f"/v1/webhooks/{hanging}/deliveries").json()["data"], TIMEOUT_S + 30, "the timeout"
    )
    assert time.monotonic() - started < TIMEOUT_S + 5
    assert attempts[0]["error"] == "timeout" and attempts[0]["status_code"] is None
    assert attempts[0]["latency_ms"] >= TIMEOUT_S * 1000 * 0.9 and attempts[0]["next_retry_at"]


def test_a_rotated_secret_signs_with_both_secrets_during_the_grace_period(client, receiver):
    endpoint_id = add_endpoint(client, receiver, "/ok", ["job.queued"])
    old = receiver.secrets["/ok"][0]
    new = client.post(f"/v1/webhooks/{endpoint_id}/rotate-secret").json()["secret"]
    receiver.secrets["/ok"] = [new, old]  # each must verify the message on its own
    insert_job(client, "default")
    wait_until(lambda: receiver.events("/ok"), 30, "the message")
    assert receiver.forged == []
    assert len(receiver.received[0].headers["webhook-signature"].split(" ")) == 2


def test_a_webhooks_celery_worker_delivers(service, receiver):
    """The Celery path: the job's transition queues the message, a webhooks worker process sends it."""
    with service.ctx.session_factory() as session:
        endpoint = WebhookEndpoint(
            tenant="default", url=receiver.url("/ok"), events=["job.queued"], secret="whsec_" + "QUJD" * 8
        )
        session.add(endpoint)
        session.commit()
    receiver.secrets["/ok"] = [endpoint.secret]
    job_id = service.create(tiny_job("art_x"))  # no job worker: it stays queued
    env = {**service.env, "SQUEEZER_WEBHOOK_ALLOWED_HOSTS": "127.0.0.1", "SQUEEZER_WEBHOOK_ALLOW_HTTP": "1"}
    with (service.log_dir / "webhooks-worker.log").open("wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "squeezer.worker", "webhooks"],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    service.workers.append(worker)  # stopped with the service
    wait_until(lambda: all_sent(service.ctx.session_factory), 90, f"the message (worker log in {service.log_dir})")
    assert worker.poll() is None
    assert receiver.forged == []
    assert [(got.body["type"], got.body["data"]["id"]) for got in receiver.received] == [("job.queued", job_id)]


def test_a_url_refused_at_delivery_is_logged_and_never_connected_to(client):
    """A host that resolved to a public address when the endpoint was made may resolve elsewhere later: each attempt
    checks again, and refuses before connecting."""
    with client.app.state.session_factory() as session:
        endpoint = WebhookEndpoint(
            tenant="default", url="https://10.0.0.1/hook", events=["job.queued"], secret="whsec_" + "QUJD" * 8
        )
        session.add(endpoint)
        session.commit()
    insert_job(client, "default")
    attempts = wait_until(lambda: client.get(f"/v1/webhooks/{endpoint.id}/deliveries").json()["data"], 30, "an attempt")
    assert attempts[0]["error"].startswith("refused: the host 10.0.0.1 resolves to 10.0.0.1")
    assert attempts[0]["status_code"] is None and attempts[0]["latency_ms"] == 0.0


def test_retries_back_off_exponentially_with_jitter_until_the_retry_window_closes():
    settings = Settings(webhook_retry_base_s=5, webhook_retry_max_delay_s=3600, webhook_retry_for_s=86_400)
    now = utcnow()
    fresh = WebhookDelivery(created_at=now, attempts=0)
    for attempts, delay in [(0, 5), (1, 10), (3, 40), (20, 3600)]:
        fresh.attempts = attempts
        waits = {(retry_at(settings, fresh, now) - now).total_seconds() for _ in range(20)}
        assert all(delay / 2 <= wait <= delay for wait in waits) and len(waits) > 1  # jittered
    old = WebhookDelivery(created_at=now - timedelta(seconds=86_400 - 1), attempts=0)
    assert retry_at(settings, old, now) is None  # the next try would fall past the window: the message fails
