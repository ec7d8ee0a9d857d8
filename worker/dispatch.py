"""How the API hands a job to a worker: a Celery message (production) or an in-process queue (embedded mode).
Either way only the job id travels; the database row is the truth, so sending an id twice is harmless."""

import logging
import queue
import threading
from collections.abc import Callable
from typing import Protocol

from kombu.exceptions import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from squeezer.store.blobs import BlobStore
from squeezer.store.settings import Settings
from squeezer.worker.context import WorkerContext
from squeezer.worker.reaper import recover_once
from squeezer.worker.webhooks import InProcessWebhooks

log = logging.getLogger(__name__)
# /readyz asks the broker once and waits this long: a probe must answer well within its own timeout.
BROKER_PROBE_TIMEOUT_S = 2


class Dispatcher(Protocol):
    def enqueue(self, job_id: str) -> None: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def is_ready(self) -> bool: ...


class CeleryDispatcher:
    """Sends `squeezer.run_job(job_id)` to the broker."""

    def __init__(self, broker_url: str):
        from squeezer.worker.celery_app import create_celery_app

        self.app = create_celery_app(broker_url)

    def enqueue(self, job_id: str) -> None:
        """Sends the job's id. A broker that is down does not fail the request: the job row is already queued, and
        the workers' reaper sends it again once it has waited too long (store.jobs.reap)."""
        from squeezer.worker.celery_app import TASK_NAME

        try:
            self.app.send_task(TASK_NAME, args=[job_id])
        except (OSError, OperationalError):
            log.warning("job %s: broker unreachable; the reaper will send it later", job_id, exc_info=True)

    def start(self) -> None:
        """Nothing to start: connections open on first use."""

    def stop(self) -> None:
        self.app.close()

    def is_ready(self) -> bool:
        """The broker answers (for /readyz)."""
        try:
            with self.app.connection_for_write() as connection:
                connection.ensure_connection(max_retries=1, timeout=BROKER_PROBE_TIMEOUT_S)
            return True
        except (OSError, OperationalError):
            return False


_STOP = object()


class InProcessDispatcher:
    """Runs jobs one at a time on a background thread with the same job function as the Celery workers.

    With a `context`, `start` first recovers what a previous process left: running jobs are orphaned by definition
    (this process is the only worker), so they are requeued, and every queued job is enqueued again. With `webhooks`,
    webhook messages are sent on threads of their own beside it (worker.webhooks.InProcessWebhooks)."""

    def __init__(
        self,
        runner: Callable[[str], None],
        context: WorkerContext | None = None,
        webhooks: InProcessWebhooks | None = None,
    ):
        self.runner = runner
        self.context = context
        self.webhooks = webhooks
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def enqueue(self, job_id: str) -> None:
        self._queue.put(job_id)

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stopping.clear()
        if self.context is not None:
            # At once, all of it: this process is the only worker, so nothing it left behind is still in flight.
            for job_id in recover_once(self.context, heartbeat_timeout_s=0, queued_after_s=0, uploads_after_s=0):
                self.enqueue(job_id)
        self._thread = threading.Thread(target=self._loop, name="squeezer-inprocess-worker", daemon=True)
        self._thread.start()
        if self.webhooks is not None:
            self.webhooks.start()

    def _loop(self) -> None:
        while not self._stopping.is_set():
            job_id = self._queue.get()
            if job_id is _STOP:
                return
            try:
                self.runner(job_id)
            except Exception:
                log.exception("job %s: the runner raised", job_id)

    def stop(self, timeout_s: float | None = None) -> None:
        """Lets the current job finish (or reach `timeout_s`), then ends the thread. Jobs still waiting stay queued in
        the database and are picked up by the next start."""
        if self._thread is None:
            return
        self._stopping.set()
        self._queue.put(_STOP)
        self._thread.join(timeout_s)
        self._thread = None
        if self.webhooks is not None:
            self.webhooks.stop()

    def is_ready(self) -> bool:
        return self._thread is not None and self._thread.is_alive()


def make_dispatcher(settings: Settings, session_factory: sessionmaker[Session], blobs: BlobStore) -> Dispatcher:
    """Celery when a broker is configured, else the in-process worker (embedded mode)."""
    if settings.broker_url:
        return CeleryDispatcher(settings.broker_url)
    from squeezer.worker.runner import run_job

    context = WorkerContext.from_settings(settings, session_factory, blobs)
    return InProcessDispatcher(
        lambda job_id: run_job(job_id, context), context, InProcessWebhooks(settings, session_factory)
    )
