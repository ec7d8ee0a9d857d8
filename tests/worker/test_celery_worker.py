"""Real worker processes on real Redis and PostgreSQL."""

import json
import os
import signal
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from squeezer.store.artifacts import export_artifact_to
from squeezer.store.jobs import request_cancel
from squeezer.store.models import Artifact, Job, utcnow
from tests.api.conftest import LONG_OPTIONS
from tests.helpers import wait_until
from tests.worker.conftest import running_processes, tiny_spec

RESULT_NAMES = {"model.sqz", "model.onnx", "model.zip", "report.json", "report.html"}


@pytest.mark.slow
def test_a_job_runs_once_even_when_its_message_arrives_twice(service, sample_model_zip, tmp_path):
    job_id = service.create(tiny_spec(service.upload(sample_model_zip)))
    service.dispatcher.enqueue(job_id)
    service.dispatcher.enqueue(job_id)  # a redelivery, or a client retry
    service.start_worker()
    job = service.wait_final(job_id)
    assert (job.status, job.attempts, job.error_code) == ("succeeded", 1, None)
    results = service.results(job_id)
    assert set(results) == RESULT_NAMES
    report = json.loads(
        export_artifact_to(
            service.ctx.session_factory, service.ctx.blobs, results["report.json"], tmp_path / "report.json"
        ).read_text()
    )
    assert report["target_met"] == job.target_met
    assert job.progress["fraction"] == pytest.approx(1.0)
    assert job.checkpoint_artifact_id is None  # dropped once the job succeeded


@pytest.mark.slow
def test_cancel_of_a_queued_and_of_a_running_job(service, sample_model_zip):
    model_id = service.upload(sample_model_zip)
    queued_id = service.create(tiny_spec(model_id))
    with service.ctx.session_factory() as session:
        assert request_cancel(session, queued_id).status == "cancelled"
    running_id = service.create(
        tiny_spec(model_id, **{**LONG_OPTIONS, "prune_epochs": 3, "epochs_per_step": 3, "max_train_samples": 1000})
    )
    next_id = service.create(tiny_spec(model_id))
    for job_id in (queued_id, running_id, next_id):
        service.dispatcher.enqueue(job_id)
    service.start_worker()
    service.wait(running_id, lambda job: job.status == "running" and job.progress.get("stage") not in (None, "queued"))
    with service.ctx.session_factory() as session:
        assert request_cancel(session, running_id).status == "cancelling"
    asked = time.monotonic()
    running = service.wait_final(running_id, timeout_s=30)
    stopped_after_s = time.monotonic() - asked
    queued = service.job(queued_id)
    assert running.status == "cancelled" and service.results(running_id) == {}
    assert stopped_after_s < 10, stopped_after_s  # the stop check asks every second, between training steps
    assert (queued.status, queued.attempts) == ("cancelled", 0)
    after = service.wait_final(next_id)  # the one worker is free again: the next job runs on it
    assert (after.status, after.worker_id) == ("succeeded", running.worker_id)


@pytest.mark.slow
def test_a_job_whose_worker_is_killed_is_requeued_and_finishes_once(service, sample_model_zip):
    """Two workers; the one running the job dies with SIGKILL after its first checkpoint. The survivor's reaper sees
    the heartbeat stop, requeues the job and sends it again; the survivor resumes from the checkpoint."""
    # One pruning level before the first checkpoint, then a walk of five single-layer stages of 100 steps each: the
    # walk still takes seconds after that checkpoint, time enough to kill its worker.
    job_id = service.create(tiny_spec(service.upload(sample_model_zip), min_steps_per_stage=100, walk="layer"))
    workers = {str(service.start_worker().pid): None, str(service.start_worker().pid): None}
    service.dispatcher.enqueue(job_id)
    running = service.wait(job_id, lambda job: job.status == "running" and job.checkpoint_artifact_id is not None)
    victim = running.worker_id.split(":")[1]
    assert victim in workers
    jailed = _descendants(int(victim))
    assert jailed, "the job's engine runs in child processes of its worker"
    os.kill(int(victim), signal.SIGKILL)
    _wait_until_gone(jailed)  # the jailed engine dies with its worker, and everything it started with it
    job = service.wait_final(job_id, timeout_s=180)
    assert (job.status, job.attempts) == ("succeeded", 2)
    assert victim not in job.worker_id
    assert set(service.results(job_id)) == RESULT_NAMES
    stages = service.event_stages(job_id)
    assert "worker_lost" in stages and "resume" in stages
    # resumed from the checkpoint: the pruning search before the first checkpoint is not run again
    assert "prune" in stages[: stages.index("worker_lost")] and "prune" not in stages[stages.index("resume") :]
    # finished exactly once: one set of results, no orphaned result or checkpoint artifacts
    with service.ctx.session_factory() as session:
        kinds = Counter(session.scalars(select(Artifact.kind)))
    assert (kinds["result"], kinds["checkpoint"]) == (len(RESULT_NAMES), 0)


@pytest.mark.slow
def test_a_job_whose_message_was_lost_is_sent_again_by_the_reaper(service, sample_model_zip):
    """No message at all (the broker lost it, e.g. Redis restarted without persistence): the row is the truth."""
    job_id = service.create(tiny_spec(service.upload(sample_model_zip)))
    with service.ctx.session_factory() as session:
        session.execute(update(Job).where(Job.id == job_id).values(dispatched_at=utcnow() - timedelta(hours=1)))
        session.commit()
    service.start_worker()
    job = service.wait_final(job_id)
    assert (job.status, job.attempts) == ("succeeded", 1)


def _descendants(pid: int) -> set[int]:
    processes = running_processes()
    found: set[int] = set()
    parents = {pid}
    while parents:
        parents = {child for child, (ppid, *_) in processes.items() if ppid in parents} - found
        found |= parents
    return found


def _wait_until_gone(pids: set[int], timeout_s: float = 30) -> None:
    """Waits until none of `pids` runs any more (a zombie no longer runs)."""
    wait_until(
        lambda: not any(map(_runs, pids)),
        timeout_s,
        lambda: f"processes {sorted(pid for pid in pids if _runs(pid))} to end with their worker",
    )


def _runs(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"
