"""core.sandbox: results and input errors come back as JSON; memory, CPU and wall-clock limits end the child, not the
caller; the child sees an empty working directory and an environment without secrets."""

import os
import signal
import time

import pytest

from core.errors import InputError
from core.sandbox import Sandbox, SandboxError, SandboxLimits, SandboxOutOfMemory, SandboxTimeout

TARGETS = "tests.core.sandbox_targets"
LIMIT_BYTES = 1 << 30  # address space: a bare interpreter with numpy fits; the zygote here preloads nothing heavy


@pytest.fixture(scope="module")
def sandbox():
    box = Sandbox(SandboxLimits(memory_bytes=LIMIT_BYTES, cpu_s=2, wall_s=20), preload=("numpy", TARGETS))
    yield box
    box.close()


def test_a_result_comes_back_from_an_empty_working_directory(sandbox):
    result = sandbox.run(f"{TARGETS}:echo", {"a": [1, 2]})
    assert result["echo"] == {"a": [1, 2]}
    assert result["cwd_entries"] == [] and result["cwd"] != os.getcwd()
    assert result["pid"] != os.getpid()
    second = sandbox.run(f"{TARGETS}:echo", {})
    assert second["pid"] != result["pid"] and second["cwd"] != result["cwd"]  # a fresh child, a fresh directory


def test_no_secret_reaches_the_child(sandbox, monkeypatch, tmp_path):
    monkeypatch.setenv("SQUEEZER_DATABASE_URL", "postgresql://u:hunter2@db/squeezer")
    monkeypatch.setenv("SQUEEZER_BROKER_URL", "redis://:hunter2@redis")
    box = Sandbox(sandbox.limits, preload=(TARGETS,))
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


def test_cpu_and_wall_clock_limits_end_the_child(sandbox):
    started = time.monotonic()
    outcome = sandbox.run_outcome(f"{TARGETS}:spin", {})
    assert not outcome.timed_out and outcome.exit_status == -signal.SIGXCPU  # RLIMIT_CPU ended it, not the wall
    with pytest.raises(SandboxTimeout, match="SQUEEZER_CHECK_CPU_S"):
        sandbox.run(f"{TARGETS}:spin", {})
    assert time.monotonic() - started < 20
    impatient = Sandbox(SandboxLimits(memory_bytes=LIMIT_BYTES, cpu_s=60, wall_s=1), preload=(TARGETS,))
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

    from core.errors import redact_paths

    temp = tempfile.gettempdir()
    message = f"cannot read {temp}/squeezer-check-x1/inputs/model.onnx: [Errno 2] at '{os.getcwd()}/.squeezer/a.db'"
    assert redact_paths(message) == "cannot read model.onnx: [Errno 2] at 'a.db'"
    assert redact_paths("tensor 'w' (graph 'g') 3/4") == "tensor 'w' (graph 'g') 3/4"
