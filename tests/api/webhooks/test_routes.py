"""/v1/webhooks: creation (the secret shown once), listing, deletion, rotation, the attempts log, tenancy and the
URL guard's refusals at creation. No message is sent here: the workers send them (tests/worker/test_webhooks.py)."""

import base64

import pytest
from standardwebhooks import Webhook

from squeezer.api.webhooks.schemas import MAX_URL_CHARS
from squeezer.store.models import WebhookDelivery
from tests.api.conftest import assert_problem
from tests.api.test_auth import bearer, insert_job, make_client

# A public address literal: the guard accepts it without a DNS look-up, and creating an endpoint connects to nothing.
PUBLIC_URL = "https://93.184.216.34/hooks/squeezer"


@pytest.fixture
def client(api_settings, redis_url):
    with make_client(api_settings, redis_url, max_webhooks_per_tenant=3) as client:
        yield client


def create(client, headers, url=PUBLIC_URL, events=("job.succeeded", "job.failed")):
    return client.post("/v1/webhooks", headers=headers, json={"url": url, "events": list(events)})


def test_created_endpoint_shows_its_secret_once_and_lists_without_it(client):
    alice = bearer(client, "alice")
    response = create(client, alice)
    assert response.status_code == 201, response.text
    created = response.json()
    assert set(created) == {"id", "url", "events", "secret", "created_at"}
    assert created["url"] == PUBLIC_URL and created["events"] == ["job.succeeded", "job.failed"]
    assert created["secret"].startswith("whsec_")
    assert len(base64.b64decode(created["secret"].removeprefix("whsec_"))) >= 24
    Webhook(created["secret"])  # the receivers' library takes it as it is

    listed = client.get("/v1/webhooks", headers=alice).json()
    assert [endpoint["id"] for endpoint in listed] == [created["id"]]
    assert "secret" not in listed[0]


def test_rotation_gives_a_new_secret_and_only_then(client):
    alice = bearer(client, "alice")
    created = create(client, alice).json()
    rotated = client.post(f"/v1/webhooks/{created['id']}/rotate-secret", headers=alice)
    assert rotated.status_code == 200, rotated.text
    assert rotated.json()["secret"].startswith("whsec_") and rotated.json()["secret"] != created["secret"]
    assert "secret" not in client.get("/v1/webhooks", headers=alice).json()[0]


def test_endpoints_belong_to_their_tenant(client):
    alice, bob = bearer(client, "alice"), bearer(client, "bob")
    endpoint_id = create(client, alice).json()["id"]
    assert client.get("/v1/webhooks", headers=bob).json() == []
    assert_problem(client.delete(f"/v1/webhooks/{endpoint_id}", headers=bob), 404, "not_found")
    assert_problem(client.post(f"/v1/webhooks/{endpoint_id}/rotate-secret", headers=bob), 404, "not_found")
    assert_problem(client.get(f"/v1/webhooks/{endpoint_id}/deliveries", headers=bob), 404, "not_found")
    assert len(client.get("/v1/webhooks", headers=alice).json()) == 1


def test_deleted_endpoint_is_gone_with_its_pending_messages(client):
    alice = bearer(client, "alice")
    endpoint_id = create(client, alice, events=["job.queued"]).json()["id"]
    insert_job(client, "alice")
    with client.app.state.session_factory() as session:
        assert session.query(WebhookDelivery).filter_by(endpoint_id=endpoint_id).count() == 1
    assert client.delete(f"/v1/webhooks/{endpoint_id}", headers=alice).status_code == 204
    with client.app.state.session_factory() as session:
        assert session.query(WebhookDelivery).filter_by(endpoint_id=endpoint_id).count() == 0
    assert client.get("/v1/webhooks", headers=alice).json() == []
    assert_problem(client.delete(f"/v1/webhooks/{endpoint_id}", headers=alice), 404, "not_found")


def test_deliveries_start_empty_and_refuse_a_cursor_that_is_not_a_number(client):
    alice = bearer(client, "alice")
    endpoint_id = create(client, alice).json()["id"]
    assert client.get(f"/v1/webhooks/{endpoint_id}/deliveries", headers=alice).json() == {"data": [], "has_more": False}
    assert_problem(client.get(f"/v1/webhooks/{endpoint_id}/deliveries?after=abc", headers=alice), 422, "invalid_cursor")


@pytest.mark.parametrize(
    "url",
    [
        "http://93.184.216.34/hook",  # plain http
        "https://127.0.0.1/hook",
        "https://localhost:8443/hook",  # a name that resolves to loopback
        "https://10.1.2.3/hook",
        "https://192.168.0.10/hook",
        "https://169.254.169.254/latest/meta-data",
        "https://[::1]/hook",
        "https://[fd00::1]/hook",
        "https://[::ffff:127.0.0.1]/hook",
        "https://224.0.0.1/hook",
        "https://user:pass@93.184.216.34/hook",
        "ftp://93.184.216.34/hook",
        "not a url",
    ],
)
def test_refused_urls_are_422_naming_the_url(client, url):
    body = assert_problem(create(client, bearer(client, "alice"), url=url), 422, "webhook_url_refused")
    assert body["errors"][0]["loc"] == ["body", "url"]
    assert client.get("/v1/webhooks", headers=bearer(client, "alice")).json() == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": "https://93.184.216.34/" + "a" * MAX_URL_CHARS, "events": ["job.queued"]}, "url"),
        ({"url": PUBLIC_URL, "events": []}, "events"),
        ({"url": PUBLIC_URL, "events": ["job.exploded"]}, "events"),
        ({"url": PUBLIC_URL, "events": ["job.queued"] * 7}, "events"),
        ({"url": PUBLIC_URL, "events": ["job.queued"], "extra": 1}, "extra"),
    ],
)
def test_bodies_past_a_bound_are_422_naming_the_field(client, body, field):
    response = client.post("/v1/webhooks", headers=bearer(client, "alice"), json=body)
    problem = assert_problem(response, 422, "validation_error")
    assert any(field in error["loc"] for error in problem["errors"]), problem


def test_endpoints_per_tenant_are_bounded(client):
    alice = bearer(client, "alice")
    for _ in range(3):
        assert create(client, alice).status_code == 201
    assert_problem(create(client, alice), 409, "webhook_quota_exceeded")
    assert create(client, bearer(client, "bob")).status_code == 201
