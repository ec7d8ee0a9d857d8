"""A Python client generated from our OpenAPI document by openapi-python-client drives a whole job against a live
server: upload, create, poll, download."""

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from squeezer.api.app import create_app
from tests.api.conftest import FLOW_OPTIONS
from tests.helpers import final_job

PACKAGE = "squeezer_generated_client"


@pytest.fixture
def live_server(api_settings, serve_live):
    app = create_app(api_settings)
    return app, serve_live(app)


def generate_client(document: dict, root: Path):
    spec = root / "openapi.json"
    spec.write_text(json.dumps(document))
    generator = Path(sys.executable).parent / "openapi-python-client"
    result = subprocess.run(
        [
            str(generator),
            "generate",
            "--path",
            str(spec),
            "--meta",
            "none",
            "--output-path",
            str(root / PACKAGE),
        ],
        check=False,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    sys.path.insert(0, str(root))
    try:
        return importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(root))


@pytest.mark.slow
def test_generated_client_uploads_submits_polls_and_downloads(live_server, sample_model_zip, tmp_path):
    app, base_url = live_server
    package = generate_client(app.openapi(), tmp_path)
    from squeezer_generated_client.api.artifacts import create_artifact
    from squeezer_generated_client.api.jobs import (
        create_job,
        download_job_artifact,
        get_job,
        get_job_report_html,
        list_job_artifacts,
    )
    from squeezer_generated_client.models import CreateArtifactArtifactUpload, JobCreate
    from squeezer_generated_client.types import File

    client = package.Client(base_url=base_url, raise_on_unexpected_status=True, timeout=None)
    with sample_model_zip.open("rb") as file:
        artifact = create_artifact.sync(
            client=client,
            body=CreateArtifactArtifactUpload(file=File(payload=file, file_name=sample_model_zip.name)),
        )
    assert artifact.size_bytes == sample_model_zip.stat().st_size

    body = JobCreate.from_dict(
        {
            "model": {"artifact_id": artifact.id},
            "dataset": {"sample": "digits"},
            "accuracy_target": {"max_drop": 5.0, "drop_type": "absolute"},
            "options": FLOW_OPTIONS,
        }
    )
    created = create_job.sync(client=client, body=body, idempotency_key="generated-client")
    final_job(client.get_httpx_client(), created.id)
    job = get_job.sync(client=client, job_id=created.id)
    assert job.status.value == "succeeded", job.to_dict()

    names = {item.name for item in list_job_artifacts.sync(client=client, job_id=job.id)}
    assert "model.sqz" in names
    packed = download_job_artifact.sync_detailed(client=client, job_id=job.id, name="model.sqz")
    assert packed.status_code == 200 and len(packed.content) == int(packed.headers["content-length"]) > 0
    page = get_job_report_html.sync_detailed(client=client, job_id=job.id)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.content.startswith(b"<!doctype html>") and b'data-key="/compressed/accuracy"' in page.content
