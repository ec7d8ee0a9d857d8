"""A worker's Prometheus metrics, served on its own port (SQUEEZER_WORKER_METRICS_PORT) and, in the embedded mode,
on the API's GET /metrics (both read prometheus_client's default registry).

Every label is drawn from a fixed set: an engine's stage names come from a jailed process, so a name outside
`STAGES` counts as "other", and a method outside `METHODS` likewise; no job id is a label."""

import hmac
import logging
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from squeezer.core.events import EventStage
from squeezer.core.methods.registry import MethodName

log = logging.getLogger(__name__)

METHODS = frozenset(MethodName)
# The phases an engine reports (core.events.Event): its stages and auto's skipped methods; a step and a checkpoint
# happen within a phase, not as one.
WITHIN_STAGE = frozenset((EventStage.STEP, EventStage.CHECKPOINT))
STAGES = (frozenset(EventStage) | frozenset(MethodName)) - WITHIN_STAGE
# Jobs take from seconds (int8 on a small model) to a day.
JOB_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800, 86400)

WEBHOOK_DELIVERIES = Counter(
    "squeezer_webhook_deliveries", "Webhook delivery attempts by outcome (delivered, retry, failed).", ["outcome"]
)
JOB_DURATION = Histogram(
    "squeezer_job_duration_seconds",
    "A job attempt's time from its claim to its final status, by method and outcome (its final status).",
    ["method", "outcome"],
    buckets=JOB_BUCKETS,
)
STAGE_DURATION = Histogram(
    "squeezer_job_stage_duration_seconds",
    "Time a job spent in one engine stage, by method, stage and the job's outcome.",
    ["method", "stage", "outcome"],
    buckets=JOB_BUCKETS,
)
WORKER_BUSY = Gauge("squeezer_worker_busy", "1 while this worker runs a job, 0 while it waits for one.")


def bounded(value: object, allowed: frozenset[str]) -> str:
    return value if isinstance(value, str) and value in allowed else "other"


class JobTimer:
    """One job attempt's clock: the worker is busy from `start` to `stop`; stage times are kept until the job's
    outcome is known (`finished`), then observed with it."""

    def __init__(self, method: object):
        self.method = bounded(method, METHODS)
        self._started = time.monotonic()
        self._stage: str | None = None
        self._stage_started = self._started
        self._stages: list[tuple[str, float]] = []

    def start(self) -> None:
        self._started = self._stage_started = time.monotonic()
        WORKER_BUSY.set(1)

    def stage(self, name: str) -> None:
        """Called with every event's stage; a new phase closes the previous one ("lwct:train" is auto's "train")."""
        name = name.rpartition(":")[2]
        if name in WITHIN_STAGE or name == self._stage:
            return
        self._close_stage(time.monotonic())
        self._stage = bounded(name, STAGES)

    def _close_stage(self, now: float) -> None:
        if self._stage is not None:
            self._stages.append((self._stage, now - self._stage_started))
        self._stage, self._stage_started = None, now

    def finished(self, outcome: str) -> None:
        now = time.monotonic()
        self._close_stage(now)
        for stage, seconds in self._stages:
            STAGE_DURATION.labels(self.method, stage, outcome).observe(seconds)
        self._stages.clear()
        WORKER_BUSY.set(0)  # the engine is done; the row's final write follows
        JOB_DURATION.labels(self.method, outcome).observe(now - self._started)  # last: a scraper waiting on it sees all

    def stop(self) -> None:
        WORKER_BUSY.set(0)


class GpuMemoryCollector(Collector):
    """Memory used and total per GPU, read from nvidia-smi at scrape time. Device-wide figures, not this process's:
    a job's engine runs in its own jailed process, and the worker itself never initialises CUDA (it would hold
    memory of its own). Nothing is reported where there is no GPU."""

    QUERY = ("nvidia-smi", "--query-gpu=index,memory.used,memory.total", "--format=csv,noheader,nounits")
    TIMEOUT_S = 2.0

    def collect(self) -> Iterator[GaugeMetricFamily]:
        rows = self._query()
        if not rows:
            return
        used = GaugeMetricFamily("squeezer_gpu_memory_used_bytes", "GPU memory in use on the device.", labels=["gpu"])
        total = GaugeMetricFamily("squeezer_gpu_memory_total_bytes", "GPU memory of the device.", labels=["gpu"])
        for index, used_mib, total_mib in rows:
            used.add_metric([index], used_mib * 2**20)
            total.add_metric([index], total_mib * 2**20)
        yield used
        yield total

    def _query(self) -> list[tuple[str, float, float]]:
        if shutil.which(self.QUERY[0]) is None:
            return []
        try:
            answer = subprocess.run(self.QUERY, capture_output=True, text=True, timeout=self.TIMEOUT_S, check=True)
            rows = [line.split(",") for line in answer.stdout.splitlines() if line.strip()]
            return [(index.strip(), float(used), float(total)) for index, used, total in rows]
        except (OSError, subprocess.SubprocessError, ValueError):
            log.warning("nvidia-smi gave no GPU memory figures", exc_info=True)
            return []


_gpu_collector: GpuMemoryCollector | None = None


def token_matches(authorization: str | None, token: str) -> bool:
    """`Authorization: Bearer <token>`, compared in constant time; any request matches when no token is set."""
    if not token:
        return True
    scheme, _, given = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


class _MetricsHandler(BaseHTTPRequestHandler):
    token = ""

    def do_GET(self) -> None:
        if not token_matches(self.headers.get("Authorization"), self.token):
            self._answer(
                401, b"send `Authorization: Bearer <metrics token>`\n", "text/plain", [("WWW-Authenticate", "Bearer")]
            )
            return
        self._answer(200, generate_latest(REGISTRY), "text/plain; version=0.0.4; charset=utf-8", [])

    def _answer(self, status: int, body: bytes, content_type: str, headers: list[tuple[str, str]]) -> None:
        self.send_response(status)
        for name, value in [("Content-Type", content_type), ("Content-Length", str(len(body))), *headers]:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Scrapes are not worth a log line each."""


def serve_metrics(port: int, token: str, host: str = "0.0.0.0") -> ThreadingHTTPServer:
    """Serves the metrics, GPU memory included, on `port` from a daemon thread until the returned server's
    shutdown()."""
    global _gpu_collector
    if _gpu_collector is None:
        _gpu_collector = GpuMemoryCollector()
        REGISTRY.register(_gpu_collector)
    handler = type("MetricsHandler", (_MetricsHandler,), {"token": token})
    server = ThreadingHTTPServer((host, port), handler)
    threading.Thread(target=server.serve_forever, name="squeezer-metrics", daemon=True).start()
    log.info("metrics on port %d", server.server_address[1])
    return server
