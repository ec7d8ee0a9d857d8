"""Periodic recovery, run in every worker: requeue jobs whose worker died, re-send jobs whose message was lost, and
drop uploads abandoned by a crashed API process. Safe to run in many processes at once (store.jobs.reap is atomic)."""

import logging
import threading
from collections.abc import Callable

from store.artifacts import sweep_stale_uploads
from store.jobs import reap
from worker.context import WorkerContext

log = logging.getLogger(__name__)

# An upload still "uploading" after this long lost its API process (a 4 GiB upload takes minutes, not an hour).
STALE_UPLOAD_S = 3600.0


def stale_queued_s(heartbeat_timeout_s: float) -> float:
    """A queued job not sent for this long is sent again. Duplicates are harmless (the claim is atomic) but each one
    costs a message, so the wait is long compared with the heartbeat timeout."""
    return max(5 * heartbeat_timeout_s, 10.0)


def recover_once(
    ctx: WorkerContext, *, heartbeat_timeout_s: float | None = None, queued_after_s: float | None = None, uploads_after_s: float = STALE_UPLOAD_S
) -> list[str]:
    """One pass; returns the ids of jobs to dispatch."""
    timeout = ctx.settings.heartbeat_timeout_s if heartbeat_timeout_s is None else heartbeat_timeout_s
    with ctx.session_factory() as session:
        job_ids = reap(session, heartbeat_timeout_s=timeout, stale_queued_s=stale_queued_s(timeout) if queued_after_s is None else queued_after_s)
    removed = sweep_stale_uploads(ctx.session_factory, ctx.blobs, older_than_s=uploads_after_s)
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
        self.interval_s = interval_s or min(max(ctx.settings.heartbeat_timeout_s / 4, 0.5), 30.0)
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
