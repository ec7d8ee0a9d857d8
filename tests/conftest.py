import os
import tempfile
import uuid
from pathlib import Path

import pytest
import torch

from tests.servers import PostgresServer, RedisServer, S3Server

# The test models are too small for intra-op threads: on two cores shared with worker processes they only spin
# (measured: a quick LeNet compression takes 3.5 s on one thread, 80 s on two under load). Worker processes the
# tests start inherit the variable.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory):
    if os.environ.get("SQUEEZER_TEST_POSTGRES_URL"):
        pytest.skip("external PostgreSQL given; server-control tests need their own")
    server = PostgresServer(Path(tempfile.mkdtemp(prefix="squeezer-pg-"))).start()
    yield server
    server.stop()


@pytest.fixture
def postgres_url(request) -> str:
    """A fresh, empty PostgreSQL database for one test."""
    external = os.environ.get("SQUEEZER_TEST_POSTGRES_URL")
    if external:
        return external
    server = request.getfixturevalue("postgres_server")
    return server.create_database(f"t_{uuid.uuid4().hex[:12]}")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = RedisServer(Path(tmp_path_factory.mktemp("redis"))).start()
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
    server = S3Server(Path(tmp_path_factory.mktemp("s3"))).start()
    yield server
    server.stop()


@pytest.fixture
def s3_settings(s3_server) -> dict[str, str]:
    """Settings fields for a fresh, empty bucket of the session's S3 server."""
    bucket = f"t-{uuid.uuid4().hex[:12]}"
    s3_server.client().create_bucket(Bucket=bucket)
    return s3_server.settings_fields(bucket)
