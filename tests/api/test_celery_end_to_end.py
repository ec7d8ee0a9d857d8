"""End to end in production shape: the API (uvicorn, Celery dispatcher) and a real Celery worker process on Redis and
PostgreSQL; `squeezer submit --wait`'s own code submits, polls, downloads."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from squeezer.api.app import create_app
from squeezer.cli.output import EXIT_TARGET_MET, EXIT_TARGET_MISSED
from squeezer.cli.service_commands import submit_and_wait
from squeezer.core.jail import usable_cores
from tests.api.conftest import TINY_OPTIONS

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_celery_worker_takes_a_job_from_queued_to_succeeded(
    api_settings, redis_url, sample_model_zip, tmp_path, serve_live
):
    settings = api_settings.model_copy(update={"broker_url": redis_url})
    env = {
        **os.environ,
        "SQUEEZER_DATABASE_URL": settings.database_url,
        "SQUEEZER_BROKER_URL": redis_url,
        "SQUEEZER_STORAGE_BACKEND": "database",
        "SQUEEZER_DATA_DIR": str(tmp_path / "worker"),
        # scripts/gpu-check.sh runs this test with the worker on CUDA.
        "SQUEEZER_WORKER_DEVICE": os.environ.get("SQUEEZER_TEST_WORKER_DEVICE", "cpu"),
        # One compute thread for the job: the API and this test share the machine with it (tests.worker.conftest).
        "SQUEEZER_JOBS_PER_MACHINE": str(usable_cores()),
        "OMP_NUM_THREADS": "1",
    }
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "squeezer.worker"],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        out = tmp_path / "results"
        code = submit_and_wait(
            serve_live(create_app(settings)),
            sample_model_zip,
            "sample:digits",
            out_dir=out,
            wait=True,
            max_drop=5.0,
            options=TINY_OPTIONS,
        )
        assert code in (EXIT_TARGET_MET, EXIT_TARGET_MISSED), (tmp_path / "worker.log").read_text()[-3000:]
        report = json.loads((out / "report.json").read_text())
        assert (code == EXIT_TARGET_MET) == report["target_met"]
        assert (out / "model.sqz").stat().st_size == report["compressed"]["size_bytes"]
        assert {"model.onnx", "model.zip"} <= {path.name for path in out.iterdir()}
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
