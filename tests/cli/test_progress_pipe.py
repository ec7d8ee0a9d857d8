"""Progress a pipeline sees, timed as it arrives: `squeezer compress … | reader` and `squeezer submit --wait | reader`
get a line at least every few seconds from the first line to the exit, also inside a long stage (an epoch of
Fashion-MNIST on one thread, an evaluation, the export), and no library warning reaches the user's output."""

import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch

from squeezer.cli.output import ProgressLines
from squeezer.core.intake.models import LoadedModel, save_model_dir
from squeezer.core.intake.registry import build_architecture
from tests.servers import free_port

REPO = Path(__file__).resolve().parents[2]
# The promise is a line every 5 s; this much slack absorbs a loaded test machine, and is still well below the
# minute-long silences of a heartbeat that only follows engine events.
MAX_GAP_S = 10.0
# What a library's warning looks like on stderr (Python's warnings module, torch's C++ warnings).
WARNING_MARKERS = ("Warning:", "warnings.warn", "[W ")
SERVER_START_TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def lenet_for_fashion(tmp_path_factory) -> Path:
    """An untrained LeNet-5 for 28×28 inputs: Fashion-MNIST's 60,000 training images make an epoch of seconds on
    one thread, long enough that a heartbeat driven by engine events alone falls silent."""
    torch.manual_seed(0)
    args = {"input_size": 28, "in_channels": 1, "num_classes": 10}
    module = build_architecture("lenet5", args)
    model = LoadedModel.built(module, {"name": "lenet5", "args": args}, (1, 28, 28), 10)
    path = tmp_path_factory.mktemp("fashion") / "lenet5"
    save_model_dir(model, path)
    return path


def run_timed(command: list[str], timeout_s: float = 240.0) -> tuple[list[tuple[float, str]], str, int, float]:
    """Runs `command` with stdout a pipe and stamps each line as it arrives: (stamped lines, stderr, exit code, the
    time the process ended on the same clock)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "120"}
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1
    )
    errors: list[str] = []
    reader = threading.Thread(target=lambda: errors.append(process.stderr.read()), daemon=True)
    reader.start()
    stamped = []
    try:
        for line in process.stdout:
            stamped.append((time.monotonic(), line.rstrip("\n")))
        code = process.wait(timeout_s)
    finally:
        process.kill()
    ended = time.monotonic()
    reader.join(30)
    return stamped, "".join(errors), code, ended


def assert_steady(stamped: list[tuple[float, str]], ended: float) -> None:
    times = [stamp for stamp, _ in stamped] + [ended]
    gaps = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
    assert stamped and max(gaps) <= MAX_GAP_S, f"gap of {max(gaps):.1f} s in:\n" + "\n".join(
        f"{stamp - times[0]:6.1f} {line}" for stamp, line in stamped
    )


def assert_no_warnings(*outputs: str) -> None:
    for output in outputs:
        assert not any(marker in output for marker in WARNING_MARKERS), output


def squeezer(*args: str) -> list[str]:
    return [sys.executable, "-c", "from cli.main import app; app()", *args]


def compress_command(model: Path, out: Path, *extra: str) -> list[str]:
    return squeezer(
        "compress",
        str(model),
        "--data",
        "sample:fashion-mnist",
        "--out",
        str(out),
        "--device",
        "cpu",
        "--max-drop",
        "100",
        "--time-limit",
        "30",  # the first layer's training runs into it: a stretch of 15 s and more without an engine event
        *extra,
    )


@pytest.mark.slow
def test_compress_in_a_pipe_prints_a_line_at_least_every_few_seconds(lenet_for_fashion, tmp_path):
    stamped, stderr, code, ended = run_timed(compress_command(lenet_for_fashion, tmp_path / "out"))
    assert code in (0, 3), stderr
    assert_steady(stamped, ended)
    assert_no_warnings(stderr, *(line for _, line in stamped))
    stages = [line.split()[0] for _, line in stamped]
    assert stages[0] == "intake" and "done" in stages


@pytest.mark.slow
def test_compress_json_progress_in_a_pipe_is_steady_and_every_line_an_object(lenet_for_fashion, tmp_path):
    stamped, stderr, code, ended = run_timed(
        compress_command(lenet_for_fashion, tmp_path / "out", "--log-format", "json")
    )
    assert code in (0, 3), stderr
    assert_steady(stamped, ended)
    records = [json.loads(line) for _, line in stamped if line.startswith("{")]  # then the summary table
    assert records[0]["stage"] == "intake" and records[-1]["stage"] == "done" and records[-1]["progress"] == 1.0
    assert_no_warnings(stderr)


@pytest.fixture
def embedded_server(tmp_path):
    """`squeezer serve` as a user starts it: SQLite, local files and the in-process worker."""
    port = free_port()
    process = subprocess.Popen(
        squeezer("serve", "--port", str(port), "--data-dir", str(tmp_path / "service")),
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while not _ready(url):
            assert time.monotonic() < deadline and process.poll() is None, "squeezer serve did not start"
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(30)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz").status_code == 200
    except httpx.TransportError:
        return False


@pytest.mark.slow
def test_submit_wait_in_a_pipe_prints_a_line_at_least_every_few_seconds(embedded_server, lenet_for_fashion, tmp_path):
    stamped, stderr, code, ended = run_timed(
        squeezer(
            "submit",
            str(lenet_for_fashion),
            "--data",
            "sample:fashion-mnist",
            "--server",
            embedded_server,
            "--max-drop",
            "100",
            "--option",
            "time_limit_s=15",
            "--wait",
            "--out",
            str(tmp_path / "out"),
        )
    )
    # the service ends a job that reached its time limit as failed, with its best result kept
    assert code in (0, 3) or (code == 1 and "time limit" in stderr), stderr
    assert_steady(stamped, ended)
    statuses = [line.split("]")[0] for _, line in stamped if line.startswith("[")]
    assert "[running" in statuses and statuses[-1] in ("[succeeded", "[failed"), statuses
    assert_no_warnings(stderr)


def test_the_heartbeat_repeats_the_latest_line_while_no_update_comes():
    stream = io.StringIO()
    with ProgressLines("text", metric="top1", interval=0.05, stream=stream) as lines:
        lines.update("train", 0.4, best_accuracy=91.0, best_ratio=3.0)
        deadline = time.monotonic() + 30
        while stream.getvalue().count("\n") < 3:
            assert time.monotonic() < deadline, "no heartbeat"
            time.sleep(0.01)
    assert lines.heartbeat is not None and not lines.heartbeat.is_alive()
    assert set(stream.getvalue().splitlines()) == {"train 40%  best top1 91.00% ×3.0"}


def test_the_heartbeat_ends_quietly_when_the_reader_goes_away():
    class Pipe(io.StringIO):
        reader_gone = False

        def write(self, text: str) -> int:
            if self.reader_gone:
                raise BrokenPipeError(32, "Broken pipe")
            return super().write(text)

    pipe = Pipe()
    with ProgressLines("json", interval=0.05, stream=pipe) as lines:
        lines.update("train", 0.4)
        pipe.reader_gone = True
        deadline = time.monotonic() + 30
        while lines.heartbeat is not None and lines.heartbeat.is_alive():
            assert time.monotonic() < deadline, "the heartbeat went on writing into a closed pipe"
            time.sleep(0.01)
