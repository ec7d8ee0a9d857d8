"""A Celery worker's metrics port (SQUEEZER_WORKER_METRICS_PORT): scraped and parsed while the worker waits, runs a
job and after; the token is enforced; GPU memory is there exactly where nvidia-smi is."""

import os
import shutil
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from squeezer.worker.metrics import GpuMemoryCollector
from tests.servers import free_port
from tests.worker.conftest import tiny_spec

TOKEN = "worker-metrics-token"


def scrape(url: str) -> dict[str, list]:
    response = httpx.get(url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert response.status_code == 200, response.text
    return {family.name: family.samples for family in text_string_to_metric_families(response.text)}


def sample_value(families: dict[str, list], family: str, sample: str, **labels: str) -> float:
    return sum(s.value for s in families.get(family, []) if s.name == sample and labels.items() <= s.labels.items())


def wait_for_scrape(url: str, condition, what: str, timeout_s: float = 180) -> dict[str, list]:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            families = scrape(url)
            if condition(families):
                return families
        except httpx.TransportError:
            pass  # the worker is still starting
        assert time.monotonic() < deadline, f"the worker's metrics never showed {what}"
        time.sleep(0.2)


@pytest.mark.slow
def test_a_worker_serves_its_metrics_while_it_waits_runs_a_job_and_after(service, sample_model_zip):
    port = free_port()
    service.env.update(SQUEEZER_WORKER_METRICS_PORT=str(port), SQUEEZER_METRICS_TOKEN=TOKEN)
    url = f"http://127.0.0.1:{port}/metrics"
    service.start_worker()
    idle = wait_for_scrape(url, lambda f: "squeezer_worker_busy" in f, "its families")
    assert sample_value(idle, "squeezer_worker_busy", "squeezer_worker_busy") == 0
    assert {"squeezer_job_duration_seconds", "squeezer_job_stage_duration_seconds"} <= idle.keys()
    assert ("squeezer_gpu_memory_used_bytes" in idle) == (shutil.which("nvidia-smi") is not None)
    for refused in ({}, {"Authorization": "Bearer wrong"}):
        assert httpx.get(url, headers=refused, timeout=10).status_code == 401

    job_id = service.create(tiny_spec(service.upload(sample_model_zip)))
    service.dispatcher.enqueue(job_id)
    wait_for_scrape(url, lambda f: sample_value(f, "squeezer_worker_busy", "squeezer_worker_busy") == 1, "busy")
    job = service.wait_final(job_id, timeout_s=300)
    done = wait_for_scrape(url, lambda f: sample_value(f, "squeezer_worker_busy", "squeezer_worker_busy") == 0, "idle")
    count = "squeezer_job_duration_seconds_count"
    assert sample_value(done, "squeezer_job_duration_seconds", count, method="lwct", outcome=job.status) == 1
    stages = {
        s.labels["stage"]
        for s in done["squeezer_job_stage_duration_seconds"]
        if s.name.endswith("_count") and s.labels["outcome"] == job.status
    }
    assert {"intake", "baseline", "export"} <= stages, stages
    labels = {value for samples in done.values() for s in samples for value in s.labels.values()}
    assert not any(job_id in value for value in labels)


def test_gpu_memory_is_read_from_nvidia_smi(tmp_path, monkeypatch):
    """No GPU here: a stand-in nvidia-smi answers the query as the real one does (csv, noheader, nounits, MiB)."""
    fake = tmp_path / "nvidia-smi"
    fake.write_text('#!/bin/sh\nprintf "0, 1024, 81559\\n1, 0, 81559\\n"\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    families = {family.name: family.samples for family in GpuMemoryCollector().collect()}
    used = {s.labels["gpu"]: s.value for s in families["squeezer_gpu_memory_used_bytes"]}
    total = {s.labels["gpu"]: s.value for s in families["squeezer_gpu_memory_total_bytes"]}
    assert used == {"0": 1024 * 2**20, "1": 0.0} and total == {"0": 81559 * 2**20, "1": 81559 * 2**20}
    fake.write_text("#!/bin/sh\nexit 9\n")  # a driver that does not answer: no figures, no failed scrape
    assert list(GpuMemoryCollector().collect()) == []
