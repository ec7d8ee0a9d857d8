"""Periodic recovery, run in every worker: requeue jobs whose worker died, re-send jobs whose message was lost, and
drop uploads abandoned by a crashed API process and worker outputs no job points at (results of a job that never
reached a final status with them, checkpoints of ended jobs). Safe to run in many processes at once
(store.jobs.reap is atomic)."""

import logging
import threading
from collections.abc import Callable

from squeezer.store.artifacts import sweep_orphaned_results, sweep_stale_uploads
from squeezer.store.jobs import reap
from squeezer.store.settings import Settings
from squeezer.worker.context import WorkerContext

log = logging.getLogger(__name__)

# An upload still "uploading" after this long lost its API process (a 4 GiB upload takes minutes, not an hour).
STALE_UPLOAD_S = 3600.0
# Unless configured (queued_resend_s), a queued job is sent again after this many heartbeat timeouts (at least
# STALE_QUEUED_MIN_S): duplicates are harmless (the claim is atomic) but each one costs a message, so the wait is long
# compared with the heartbeat timeout.
STALE_QUEUED_TIMEOUTS = 5
STALE_QUEUED_MIN_S = 10.0
# The reaper looks this many times per heartbeat timeout, so a dead worker's job waits at most a quarter timeout more
# than the timeout; bounded below (no busy loop on tiny test timeouts) and above (a look at least every half minute).
REAPS_PER_TIMEOUT = 4
REAP_INTERVAL_MIN_S = 0.5
REAP_INTERVAL_MAX_S = 30.0


def stale_queued_s(settings: Settings) -> float:
    """A queued job not sent for this long is sent again."""
    if settings.queued_resend_s is not None:
        return settings.queued_resend_s
    return max(STALE_QUEUED_TIMEOUTS * settings.heartbeat_timeout_s, STALE_QUEUED_MIN_S)


def reap_interval_s(heartbeat_timeout_s: float) -> float:
    return min(max(heartbeat_timeout_s / REAPS_PER_TIMEOUT, REAP_INTERVAL_MIN_S), REAP_INTERVAL_MAX_S)


def recover_once(
    ctx: WorkerContext,
    *,
    heartbeat_timeout_s: float | None = None,
    queued_after_s: float | None = None,
    uploads_after_s: float = STALE_UPLOAD_S,
) -> list[str]:
    """One pass; returns the ids of jobs to dispatch."""
    timeout = ctx.settings.heartbeat_timeout_s if heartbeat_timeout_s is None else heartbeat_timeout_s
    with ctx.session_factory() as session:
        job_ids = reap(
            session,
            heartbeat_timeout_s=timeout,
            stale_queued_s=stale_queued_s(ctx.settings) if queued_after_s is None else queued_after_s,
        )
    removed = sweep_stale_uploads(ctx.session_factory, ctx.blobs, older_than_s=uploads_after_s)
    removed += sweep_orphaned_results(ctx.session_factory, ctx.blobs, older_than_s=uploads_after_s)
    if job_ids or removed:
        log.info("recovery: dispatching %s, removed stale uploads %s", job_ids, removed)
    return job_ids


class ReaperThread(threading.Thread):
    """Calls `recover_once` every `interval_s` and hands the ids to `dispatch`. Errors (database down) are logged and
    retried at the next tick: recovery must outlive the outage it recovers from."""

    def __init__(self, ctx: WorkerContext, dispatch: Callable[[str], None], interval_s: float | None = None):
        super().__init__(name="squeezer-reaper", daemon=True)
        self.ctx = ctx
        self.dispatch = dispatch
        self.interval_s = interval_s or reap_interval_s(ctx.settings.heartbeat_timeout_s)
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval_s):
            try:
                for job_id in recover_once(self.ctx):
                    self.dispatch(job_id)
            except Exception:
                log.exception("recovery pass failed; retrying in %.1fs", self.interval_s)

    def stop(self) -> None:
        self._stop_event.set()
