"""The API against a migrated PostgreSQL database with database blob storage and a real dispatcher.

`queued_client`: jobs go to a Redis broker that no worker reads, so they stay queued (cancel, pagination, ETag).
`client`: the in-process worker runs them (flow tests)."""

import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from squeezer.api.app import create_app
from squeezer.store.models import Artifact, BlobChunk
from squeezer.store.settings import Settings
from squeezer.worker.dispatch import CeleryDispatcher

MAX_UPLOAD_BYTES = 1024 * 1024
# A job that takes seconds: digits, one pruning level, one epoch per step on 300 samples, stages not stretched to
# the default 300 SGD steps (30 instead).
TINY_OPTIONS = {
    "lwct": {
        "sparsity": 0.5,
        "prune_epochs": 1,
        "epochs_per_step": 1,
        "max_train_samples": 300,
        "min_steps_per_stage": 30,
    }
}
# Tests of the service around a job (its statuses, events, results, webhooks, logs), not of what training achieves:
# the tiny job's steps (pruning, ternary steps accepted and rejected, the grid), each trained for two SGD steps, and no
# learning-rate range test: its method takes seconds where the tiny job's takes 20 s and more.
FLOW_OPTIONS = {
    "lwct": {
        **TINY_OPTIONS["lwct"],
        "prune_epochs": 0,
        "epochs_per_step": 0,
        "min_steps_per_stage": 2,
        "lr_search": False,
    }
}
# Tests that act on a job while it runs need one that lasts: the full sparsity grid, stages of 300 steps.
LONG_OPTIONS = {
    "sparsity": None,
    "prune_epochs": 2,
    "epochs_per_step": 2,
    "max_train_samples": 600,
    "min_steps_per_stage": 300,
}


def tiny_job(model_artifact_id: str, **overrides) -> dict:
    return {
        "model": {"artifact_id": model_artifact_id},
        "dataset": {"sample": "digits"},
        "method": "lwct",
        "accuracy_target": {"max_drop": 5.0, "drop_type": "absolute"},
        "options": TINY_OPTIONS,
        **overrides,
    }


@pytest.fixture
def api_settings(postgres_url, tmp_path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=postgres_url,
        storage_backend="database",
        storage_chunk_bytes=64 * 1024,
        max_upload_bytes=MAX_UPLOAD_BYTES,
        heartbeat_interval_s=0.5,
        worker_device="cpu",
    )


@pytest.fixture
def queued_client(api_settings, redis_url):
    dispatcher = CeleryDispatcher(redis_url)
    with TestClient(create_app(api_settings, dispatcher=dispatcher), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def client(api_settings):
    with TestClient(create_app(api_settings), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture(scope="session")
def sample_model_zip(tmp_path_factory) -> Path:
    from squeezer.core.samples import ensure_sample_model

    model_dir, _ = ensure_sample_model("digits")
    return Path(
        shutil.make_archive(
            str(tmp_path_factory.mktemp("model") / "lenet5-digits"),
            "zip",
            root_dir=model_dir,
        )
    )


def upload(client: TestClient, path: Path, kind: str = "model") -> dict:
    with path.open("rb") as file:
        response = client.post(
            "/v1/artifacts",
            data={"kind": kind},
            files={"file": (path.name, file, "application/zip")},
        )
    assert response.status_code == 201, response.text
    return response.json()


def stored_counts(client: TestClient) -> tuple[int, int]:
    """(artifact rows, blob chunks) in the app's database."""
    with client.app.state.session_factory() as session:
        return session.scalar(select(func.count()).select_from(Artifact)), session.scalar(
            select(func.count()).select_from(BlobChunk)
        )


def assert_problem(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["type"] == f"https://squeezer.dev/problems/{code}"
    assert body["status"] == status and body["title"]
    return body
