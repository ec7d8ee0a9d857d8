"""A small job service for the worker tests: migrated PostgreSQL, Redis, database blob storage, real worker
processes (`python -m squeezer.worker`), and a tiny LeNet-5 digits model uploaded as a zip of its model directory."""

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from squeezer.core.jail import usable_cores
from squeezer.store.artifacts import store_file
from squeezer.store.jobs import create_job
from squeezer.store.models import Job, JobEvent, JobResult
from squeezer.store.settings import Settings
from squeezer.store.statuses import FINAL_STATUSES
from squeezer.worker.context import WorkerContext
from squeezer.worker.dispatch import CeleryDispatcher
from tests.api.conftest import TINY_OPTIONS, tiny_job
from tests.helpers import wait_until

REPO = Path(__file__).resolve().parents[2]


def tiny_spec(model_artifact_id: str, **lwct) -> dict:
    """tests.api.conftest's tiny job as a stored spec, with `lwct` options changed."""
    return tiny_job(model_artifact_id, options={"lwct": {**TINY_OPTIONS["lwct"], **lwct}}, metadata={})


def running_processes() -> dict[int, tuple[int, str, int, bytes]]:
    """pid → (parent pid, name, real uid, command line) of every process (skipping those that vanish)."""
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
            status = Path(f"/proc/{name}/status").read_text()
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        uid = int(next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:")))
        found[int(name)] = (ppid, comm, uid, cmdline)
    return found


@pytest.fixture(scope="session")
def sample_model_zip(tmp_path_factory) -> Path:
    from squeezer.core.samples import ensure_sample_model

    model_dir, _ = ensure_sample_model("digits")
    return Path(shutil.make_archive(str(tmp_path_factory.mktemp("model") / "lenet5-digits"), "zip", root_dir=model_dir))


class Service:
    def __init__(self, env: dict[str, str], log_dir: Path):
        self.env = env
        self.log_dir = log_dir
        self.ctx = WorkerContext.from_settings(
            Settings(
                **{key[len("SQUEEZER_") :].lower(): value for key, value in env.items() if key.startswith("SQUEEZER_")}
            )
        )
        self.workers: list[subprocess.Popen] = []
        self._dispatcher: CeleryDispatcher | None = None

    @property
    def dispatcher(self) -> CeleryDispatcher:
        if self._dispatcher is None:
            self._dispatcher = CeleryDispatcher(self.env["SQUEEZER_BROKER_URL"])
        return self._dispatcher

    def upload(self, path: Path, kind: str = "model") -> str:
        return store_file(self.ctx.session_factory, self.ctx.blobs, path, tenant="default", kind=kind).id

    def create(self, spec: dict, max_attempts: int = 3) -> str:
        with self.ctx.session_factory() as session:
            job, _ = create_job(
                session, tenant="default", spec=spec, idempotency_key=None, request_hash=None, max_attempts=max_attempts
            )
        return job.id

    def job(self, job_id: str) -> Job:
        with self.ctx.session_factory() as session:
            return session.get(Job, job_id)

    def results(self, job_id: str) -> dict[str, str]:
        with self.ctx.session_factory() as session:
            return {
                row.name: row.artifact_id
                for row in session.scalars(select(JobResult).where(JobResult.job_id == job_id))
            }

    def event_stages(self, job_id: str) -> list[str]:
        with self.ctx.session_factory() as session:
            return list(session.scalars(select(JobEvent.stage).where(JobEvent.job_id == job_id).order_by(JobEvent.id)))

    def wait(self, job_id: str, until, timeout_s: float = 120) -> Job:
        job = self.job(job_id)

        def reached() -> Job | None:
            nonlocal job
            job = self.job(job_id)
            return job if until(job) else None

        def state() -> str:
            return f"job {job_id}; it is {job.status} ({job.progress}); worker logs in {self.log_dir}"

        return wait_until(reached, timeout_s, state, 0.2)

    def wait_final(self, job_id: str, timeout_s: float = 120) -> Job:
        return self.wait(job_id, lambda job: job.status in FINAL_STATUSES, timeout_s)

    def start_worker(self) -> subprocess.Popen:
        log = (self.log_dir / f"worker-{len(self.workers)}.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "squeezer.worker"], cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        self.workers.append(process)
        return process

    def stop(self) -> None:
        for process in self.workers:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.workers:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._dispatcher is not None:
            self._dispatcher.stop()
        self.ctx.session_factory.kw["bind"].dispose()


def start_service(postgres_url: str, redis_url: str, tmp_path: Path) -> Service:
    """A Service whose workers use the migrated database at `postgres_url` and the broker at `redis_url`."""
    env = {
        **os.environ,
        "SQUEEZER_DATABASE_URL": postgres_url,
        "SQUEEZER_BROKER_URL": redis_url,
        "SQUEEZER_DATA_DIR": str(tmp_path / "data"),
        "SQUEEZER_STORAGE_BACKEND": "database",
        "SQUEEZER_STORAGE_CHUNK_BYTES": str(64 * 1024),
        "SQUEEZER_HEARTBEAT_INTERVAL_S": "0.5",
        # Long enough that a loaded machine's late heartbeat is not taken for a dead worker (3 s requeued a live job).
        "SQUEEZER_HEARTBEAT_TIMEOUT_S": "10",
        # A lost message is sent again this soon, not five heartbeat timeouts later: tests that lose one wait for it.
        "SQUEEZER_QUEUED_RESEND_S": "10",
        "SQUEEZER_WORKER_DEVICE": "cpu",
        # One compute thread per job (core.jail.threads_per_job): the tests' own processes share the machine with the
        # job, and a tiny job's engine with a thread per core spun against them several times slower.
        "SQUEEZER_JOBS_PER_MACHINE": str(usable_cores()),
        "OMP_NUM_THREADS": "1",
    }
    return Service(env, tmp_path)


@pytest.fixture
def service(postgres_url, redis_url, tmp_path):
    service = start_service(postgres_url, redis_url, tmp_path)
    yield service
    service.stop()
