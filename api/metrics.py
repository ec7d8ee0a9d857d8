"""Prometheus metrics and request context of the API: GET /metrics, and the middleware that gives every request its
X-Request-ID, its log context and its place in the HTTP metrics.

Two kinds of figures. Jobs by status and method and the queue depth are read from the database at scrape time
(`JobsCollector`, one grouped COUNT cached SCRAPE_CACHE_S), so every API process answers the same whatever the
number of processes and workers. The rest (HTTP requests, uploads, submission checks) are this process's own: run
one API process per container and scrape each, or set PROMETHEUS_MULTIPROC_DIR (prometheus_client's multiprocess
mode: an empty folder shared by the processes of one host) so any process answers for all of them.

No label carries an unbounded value: routes are their templates (`/v1/jobs/{job_id}`, "unmatched" for none), methods
and statuses come from fixed sets, and no id is ever a label."""

import contextlib
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Iterator

from fastapi import APIRouter, Request, Response
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from squeezer.api.errors import ProblemError
from squeezer.core.errors import InputError
from squeezer.core.methods.registry import MethodName
from squeezer.store.logging_setup import log_context
from squeezer.store.models import Job
from squeezer.store.statuses import JobStatus
from squeezer.worker.metrics import bounded, token_matches

log = logging.getLogger(__name__)

METHODS = frozenset(MethodName)
HTTP_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))
SCRAPE_CACHE_S = 5.0
# A client's X-Request-ID is kept when it is this safe (it goes into every log line of the request and its job).
REQUEST_ID = re.compile(r"[A-Za-z0-9._\-]{1,128}")
UNMATCHED = "unmatched"
EXPOSITION_TYPE = "text/plain; version=0.0.4; charset=utf-8"

HTTP_REQUESTS = Counter(
    "squeezer_http_requests",
    "HTTP requests answered, by method, route template and status.",
    ["method", "route", "status"],
)
HTTP_LATENCY = Histogram(
    "squeezer_http_request_duration_seconds",
    "Time to answer an HTTP request (its body streamed included), by method and route template.",
    ["method", "route"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
UPLOAD_BYTES = Counter("squeezer_upload_bytes", "Bytes of uploads stored (models and data sets).")
SUBMISSION_CHECKS = Counter(
    "squeezer_submission_checks", "Submission input checks by outcome (passed, refused, error).", ["outcome"]
)
SUBMISSION_CHECK_DURATION = Histogram(
    "squeezer_submission_check_duration_seconds",
    "Time a submission's input check took (core.submission in its sandbox), by outcome.",
    ["outcome"],
    buckets=(0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300),
)


@contextlib.contextmanager
def submission_check_timer() -> Iterator[None]:
    """Times the block as one submission check: an InputError is a refusal, any other exception an error."""
    started, outcome = time.monotonic(), "error"
    try:
        yield
        outcome = "passed"
    except InputError:
        outcome = "refused"
        raise
    finally:
        SUBMISSION_CHECKS.labels(outcome).inc()
        SUBMISSION_CHECK_DURATION.labels(outcome).observe(time.monotonic() - started)


class JobsCollector(Collector):
    """Jobs by status and method, and the queue depth, from the database (cached SCRAPE_CACHE_S)."""

    def __init__(self, session_factory: sessionmaker[Session], cache_s: float = SCRAPE_CACHE_S):
        self.session_factory = session_factory
        self.cache_s = cache_s
        self._lock = threading.Lock()
        self._counted_at = -cache_s
        self._counts: dict[tuple[str, str], int] = {}

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            counts = self._cached_counts()
        except SQLAlchemyError:
            # The scrape still answers with the process's figures; /readyz is where the outage shows.
            log.warning("metrics: the job counts could not be read", exc_info=True)
            return
        jobs = GaugeMetricFamily("squeezer_jobs", "Jobs by status and method.", labels=["status", "method"])
        for status in JobStatus:
            for method in sorted(METHODS | {"other"}):
                jobs.add_metric([status.value, method], counts.get((status.value, method), 0))
        queued = sum(count for (status, _), count in counts.items() if status == JobStatus.QUEUED)
        depth = GaugeMetricFamily("squeezer_queue_depth", "Jobs queued and waiting for a worker.", value=queued)
        yield jobs
        yield depth

    def _cached_counts(self) -> dict[tuple[str, str], int]:
        with self._lock:
            if time.monotonic() - self._counted_at >= self.cache_s:
                self._counts = self._count()
                self._counted_at = time.monotonic()
            return self._counts

    def _count(self) -> dict[tuple[str, str], int]:
        method = Job.spec["method"].as_string()
        query = select(Job.status, method, func.count()).group_by(Job.status, method)
        counts: dict[tuple[str, str], int] = {}
        with self.session_factory() as session:
            for status, job_method, count in session.execute(query):
                key = (bounded(status, frozenset(JobStatus)), bounded(job_method, METHODS))
                counts[key] = counts.get(key, 0) + count
        return counts


def process_metrics() -> bytes:
    """This process's metrics, or, in multiprocess mode, those of every process sharing PROMETHEUS_MULTIPROC_DIR."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return generate_latest(REGISTRY)
    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    return generate_latest(registry)


router = APIRouter()


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    """Prometheus exposition; `Authorization: Bearer <SQUEEZER_METRICS_TOKEN>` when that is set."""
    token = request.app.state.settings.metrics_token.get_secret_value()
    if not token_matches(request.headers.get("authorization"), token):
        raise ProblemError(401, "unauthorized", "send `Authorization: Bearer <metrics token>`")
    body = process_metrics() + generate_latest(request.app.state.metrics_registry)
    return Response(body, media_type=EXPOSITION_TYPE)


def install_metrics(app, session_factory: sessionmaker[Session]) -> None:
    registry = CollectorRegistry()  # collectors are not asked to describe themselves: no query until a scrape
    registry.register(JobsCollector(session_factory))
    app.state.metrics_registry = registry
    app.include_router(router)
    app.add_middleware(RequestContextMiddleware)


def request_id_of(scope: Scope) -> str:
    """The client's X-Request-ID when it is short and safe, else a new one."""
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            given = value.decode("latin-1")
            if REQUEST_ID.fullmatch(given):
                return given
    return uuid.uuid4().hex


class RequestContextMiddleware:
    """Outermost: every answer, refusals of the other middleware included, is counted and carries X-Request-ID."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request_id = request_id_of(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        started, status = time.monotonic(), 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            with log_context(request_id=request_id, tenant=None, job_id=None):
                await self.app(scope, receive, send_with_id)
        finally:
            route = scope.get("route")
            template = getattr(route, "path_format", None) or UNMATCHED
            method = bounded(scope["method"], HTTP_METHODS)
            HTTP_REQUESTS.labels(method, template, str(status)).inc()
            HTTP_LATENCY.labels(method, template).observe(time.monotonic() - started)
