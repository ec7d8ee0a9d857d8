"""Job endpoints with a broker no worker reads (jobs stay queued), and one flow through the in-process worker."""

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from squeezer.api.app import create_app
from squeezer.api.jobs.schemas import JobCreate, JobSummary
from squeezer.cli.service_commands import download_results
from squeezer.store.artifacts import stored_bytes
from squeezer.store.job_spec import MAX_METADATA_BYTES, json_size
from squeezer.store.jobs import claim_job, finish_job
from squeezer.store.models import DEFAULT_TENANT, Artifact, BlobChunk, Job, JobEvent
from squeezer.store.statuses import JobStatus
from squeezer.worker.dispatch import CeleryDispatcher
from tests.api.conftest import FLOW_OPTIONS, assert_problem, tiny_job, upload
from tests.api.jobs.bounds import CASES
from tests.helpers import final_job
from tests.hostile.corpus import upsampler_onnx


@pytest.fixture
def model_id(queued_client, sample_model_zip) -> str:
    return upload(queued_client, sample_model_zip)["id"]


@pytest.mark.slow
def test_create_job_answers_202_with_location_and_etag(queued_client, model_id):
    response = queued_client.post("/v1/jobs", json=tiny_job(model_id, metadata={"team": "vision"}))
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["status"] == "queued" and job["attempts"] == 0
    assert response.headers["location"] == f"/v1/jobs/{job['id']}" == job["links"]["self"]
    assert job["spec"]["metadata"] == {"team": "vision"}


def test_unknown_artifact_is_a_422_problem(queued_client):
    body = assert_problem(
        queued_client.post("/v1/jobs", json=tiny_job("art_missing")),
        422,
        "artifact_not_found",
    )
    assert "art_missing" in body["detail"]


@pytest.mark.slow
def test_unusable_model_is_refused_before_queueing(queued_client):
    bogus = queued_client.post("/v1/artifacts", files={"file": ("model.onnx", b"not an onnx file")}).json()
    body = assert_problem(queued_client.post("/v1/jobs", json=tiny_job(bogus["id"])), 422, "invalid_model")
    assert body["detail"]
    assert queued_client.get("/v1/jobs").json()["data"] == []


@pytest.mark.slow
def test_idempotency_key_same_body_same_job_other_body_422(queued_client, model_id):
    headers = {"Idempotency-Key": "nightly-42"}
    first = queued_client.post("/v1/jobs", json=tiny_job(model_id), headers=headers)
    again = queued_client.post("/v1/jobs", json=tiny_job(model_id), headers=headers)
    assert (first.status_code, again.status_code) == (202, 200)
    assert first.json()["id"] == again.json()["id"]
    other = tiny_job(model_id, accuracy_target={"max_drop": 2.0, "drop_type": "absolute"})
    assert_problem(
        queued_client.post("/v1/jobs", json=other, headers=headers),
        422,
        "idempotency_key_reused",
    )
    assert len(queued_client.get("/v1/jobs").json()["data"]) == 1


def test_etag_answers_304_until_the_job_changes(queued_client, model_id):
    job = queued_client.post("/v1/jobs", json=tiny_job(model_id)).json()
    first = queued_client.get(f"/v1/jobs/{job['id']}")
    tag = first.headers["etag"]
    assert tag == f'"{job["id"]}-1"'
    assert queued_client.get(f"/v1/jobs/{job['id']}", headers={"If-None-Match": tag}).status_code == 304
    queued_client.post(f"/v1/jobs/{job['id']}/cancel")
    changed = queued_client.get(f"/v1/jobs/{job['id']}", headers={"If-None-Match": tag})
    assert changed.status_code == 200 and changed.headers["etag"] != tag


@pytest.mark.slow
def test_cancel_of_a_queued_job_is_final_and_idempotent(queued_client, model_id):
    job = queued_client.post("/v1/jobs", json=tiny_job(model_id)).json()
    cancelled = queued_client.post(f"/v1/jobs/{job['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    again = queued_client.post(f"/v1/jobs/{job['id']}/cancel")
    assert again.status_code == 200 and again.json()["status"] == "cancelled"
    assert again.headers["etag"] == cancelled.headers["etag"]
    assert_problem(queued_client.post("/v1/jobs/job_nope/cancel"), 404, "not_found")
    assert_problem(queued_client.get(f"/v1/jobs/{job['id']}/report"), 404, "result_not_found")
    assert_problem(queued_client.get(f"/v1/jobs/{job['id']}/report.html"), 404, "result_not_found")


@pytest.mark.slow
def test_list_pages_newest_first_with_status_filter(queued_client, model_id):
    ids = [queued_client.post("/v1/jobs", json=tiny_job(model_id)).json()["id"] for _ in range(3)]
    queued_client.post(f"/v1/jobs/{ids[0]}/cancel")
    first = queued_client.get("/v1/jobs", params={"limit": 2}).json()
    assert [job["id"] for job in first["data"]] == ids[:0:-1] and first["has_more"]
    second = queued_client.get("/v1/jobs", params={"limit": 2, "after": first["data"][-1]["id"]}).json()
    assert [job["id"] for job in second["data"]] == [ids[0]] and not second["has_more"]
    assert [job["id"] for job in queued_client.get("/v1/jobs", params={"status": "cancelled"}).json()["data"]] == [
        ids[0]
    ]
    assert_problem(queued_client.get("/v1/jobs", params={"limit": 0}), 422, "validation_error")


@pytest.mark.slow
def test_job_flow_through_the_in_process_worker(client, sample_model_zip, tmp_path):
    model_id = upload(client, sample_model_zip)["id"]
    job = final_job(client, client.post("/v1/jobs", json=tiny_job(model_id, options=FLOW_OPTIONS)).json()["id"])
    assert job["status"] == "succeeded", job
    events = client.get(f"/v1/jobs/{job['id']}/events", params={"limit": 2}).json()
    assert len(events["data"]) == 2 and events["has_more"]
    rest = client.get(
        f"/v1/jobs/{job['id']}/events",
        params={"after": str(events["data"][-1]["id"]), "limit": 100},
    ).json()
    assert rest["data"][0]["id"] > events["data"][-1]["id"]
    names = {item["name"] for item in client.get(f"/v1/jobs/{job['id']}/artifacts").json()}
    assert {"model.sqz", "model.onnx", "model.zip", "report.json", "report.html"} <= names
    report = client.get(f"/v1/jobs/{job['id']}/report").json()
    page = client.get(client.get(f"/v1/jobs/{job['id']}").json()["links"]["report_html"])
    assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.headers["content-security-policy"].startswith("default-src 'none'")
    assert (
        page.headers["content-disposition"].startswith("inline") and f"{report['accuracy_drop']:.2f} pts" in page.text
    )
    # `squeezer jobs download` fetches every result file, report.html included, byte for byte
    downloaded = {path.name: path for path in download_results(client, job["id"], tmp_path / "results")}
    assert set(downloaded) == names and downloaded["report.html"].read_bytes() == page.content
    assert report["target_met"] == job["target_met"]
    packed = client.get(f"/v1/jobs/{job['id']}/artifacts/model.sqz")
    assert packed.status_code == 200 and len(packed.content) == report["compressed"]["size_bytes"]
    assert_deleted_with_its_results(client, job["id"], model_id)


def assert_deleted_with_its_results(client, job_id: str, model_id: str) -> None:
    """DELETE removes the job, its events and its result files (rows and bytes); the tenant's stored bytes drop by
    exactly their sizes and the spec's; the upload it read stays."""
    sessions = client.app.state.session_factory
    results = {item["artifact_id"]: item["size_bytes"] for item in client.get(f"/v1/jobs/{job_id}/artifacts").json()}
    with sessions() as session:
        before = stored_bytes(session, DEFAULT_TENANT)
        spec_bytes = session.get(Job, job_id).spec_bytes
    assert client.delete(f"/v1/jobs/{job_id}").status_code == 204
    assert_problem(client.get(f"/v1/jobs/{job_id}/events"), 404, "not_found")
    with sessions() as session:
        assert stored_bytes(session, DEFAULT_TENANT) == before - sum(results.values()) - spec_bytes
        assert session.scalar(select(func.count()).select_from(JobEvent).where(JobEvent.job_id == job_id)) == 0
        gone = select(func.count()).select_from(BlobChunk).where(BlobChunk.artifact_id.in_(results))
        assert session.scalar(gone) == 0 and not session.scalars(select(Artifact).where(Artifact.id.in_(results))).all()
    assert client.get(f"/v1/artifacts/{model_id}").status_code == 200


def test_every_bound_of_the_job_is_a_422_problem_naming_the_field_and_bound(queued_client):
    """One value just past each bound of the job schema (tests/api/jobs/bounds.py walks it) answers 422, and the
    problem's errors locate the field and state the bound; nothing is queued."""
    unnamed = []
    for case in CASES:
        body = assert_problem(queued_client.post("/v1/jobs", json=case.body(case.over)), 422, "validation_error")
        if not any(case.names(error) for error in body["errors"]):
            unnamed.append((case.name, body["detail"]))
    assert not unnamed
    assert queued_client.get("/v1/jobs").json()["data"] == []


@pytest.mark.slow
def test_a_3000_level_grid_16_kib_of_metadata_plus_one_byte_and_nan_are_refused(queued_client, model_id):
    grid = tiny_job(model_id, options={"lwct": {"sparsity_grid": [0.5] * 3000}})
    detail = assert_problem(queued_client.post("/v1/jobs", json=grid), 422, "validation_error")["detail"]
    assert "options.lwct.sparsity_grid" in detail and "at most 64 items" in detail
    padding = MAX_METADATA_BYTES - json_size({"k": ""})
    too_much = tiny_job(model_id, metadata={"k": "x" * (padding + 1)})
    detail = assert_problem(queued_client.post("/v1/jobs", json=too_much), 422, "validation_error")["detail"]
    assert detail == "body.metadata: Value error, is 16,385 bytes as JSON; the limit is 16,384 bytes"
    assert queued_client.post("/v1/jobs", json=tiny_job(model_id, metadata={"k": "x" * padding})).status_code == 202
    for field in ('"options": {"time_limit_s": NaN}', '"metadata": {"k": Infinity}'):  # Python's JSON reads them
        body = f'{{"model": {{"artifact_id": "{model_id}"}}, "dataset": {{"sample": "digits"}}, {field}}}'
        response = queued_client.post("/v1/jobs", content=body, headers={"content-type": "application/json"})
        assert_problem(response, 422, "validation_error")


@pytest.mark.slow
def test_a_tiny_model_past_the_memory_budget_is_refused_naming_the_setting(queued_client, tmp_path):
    """324 bytes of ONNX that pass the two-sample check, but blow each digit up 128× per side: about 18 GiB at the
    evaluation batch (all 360 validation samples)."""
    model = upload(queued_client, upsampler_onnx(tmp_path / "up.onnx"))
    detail = assert_problem(queued_client.post("/v1/jobs", json=tiny_job(model["id"])), 422, "job_too_large")["detail"]
    assert "evaluation at batch 360" in detail and "raise SQUEEZER_JOB_MEMORY_BYTES" in detail
    assert queued_client.get("/v1/jobs").json()["data"] == []


@pytest.mark.slow
def test_lists_carry_summaries_without_specs(queued_client, model_id):
    metadata = {"notes": "n" * 10_000}
    job = queued_client.post("/v1/jobs", json=tiny_job(model_id, metadata=metadata)).json()
    listed = queued_client.get("/v1/jobs")
    (summary,) = listed.json()["data"]
    assert set(summary) == set(JobSummary.model_fields) and "spec" not in summary
    assert {key: job[key] for key in summary} == summary
    assert "n" * 100 not in listed.text and len(listed.content) < 2000
    assert queued_client.get(f"/v1/jobs/{job['id']}").json()["spec"]["metadata"] == metadata


@pytest.mark.slow
def test_only_final_jobs_can_be_deleted(queued_client, model_id):
    job_id = queued_client.post("/v1/jobs", json=tiny_job(model_id)).json()["id"]
    sessions = queued_client.app.state.session_factory
    assert_problem(queued_client.delete(f"/v1/jobs/{job_id}"), 409, "job_not_final")
    with sessions() as session:
        assert claim_job(session, job_id, "test-worker") is not None
    body = assert_problem(queued_client.delete(f"/v1/jobs/{job_id}"), 409, "job_not_final")
    assert "running" in body["detail"]
    with sessions() as session:
        assert finish_job(session, job_id, "test-worker", JobStatus.FAILED, error_code="x", error_message="x")
    deleted = queued_client.delete(f"/v1/jobs/{job_id}")
    assert deleted.status_code == 204 and deleted.content == b""
    assert_problem(queued_client.get(f"/v1/jobs/{job_id}"), 404, "not_found")
    assert_problem(queued_client.get(f"/v1/jobs/{job_id}/events"), 404, "not_found")
    assert_problem(queued_client.delete(f"/v1/jobs/{job_id}"), 404, "not_found")
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(JobEvent)) == 0


@pytest.mark.slow
def test_job_specs_count_toward_the_storage_quota_until_deleted(api_settings, redis_url, sample_model_zip):
    model_id = "art_" + "0" * 32  # as long as a real id (store.models.new_id)
    spec_bytes = json_size(JobCreate.model_validate(tiny_job(model_id)).model_dump(mode="json"))
    quota = sample_model_zip.stat().st_size + spec_bytes
    settings = api_settings.model_copy(update={"max_stored_bytes_per_tenant": quota})
    with TestClient(create_app(settings, dispatcher=CeleryDispatcher(redis_url))) as client:
        model_id = upload(client, sample_model_zip)["id"]
        assert len(model_id) == 36
        first = client.post("/v1/jobs", json=tiny_job(model_id))
        assert first.status_code == 202, first.text
        with client.app.state.session_factory() as session:
            assert stored_bytes(session, DEFAULT_TENANT) == quota
        assert_problem(client.post("/v1/jobs", json=tiny_job(model_id)), 413, "storage_quota_exceeded")
        client.post(f"/v1/jobs/{first.json()['id']}/cancel")
        assert client.delete(f"/v1/jobs/{first.json()['id']}").status_code == 204
        with client.app.state.session_factory() as session:
            assert stored_bytes(session, DEFAULT_TENANT) == quota - spec_bytes
        assert client.post("/v1/jobs", json=tiny_job(model_id)).status_code == 202


# (path, query, problem type): numbers in other scripts, past any bound, cursors that are not ids, unicode ids.
MALFORMED = [
    ("/v1/jobs/{job}/events", {"after": "²"}, "validation_error"),  # str.isdigit() is True, int() fails
    ("/v1/jobs/{job}/events", {"after": "٣"}, "validation_error"),  # Arabic-Indic three
    ("/v1/jobs/{job}/events", {"after": "99999999999999999999999"}, "invalid_cursor"),  # past bigint
    ("/v1/jobs/{job}/events", {"after": "job_1"}, "invalid_cursor"),
    ("/v1/jobs/{job}/events", {"after": "1 OR 1=1"}, "validation_error"),
    ("/v1/jobs/{job}/events", {"limit": "-1"}, "validation_error"),
    ("/v1/jobs/{job}/events", {"limit": str(10**30)}, "validation_error"),
    ("/v1/jobs/{job}/events", {"limit": "²"}, "validation_error"),
    ("/v1/jobs", {"limit": "٣"}, "validation_error"),
    ("/v1/jobs", {"limit": "5.0"}, "validation_error"),
    ("/v1/jobs", {"limit": "1_0"}, "validation_error"),
    ("/v1/jobs", {"after": "../../etc"}, "validation_error"),
    ("/v1/jobs", {"after": "j" * 65}, "validation_error"),
    ("/v1/jobs", {"after": "ジョブ"}, "validation_error"),
    ("/v1/jobs", {"status": "²"}, "validation_error"),
    ("/v1/jobs/ジョブ", {}, "not_found"),
    ("/v1/jobs/job_²/events", {}, "not_found"),
    ("/v1/jobs/٣/artifacts", {}, "not_found"),
    ("/v1/artifacts/ü" + "x" * 300, {}, "not_found"),
]


@pytest.mark.slow
def test_malformed_query_and_path_values_are_4xx_problems(queued_client, model_id):
    job_id = queued_client.post("/v1/jobs", json=tiny_job(model_id)).json()["id"]
    for path, params, code in MALFORMED:
        response = queued_client.get(path.format(job=job_id), params=params)
        assert response.status_code == (404 if code == "not_found" else 422), (path, params, response.text)
        assert_problem(response, response.status_code, code)
