"""Job endpoints with a broker no worker reads (jobs stay queued), and one flow through the in-process worker."""

import time

import pytest

from cli.service_commands import download_results
from tests.api.conftest import assert_problem, tiny_job, upload


@pytest.fixture
def model_id(queued_client, sample_model_zip) -> str:
    return upload(queued_client, sample_model_zip)["id"]


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


def test_unusable_model_is_refused_before_queueing(queued_client):
    bogus = queued_client.post("/v1/artifacts", files={"file": ("model.onnx", b"not an onnx file")}).json()
    body = assert_problem(queued_client.post("/v1/jobs", json=tiny_job(bogus["id"])), 422, "invalid_model")
    assert body["detail"]
    assert queued_client.get("/v1/jobs").json()["data"] == []


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
    job = client.post("/v1/jobs", json=tiny_job(model_id)).json()
    deadline = time.monotonic() + 300
    while job["status"] not in ("succeeded", "failed", "cancelled") and time.monotonic() < deadline:
        time.sleep(0.5)
        job = client.get(f"/v1/jobs/{job['id']}").json()
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
