"""What many tests share: waiting for a condition, serving an app on a real server, following a job to its end."""

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from squeezer.core.methods import registry
from squeezer.store.statuses import FINAL_STATUSES

T = TypeVar("T")


def wait_until(
    condition: Callable[[], T],
    timeout_s: float = 30,
    what: str | Callable[[], str] = "the condition",
    interval_s: float = 0.1,
    not_yet: tuple[type[BaseException], ...] = (),
) -> T:
    """Calls `condition` until it returns something truthy, and returns that: a test waits for what the system
    reports, never for a fixed time. An exception in `not_yet` (a server still starting) counts as not yet. Past
    `timeout_s` it fails with `what` (a callable for a message that needs the latest state)."""
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(*not_yet):
            if value := condition():
                return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what() if callable(what) else what}")
        time.sleep(interval_s)


def final_job(client: Any, job_id: str, timeout_s: float = 300) -> dict:
    """The job as `GET /v1/jobs/{id}` shows it once its status is final (`client`: a TestClient or an httpx
    client on the API)."""
    job: dict = {}

    def final() -> dict | None:
        nonlocal job
        job = client.get(f"/v1/jobs/{job_id}").json()
        return job if job["status"] in FINAL_STATUSES else None

    return wait_until(final, timeout_s, lambda: f"job {job_id} to end; it is {job.get('status')}", 0.2)


@contextlib.contextmanager
def live_server(app) -> Iterator[str]:
    """`app` served by uvicorn on a thread, on a free loopback port, as in production (real sockets, the lifespan
    run); yields its base URL and stops the server on exit."""
    from squeezer.cli.service_commands import serve_in_thread

    server, thread, port = serve_in_thread(app, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


class ManualClock:
    """A clock for code that takes one (`clock=`): its seconds pass only when the test advances it, so expiry is
    shown exactly, whatever the machine's load."""

    def __init__(self, now: float = 0.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def own_options(method: str, **options: Any) -> dict[str, Any]:
    """The per-method options among `options` that `method` reads: a config refuses another method's options."""
    reads = registry.method(method).reads
    return {name: value for name, value in options.items() if name in reads}
