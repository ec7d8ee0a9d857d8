"""The service commands against real servers: `squeezer serve` as a process, the client commands against a live API."""

import http.server
import re
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from squeezer.api.app import create_app
from squeezer.cli.main import app
from squeezer.cli.output import parse_options
from squeezer.store.db import make_engine, make_session_factory
from squeezer.store.jobs import create_job
from squeezer.store.settings import Settings
from squeezer.worker.dispatch import CeleryDispatcher
from tests.helpers import wait_until
from tests.servers import free_port

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


@pytest.fixture
def queued_server(postgres_url, redis_url, tmp_path, serve_live):
    """A live API whose jobs stay queued (no worker reads its broker)."""
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=postgres_url,
        storage_backend="database",
    )
    return serve_live(create_app(settings, dispatcher=CeleryDispatcher(redis_url)))


def test_options_parse_dotted_keys_and_json_values():
    assert parse_options(["lwct.sparsity=0.5", "lwct.ranking=size", "seed=3", "time_limit_s=null"]) == {
        "lwct": {"sparsity": 0.5, "ranking": "size"},
        "seed": 3,
        "time_limit_s": None,
    }


def test_submit_of_a_missing_file_exits_2_with_one_line(tmp_path):
    result = runner.invoke(
        app,
        [
            "submit",
            str(tmp_path / "nope.onnx"),
            "--data",
            "sample:digits",
            "--server",
            "http://127.0.0.1:9",
        ],
    )
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0 and "nope.onnx" in result.stderr


def test_submit_to_no_server_exits_1(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    result = runner.invoke(
        app,
        [
            "submit",
            str(model),
            "--data",
            "sample:digits",
            "--server",
            f"http://127.0.0.1:{free_port()}",
        ],
    )
    assert result.exit_code == 1 and "cannot reach" in result.stderr
    assert result.stderr.strip().count("\n") == 0


@pytest.mark.parametrize("url", ["not a url", "ftp://127.0.0.1/", "http://[::1"])
def test_a_malformed_server_url_exits_2_with_one_line(url):
    result = runner.invoke(app, ["jobs", "list", "--server", url])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().count("\n") == 0 and "invalid server URL" in result.stderr


@pytest.fixture
def foreign_server():
    """A web server that is not a Squeezer API: every GET answers 200 with the body the test sets."""

    class Handler(http.server.BaseHTTPRequestHandler):
        body = b""

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(self.body)))
            self.end_headers()
            self.wfile.write(self.body)

        def log_message(self, *_) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield Handler, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join(30)


def test_an_answer_that_is_not_json_exits_1_with_one_line(foreign_server):
    handler, url = foreign_server
    handler.body = b"<html>a web page</html>"
    result = runner.invoke(app, ["jobs", "show", "some-id", "--server", url])
    assert result.exit_code == 1, result.output
    assert result.stderr.strip().count("\n") == 0 and "Squeezer API" in result.stderr


def test_an_unforeseen_client_error_is_one_line_naming_its_log_and_debug_prints_the_traceback(foreign_server):
    handler, url = foreign_server
    handler.body = b"{}"  # JSON, but no page of jobs: the client's code fails where nothing foresaw it
    result = runner.invoke(app, ["jobs", "list", "--server", url])
    assert result.exit_code == 1, result.output
    line = result.stderr.strip()
    assert line.count("\n") == 0 and line.startswith("error: internal_error:") and "Traceback" not in line
    log = Path(re.search(r"the traceback is in (\S+\.log)", line).group(1))
    try:
        assert "KeyError" in log.read_text()
    finally:
        log.unlink()
    debugged = runner.invoke(app, ["--debug", "jobs", "list", "--server", url])
    assert debugged.exit_code == 1 and "Traceback" in debugged.stderr and "KeyError" in debugged.stderr


def test_submit_of_an_unusable_model_exits_2_with_the_problem_detail(queued_server, tmp_path):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"definitely not onnx")
    result = runner.invoke(
        app,
        [
            "submit",
            str(model),
            "--data",
            "sample:digits",
            "--server",
            queued_server,
            "--wait",
        ],
    )
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().count("\n") == 0 and result.stderr.strip()


def test_jobs_list_show_cancel_download_delete(queued_server, postgres_url, tmp_path):
    # The job is inserted through the store: the engine's input check is the API tests' business, not this one's.
    engine = make_engine(postgres_url)
    with make_session_factory(engine)() as session:
        job, _ = create_job(
            session,
            tenant="default",
            spec={"model": {"artifact_id": "art_x"}, "dataset": {"sample": "digits"}},
            idempotency_key=None,
            request_hash=None,
            max_attempts=3,
        )
    engine.dispose()

    listed = runner.invoke(app, ["jobs", "list", "--server", queued_server])
    assert listed.exit_code == 0 and job.id in listed.output
    shown = runner.invoke(app, ["jobs", "show", job.id, "--server", queued_server])
    assert shown.exit_code == 0 and '"queued"' in shown.output
    cancelled = runner.invoke(app, ["jobs", "cancel", job.id, "--server", queued_server])
    assert cancelled.exit_code == 0 and "cancelled" in cancelled.output
    downloaded = runner.invoke(
        app,
        [
            "jobs",
            "download",
            job.id,
            "--server",
            queued_server,
            "--out",
            str(tmp_path / "out"),
        ],
    )
    assert downloaded.exit_code == 0 and list((tmp_path / "out").iterdir()) == []
    deleted = runner.invoke(app, ["jobs", "delete", job.id, "--server", queued_server])
    assert deleted.exit_code == 0 and f"job {job.id} deleted" in deleted.output
    assert runner.invoke(app, ["jobs", "delete", job.id, "--server", queued_server]).exit_code == 2
    missing = runner.invoke(app, ["jobs", "show", "job_missing", "--server", queued_server])
    assert missing.exit_code == 2 and "job_missing" in missing.stderr


@pytest.mark.slow
def test_serve_runs_the_embedded_service(tmp_path):
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from cli.main import app; app()",
            "serve",
            "--port",
            str(port),
            "--data-dir",
            str(tmp_path / "data"),
        ],
        cwd=REPO,
    )

    def ready() -> bool:
        assert process.poll() is None, "squeezer serve exited"
        return httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200

    try:
        wait_until(ready, 60, "squeezer serve to be ready", 0.2, not_yet=(httpx.TransportError,))
        assert (tmp_path / "data" / "squeezer.db").exists()
    finally:
        process.terminate()
        process.wait(30)
