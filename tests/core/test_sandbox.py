"""core.sandbox, jailed (one bwrap jail per call, as the API runs its checks) and unjailed (a forking zygote): results
and input errors come back as JSON; memory, CPU and wall-clock limits end the child, not the caller; the child sees an
empty working directory and an environment without secrets. Jailed, it also sees no other process, no network and no
folder but its own and its inputs, and nothing it starts outlives it."""

import os
import signal
import socket
import time
import uuid

import pytest

from squeezer.core.errors import InputError
from squeezer.core.jail import Jail
from squeezer.core.sandbox import Sandbox, SandboxError, SandboxLimits, SandboxOutOfMemory, SandboxTimeout
from tests.worker.conftest import running_processes

TARGETS = "tests.core.sandbox_targets"
JAIL_TARGETS = "tests.core.jail_targets"
LIMIT_BYTES = 1 << 30  # address space: a bare interpreter with numpy fits; the zygote here preloads nothing heavy
JAIL = Jail(packages=("squeezer.core", "tests"))


@pytest.fixture(scope="module", params=["jailed", "unjailed"])
def sandbox(request):
    jail = JAIL if request.param == "jailed" else None
    box = Sandbox(SandboxLimits(memory_bytes=LIMIT_BYTES, cpu_s=2, wall_s=20), preload=("numpy", TARGETS), jail=jail)
    yield box
    box.close()


@pytest.fixture
def jailed():
    return Sandbox(SandboxLimits(memory_bytes=4 << 30, cpu_s=60, wall_s=60), jail=JAIL)


def test_a_result_comes_back_from_an_empty_working_directory(sandbox):
    result = sandbox.run(f"{TARGETS}:echo", {"a": [1, 2]})
    assert result["echo"] == {"a": [1, 2]}
    assert result["cwd_entries"] == [] and result["cwd"] != os.getcwd()
    assert result["pid"] != os.getpid()
    second = sandbox.run(f"{TARGETS}:echo", {})
    assert second["cwd"] != result["cwd"]  # a fresh directory
    if sandbox.jail is None:
        assert second["pid"] != result["pid"]  # a fresh child (jailed, each is its namespace's first process)


def test_no_secret_reaches_the_child(sandbox, monkeypatch, tmp_path):
    monkeypatch.setenv("SQUEEZER_DATABASE_URL", "postgresql://u:hunter2@db/squeezer")
    monkeypatch.setenv("SQUEEZER_BROKER_URL", "redis://:hunter2@redis")
    box = Sandbox(sandbox.limits, preload=(TARGETS,), jail=sandbox.jail)
    try:
        seen = box.run(f"{TARGETS}:environment", {})
        (tmp_path / "squeezer.db").write_text("rows")
        monkeypatch.chdir(tmp_path)
        assert box.run(f"{TARGETS}:read_relative", {"path": "squeezer.db"}) == {"exists": False}
    finally:
        box.close()
    assert not any(key.startswith("SQUEEZER_") for key in seen["environ"])
    assert "hunter2" not in seen["proc_environ"] and "SQUEEZER" not in seen["proc_environ"]


def test_an_input_error_keeps_its_code(sandbox):
    with pytest.raises(InputError) as caught:
        sandbox.run(f"{TARGETS}:refuse", {})
    assert (caught.value.code, caught.value.message) == ("invalid_dataset", "x_train holds 3 samples")


@pytest.mark.slow
@pytest.mark.parametrize(
    "target, payload",
    [
        ("allocate", {"block_bytes": 64 << 20, "blocks": 64}),  # 4 GiB in 64 MiB blocks
        ("allocate_numpy", {"elements": 1 << 30}),  # one 8 GiB array
    ],
)
def test_memory_past_the_limit_is_refused_and_bounded(sandbox, target, payload):
    # Zero-filling a gigabyte is CPU work: on a loaded machine it can take longer than the module's 2 s of CPU,
    # which is the limit under test elsewhere, not here.
    limits = SandboxLimits(memory_bytes=LIMIT_BYTES, cpu_s=30, wall_s=60)
    outcome = sandbox.run_outcome(f"{TARGETS}:{target}", payload, limits)
    assert outcome.error["code"] == "input_check_out_of_memory"
    assert outcome.peak_rss_bytes < LIMIT_BYTES
    with pytest.raises(SandboxOutOfMemory, match="SQUEEZER_CHECK_MEMORY_BYTES"):
        sandbox.run(f"{TARGETS}:{target}", payload, limits)


@pytest.mark.slow
def test_cpu_and_wall_clock_limits_end_the_child(sandbox):
    started = time.monotonic()
    outcome = sandbox.run_outcome(f"{TARGETS}:spin", {})
    assert not outcome.timed_out and outcome.exit_status == -signal.SIGXCPU  # RLIMIT_CPU ended it, not the wall
    with pytest.raises(SandboxTimeout, match="SQUEEZER_CHECK_CPU_S"):
        sandbox.run(f"{TARGETS}:spin", {})
    assert time.monotonic() - started < 20
    impatient = Sandbox(SandboxLimits(memory_bytes=LIMIT_BYTES, cpu_s=60, wall_s=1), (TARGETS,), sandbox.jail)
    try:
        started = time.monotonic()
        with pytest.raises(SandboxTimeout, match="SQUEEZER_CHECK_TIMEOUT_S"):
            impatient.run(f"{TARGETS}:sleep", {"seconds": 60})
        assert time.monotonic() - started < 10
    finally:
        impatient.close()


def test_a_crash_is_an_error_and_the_sandbox_keeps_working(sandbox):
    with pytest.raises(SandboxError) as caught:
        sandbox.run(f"{TARGETS}:crash", {})
    assert caught.value.code == "input_check_crashed"
    with pytest.raises(SandboxError) as caught:
        sandbox.run(f"{TARGETS}:unexpected", {})
    assert caught.value.code == "input_check_crashed" and "/srv" not in caught.value.message
    assert sandbox.run(f"{TARGETS}:echo", {"ok": True})["echo"] == {"ok": True}


def test_checks_run_side_by_side(sandbox):
    from concurrent.futures import ThreadPoolExecutor

    started = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda i: sandbox.run(f"{TARGETS}:sleep", {"seconds": 1}), range(4)))
    assert results == [{}] * 4 and time.monotonic() - started < 3.5


def test_error_messages_lose_server_paths():
    import tempfile

    from squeezer.core.errors import redact_paths

    temp = tempfile.gettempdir()
    message = f"cannot read {temp}/squeezer-check-x1/inputs/model.onnx: [Errno 2] at '{os.getcwd()}/.squeezer/a.db'"
    assert redact_paths(message) == "cannot read model.onnx: [Errno 2] at 'a.db'"
    assert redact_paths("tensor 'w' (graph 'g') 3/4") == "tensor 'w' (graph 'g') 3/4"


def test_a_jailed_check_sees_no_parent_no_network_no_other_folder_and_is_not_root(jailed, tmp_path, monkeypatch):
    monkeypatch.setenv("SQUEEZER_DATABASE_URL", "postgresql://u:hunter2@db/squeezer")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    inputs, sibling = tmp_path / "inputs", tmp_path / "other-check"
    inputs.mkdir()
    sibling.mkdir()
    (inputs / "model.onnx").write_bytes(b"upload")
    payload = {"parent_pid": os.getpid(), "port": server.getsockname()[1], "sibling": str(sibling)}
    try:
        seen = jailed.run(
            f"{JAIL_TARGETS}:look_around_check", {**payload, "input": str(inputs / "model.onnx")}, visible=(inputs,)
        )
    finally:
        server.close()
    assert "hunter2" not in repr(seen["environ"]) + seen["proc_environ"]
    assert seen["parent_environ"] is None and not seen["parent_visible"] and max(seen["pids"]) < 10
    assert seen["network"] != "connected" and seen["uid"] != 0
    assert set(seen["capabilities"]) == {"0000000000000000"}
    assert not seen["sibling_visible"] and seen["input_readable"] and not seen["input_writable"]


def test_nothing_a_jailed_check_starts_outlives_it(jailed, tmp_path):
    token = f"squeezer-orphan-{uuid.uuid4().hex}"
    result = jailed.run(f"{JAIL_TARGETS}:orphan_check", {"ready": "ready", "token": token})
    assert result == {"escaped": True}  # a setsid, double-forked process was running when the check returned
    assert [pid for pid, (*_, cmdline) in running_processes().items() if token.encode() in cmdline] == []
