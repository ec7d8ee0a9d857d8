"""The submission check runs in a disposable child in the engine's jail: through the real API, a check that runs out
of memory or time is a 422 problem, the API process's own peak memory does not move, and the API keeps serving.
Checks in progress count against the tenant's concurrent-job quota; queued jobs and compute per job have server-side
limits."""

import resource
import threading
import time

import pytest
from fastapi.testclient import TestClient

from squeezer.api.app import create_app
from squeezer.core.jail import Jail, JailUnavailable
from squeezer.core.sandbox import Sandbox, SandboxLimits
from squeezer.core.submission import PRELOAD
from squeezer.worker.dispatch import CeleryDispatcher
from tests.api.conftest import TINY_OPTIONS, assert_problem, upload

WEIGHTS_JOB = {"dataset": {"sample": "digits"}, "accuracy_target": {"max_drop": 100.0}, "options": TINY_OPTIONS}


def client_with(api_settings, redis_url, **overrides) -> TestClient:
    settings = api_settings.model_copy(update=overrides)
    return TestClient(create_app(settings, dispatcher=CeleryDispatcher(redis_url)), raise_server_exceptions=False)


@pytest.fixture
def digits_weights(tmp_path):
    from squeezer.core.samples import ensure_sample_model

    return ensure_sample_model("digits")[0] / "model.safetensors"


def child_address_space() -> int:
    """What a checking child starts with (the engine's imports), measured in the jail the API checks in."""
    limits = SandboxLimits(memory_bytes=64 << 30, cpu_s=60, wall_s=60)
    sandbox = Sandbox(limits, PRELOAD, Jail(packages=("squeezer.core", "tests")))
    return sandbox.run("tests.core.sandbox_targets:address_space", {}, limits)["bytes"]


@pytest.mark.slow
def test_a_check_that_runs_out_of_memory_is_a_422_and_the_api_stays_up(api_settings, redis_url, digits_weights):
    limit = child_address_space() + (768 << 20)
    with client_with(api_settings, redis_url, check_memory_bytes=limit) as client:
        weights = upload(client, digits_weights)["id"]
        # 84 × 4 M classes: 336 M parameters (1.3 GiB), under the parameter budget, over the check's memory
        architecture = {"name": "lenet5", "args": {"input_size": 8, "in_channels": 1, "num_classes": 4_000_000}}
        peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        response = client.post(
            "/v1/jobs", json={**WEIGHTS_JOB, "model": {"weights_artifact_id": weights, "architecture": architecture}}
        )
        body = assert_problem(response, 422, "input_check_out_of_memory")
        assert "SQUEEZER_CHECK_MEMORY_BYTES" in body["detail"]
        assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before < 256 << 10  # KiB
        assert client.get("/healthz").status_code == 200 and client.get("/v1/jobs").status_code == 200
        small = {"name": "lenet5", "args": {"input_size": 8, "in_channels": 1, "num_classes": 10}}
        ok = client.post(
            "/v1/jobs", json={**WEIGHTS_JOB, "model": {"weights_artifact_id": weights, "architecture": small}}
        )
        assert ok.status_code == 202, ok.text  # the same sandbox checks the next submission


def test_a_check_past_its_wall_clock_is_a_422(api_settings, redis_url, sample_model_zip):
    with client_with(api_settings, redis_url, check_timeout_s=0.05) as client:
        model = upload(client, sample_model_zip)["id"]
        response = client.post("/v1/jobs", json={**WEIGHTS_JOB, "model": {"artifact_id": model}})
        assert "SQUEEZER_CHECK_TIMEOUT_S" in assert_problem(response, 422, "input_check_timeout")["detail"]
        assert client.get("/healthz").status_code == 200


@pytest.mark.slow
def test_checks_in_progress_count_against_the_job_quota(api_settings, redis_url, sample_model_zip):
    with client_with(api_settings, redis_url, max_concurrent_jobs_per_tenant=1) as client:
        model = upload(client, sample_model_zip)["id"]
        job = {**WEIGHTS_JOB, "model": {"artifact_id": model}}
        first: list = []
        thread = threading.Thread(target=lambda: first.append(client.post("/v1/jobs", json=job)))
        thread.start()
        deadline = time.monotonic() + 30
        while not client.app.state.submission_checks.in_flight("default"):
            assert time.monotonic() < deadline and thread.is_alive(), "the first check never started"
            time.sleep(0.01)
        assert_problem(client.post("/v1/jobs", json=job), 429, "job_quota_exceeded")
        thread.join(120)
        assert first[0].status_code == 202, first[0].text
        assert_problem(client.post("/v1/jobs", json=job), 429, "job_quota_exceeded")  # now a queued job counts


@pytest.mark.slow
def test_queued_jobs_and_job_time_are_limited_per_tenant(api_settings, redis_url, sample_model_zip):
    with client_with(api_settings, redis_url, max_queued_jobs_per_tenant=1, max_job_time_limit_s=60) as client:
        model = upload(client, sample_model_zip)["id"]
        job = {**WEIGHTS_JOB, "model": {"artifact_id": model}}
        too_long = {**job, "options": {**TINY_OPTIONS, "time_limit_s": 61}}
        assert_problem(client.post("/v1/jobs", json=too_long), 422, "time_limit_too_long")
        assert client.post("/v1/jobs", json=job).status_code == 202
        assert_problem(client.post("/v1/jobs", json={**job, "metadata": {"n": 2}}), 429, "queued_job_quota_exceeded")


def test_the_worker_caps_a_job_without_a_time_limit():
    from squeezer.core.config import CompressConfig
    from squeezer.worker.runner import _capped

    assert _capped(CompressConfig(), 60).time_limit_s == 60
    assert _capped(CompressConfig(time_limit_s=30), 60).time_limit_s == 30
    assert _capped(CompressConfig(time_limit_s=90), 60).time_limit_s == 60
    assert _capped(CompressConfig(), None).time_limit_s is None


def test_an_api_without_a_jail_refuses_to_start_unless_allowed(api_settings, redis_url):
    with pytest.raises(JailUnavailable, match="SQUEEZER_ALLOW_UNJAILED_ENGINE"):
        client_with(api_settings, redis_url, jail="none")
    with client_with(api_settings, redis_url, jail="none", allow_unjailed_engine=True) as client:
        assert client.get("/healthz").status_code == 200
