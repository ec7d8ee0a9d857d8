"""The jail a job's engine runs in (worker.engine_process on core.jail), seen from inside the job: no secret, no
parent, no network, no other job's folder, no root, and nothing it starts outlives it; and the worker's side of the
pipe holds against a child that runs out of memory, ignores a stop, or breaks the protocol."""

import contextlib
import os
import socket
import time
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from squeezer.core.errors import Cancelled
from squeezer.core.events import Event
from squeezer.core.jail import Jail, JailLimits, JailMode, JailUnavailable, python_command, start_spare
from squeezer.store.settings import Settings
from squeezer.worker.context import WorkerContext
from squeezer.worker.engine_process import EngineOutOfMemory, EngineProtocolError, EngineRun, EngineTimeLimit
from squeezer.worker.runner import _zip_folder

TARGETS = "tests.core.jail_targets"
JAIL = Jail(packages=("squeezer.core", "tests"))
LIMITS = JailLimits(memory_bytes=6 << 30)


@contextlib.contextmanager
def engine(events: list[Event] | None = None, stop=lambda: False, limits=LIMITS, **fields) -> Iterator[EngineRun]:
    """An EngineRun in a fresh jailed engine interpreter, as the worker gets one (core.jail.start_spare)."""
    spare = start_spare(JAIL, python_command("squeezer.core.jail_entry"), limits)
    sink = events if events is not None else []
    try:
        yield EngineRun(spare, sink.append, stop, **fields)
    finally:
        spare.close()


@pytest.fixture
def listener():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    yield server.getsockname()[1]
    server.close()


def test_the_job_sees_no_secret_no_parent_no_network_and_no_other_folder(tmp_path, monkeypatch, listener):
    monkeypatch.setenv("SQUEEZER_DATABASE_URL", "postgresql://squeezer:hunter2@db/squeezer")
    monkeypatch.setenv("SQUEEZER_BROKER_URL", "redis://:hunter2@redis:6379/0")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "hunter2")
    sibling = tmp_path / "other-job"
    sibling.mkdir()
    (sibling / "inputs.zip").write_bytes(b"someone else's upload")
    payload = {"parent_pid": os.getpid(), "port": listener, "sibling": str(sibling)}
    with engine() as run:
        seen = run.run(f"{TARGETS}:look_around", payload)
    assert "hunter2" not in repr(seen["environ"]) + seen["proc_environ"]
    assert not any(key.startswith(("SQUEEZER_", "AWS_")) for key in seen["environ"])
    assert seen["parent_environ"] is None and not seen["parent_visible"]
    assert max(seen["pids"]) < 10, seen["pids"]  # its own PID namespace: a handful of its own processes
    assert seen["network"] != "connected"
    assert seen["uid"] != 0 and seen["euid"] != 0
    assert set(seen["capabilities"]) == {"0000000000000000"}
    assert not seen["sibling_visible"] and not seen["source_writable"] and seen["workdir_writable"]


def test_nothing_the_job_starts_outlives_it():
    token = f"squeezer-orphan-{uuid.uuid4().hex}"
    with engine() as run:
        result = run.run(f"{TARGETS}:orphan", {"ready": str(run.workdir / "ready"), "token": token})
    assert result == {"escaped": True}  # it was running, out of its session and reparented, when the job ended
    survivors = [pid for pid in _pids() if token.encode() in _cmdline(pid)]
    assert survivors == []


def test_running_out_of_memory_ends_as_out_of_memory():
    events: list[Event] = []
    with pytest.raises(EngineOutOfMemory) as caught:
        with engine(events, limits=JailLimits(memory_bytes=2 << 30)) as run:
            run.run(f"{TARGETS}:allocate", {})
    assert caught.value.code == "out_of_memory" and "SQUEEZER_JOB_MEMORY_BYTES" in caught.value.message
    assert [event.stage for event in events] == ["intake"]


def test_a_stop_is_passed_to_the_job():
    events: list[Event] = []
    with pytest.raises(Cancelled):
        with engine(events, stop=lambda: len(events) >= 3) as run:
            run.run(f"{TARGETS}:obey", {})
    assert 3 <= len(events) < 20


def test_a_job_that_ignores_the_stop_is_killed_after_the_grace():
    events: list[Event] = []
    started = time.monotonic()
    with pytest.raises(Cancelled):
        with engine(events, stop=lambda: bool(events), stop_grace_s=1.0) as run:
            run.run(f"{TARGETS}:ignore_stop", {})
    assert time.monotonic() - started < 30


def test_a_job_past_its_deadline_is_killed():
    with pytest.raises(EngineTimeLimit) as caught:
        with engine(deadline_s=3.0) as run:
            run.run(f"{TARGETS}:ignore_stop", {})
    assert caught.value.code == "time_limit_exceeded"


@pytest.mark.parametrize(
    "target, payload", [("garble", {"kind": "not_json"}), ("garble", {"kind": "too_long"}), ("flood", {})]
)
def test_a_broken_protocol_fails_the_job_and_not_the_worker(target, payload):
    with pytest.raises(EngineProtocolError) as caught:
        with engine() as run:
            run.run(f"{TARGETS}:{target}", payload)
    assert caught.value.code == "engine_protocol_error"


def test_a_checkpoint_is_packed_before_the_job_goes_on_and_links_are_left_out(tmp_path):
    secret = tmp_path / "worker-secret.txt"
    secret.write_text("hunter2")
    packed: list[set[str]] = []
    with engine() as run:
        folder = run.workdir / "checkpoint"
        folder.mkdir()

        def on_checkpoint() -> None:
            with zipfile.ZipFile(_zip_folder(folder, tmp_path / "checkpoint.zip")) as archive:
                packed.append(set(archive.namelist()))
                assert b"hunter2" not in b"".join(archive.read(name) for name in archive.namelist())

        run.on_checkpoint = on_checkpoint
        result = run.run(f"{TARGETS}:checkpoint", {"checkpoint_dir": str(folder), "outside": str(secret)})
    assert result == {"after_ack": True} and packed == [{"state.bin"}]


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def test_a_worker_without_a_jail_refuses_to_start_unless_allowed(tmp_path):
    settings = Settings(data_dir=tmp_path, storage_backend="local", jail="none")
    with pytest.raises(JailUnavailable, match="SQUEEZER_ALLOW_UNJAILED_ENGINE"):
        WorkerContext.from_settings(settings)
    allowed = WorkerContext.from_settings(settings.model_copy(update={"allow_unjailed_engine": True}))
    assert allowed.jail.mode is JailMode.NONE


def test_workers_built_again_in_one_process_share_the_engine_kept_ready(tmp_path):
    settings = Settings(data_dir=tmp_path, storage_backend="local", jail="none", allow_unjailed_engine=True)
    first, again = (WorkerContext.from_settings(settings).engines for _ in range(2))
    assert again is first
    other_limits = settings.model_copy(update={"job_memory_bytes": settings.job_memory_bytes // 2})
    assert WorkerContext.from_settings(other_limits).engines is not first
