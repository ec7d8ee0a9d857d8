"""The one job function, run by Celery workers and by the embedded in-process worker alike.

claim (atomic) → read the stored spec and fetch its inputs into a temp dir (store.job_spec, store.job_inputs, as
the API's submission check did) → core.pipeline.compress_files in a jailed child process (worker.engine_process,
core.jail) whose events, stop checks and checkpoints this process relays → store results → final status. The engine
never sees the database or a secret: it gets the job's folder, a config and a pipe."""

import contextlib
import dataclasses
import logging
import os
import shutil
import stat
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

from sqlalchemy.exc import SQLAlchemyError

from squeezer.core.config import CompressConfig
from squeezer.core.errors import Cancelled, SqueezerError, redact_paths
from squeezer.core.events import Event, EventStage
from squeezer.core.intake.archives import safe_extract
from squeezer.core.jail import Spare
from squeezer.store.artifacts import delete_artifact, export_artifact_to, store_file
from squeezer.store.job_inputs import fetch_inputs
from squeezer.store.job_spec import read_spec
from squeezer.store.jobs import (
    checkpoint_of,
    claim_job,
    finish_job,
    heartbeat,
    record_event,
    set_checkpoint,
    update_progress,
)
from squeezer.store.logging_setup import log_context
from squeezer.store.models import ArtifactKind, Job
from squeezer.store.statuses import JobStatus
from squeezer.worker.context import WorkerContext
from squeezer.worker.engine_process import EngineRun
from squeezer.worker.metrics import JobTimer

log = logging.getLogger(__name__)

# Events are written at most this often, except those a client must never miss.
EVENT_INTERVAL_S = 0.5
ALWAYS_RECORDED_STAGES = {EventStage.STEP, EventStage.CHECKPOINT, EventStage.DONE}
# How often the engine's stop check asks the database (cancel requested? still our job?).
STOP_CHECK_INTERVAL_S = 1.0
# A job's engine is ended when it runs this long past its time limit: the engine stops itself well within it (its own
# grace for writing the best result, loading and export included), unless it is stuck or hostile.
OVERTIME_ALLOWANCE_S = 180.0
RESULT_FILES = {
    "model.sqz": "application/octet-stream",
    "model.onnx": "application/onnx",
    "model.zip": "application/zip",
    "report.json": "application/json",
    "report.html": "text/html; charset=utf-8",
}


def run_job(job_id: str, ctx: WorkerContext) -> None:
    """Runs one job to a final status. Returns without doing anything when the job is not queued (a duplicate or
    redelivered message, a cancelled job, another worker's job)."""
    with ctx.session_factory() as session:
        job = claim_job(session, job_id, ctx.worker_id)
    if job is None:
        log.info("job %s: not queued any more, nothing to do", job_id)
        return
    log.info("job %s: attempt %d on %s", job_id, job.attempts, ctx.worker_id)
    with (
        log_context(job_id=job.id, tenant=job.tenant, request_id=job.request_id),
        JobMonitor(ctx, job) as monitor,
        contextlib.closing(ctx.engines.take()) as engine,  # the jailed engine's folder is the job's
        tempfile.TemporaryDirectory(prefix=f"squeezer-{job_id}-") as scratch,  # the worker's own
    ):
        monitor.scratch = Path(scratch)
        try:
            report = _compress(job, ctx, monitor, engine)
            results = _store_results(job, ctx, engine.folder / "out", Path(scratch))
        except Cancelled:
            finished = _finish(monitor, JobStatus.CANCELLED)
        except SqueezerError as error:
            finished = _finish(
                monitor, JobStatus.FAILED, error_code=error.code, error_message=redact_paths(error.message)
            )
        except Exception as error:
            log.exception("job %s: internal error", job_id)
            finished = _finish(
                monitor,
                JobStatus.FAILED,
                error_code="internal_error",
                error_message=f"The job stopped on an internal error ({type(error).__name__}); "
                "the worker's log has the details.",
            )
        else:
            finished = _finish(monitor, *_outcome(report), target_met=bool(report.get("target_met")), results=results)
            if not finished:
                for artifact_id in results.values():
                    delete_artifact(ctx.session_factory, ctx.blobs, artifact_id)


def _outcome(report: dict) -> tuple[JobStatus, str | None, str | None]:
    """A run cut short by its time limit fails, yet keeps its best result so far as the job's artifacts."""
    if report.get("stopped_early") == "time_limit":
        message = "The job reached its time limit; the best result found until then is kept (see its report)."
        return (JobStatus.FAILED, "time_limit_exceeded", message)
    return (JobStatus.SUCCEEDED, None, None)


def _finish(
    monitor: "JobMonitor",
    status: JobStatus,
    error_code: str | None = None,
    error_message: str | None = None,
    **fields: Any,
) -> bool:
    ctx, job = monitor.ctx, monitor.job
    monitor.timer.finished(status)
    log.info("job %s: %s", job.id, status)
    fields.update(error_code=error_code, error_message=error_message)
    with ctx.session_factory() as session:
        checkpoint_id = checkpoint_of(session, job.id)
        done = finish_job(session, job.id, ctx.worker_id, status, **fields)
    if not done:
        log.warning("job %s: no longer ours, %s result dropped", job.id, status)
    elif checkpoint_id:  # every final status: a checkpoint only serves a next attempt, and there is none
        delete_artifact(ctx.session_factory, ctx.blobs, checkpoint_id)
    return done


def _compress(job: Job, ctx: WorkerContext, monitor: "JobMonitor", engine: Spare) -> dict:
    workdir = engine.folder
    inputs = fetch_inputs(
        read_spec(job.spec),
        tenant=job.tenant,
        session_factory=ctx.session_factory,
        blobs=ctx.blobs,
        dest_dir=workdir / "inputs",
        worker_device=ctx.device,
    )
    checkpoint_dir = workdir / "checkpoint"
    checkpoint_dir.mkdir()
    monitor.checkpoint_dir = checkpoint_dir
    if job.checkpoint_artifact_id and _restore_checkpoint(ctx, job.checkpoint_artifact_id, workdir, checkpoint_dir):
        monitor.on_event(
            Event(
                stage=EventStage.RESUME,
                fraction=0.0,
                message=f"Attempt {job.attempts} resumes from the previous attempt's last checkpoint.",
            )
        )
    config = _capped(inputs.config, ctx.settings.max_job_time_limit_s)
    run = EngineRun(
        engine,
        on_event=monitor.on_event,
        should_stop=monitor.should_stop,
        on_checkpoint=monitor.on_checkpoint,
        deadline_s=None if config.time_limit_s is None else config.time_limit_s + OVERTIME_ALLOWANCE_S,
    )
    payload = {
        "model": {
            "path": str(inputs.model.path),
            "architecture": inputs.model.architecture,
            "arch_args": inputs.model.arch_args,
        },
        "data": str(inputs.data),
        "out_dir": str(workdir / "out"),
        "checkpoint_dir": str(checkpoint_dir),
        "config": config.model_dump(mode="json"),
        "limits": dataclasses.asdict(ctx.settings.intake_limits()),
    }
    return run.run("squeezer.core.jail_entry:compress_job", payload)


def _capped(config: CompressConfig, max_time_limit_s: float | None) -> CompressConfig:
    """The server's compute limit applies to every job: one that asks for none (or more, submitted before the limit
    was set) runs at most `max_time_limit_s`."""
    if max_time_limit_s is None or (config.time_limit_s is not None and config.time_limit_s <= max_time_limit_s):
        return config
    return config.model_copy(update={"time_limit_s": max_time_limit_s})


def _restore_checkpoint(ctx: WorkerContext, artifact_id: str, workdir: Path, checkpoint_dir: Path) -> bool:
    """Unpacks the previous attempt's checkpoint so the engine resumes from it. A missing or unreadable checkpoint
    costs time, not the job: the engine starts over (False)."""
    try:
        archive = export_artifact_to(ctx.session_factory, ctx.blobs, artifact_id, workdir / "checkpoint.zip")
        safe_extract(archive, checkpoint_dir)
        archive.unlink()
    except Exception:
        log.exception("checkpoint %s unusable; starting over", artifact_id)
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
        checkpoint_dir.mkdir()
        return False
    return True


def _store_results(job: Job, ctx: WorkerContext, out_dir: Path, scratch: Path) -> dict[str, str]:
    """Uploads the engine's outputs as result artifacts; the model directory travels as model.zip, packed in the
    worker's own `scratch` folder. The engine's process tree has ended, so nothing changes `out_dir` any more; only
    regular files are taken from it (a link the jail left would have this process upload a file not the job's)."""
    if not _is_real(out_dir, stat.S_ISDIR):
        return {}
    paths = {name: out_dir / name for name in RESULT_FILES}
    if _is_real(out_dir / "model", stat.S_ISDIR):
        paths["model.zip"] = _zip_folder(out_dir / "model", scratch / "model.zip")
    results: dict[str, str] = {}
    try:
        for name, content_type in RESULT_FILES.items():
            path = paths[name]
            if _is_real(path, stat.S_ISREG):
                artifact = store_file(
                    ctx.session_factory,
                    ctx.blobs,
                    path,
                    tenant=job.tenant,
                    kind=ArtifactKind.RESULT,
                    filename=name,
                    content_type=content_type,
                )
                results[name] = artifact.id
    except BaseException:
        for artifact_id in results.values():
            delete_artifact(ctx.session_factory, ctx.blobs, artifact_id)
        raise
    return results


def _is_real(path: Path, kind: Callable[[int], bool]) -> bool:
    """Whether `path` is a folder or regular file (`kind`: stat.S_ISDIR / S_ISREG) itself, not a link to one."""
    try:
        return bool(kind(os.lstat(path).st_mode))
    except OSError:
        return False


def _zip_folder(folder: Path, archive: Path) -> Path:
    """Zips the regular files under `folder`, which the jailed engine writes (maybe while this runs): links are
    skipped, never followed, so a job cannot have this process pack a file that is not its own."""
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as packed:
        for root, _, files, root_fd in os.fwalk(folder, follow_symlinks=False):
            for name in files:
                try:
                    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=root_fd)
                except OSError:
                    continue  # a link, or gone
                with os.fdopen(fd, "rb") as source:
                    if stat.S_ISREG(os.fstat(fd).st_mode):
                        with packed.open(os.path.relpath(os.path.join(root, name), folder), "w") as target:
                            shutil.copyfileobj(source, target)
    return archive


class JobMonitor:
    """The engine's hooks for one running job: events → job_events and job.progress (throttled), stop checks →
    cancel flag and ownership, checkpoints → artifacts, and a heartbeat thread for the stretches where the engine
    calls neither hook (loading, evaluation, export)."""

    def __init__(self, ctx: WorkerContext, job: Job):
        self.ctx = ctx
        self.job = job
        self.checkpoint_dir: Path | None = None
        self.scratch: Path | None = None  # the worker's own folder for this job (the checkpoint's zip goes there)
        self._stop = threading.Event()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._heartbeat_loop, name=f"heartbeat-{job.id}", daemon=True)
        self._last_write = 0.0
        self._last_check = time.monotonic()
        self._last_stage: str | None = None
        self.timer = JobTimer(job.spec.get("method"))  # worker.metrics: busy, job and stage durations
        self.progress: dict[str, Any] = {
            "stage": JobStatus.QUEUED,
            "fraction": 0.0,
            "best_accuracy": None,
            "best_compression_ratio": None,
        }

    def __enter__(self) -> Self:
        self.timer.start()
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._closing.set()
        self._thread.join()
        self.timer.stop()

    def _heartbeat_loop(self) -> None:
        while not self._closing.wait(self.ctx.settings.heartbeat_interval_s):
            self._beat()

    def _beat(self) -> None:
        try:
            with self.ctx.session_factory() as session:
                if not heartbeat(session, self.job.id, self.ctx.worker_id):
                    self._stop.set()
        except Exception:
            # A database blip must not stop the job; the reaper decides if the heartbeat stays away too long.
            log.exception("job %s: heartbeat failed", self.job.id)

    def should_stop(self) -> bool:
        now = time.monotonic()
        if not self._stop.is_set() and now - self._last_check >= STOP_CHECK_INTERVAL_S:
            self._last_check = now
            self._beat()
        return self._stop.is_set()

    def on_event(self, event: Event) -> None:
        self._track(event)
        now = time.monotonic()
        important = (
            event.stage in ALWAYS_RECORDED_STAGES
            or event.level in ("warning", "error")
            or event.stage != self._last_stage
        )
        if not important and now - self._last_write < EVENT_INTERVAL_S:
            return
        self._last_write = now
        self._last_stage = event.stage
        try:
            with self.ctx.session_factory() as session:
                record_event(session, self.job.id, event)
                update_progress(session, self.job.id, self.progress)
        except SQLAlchemyError:
            # Losing a progress report (database restarting) must not cost the job; the final status is retried
            # by the reaper if the database is still away when the job ends.
            log.exception("job %s: could not record a %s event", self.job.id, event.stage)

    def _track(self, event: Event) -> None:
        """Progress shows the stage, the overall fraction and the best accepted step so far (highest ratio)."""
        self.timer.stage(event.stage)
        self.progress["stage"] = event.stage
        self.progress["fraction"] = max(self.progress["fraction"], min(max(float(event.fraction), 0.0), 1.0))
        data = event.data
        if event.stage == EventStage.STEP and data.get("accepted"):
            ratio = data.get("compression_ratio")
            best = self.progress["best_compression_ratio"]
            if ratio is not None and (best is None or ratio >= best):
                self.progress["best_compression_ratio"] = ratio
                self.progress["best_accuracy"] = data.get("accuracy")

    def on_checkpoint(self) -> None:
        """The engine wrote a checkpoint: it becomes the job's checkpoint artifact before the engine goes on. A
        database away loses this checkpoint, not the job: the next one is kept."""
        try:
            self._save_checkpoint()
        except SQLAlchemyError:
            log.exception("job %s: could not keep a checkpoint", self.job.id)

    def _save_checkpoint(self) -> None:
        """Zips the checkpoint folder into an artifact, points the job at it and drops the previous one."""
        if self.checkpoint_dir is None or self.scratch is None:
            return
        archive = _zip_folder(self.checkpoint_dir, self.scratch / "checkpoint-upload.zip")
        try:
            artifact = store_file(
                self.ctx.session_factory,
                self.ctx.blobs,
                archive,
                tenant=self.job.tenant,
                kind=ArtifactKind.CHECKPOINT,
                filename="checkpoint.zip",
                content_type="application/zip",
            )
        finally:
            archive.unlink(missing_ok=True)
        with self.ctx.session_factory() as session:
            obsolete = set_checkpoint(session, self.job.id, self.ctx.worker_id, artifact.id)
        if obsolete:
            delete_artifact(self.ctx.session_factory, self.ctx.blobs, obsolete)
