"""A per-job time limit on a real worker: the engine stops training when it runs out and the job keeps the best
result so far (status `failed`, error `time_limit_exceeded`, results and report `stopped_early: "time_limit"` kept),
long before the job would have ended."""

import json

import pytest

from squeezer.store.artifacts import export_artifact_to
from tests.api.conftest import LONG_OPTIONS
from tests.worker.conftest import tiny_spec

TIME_LIMIT_S = 3.0
# Untimed, this job searches six pruning levels and constrains every layer: well over a minute on two cores.
UNBOUNDED = {**LONG_OPTIONS, "prune_epochs": 3, "epochs_per_step": 3, "max_train_samples": 1000}


@pytest.mark.slow
def test_a_time_limit_stops_the_job_and_keeps_its_best_result(service, sample_model_zip, tmp_path):
    spec = tiny_spec(service.upload(sample_model_zip), **UNBOUNDED)
    spec["options"]["time_limit_s"] = TIME_LIMIT_S
    job_id = service.create(spec)
    service.dispatcher.enqueue(job_id)
    service.start_worker()
    job = service.wait_final(job_id, timeout_s=120)
    assert (job.status, job.error_code, job.attempts) == ("failed", "time_limit_exceeded", 1)
    results = service.results(job_id)
    report = json.loads(
        export_artifact_to(
            service.ctx.session_factory, service.ctx.blobs, results["report.json"], tmp_path / "r.json"
        ).read_text()
    )
    assert report["stopped_early"] == "time_limit"
    accepted = [trial for trial in report["trials"] if trial["accepted"]]
    # the result is the last accepted state (the original model when the limit struck before any), measured again
    best = accepted[-1]["accuracy"] if accepted else report["baseline"]["accuracy"]
    assert report["compressed"]["accuracy"] == pytest.approx(best, abs=0.5)
    # the limit bounds the method; loading, the baseline, export and verification come on top (seconds here)
    assert job.duration_s < TIME_LIMIT_S + 30, job.duration_s
    trials = len(report["trials"])
    print(f"time limit {TIME_LIMIT_S}s: job took {job.duration_s:.1f}s, {len(accepted)}/{trials} trials accepted")
