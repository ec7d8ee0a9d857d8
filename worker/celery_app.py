"""The Celery side of the workers: one task, `squeezer.run_job`, whose only argument is a job id.

Delivery settings, and why:
- task_acks_late + task_reject_on_worker_lost: a message is acknowledged only after the job function returns, so a
  worker that dies mid-job leaves it unacknowledged instead of silently lost.
- worker_prefetch_multiplier=1 and the solo pool: a worker holds one job at a time; one worker process per GPU, and
  CUDA only ever initialised in the process that runs jobs (no fork after CUDA). Pick the GPU with
  CUDA_VISIBLE_DEVICES and the device with SQUEEZER_WORKER_DEVICE.
- visibility_timeout: Redis hands an unacknowledged message to another worker once this many seconds pass, which
  for compression jobs longer than the default hour would mean a second delivery while the first still runs. The
  second delivery is harmless (the claim is an atomic queued → running update, so it finds the job running and
  returns), but it is pointless work, so the timeout is set longer than any job. Jobs whose worker really died do
  not wait for it: the reaper sees their heartbeat stop and requeues them.

Webhook messages go to their own queue, `webhooks`, which a webhooks worker (`python -m squeezer.worker webhooks`)
consumes on a pool of threads: sending waits on receivers, not on a GPU, and a receiver that hangs holds one thread for
the send timeout at most, never a job. That worker also runs the sender loop that finds due messages
(worker.webhooks.WebhookSender) and sends their ids to the queue.
"""

import logging
import os
import socket
from functools import cache

from celery import Celery
from celery.signals import setup_logging, worker_ready, worker_shutdown
from sqlalchemy.orm import Session, sessionmaker

from squeezer.store.db import make_engine, make_session_factory
from squeezer.store.logging_setup import configure_logging
from squeezer.store.settings import Settings, get_settings
from squeezer.worker.context import WorkerContext
from squeezer.worker.metrics import serve_metrics
from squeezer.worker.reaper import ReaperThread
from squeezer.worker.webhooks import SENDER_THREADS, WebhookSender, deliver

TASK_NAME = "squeezer.run_job"
QUEUE_NAME = "squeezer"
WEBHOOK_TASK_NAME = "squeezer.deliver_webhook"
WEBHOOK_QUEUE_NAME = "webhooks"
# Longer than any job (see the module docstring): a week.
VISIBILITY_TIMEOUT_S = 7 * 24 * 3600
# Publishing to a broker that is down: two quick retries within about a second, then the enqueue gives up.
PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1.0}

log = logging.getLogger(__name__)
# The reaper of this worker process, started once the worker is ready and stopped with it.
_reaper: ReaperThread | None = None
# Set by start_worker(webhooks=True): this process consumes the webhooks queue and runs the webhook sender loop.
_webhooks_worker = False
_webhook_sender: WebhookSender | None = None


def create_celery_app(broker_url: str) -> Celery:
    """A Celery app for `broker_url`: the API uses it to send, workers to consume. No result backend: results live
    in the database."""
    app = Celery("squeezer", broker=broker_url, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        worker_pool="solo",
        task_ignore_result=True,
        task_default_queue=QUEUE_NAME,
        broker_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT_S},
        broker_connection_retry_on_startup=True,
        # A broker that is down must not hang the API request that enqueues: fail fast, the reaper re-sends later.
        task_publish_retry_policy=PUBLISH_RETRY_POLICY,
        task_routes={WEBHOOK_TASK_NAME: {"queue": WEBHOOK_QUEUE_NAME}},
    )
    app.task(name=TASK_NAME, ignore_result=True)(run_job_task)
    app.task(name=WEBHOOK_TASK_NAME, ignore_result=True)(deliver_webhook_task)
    return app


@cache
def worker_context() -> WorkerContext:
    """The worker process's context, built on first use from the SQUEEZER_* settings (a worker process is its own
    entry point, like a `squeezer` command)."""
    return WorkerContext.from_settings(get_settings())


@cache
def webhook_context() -> tuple[Settings, sessionmaker[Session]]:
    """A webhooks worker's settings and database: it runs no engine, so it needs no jail."""
    settings = get_settings()
    return settings, make_session_factory(make_engine(settings.resolved_database_url))


def deliver_webhook_task(delivery_id: str) -> None:
    settings, session_factory = webhook_context()
    deliver(delivery_id, settings, session_factory)


def run_job_task(job_id: str) -> None:
    # Imported here, not at the top: the API's CeleryDispatcher builds this app only to send tasks, and sending must
    # not load the engine (torch). The API imports the engine's config only; it checks a submission in a sandboxed
    # child process (api.jobs.service.validate_inputs → core.sandbox).
    from squeezer.worker.runner import run_job

    run_job(job_id, worker_context())


@worker_ready.connect
def _start_reaper(sender=None, **_) -> None:
    global _reaper, _webhook_sender
    app = sender.app
    if _webhooks_worker:
        session_factory = webhook_context()[1]
        _webhook_sender = WebhookSender(
            session_factory, lambda message_id: app.send_task(WEBHOOK_TASK_NAME, [message_id])
        )
        _webhook_sender.start()
        return
    _reaper = ReaperThread(worker_context(), lambda job_id: app.send_task(TASK_NAME, args=[job_id]))
    _reaper.start()


@worker_shutdown.connect
def _stop_reaper(**_) -> None:
    global _reaper, _webhook_sender
    if _webhook_sender is not None:
        _webhook_sender.stop()
        _webhook_sender = None
        return
    if _reaper is not None:
        _reaper.stop()
        _reaper = None


@setup_logging.connect
def _configure_logging(**_) -> None:
    """With a receiver here Celery leaves the root logger alone: a worker logs as SQUEEZER_LOG_FORMAT says, like
    the API (store.logging_setup)."""
    configure_logging(get_settings())


@worker_ready.connect
def _serve_metrics(**_) -> None:
    """Prometheus metrics on SQUEEZER_WORKER_METRICS_PORT (worker.metrics), for as long as the process lives."""
    settings = get_settings()
    if settings.worker_metrics_port:
        serve_metrics(settings.worker_metrics_port, settings.metrics_token.get_secret_value())


def start_worker(*, loglevel: str = "INFO", webhooks: bool = False) -> None:
    """Runs a worker in this process until it is stopped (`squeezer worker`, `python -m squeezer.worker`), configured
    by the SQUEEZER_* settings: a job worker, or with `webhooks` a webhooks worker
    (`python -m squeezer.worker webhooks`)."""
    global _webhooks_worker
    settings = get_settings()
    configure_logging(settings)  # now, not at Celery's setup_logging: its start-up warnings are lines in the format
    if not settings.broker_url:
        raise ValueError(
            "SQUEEZER_BROKER_URL is not set: a Celery worker needs a broker (the embedded mode runs jobs in-process)"
        )
    _webhooks_worker = webhooks
    if webhooks:
        pool = ["--pool", "threads", "--concurrency", str(2 * SENDER_THREADS), "--queues", WEBHOOK_QUEUE_NAME]
    else:
        worker_context()  # a worker that cannot jail its jobs' engines (core.jail) refuses to start, here
        pool = ["--pool", "solo", "--concurrency", "1", "--queues", QUEUE_NAME]
    worker_app = create_celery_app(settings.broker_url)
    hostname = f"squeezer-{'webhooks-' if webhooks else ''}{os.getpid()}@{socket.gethostname()}"
    quiet = ["--quiet"] if settings.log_format == "json" else []  # Celery's banner is not a JSON line
    options = ["--loglevel", loglevel, "--hostname", hostname, "--without-gossip", "--without-mingle"]
    worker_app.worker_main([*quiet, "worker", *pool, *options])


@cache
def _module_app() -> Celery:
    return create_celery_app(get_settings().broker_url)


def __getattr__(name: str) -> Celery:
    """`celery -A squeezer.worker.celery_app worker` looks up `app` here; it is built on that first look-up from
    SQUEEZER_BROKER_URL, not when the module is imported (the API imports it to send tasks with its own settings)."""
    if name == "app":
        return _module_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
