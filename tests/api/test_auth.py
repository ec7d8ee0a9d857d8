"""API keys and tenancy against PostgreSQL: 401 without a valid key, another tenant's ids answer 404, quotas 429/413."""

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from squeezer.api.app import create_app
from squeezer.store.jobs import create_job
from squeezer.store.keys import KeyCache, create_key, revoke_key
from squeezer.store.models import Artifact
from squeezer.worker.dispatch import CeleryDispatcher
from tests.api.conftest import assert_problem, tiny_job
from tests.helpers import ManualClock


def make_client(api_settings, redis_url, **overrides) -> TestClient:
    """An auth-on app whose jobs stay queued (no worker reads its broker)."""
    settings = api_settings.model_copy(update={"auth": True, **overrides})
    app = create_app(settings, dispatcher=CeleryDispatcher(redis_url))
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture
def auth_client(api_settings, redis_url):
    with make_client(api_settings, redis_url) as client:
        yield client


def bearer(client: TestClient, tenant: str) -> dict[str, str]:
    with client.app.state.session_factory() as session:
        _, key = create_key(session, tenant)
    return {"Authorization": f"Bearer {key}"}


def upload_bytes(client: TestClient, headers: dict, size: int = 600):
    return client.post("/v1/artifacts", headers=headers, files={"file": ("model.onnx", b"x" * size)})


def insert_job(client: TestClient, tenant: str, model_id: str = "art_x") -> str:
    """A queued job inserted through the store: tenancy, not the engine's input checks, is under test here."""
    with client.app.state.session_factory() as session:
        job, _ = create_job(
            session, tenant=tenant, spec=tiny_job(model_id), idempotency_key=None, request_hash=None, max_attempts=3
        )
    return job.id


def test_missing_malformed_and_unknown_keys_are_401_problems(auth_client):
    for headers in ({}, {"Authorization": "Basic dXNlcjpwYXNz"}, {"Authorization": "Bearer sqz_not-a-key"}):
        response = auth_client.get("/v1/jobs", headers=headers)
        assert_problem(response, 401, "unauthorized")
        assert response.headers["www-authenticate"] == "Bearer"
    assert auth_client.get("/healthz").status_code == 200


def revoke_after_use(client: TestClient) -> dict[str, str]:
    """Headers of a key that has just been used (so it is in the key cache) and then revoked."""
    with client.app.state.session_factory() as session:
        row, key = create_key(session, "acme", "ci")
    headers = {"Authorization": f"Bearer {key}"}
    assert client.get("/v1/jobs", headers=headers).status_code == 200
    with client.app.state.session_factory() as session:
        assert revoke_key(session, row.id, "acme")
        assert not revoke_key(session, row.id, "acme")
    return headers


def test_a_revoked_key_stops_working_within_the_key_cache_time(api_settings, redis_url):
    ttl, clock = 4.0, ManualClock()
    with make_client(api_settings, redis_url, api_key_cache_s=ttl) as client:
        client.app.state.key_cache = KeyCache(ttl, clock=clock)
        headers = revoke_after_use(client)
        clock.advance(ttl - 0.5)
        assert client.get("/v1/jobs", headers=headers).status_code == 200  # cached: trusted until the entry expires
        clock.advance(0.5)
        assert_problem(client.get("/v1/jobs", headers=headers), 401, "unauthorized")
        unknown = {"Authorization": "Bearer sqz_never-issued"}
        assert_problem(client.get("/v1/jobs", headers=unknown), 401, "unauthorized")  # refusals are not cached


def test_without_a_key_cache_a_revoked_key_is_refused_at_once(api_settings, redis_url):
    with make_client(api_settings, redis_url, api_key_cache_s=0) as client:
        assert_problem(client.get("/v1/jobs", headers=revoke_after_use(client)), 401, "unauthorized")


def test_another_tenants_ids_answer_404_and_lists_show_only_ones_own(auth_client):
    alice, bob = bearer(auth_client, "alice"), bearer(auth_client, "bob")
    artifact_id = upload_bytes(auth_client, alice).json()["id"]
    job_id = insert_job(auth_client, "alice", artifact_id)

    for method, path in (
        ("GET", f"/v1/artifacts/{artifact_id}"),
        ("GET", f"/v1/artifacts/{artifact_id}/content"),
        ("DELETE", f"/v1/artifacts/{artifact_id}"),
        ("GET", f"/v1/jobs/{job_id}"),
        ("GET", f"/v1/jobs/{job_id}/events"),
        ("GET", f"/v1/jobs/{job_id}/report"),
        ("GET", f"/v1/jobs/{job_id}/artifacts"),
        ("GET", f"/v1/jobs/{job_id}/artifacts/report.json"),
        ("POST", f"/v1/jobs/{job_id}/cancel"),
        ("DELETE", f"/v1/jobs/{job_id}"),
    ):
        body = assert_problem(auth_client.request(method, path, headers=bob), 404, "not_found")
        assert "alice" not in str(body)
    # Bob cannot use Alice's upload as his job's input either.
    assert_problem(auth_client.post("/v1/jobs", headers=bob, json=tiny_job(artifact_id)), 422, "artifact_not_found")
    assert auth_client.get("/v1/jobs", headers=bob).json()["data"] == []

    assert [job["id"] for job in auth_client.get("/v1/jobs", headers=alice).json()["data"]] == [job_id]
    assert auth_client.get(f"/v1/artifacts/{artifact_id}/content", headers=alice).content == b"x" * 600
    assert auth_client.get(f"/v1/jobs/{job_id}", headers=alice).json()["status"] == "queued"


@pytest.mark.slow
def test_unfinished_jobs_past_the_quota_are_a_429_problem(api_settings, redis_url):
    with make_client(api_settings, redis_url, max_concurrent_jobs_per_tenant=1) as client:
        alice = bearer(client, "alice")
        artifact_id = upload_bytes(client, alice).json()["id"]
        queued = insert_job(client, "alice", artifact_id)
        body = assert_problem(
            client.post("/v1/jobs", headers=alice, json=tiny_job(artifact_id)), 429, "job_quota_exceeded"
        )
        assert "limit 1" in body["detail"]
        # A finished job frees its place: the request gets past the quota to the input checks (the bytes are no model).
        assert client.post(f"/v1/jobs/{queued}/cancel", headers=alice).json()["status"] == "cancelled"
        assert_problem(client.post("/v1/jobs", headers=alice, json=tiny_job(artifact_id)), 422, "invalid_model")


def test_stored_bytes_past_the_quota_are_a_413_problem_and_nothing_is_kept(api_settings, redis_url):
    with make_client(api_settings, redis_url, max_stored_bytes_per_tenant=1000) as client:
        alice, bob = bearer(client, "alice"), bearer(client, "bob")
        first = upload_bytes(client, alice)
        assert first.status_code == 201
        with client.app.state.session_factory() as session:
            rows_before = session.scalar(select(func.count()).select_from(Artifact))
        assert_problem(upload_bytes(client, alice), 413, "storage_quota_exceeded")
        with client.app.state.session_factory() as session:
            assert session.scalar(select(func.count()).select_from(Artifact)) == rows_before
        assert upload_bytes(client, bob).status_code == 201  # quotas are per tenant
        assert client.delete(f"/v1/artifacts/{first.json()['id']}", headers=alice).status_code == 204
        assert upload_bytes(client, alice).status_code == 201


def test_openapi_declares_the_bearer_scheme(auth_client):
    document = auth_client.get("/openapi.json").json()
    scheme = document["components"]["securitySchemes"]["ApiKey"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    assert document["paths"]["/v1/jobs"]["post"]["security"] == [{"ApiKey": []}]
    assert "401" in document["paths"]["/v1/artifacts"]["post"]["responses"]
