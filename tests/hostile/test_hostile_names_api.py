"""Hostile ONNX names through the real API, the jailed submission check and the worker, then on the user's side.

A payload that ran inside a jail could write nowhere the test can see, so these payloads give themselves away by
failing the run instead: a name that executed would raise (1/0) or end the engine (os._exit), and the job would fail.
The job must succeed, report the uploaded names as data, and its downloaded `model.sqz` must evaluate here, outside
any jail, as the report says."""

import pytest

from squeezer.core.pipeline import evaluate_file
from tests.core.intake.test_hostile_names import hostile, tiny_onnx
from tests.hostile.test_corpus import post_file, run_queued_jobs

RAISES = 'a"+str(1/0)+"'
EXITS = "'); import os; os._exit(3)#"
SQUEEZE = {"lwct": {"sparsity": 0.5, "prune_epochs": 0, "epochs_per_step": 0, "max_train_samples": 300}}


@pytest.fixture
def hostile_onnx(tmp_path):
    model = hostile(tiny_onnx(), EXITS, ("edges", "initializers", "io", "value_info"))
    for index, node in enumerate(model.graph.node):  # unique, so that onnxruntime would run the graph as uploaded
        node.name = f"{index}{RAISES}"
    path = tmp_path / "hostile.onnx"
    path.write_bytes(model.SerializeToString())
    return path


@pytest.mark.slow
def test_a_hostile_named_model_compresses_through_the_service_and_evaluates_on_the_users_side(
    queued_client, hostile_onnx, tmp_path
):
    client = queued_client
    model_id = post_file(client, hostile_onnx, "model").json()["id"]
    body = {
        "model": {"artifact_id": model_id},
        "dataset": {"sample": "digits"},
        "accuracy_target": {"max_drop": 100.0},
        "options": SQUEEZE,
    }
    response = client.post("/v1/jobs", json=body)  # the submission check converts the graph in its jail
    assert response.status_code == 202, response.text
    job = run_queued_jobs(client, response.json()["id"])
    assert job["status"] == "succeeded", job.get("error")
    report = client.get(f"/v1/jobs/{job['id']}/report").json()
    assert f"0{RAISES}" in report["onnx_layer_names"].values()  # the uploaded names, as data
    download = client.get(f"/v1/jobs/{job['id']}/artifacts/model.sqz")
    assert download.status_code == 200
    local = tmp_path / "model.sqz"
    local.write_bytes(download.content)
    assert evaluate_file(local, "sample:digits")["accuracy"] == report["compressed"]["accuracy"]
