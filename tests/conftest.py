import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from squeezer.store.migrate import upgrade_database
from tests.helpers import live_server
from tests.servers import PostgresServer, RedisServer, S3Server, launch

# The test models are too small for intra-op threads: on two cores shared with worker processes they only spin
# (measured: a quick LeNet compression takes 3.5 s on one thread, 80 s on two under load). Worker processes the
# tests start inherit the variable.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory):
    if os.environ.get("SQUEEZER_TEST_POSTGRES_URL"):
        pytest.skip("external PostgreSQL given; server-control tests need their own")
    server = launch(PostgresServer, Path(tempfile.mkdtemp(prefix="squeezer-pg-")))
    yield server
    server.stop()


@pytest.fixture
def postgres_url(request) -> str:
    """A fresh PostgreSQL database for one test, its schema at head (a copy of the session's migrated template)."""
    external = os.environ.get("SQUEEZER_TEST_POSTGRES_URL")
    if external:
        request.getfixturevalue("migrated_external_postgres")
        return external
    server = request.getfixturevalue("postgres_server")
    return server.create_migrated_database(f"t_{uuid.uuid4().hex[:12]}")


@pytest.fixture
def empty_postgres_url(request) -> str:
    """A fresh, empty PostgreSQL database for one test: for the tests of the migrations themselves."""
    external = os.environ.get("SQUEEZER_TEST_POSTGRES_URL")
    if external:
        return external
    server = request.getfixturevalue("postgres_server")
    return server.create_database(f"t_{uuid.uuid4().hex[:12]}")


@pytest.fixture(scope="session")
def migrated_external_postgres() -> None:
    upgrade_database(os.environ["SQUEEZER_TEST_POSTGRES_URL"])


@pytest.fixture(scope="session")
def migrated_sqlite_file(tmp_path_factory) -> Path:
    """A SQLite database the migrations built once; `sqlite_url` copies it."""
    path = tmp_path_factory.mktemp("sqlite-template") / "squeezer.db"
    upgrade_database(f"sqlite:///{path}")
    return path


@pytest.fixture
def sqlite_url(migrated_sqlite_file, tmp_path) -> str:
    """A fresh SQLite database for one test, its schema at head."""
    path = tmp_path / "squeezer.db"
    shutil.copyfile(migrated_sqlite_file, path)
    return f"sqlite:///{path}"


@pytest.fixture
def serve_live() -> Iterator[Callable[[Any], str]]:
    """Serves apps on real servers (uvicorn on threads, loopback ports) for one test: `serve_live(app)` gives the
    base URL; every server stops when the test ends."""
    with contextlib.ExitStack() as stack:
        yield lambda app: stack.enter_context(live_server(app))


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = launch(RedisServer, Path(tmp_path_factory.mktemp("redis")))
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server) -> str:
    external = os.environ.get("SQUEEZER_TEST_REDIS_URL")
    if external:
        return external
    import redis

    redis.Redis.from_url(redis_server.url).flushall()
    return redis_server.url


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    server = launch(S3Server, Path(tmp_path_factory.mktemp("s3")))
    yield server
    server.stop()


@pytest.fixture
def s3_settings(s3_server) -> dict[str, str]:
    """Settings fields for a fresh, empty bucket of the session's S3 server."""
    bucket = f"t-{uuid.uuid4().hex[:12]}"
    s3_server.client().create_bucket(Bucket=bucket)
    return s3_server.settings_fields(bucket)
