"""Jobs on a real Celery worker run their engine in the jail: a child of the worker in bubblewrap, under the job uid;
one that runs out of memory there fails with `out_of_memory` and the worker goes on to the next job."""

import os
from pathlib import Path

import numpy as np
import pytest

from squeezer.core.jail import job_identity
from tests.helpers import wait_until
from tests.worker.conftest import running_processes, tiny_spec

# Enough for the tiny digits job (the engine's imports take about 3.5 GiB of address space), not for a data set of
# a gigabyte of float32 samples on top.
MEMORY_BYTES = 5 << 30
BIG_SAMPLES = 4_000_000


@pytest.fixture
def big_dataset(tmp_path) -> Path:
    """A valid digits-shaped data set whose training inputs take 1 GiB once loaded (a small file: zeros compress)."""
    x = np.zeros((BIG_SAMPLES, 1, 8, 8), np.float32)
    y = np.arange(BIG_SAMPLES, dtype=np.int64) % 10
    path = tmp_path / "big.npz"
    np.savez_compressed(path, x_train=x, y_train=y, x_val=x[:200], y_val=y[:200])
    return path


@pytest.mark.slow
def test_jobs_run_jailed_and_running_out_of_memory_fails_only_that_job(service, sample_model_zip, big_dataset):
    service.env["SQUEEZER_JOB_MEMORY_BYTES"] = str(MEMORY_BYTES)
    model_id = service.upload(sample_model_zip)
    oom_id = service.create(
        {**tiny_spec(model_id), "dataset": {"artifact_id": service.upload(big_dataset, kind="dataset")}}
    )
    next_id = service.create(tiny_spec(model_id))
    worker = service.start_worker()
    service.dispatcher.enqueue(oom_id)
    service.dispatcher.enqueue(next_id)
    jailed = _wait_for_jailed_engine(worker.pid)
    assert jailed["bwrap_children"], "the engine is not a bwrap child of the worker"
    assert jailed["engine_uids"] == {job_identity()[0] if os.geteuid() == 0 else os.geteuid()}
    failed = service.wait_final(oom_id, timeout_s=180)
    assert (failed.status, failed.error_code) == ("failed", "out_of_memory"), failed.error_message
    assert "SQUEEZER_JOB_MEMORY_BYTES" in failed.error_message
    after = service.wait_final(next_id, timeout_s=180)
    assert (after.status, after.worker_id) == ("succeeded", failed.worker_id)
    assert worker.poll() is None


def _wait_for_jailed_engine(worker_pid: int, timeout_s: float = 60) -> dict:
    """The worker's bwrap children and the uids of the jailed engine processes, once both are seen."""

    def seen() -> dict | None:
        processes = running_processes()
        bwrap = [pid for pid, (ppid, name, _, _) in processes.items() if ppid == worker_pid and name == "bwrap"]
        engines = {
            uid for ppid, _, uid, cmdline in processes.values() if b"squeezer.core.jail_entry" in cmdline and uid
        }
        return {"bwrap_children": bwrap, "engine_uids": engines} if bwrap and engines else None

    return wait_until(seen, timeout_s, f"a jailed engine under worker {worker_pid}")
