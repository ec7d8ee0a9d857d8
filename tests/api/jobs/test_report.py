"""GET /v1/jobs/{id}/report: the stored report.json served through the typed report (core.artifacts.report.Report)."""

import json

import pytest

from squeezer.core.artifacts.report import SCHEMA_VERSION, build_report
from squeezer.core.methods.results import ChannelLayerState, Trial
from squeezer.store.artifacts import store_artifact
from squeezer.store.jobs import claim_job, finish_job
from squeezer.store.models import DEFAULT_TENANT
from squeezer.store.statuses import JobStatus
from tests.api.conftest import assert_problem, tiny_job, upload

MEASURES = dict(accuracy=98.0, params=10, nonzero_params=10, macs=400, size_bytes=4000, latency_ms=1.5)
FILE = {"accuracy": 97.5, "runtime": "torch", "latency_ms": 1.0, "latency_ms_batch32": 9.0}


def a_report() -> dict:
    """Every key the pipeline writes, with figures of the right types."""
    layer = ChannelLayerState(
        name="conv1",
        type="Conv2d",
        shape=[6, 1, 5, 5],
        params=150,
        sparsity=0.5,
        representation="ternary",
        sigma=0.1,
        bits=1.6,
        significance_rank=0,
        accepted=True,
        channels_before=6,
        channels_kept=6,
        channels_removed=0,
        reason="kept: lwct removes no channels",
    )
    trial = Trial(step=1, stage="prune", layers=[], accuracy=97.5, compression_ratio=8.0, accepted=True, sparsity=0.5)
    return build_report(
        method="lwct",
        metric="top1",
        max_drop=1.0,
        drop_type="absolute",
        target_met=True,
        baseline=dict(MEASURES, latency_ms_batch32=20.0),
        compressed=dict(MEASURES, accuracy=97.5, nonzero_params=5, size_bytes=500, latency_ms_batch32=9.0),
        layers=[layer],
        trials=[trial],
        extras={
            "task": "classification",
            "dataset": {
                "name": "sample:digits",
                "task": "classification",
                "train_samples": 1437,
                "val_samples": 360,
                "input_shape": [1, 8, 8],
                "num_classes": 10,
            },
            "onnx_accuracy": 97.5,
            "artifacts": {
                "model.sqz": dict(FILE, bytes=500),
                "model/": dict(FILE, bytes=900),
                "model.onnx": dict(FILE, bytes=800, runtime="onnxruntime"),
            },
            "baseline_onnx": dict(FILE, bytes=4100, accuracy=98.0, runtime="onnxruntime"),
            "speed": {"seconds": 1.0},
            "deployable": "model.sqz",
            "settings": {"method": "lwct", "seed": 0},
            "stopped_early": None,
            "fine_tuning": {"lr": 0.05, "range_test": None, "retries": [], "stages": 2, "unrecovered_stages": []},
            "device": "cpu",
            "seed": 0,
            "preprocessing": None,
            "onnx_layer_names": {},
            "squeezer_version": "0.0.0",
            "duration_s": 3.5,
            "timings_s": {"load": 0.5, "method": 2.0, "write_and_verify": 0.5, "measure_speed": 0.5},
        },
    )


@pytest.fixture
def job_with_report(queued_client, sample_model_zip):
    """Finishes a queued job with `content` stored as its report.json; returns the job's id."""
    model_id = upload(queued_client, sample_model_zip)["id"]
    state = queued_client.app.state

    def finished(content: bytes) -> str:
        job_id = queued_client.post("/v1/jobs", json=tiny_job(model_id)).json()["id"]
        artifact = store_artifact(
            state.session_factory,
            state.blobs,
            tenant=DEFAULT_TENANT,
            kind="result",
            filename="report.json",
            content_type="application/json",
            chunks=[content],
            max_bytes=len(content),
        )
        with state.session_factory() as session:
            assert claim_job(session, job_id, "test-worker") is not None
            assert finish_job(session, job_id, "test-worker", JobStatus.SUCCEEDED, results={"report.json": artifact.id})
        return job_id

    return finished


def test_the_report_is_a_typed_schema_in_the_openapi_document(queued_client):
    document = queued_client.get("/openapi.json").json()
    answer = document["paths"]["/v1/jobs/{job_id}/report"]["get"]["responses"]["200"]
    assert answer["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Report"}
    schema = document["components"]["schemas"]["Report"]
    assert {"schema_version", "compression_ratio", "baseline", "layers", "trials", "artifacts"} <= set(
        schema["required"]
    )
    assert "objective" in schema["properties"] and "objective" not in schema["required"]  # auto's key only
    assert set(a_report()) <= set(schema["properties"])


@pytest.mark.slow
def test_a_stored_report_is_served_as_written(queued_client, job_with_report):
    report = a_report()
    assert report["schema_version"] == SCHEMA_VERSION == 1
    response = queued_client.get(f"/v1/jobs/{job_with_report(json.dumps(report).encode())}/report")
    assert response.status_code == 200, response.text
    assert response.json() == report


@pytest.mark.slow
def test_a_report_stored_without_a_schema_version_is_served_as_version_1(queued_client, job_with_report):
    report = a_report()
    del report["schema_version"]
    served = queued_client.get(f"/v1/jobs/{job_with_report(json.dumps(report).encode())}/report").json()
    assert served == {**report, "schema_version": 1}


@pytest.mark.slow
@pytest.mark.parametrize(
    "content",
    [
        json.dumps({key: value for key, value in a_report().items() if key != "compressed"}).encode(),
        json.dumps({**a_report(), "compression_ratio": "large"}).encode(),
        b'{"method": "lwct", "trials": [',
        b"[]",
    ],
    ids=["key missing", "wrong type", "truncated", "not an object"],
)
def test_a_stored_file_that_is_not_a_report_is_a_409_problem(queued_client, job_with_report, content):
    job_id = job_with_report(content)
    body = assert_problem(queued_client.get(f"/v1/jobs/{job_id}/report"), 409, "report_unreadable")
    assert f"/v1/jobs/{job_id}/artifacts/report.json" in body["detail"]
    assert queued_client.get(f"/v1/jobs/{job_id}/artifacts/report.json").content == content
