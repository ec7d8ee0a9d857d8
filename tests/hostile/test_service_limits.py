"""One client cannot exhaust the API, and quotas hold under bursts: a real uvicorn server (the production app with API
keys on, PostgreSQL, database blob storage) is attacked over raw sockets. Stalled uploads and downloads must leave
/healthz and an authenticated GET answering within seconds; bodies are refused before they are read; concurrent
uploads cannot race past the storage quota."""

import contextlib
import resource
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from sqlalchemy import func, select

from squeezer.api.app import create_app
from squeezer.store.keys import create_key
from squeezer.store.models import Artifact
from squeezer.store.settings import Settings
from squeezer.worker.dispatch import CeleryDispatcher
from tests.api.conftest import assert_problem
from tests.helpers import live_server, wait_until

ANSWER_WITHIN_S = 3.0
STALLED = 40  # each kind: as many as the default thread pool has threads, more than the database pool's base size


@contextlib.contextmanager
def serve(settings: Settings, redis_url: str):
    app = create_app(settings, dispatcher=CeleryDispatcher(redis_url))
    with live_server(app) as url:
        yield app, httpx.URL(url).port


def answering(sock: socket.socket) -> bool:
    """Whether the server has begun its answer on `sock` (peeked: the bytes stay unread)."""
    try:
        return bool(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except BlockingIOError:
        return False


@pytest.fixture
def service(postgres_url, redis_url, tmp_path):
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=postgres_url,
        storage_backend="database",
        storage_chunk_bytes=64 * 1024,
        max_upload_bytes=64 << 20,
        auth=True,
        max_concurrent_uploads_per_tenant=STALLED + 10,
    )
    with serve(settings, redis_url) as (app, port):
        with app.state.session_factory() as session:
            _, key = create_key(session, "acme", "test")
        yield app, port, {"Authorization": f"Bearer {key}"}


def raw(port: int, head: str, body: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(head.encode() + b"\r\n" + body)
    return sock


def response_of(sock: socket.socket, timeout_s: float = ANSWER_WITHIN_S) -> bytes:
    sock.settimeout(timeout_s)
    data = b""
    with contextlib.suppress(TimeoutError, ConnectionResetError):
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return data


def upload_head(port: int, headers: dict, declared: int, boundary: str = "b0undary") -> str:
    auth = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return (
        f"POST /v1/artifacts HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {declared}\r\n"
    )


FILE_PART = (
    b'--b0undary\r\nContent-Disposition: form-data; name="file"; filename="m.onnx"\r\n'
    b"Content-Type: application/octet-stream\r\n\r\n"
)


def answers_quickly(port: int, headers: dict) -> None:
    """/healthz and an authenticated GET each answer within ANSWER_WITHIN_S."""
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=ANSWER_WITHIN_S * 3) as client:
        for path, auth in (("/healthz", {}), ("/v1/jobs", headers)):
            started = time.monotonic()
            response = client.get(path, headers=auth)
            assert response.status_code == 200, response.text
            assert time.monotonic() - started < ANSWER_WITHIN_S, path


def test_stalled_uploads_and_downloads_do_not_stall_the_api(service):
    app, port, headers = service
    base = f"http://127.0.0.1:{port}"
    big = httpx.post(
        f"{base}/v1/artifacts", headers=headers, files={"file": ("big.bin", b"\1" * (16 << 20))}, timeout=60
    )
    assert big.status_code == 201, big.text
    uploads, downloads = [], []
    try:
        for _ in range(STALLED):  # a body that never finishes
            uploads.append(raw(port, upload_head(port, headers, 8 << 20), FILE_PART + b"\0" * 4096))
        for _ in range(STALLED):  # a download that is never read
            sock = socket.create_connection(("127.0.0.1", port))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(
                f"GET /v1/artifacts/{big.json()['id']}/content HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: {headers['Authorization']}\r\n\r\n".encode()
            )
            downloads.append(sock)
        wait_until(
            lambda: app.state.upload_slots.in_flight("acme") == STALLED and all(map(answering, downloads)),
            30,
            "the server to be receiving every stalled upload and sending every stalled download",
        )
        answers_quickly(port, headers)
        with httpx.Client(base_url=base, timeout=30) as client:  # and real work still gets through
            small = client.post("/v1/artifacts", headers=headers, files={"file": ("s.bin", b"x" * 1000)})
            assert small.status_code == 201, small.text
            assert client.get(f"/v1/artifacts/{small.json()['id']}/content", headers=headers).content == b"x" * 1000
    finally:
        for sock in uploads + downloads:
            sock.close()
    with app.state.session_factory() as session:  # the stalled uploads stored nothing
        assert session.scalar(select(func.count()).select_from(Artifact)) == 2


def test_bodies_are_refused_before_they_are_read(service):
    app, port, headers = service
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    huge = 3 << 29  # 1.5 GiB declared; only the headers are ever sent
    without_key = raw(port, upload_head(port, {}, huge), FILE_PART)
    assert response_of(without_key).startswith(b"HTTP/1.1 401"), "the key is checked before the body is read"
    wrong_key = raw(port, upload_head(port, {"Authorization": "Bearer sqz_nope"}, huge), FILE_PART)
    assert response_of(wrong_key).startswith(b"HTTP/1.1 401")
    too_big = raw(port, upload_head(port, headers, huge), FILE_PART)
    assert response_of(too_big).startswith(b"HTTP/1.1 413")
    auth = f"Authorization: {headers['Authorization']}\r\n"
    for content_type in ("multipart/form-data; boundary=x", "text/plain", "application/octet-stream"):
        # a job body is 1 MiB at most, whatever it claims to be
        sock = raw(
            port,
            f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: {content_type}\r\nContent-Length: {huge}\r\n",
        )
        assert response_of(sock).startswith(b"HTTP/1.1 413"), content_type
    chunked = raw(
        port,
        f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: multipart/form-data; boundary=x\r\n"
        "Transfer-Encoding: chunked\r\n",
    )
    piece = b"x" * (256 << 10)
    with contextlib.suppress(OSError):
        for _ in range(8):  # 2 MiB without a declared length: counted as it arrives
            chunked.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
    assert response_of(chunked).startswith(b"HTTP/1.1 413")
    for sock in (without_key, wrong_key, too_big, chunked):
        sock.close()
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before < 128 << 10  # KiB: nothing was buffered
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers) as client:
        two_types = client.post(
            "/v1/jobs",
            content=b"{}",
            headers=[("Content-Type", "application/json"), ("Content-Type", "multipart/form-data; boundary=x")],
        )
        assert_problem(two_types, 400, "ambiguous_content_type")
        many_fields = {f"f{index}": "v" for index in range(20)}
        assert_problem(
            client.post("/v1/artifacts", data=many_fields, files={"file": ("m", b"x")}), 422, "validation_error"
        )
        long_fields = {f"f{index}": "v" * 1000 for index in range(6)}
        assert_problem(
            client.post("/v1/artifacts", data=long_fields, files={"file": ("m", b"x")}), 422, "validation_error"
        )
    with app.state.session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Artifact)) == 0


def test_uploads_in_flight_are_capped_per_tenant(postgres_url, redis_url, tmp_path):
    settings = Settings(data_dir=tmp_path, database_url=postgres_url, auth=True, max_concurrent_uploads_per_tenant=2)
    with serve(settings, redis_url) as (app, port):
        with app.state.session_factory() as session:
            headers = {"Authorization": f"Bearer {create_key(session, 'acme')[1]}"}
            other = {"Authorization": f"Bearer {create_key(session, 'other')[1]}"}
        stalled = [raw(port, upload_head(port, headers, 1 << 20), FILE_PART) for _ in range(2)]
        wait_until(lambda: app.state.upload_slots.in_flight("acme") == 2, 30, "the server to hold both uploads")
        base = f"http://127.0.0.1:{port}"
        assert_problem(
            httpx.post(f"{base}/v1/artifacts", headers=headers, files={"file": ("m", b"x")}),
            429,
            "upload_quota_exceeded",
        )
        assert httpx.post(f"{base}/v1/artifacts", headers=other, files={"file": ("m", b"x")}).status_code == 201
        for sock in stalled:
            sock.close()
        wait_until(
            lambda: httpx.post(f"{base}/v1/artifacts", headers=headers, files={"file": ("m", b"x")}).status_code == 201,
            10,
            "the slots of closed uploads to be released",
            0.2,
        )


def test_an_exhausted_database_pool_is_a_503_problem(service):
    app, port, headers = service
    engine = app.state.session_factory.kw["bind"]
    engine.pool._timeout = 0.5  # SQLAlchemy's pool_timeout, shortened for the test
    held = [engine.connect() for _ in range(engine.pool.size() + engine.pool._max_overflow)]
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=10) as client:
            response = client.get("/v1/artifacts/art_x")
            assert_problem(response, 503, "service_unavailable")
            assert response.headers["retry-after"]
            assert client.get("/healthz").status_code == 200
    finally:
        for connection in held:
            connection.close()


def test_concurrent_uploads_cannot_race_past_the_storage_quota(postgres_url, redis_url, tmp_path):
    size = 1 << 20
    quota = size + size // 2  # room for one upload, not two
    settings = Settings(
        data_dir=tmp_path,
        database_url=postgres_url,
        auth=True,
        max_stored_bytes_per_tenant=quota,
        max_concurrent_uploads_per_tenant=16,
    )
    with serve(settings, redis_url) as (app, port):
        with app.state.session_factory() as session:
            headers = {"Authorization": f"Bearer {create_key(session, 'acme')[1]}"}
        barrier = threading.Barrier(8)

        def upload(_: int) -> httpx.Response:
            barrier.wait()
            return httpx.post(
                f"http://127.0.0.1:{port}/v1/artifacts",
                headers=headers,
                files={"file": ("m.bin", b"\2" * size)},
                timeout=60,
            )

        with ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(upload, range(8)))
        statuses = sorted(response.status_code for response in responses)
        assert statuses == [201] + [413] * 7, [response.text for response in responses]
        for response in responses:
            if response.status_code == 413:
                assert_problem(response, 413, "storage_quota_exceeded")
        with app.state.session_factory() as session:
            assert session.scalar(select(func.sum(Artifact.size_bytes)).where(Artifact.tenant == "acme")) == size
