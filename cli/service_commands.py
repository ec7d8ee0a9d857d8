"""Service commands: serve, api, worker (run the service) and submit, jobs, demo (talk to it over REST).

Client exit codes match `squeezer compress`: 0 target met, 3 result written but target missed, 2 bad input (the
problem's detail on one stderr line), 1 job failed or cancelled."""

import contextlib
import functools
import ipaddress
import json
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.progress import (
    BarColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

from squeezer.cli.output import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_TARGET_MET,
    EXIT_TARGET_MISSED,
    LOG_FORMAT_HELP,
    ClientError,
    LogFormat,
    ProgressLines,
    cli_state,
    console,
    err_console,
    parse_options,
    print_one_line,
    print_report,
    print_rows,
    report_internal_error,
)
from squeezer.core.config import DropType
from squeezer.core.methods.registry import MethodName, summaries
from squeezer.store.statuses import FINAL_STATUSES, STATUSES_WITH_RESULTS, JobStatus

DEFAULT_SERVER = "http://127.0.0.1:8000"
POLL_INTERVAL_S = 1.0
# Requests answer in seconds; a read may wait minutes: a submission is answered after the engine checked its inputs.
HTTP_TIMEOUT_S = 30.0
HTTP_READ_TIMEOUT_S = 600.0
# A non-problem error body (a proxy's HTML page) is cut to what fits the one stderr line.
ERROR_TEXT_CHARS = 200
# The embedded server starts in well under a second; this long means it will not. Stopping waits for a running
# request (an upload) to end.
SERVER_START_TIMEOUT_S = 60.0
SERVER_START_POLL_S = 0.05
SERVER_STOP_TIMEOUT_S = 30.0

jobs_app = typer.Typer(
    help="List, inspect, cancel, download and delete jobs on a Squeezer server.",
    no_args_is_help=True,
)

ServerOption = Annotated[
    str,
    typer.Option("--server", envvar="SQUEEZER_SERVER", help="Squeezer API base URL."),
]
ApiKeyOption = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar="SQUEEZER_API_KEY",
        help="API key sent as `Authorization: Bearer` (from `squeezer keys create`).",
    ),
]


def _problem_line(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):  # not a problem document: a proxy's page, or another service
        return f"HTTP {response.status_code}: {response.text[:ERROR_TEXT_CHARS]}"
    return f"{body.get('title', response.status_code)}: {body.get('detail') or body.get('type')}"


def _check(response: httpx.Response) -> httpx.Response:
    if response.status_code >= 500:
        raise ClientError(_problem_line(response), EXIT_FAILED)
    if response.status_code >= 400:
        raise ClientError(_problem_line(response), EXIT_BAD_INPUT)
    return response


def _answer(response: httpx.Response) -> Any:
    """The JSON body of a successful answer; a body that is not JSON means the URL is not a Squeezer API."""
    try:
        return _check(response).json()
    except ValueError:
        raise ClientError(
            f"{response.request.method} {response.url} answered HTTP {response.status_code} without JSON: is "
            "--server a Squeezer API?",
            EXIT_FAILED,
        ) from None


def _client(server: str, api_key: str | None = None) -> httpx.Client:
    return httpx.Client(
        base_url=server.rstrip("/"),
        timeout=httpx.Timeout(HTTP_TIMEOUT_S, read=HTTP_READ_TIMEOUT_S),
        headers={"Authorization": f"Bearer {api_key}"} if api_key else None,
    )


def upload(client: httpx.Client, path: Path, kind: str) -> str:
    """Uploads a file (a directory is zipped first: model directories and image folders travel as .zip); one that
    cannot be read is the input's problem."""
    with tempfile.TemporaryDirectory(prefix="squeezer-upload-") as tmp:
        try:
            if path.is_dir():
                path = Path(shutil.make_archive(str(Path(tmp) / path.name), "zip", root_dir=path))
            if not path.is_file():
                raise ClientError(f"{path}: no such file or directory", EXIT_BAD_INPUT)
            file = path.open("rb")
        except OSError as error:
            raise ClientError(f"{path}: cannot read it ({error.strerror or error})", EXIT_BAD_INPUT) from None
        with file:
            answer = _answer(
                client.post(
                    "/v1/artifacts",
                    data={"kind": kind},
                    files={"file": (path.name, file, "application/octet-stream")},
                )
            )
    return answer["id"]


def create_job(
    client: httpx.Client,
    model: Path,
    data: str,
    *,
    max_drop: float,
    drop_type: str,
    method: str,
    options: dict[str, Any],
) -> dict:
    model_id = upload(client, model, "model")
    dataset = (
        {"sample": data.removeprefix("sample:")}
        if data.startswith("sample:")
        else {"artifact_id": upload(client, Path(data), "dataset")}
    )
    body = {
        "model": {"artifact_id": model_id},
        "dataset": dataset,
        "method": method,
        "accuracy_target": {"max_drop": max_drop, "drop_type": drop_type},
        "options": options,
    }
    return _answer(client.post("/v1/jobs", json=body))


def wait_for_job(client: httpx.Client, job: dict, lines: ProgressLines) -> dict:
    """Polls with If-None-Match (the server answers 304 while nothing changed) and shows a progress bar; progress
    lines on stdout for pipelines (`lines`: one per poll that changes the stage, and at least every few seconds, also
    while a request hangs)."""
    tag = None
    columns = (
        TextColumn("{task.fields[status]:>10}"),
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err_console, transient=False) as bar:
        task = bar.add_task(JobStatus.QUEUED, total=1.0, status=job["status"])
        _show_progress(job, lines)
        while job["status"] not in FINAL_STATUSES:
            time.sleep(POLL_INTERVAL_S)
            response = client.get(f"/v1/jobs/{job['id']}", headers={"If-None-Match": tag} if tag else {})
            if response.status_code != 304:
                job = _answer(response)
                tag = response.headers.get("ETag")
                bar.update(task, completed=job["progress"].get("fraction", 0.0), description=_bar_description(job))
            bar.update(task, status=job["status"])
            _show_progress(job, lines)
        bar.update(task, completed=1.0 if job["status"] == JobStatus.SUCCEEDED else None)
    return job


def _show_progress(job: dict, lines: ProgressLines) -> None:
    progress = job["progress"]
    lines.update(
        progress.get("stage", ""),
        progress.get("fraction", 0.0),
        best_accuracy=progress.get("best_accuracy"),
        best_ratio=progress.get("best_compression_ratio"),
        status=job["status"],
    )


def _bar_description(job: dict) -> str:
    progress = job["progress"]
    best, accuracy = progress.get("best_compression_ratio"), progress.get("best_accuracy")
    figures = f"  best ×{best:.1f} @ {accuracy:.2f}%" if best and accuracy is not None else ""
    return progress.get("stage", "") + figures


def download_results(client: httpx.Client, job_id: str, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for item in _answer(client.get(f"/v1/jobs/{job_id}/artifacts")):
        name = Path(item["name"]).name
        target = out_dir / name
        # A presigned S3 download (SQUEEZER_S3_PRESIGN_DOWNLOADS) is a 307 to the bucket; httpx drops the API key
        # on that cross-origin hop.
        with client.stream("GET", item["url"], follow_redirects=True) as response:
            if response.status_code >= 400:
                response.read()
                _check(response)
            with target.open("wb") as file:
                for chunk in response.iter_bytes():
                    file.write(chunk)
        paths.append(target)
    return paths


def print_summary(job: dict, report: dict | None, out_dir: Path | None) -> None:
    console.print(f"job {job['id']}: {job['status']}", highlight=False)
    if report:
        print_report(report, out_dir)
        return
    if job.get("error"):
        console.print(f"[red]{job['error']['code']}[/red]: {job['error']['message']}")
    if out_dir is not None:
        console.print(f"results in {out_dir}", highlight=False)


def finish(client: httpx.Client, job: dict, out_dir: Path) -> int:
    """Downloads the results of a final job (a failed one may keep its best result: time limits), prints the summary
    and returns the exit code."""
    paths = download_results(client, job["id"], out_dir) if job["status"] in STATUSES_WITH_RESULTS else []
    report_path = out_dir / "report.json"
    report = json.loads(report_path.read_text()) if report_path in paths else None
    print_summary(job, report, out_dir if paths else None)
    if job["status"] != JobStatus.SUCCEEDED:
        error = job.get("error") or {}
        err_console.print(
            f"job {job['id']} {job['status']}: {error.get('message') or error.get('code') or 'no result'}",
            highlight=False,
        )
        return EXIT_FAILED
    return EXIT_TARGET_MET if job.get("target_met") else EXIT_TARGET_MISSED


def submit_and_wait(
    server: str,
    model: Path,
    data: str,
    *,
    out_dir: Path,
    wait: bool,
    max_drop: float = 1.0,
    drop_type: str = "absolute",
    method: str = "lwct",
    options: dict | None = None,
    api_key: str | None = None,
    log_format: LogFormat = "text",
) -> int:
    """The body of `squeezer submit` (and of `squeezer demo`): exit code as documented above. A problem answer
    raises ClientError, no answer an httpx error (`run_client` turns both into one line)."""
    # With --wait, progress lines start before the upload: the submission check alone can take tens of seconds.
    progress = ProgressLines(log_format) if wait else contextlib.nullcontext()
    with _client(server, api_key) as client, progress as lines:
        if lines:
            lines.update("submit", 0.0, status="submitting")
        job = create_job(
            client,
            model,
            data,
            max_drop=max_drop,
            drop_type=drop_type,
            method=method,
            options=options or {},
        )
        console.print(f"job {job['id']} {job['status']}")
        if not lines:
            return EXIT_TARGET_MET
        return finish(client, wait_for_job(client, job, lines), out_dir)


def serve_in_thread(app, host: str, port: int):
    """Starts uvicorn on a thread and returns (server, thread, port) once it listens."""
    import uvicorn

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", log_config=None))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the embedded server did not start")
        time.sleep(SERVER_START_POLL_S)
    return server, thread, sock.getsockname()[1]


def embedded_settings(data_dir: Path, *, auth: bool = False):
    """The embedded mode's configuration: SQLite and local blobs under `data_dir`, no broker. `squeezer keys
    --data-dir` uses it too, so keys land in the database `serve --data-dir` reads."""
    from squeezer.store.settings import get_settings

    return get_settings(
        data_dir=data_dir.resolve(),
        database_url="",
        broker_url="",
        storage_backend="local",
        auth=auth,
    )


def embedded_app(data_dir: Path, *, auth: bool = False, least_log_level: str | None = None):
    """The embedded mode, migrated, with the in-process worker; its logs as SQUEEZER_LOG_FORMAT/LEVEL say."""
    from squeezer.api.app import create_app
    from squeezer.store.logging_setup import configure_logging
    from squeezer.store.migrate import upgrade_database

    settings = embedded_settings(data_dir, auth=auth)
    configure_logging(settings, least_level=least_log_level)
    upgrade_database(settings.resolved_database_url)
    return create_app(settings)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(
    host: Annotated[
        str,
        typer.Option(help="Interface to bind. Without --auth only a loopback address is allowed."),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    data_dir: Annotated[
        Path,
        typer.Option("--data-dir", help="Where the SQLite database and the files go."),
    ] = Path(".squeezer"),
    auth: Annotated[
        bool,
        typer.Option(
            "--auth",
            help="Require API keys (`squeezer keys create --tenant NAME --data-dir DIR`).",
        ),
    ] = False,
) -> None:
    """Run the whole service in one process: API, SQLite, local storage and an in-process worker."""
    import uvicorn

    if not auth and not is_loopback(host):
        err_console.print(
            f"refusing to serve {host} without authentication: bind a loopback address or add --auth",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(EXIT_BAD_INPUT)
    access = (
        f"API keys required (create one with `squeezer keys create --tenant NAME --data-dir {data_dir}`)"
        if auth
        else "no authentication (loopback only; --auth turns API keys on)"
    )
    console.print(
        f"Squeezer embedded service on http://{host}:{port} (data in {data_dir}); {access}.",
        soft_wrap=True,
    )
    uvicorn.run(embedded_app(data_dir, auth=auth), host=host, port=port, log_config=None)


def api(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "0.0.0.0",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    auth: Annotated[
        bool,
        typer.Option(
            "--auth/--no-auth",
            envvar="SQUEEZER_AUTH",
            help="Require API keys (on unless turned off).",
        ),
    ] = True,
    public_without_auth: Annotated[
        bool,
        typer.Option(
            "--public-without-auth",
            help="Serve a non-loopback interface with --no-auth (anyone who reaches it can use every tenant's data).",
        ),
    ] = False,
) -> None:
    """Run the API (production): configured by SQUEEZER_DATABASE_URL, SQUEEZER_BROKER_URL, SQUEEZER_STORAGE_*."""
    import uvicorn

    from squeezer.api.app import create_app
    from squeezer.store.logging_setup import configure_logging
    from squeezer.store.settings import get_settings

    if not auth and not is_loopback(host) and not public_without_auth:
        err_console.print(
            f"refusing to serve {host} without API keys: bind a loopback address (--host 127.0.0.1), turn keys on, "
            "or pass --public-without-auth",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(EXIT_BAD_INPUT)
    settings = get_settings(auth=auth)
    configure_logging(settings)
    uvicorn.run(create_app(settings), host=host, port=port, proxy_headers=True, log_config=None)


def worker(
    webhooks: Annotated[
        bool, typer.Option("--webhooks", help="Deliver webhooks (the `webhooks` queue) instead of running jobs.")
    ] = False,
) -> None:
    """Run a Celery worker (one per GPU): configured by the same SQUEEZER_* variables as the API."""
    from squeezer.worker.celery_app import start_worker

    try:
        start_worker(webhooks=webhooks)
    except ValueError as error:
        err_console.print(str(error), highlight=False)
        raise typer.Exit(EXIT_BAD_INPUT) from None


def migrate() -> None:
    """Bring the database schema up to date (alembic upgrade head); the compose file runs it once before the API."""
    from squeezer.store.migrate import upgrade_database
    from squeezer.store.settings import get_settings

    upgrade_database(get_settings().resolved_database_url)
    console.print("database is up to date")


# Over 60 lines: typer reads the options from the signature, which is most of it.
def submit(
    context: typer.Context,
    model: Annotated[
        Path,
        typer.Argument(help="An .onnx file, a Squeezer model directory or a .zip of one."),
    ],
    data: Annotated[
        str,
        typer.Option(
            "--data",
            help="sample:digits, sample:fashion-mnist, an .npz, or an image folder (dir/.zip/.tar).",
        ),
    ],
    server: ServerOption = DEFAULT_SERVER,
    max_drop: Annotated[float, typer.Option("--max-drop", help="Largest allowed accuracy drop.")] = 1.0,
    drop_type: Annotated[
        DropType,
        typer.Option("--drop-type", help="absolute (points) or relative (percent of baseline)."),
    ] = DropType.ABSOLUTE,
    method: Annotated[MethodName, typer.Option(help=f"Compression method; {summaries()}.")] = MethodName.LWCT,
    option: Annotated[
        list[str] | None,
        typer.Option(
            "--option",
            help="Engine option KEY=VALUE, dotted keys, e.g. lwct.sparsity=0.8.",
        ),
    ] = None,
    wait: Annotated[
        bool,
        typer.Option("--wait", help="Poll until the job ends, then download the results."),
    ] = False,
    out: Annotated[Path, typer.Option("--out", help="Folder for the results (with --wait).")] = Path(
        "squeezer-results"
    ),
    api_key: ApiKeyOption = None,
    log_format: Annotated[
        LogFormat,
        typer.Option("--log-format", help=f"With --wait. {LOG_FORMAT_HELP}"),
    ] = "text",
) -> None:
    """Upload a model (and data), submit a compression job, and optionally wait for its results."""

    def action() -> int:
        try:
            options = parse_options(option or [])
        except ValueError as error:
            raise ClientError(str(error), EXIT_BAD_INPUT) from None
        return submit_and_wait(
            server,
            model,
            data,
            out_dir=out,
            wait=wait,
            max_drop=max_drop,
            drop_type=drop_type,
            method=method,
            options=options,
            api_key=api_key,
            log_format=log_format,
        )

    run_client(context, server, action)


def run_client(context: typer.Context, server: str, action: Callable[[], int | None]) -> None:
    """Runs a client command's body and exits with its code; whatever goes wrong is one stderr line: a problem
    answer (exit 2 for the request's fault, 1 for the server's), a server not reached (1) or a malformed --server
    URL (2), and any other failure, a bug of ours, with the log file holding its traceback (1; the traceback itself
    with `squeezer --debug`)."""
    debug = cli_state(context).debug
    try:
        code = action() or EXIT_TARGET_MET
    except ClientError as error:
        print_one_line(str(error))
        raise typer.Exit(error.exit_code) from None
    except (httpx.InvalidURL, httpx.UnsupportedProtocol) as error:
        print_one_line(f"invalid server URL {server!r}: {error}")
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except httpx.TransportError as error:
        print_one_line(f"cannot reach the Squeezer server at {server}: {error or type(error).__name__}")
        raise typer.Exit(EXIT_FAILED) from None
    except (typer.Exit, typer.Abort):
        raise
    except Exception as error:
        report_internal_error(error, debug=debug)
        raise typer.Exit(EXIT_FAILED) from None
    raise typer.Exit(code)


@jobs_app.command("list")
def jobs_list(
    context: typer.Context,
    server: ServerOption = DEFAULT_SERVER,
    api_key: ApiKeyOption = None,
    status: Annotated[str | None, typer.Option(help="Only jobs with this status.")] = None,
    limit: int = 20,
) -> None:
    """The newest jobs."""

    def action() -> None:
        with _client(server, api_key) as client:
            params: dict[str, str | int] = {"limit": limit, **({"status": status} if status else {})}
            page = _answer(client.get("/v1/jobs", params=params))
        print_rows(
            ["id", "status", "stage", "fraction", "created"],
            [
                [
                    job["id"],
                    job["status"],
                    job["progress"].get("stage", ""),
                    f"{job['progress'].get('fraction', 0):.0%}",
                    job["created_at"],
                ]
                for job in page["data"]
            ],
        )

    run_client(context, server, action)


@jobs_app.command("show")
def jobs_show(
    context: typer.Context, job_id: str, server: ServerOption = DEFAULT_SERVER, api_key: ApiKeyOption = None
) -> None:
    """One job as JSON."""

    def action() -> None:
        with _client(server, api_key) as client:
            console.print_json(data=_answer(client.get(f"/v1/jobs/{job_id}")))

    run_client(context, server, action)


@jobs_app.command("cancel")
def jobs_cancel(
    context: typer.Context, job_id: str, server: ServerOption = DEFAULT_SERVER, api_key: ApiKeyOption = None
) -> None:
    """Cancel a job (a running one stops at its next step)."""

    def action() -> None:
        with _client(server, api_key) as client:
            job = _answer(client.post(f"/v1/jobs/{job_id}/cancel"))
        console.print(f"job {job['id']} {job['status']}")

    run_client(context, server, action)


@jobs_app.command("delete")
def jobs_delete(
    context: typer.Context, job_id: str, server: ServerOption = DEFAULT_SERVER, api_key: ApiKeyOption = None
) -> None:
    """Delete a finished job with its events and result files (a queued or running one: cancel it first)."""

    def action() -> None:
        with _client(server, api_key) as client:
            _check(client.delete(f"/v1/jobs/{job_id}"))
        console.print(f"job {job_id} deleted")

    run_client(context, server, action)


@jobs_app.command("download")
def jobs_download(
    context: typer.Context,
    job_id: str,
    server: ServerOption = DEFAULT_SERVER,
    out: Annotated[Path, typer.Option("--out")] = Path("squeezer-results"),
    api_key: ApiKeyOption = None,
) -> None:
    """Download a job's result files: model.sqz, model.onnx, model.zip, report.json and report.html."""

    def action() -> None:
        with _client(server, api_key) as client:
            for path in download_results(client, job_id, out):
                console.print(str(path))

    run_client(context, server, action)


def demo(
    context: typer.Context,
    out: Annotated[Path, typer.Option("--out", help="Folder for the results.")] = Path("demo-results"),
    port: Annotated[
        int,
        typer.Option(help="Loopback port for the embedded service (0: any free one)."),
    ] = 0,
) -> None:
    """Start the embedded service, train the bundled sample if needed, compress it over REST with a 1-point budget."""
    from squeezer.core.samples import ensure_sample_model

    console.print("Preparing the bundled sample model (lenet5 on digits)…")
    model_dir, accuracy = ensure_sample_model("digits")
    console.print(f"sample model: {model_dir} (validation accuracy {accuracy:.2f}%)")
    server, thread, bound = serve_in_thread(
        embedded_app(out / ".service", least_log_level="WARNING"), "127.0.0.1", port
    )
    url = f"http://127.0.0.1:{bound}"
    console.print(f"embedded service on {url}")
    try:
        run_client(
            context,
            url,
            lambda: submit_and_wait(url, model_dir, "sample:digits", out_dir=out, wait=True, max_drop=1.0),
        )
    finally:
        server.should_exit = True
        thread.join(SERVER_STOP_TIMEOUT_S)


# The service extra (`pip install 'squeezer[service]'`): the top-level modules its packages install.
SERVICE_MODULES = frozenset(
    {
        "fastapi", "starlette", "uvicorn", "uvloop", "httptools", "multipart", "python_multipart",
        "sqlalchemy", "alembic", "psycopg", "psycopg_pool", "celery", "kombu", "redis", "standardwebhooks",
        "boto3", "botocore", "prometheus_client",
    }
)  # fmt: skip


def needs_service_extra(command: Callable, name: str | None = None) -> Callable:
    """`command` with a missing service package as one stderr line naming the extra (exit 2), not a traceback:
    `pip install squeezer` installs the engine alone."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except ModuleNotFoundError as error:
            if (error.name or "").partition(".")[0] not in SERVICE_MODULES:
                raise
            print_one_line(
                f"error: missing_extra: `squeezer {name or command.__name__}` needs the service extra "
                f"({error.name} is not installed): pip install 'squeezer[service]'"
            )
            raise typer.Exit(EXIT_BAD_INPUT) from None

    return run


def register(app: typer.Typer) -> None:
    """Adds the service commands to the `squeezer` app."""
    for command in (serve, api, worker, migrate, submit, demo):
        app.command()(command if command is submit else needs_service_extra(command))
    app.add_typer(jobs_app, name="jobs")
