"""Every hostile input of the corpus goes through the real API on PostgreSQL; what gets past submission is run by the
real job function on the in-process worker. Each must end as its table row says: a 4xx problem with a stable `type`
at upload or submission, or a final job status with its `error.code`; and no pickle payload may ever run."""

import tempfile
from pathlib import Path

import pytest
from sqlalchemy import func, select

from squeezer.store.models import Job
from squeezer.worker.dispatch import make_dispatcher
from tests.api.conftest import TINY_OPTIONS, assert_problem, stored_counts
from tests.helpers import final_job
from tests.hostile.corpus import CASES, DIGITS_ARCH, Case, Inputs

CASES_BY_NAME = {case.name: case for case in CASES}
ESCAPE_TARGETS = [Path("/tmp/squeezer-escaped.txt"), Path("/tmp/squeezer-absolute.png"), Path("/tmp/pwned")]


def post_file(
    client, path: Path, kind: str, filename: str | None = None, content_type: str = "application/octet-stream"
):
    with path.open("rb") as file:
        return client.post(
            "/v1/artifacts", data={"kind": kind}, files={"file": (filename or path.name, file, content_type)}
        )


def job_body(case: Case, artifact_id: str, sample_model_id: str) -> dict:
    if case.role == "dataset":
        model, dataset = {"artifact_id": sample_model_id}, {"artifact_id": artifact_id}
    elif case.role == "weights":
        model, dataset = {"weights_artifact_id": artifact_id, "architecture": DIGITS_ARCH}, {"sample": "digits"}
    else:
        model, dataset = {"artifact_id": artifact_id}, {"sample": "digits"}
    return {"model": model, "dataset": dataset, "accuracy_target": {"max_drop": 100.0}, "options": TINY_OPTIONS}


def job_count(client) -> int:
    with client.app.state.session_factory() as session:
        return session.scalar(select(func.count()).select_from(Job))


def run_queued_jobs(client, job_id: str, timeout_s: float = 120) -> dict:
    """Starts the embedded worker (the real job function) on the app's database; it picks up every queued job."""
    app = client.app
    worker = make_dispatcher(app.state.settings, app.state.session_factory, app.state.blobs)
    worker.start()
    try:
        return final_job(client, job_id, timeout_s)
    finally:
        worker.stop(timeout_s=60)


@pytest.fixture
def inputs(tmp_path) -> Inputs:
    from squeezer.core.samples import ensure_sample_model

    return Inputs(dir=tmp_path, marker=tmp_path / "MARKER-unpickled", model_dir=ensure_sample_model("digits")[0])


def test_the_corpus_is_large_enough():
    assert len(CASES) >= 30 and len({case.name for case in CASES}) == len(CASES)


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_hostile_input_ends_as_its_row_says(case: Case, queued_client, inputs, sample_model_zip):
    client = queued_client
    path = case.build(inputs)
    response = post_file(client, path, "dataset" if case.role == "dataset" else "model", **case.upload)
    if case.stage == "upload":
        assert_problem(response, case.status, case.code)
        assert stored_counts(client) == (0, 0)
    else:
        assert response.status_code == 201, response.text
        download = client.get(f"/v1/artifacts/{response.json()['id']}/content")
        assert download.headers["content-disposition"].startswith("attachment;")  # never rendered inline
        assert download.headers["x-content-type-options"] == "nosniff"
        sample_model_id = post_file(client, sample_model_zip, "model").json()["id"]
        response = client.post("/v1/jobs", json=job_body(case, response.json()["id"], sample_model_id))
        if case.stage == "submit":
            body = assert_problem(response, case.status, case.code)
            assert "Traceback" not in body["detail"]
            assert tempfile.gettempdir() not in body["detail"] and str(inputs.dir) not in body["detail"]
            assert job_count(client) == 0
        else:
            assert response.status_code == 202, response.text
            job = run_queued_jobs(client, response.json()["id"])
            assert job["status"] == case.status, job
            assert (job["error"] or {}).get("code") == case.code, job
            assert tempfile.gettempdir() not in ((job["error"] or {}).get("message") or "")
    assert not inputs.marker.exists(), "a pickle payload ran"
    assert not any(target.exists() for target in ESCAPE_TARGETS), "an archive member escaped"
    assert client.get("/readyz").status_code == 200  # nothing else is affected


@pytest.mark.slow
@pytest.mark.parametrize("deleted", ["model", "dataset"])
def test_an_input_deleted_after_submission_fails_the_job_in_the_worker(
    deleted, queued_client, inputs, sample_model_zip
):
    """Passes submission, then the input disappears before a worker runs it: `failed` with `artifact_not_found`."""
    client = queued_client
    model_id = post_file(client, sample_model_zip, "model").json()["id"]
    data_path = CASES_BY_NAME["image_folder_unicode_long_names"].build(inputs)
    data_id = post_file(client, data_path, "dataset").json()["id"]
    body = {"model": {"artifact_id": model_id}, "dataset": {"artifact_id": data_id}, "options": TINY_OPTIONS}
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    assert client.delete(f"/v1/artifacts/{model_id if deleted == 'model' else data_id}").status_code == 204
    job = run_queued_jobs(client, response.json()["id"])
    assert (job["status"], job["error"]["code"]) == ("failed", "artifact_not_found")
    assert "Traceback" not in job["error"]["message"]


def test_request_bodies_are_bounded(queued_client):
    """JSON bodies past 1 MiB answer 413 and past 32 levels of nesting 400, before the parser runs."""
    nested = (
        '{"model": {"artifact_id": "x"}, "dataset": {"sample": "digits"}, "metadata": {"a": '
        + "[" * 5000
        + "]" * 5000
        + "}}"
    )
    assert_problem(
        queued_client.post("/v1/jobs", content=nested, headers={"content-type": "application/json"}),
        400,
        "json_too_deep",
    )
    huge = {"model": {"artifact_id": "x"}, "dataset": {"sample": "digits"}, "metadata": {"a": "x" * (2 << 20)}}
    assert_problem(queued_client.post("/v1/jobs", json=huge), 413, "payload_too_large")
    assert_problem(
        queued_client.post("/v1/jobs", content=b"{not json", headers={"content-type": "application/json"}),
        422,
        "validation_error",
    )
    assert_problem(
        queued_client.post("/v1/artifacts", content=b"{}", headers={"content-type": "application/json"}),
        415,
        "unsupported_media_type",
    )
    assert job_count(queued_client) == 0 and stored_counts(queued_client) == (0, 0)


def test_values_postgresql_cannot_store_are_422_problems(queued_client):
    """NUL characters (found by the contract fuzzer) reach PostgreSQL as ids; they are the client's error."""
    body = {"model": {"artifact_id": "art_\u0000"}, "dataset": {"sample": "digits"}}
    assert_problem(queued_client.post("/v1/jobs", json=body), 422, "validation_error")
    assert_problem(queued_client.get("/v1/jobs/job_%00"), 422, "validation_error")
    assert_problem(queued_client.get("/v1/artifacts/art_%00/content"), 422, "validation_error")
    empty_kind = queued_client.post("/v1/artifacts", data={"kind": ""}, files={"file": ("m.onnx", b"x")})
    assert_problem(empty_kind, 422, "validation_error")
    assert stored_counts(queued_client) == (0, 0)
