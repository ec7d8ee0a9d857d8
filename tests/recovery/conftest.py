"""Servers of their own for the fault tests, so stopping one never disturbs another test's."""

import os
import tempfile
from pathlib import Path

import pytest

from tests.servers import PostgresServer, RedisServer, launch
from tests.worker.conftest import sample_model_zip, service  # noqa: F401


@pytest.fixture
def own_redis(tmp_path):
    server = launch(RedisServer, tmp_path / "redis")
    yield server
    server.stop()


@pytest.fixture
def own_postgres():
    if os.environ.get("SQUEEZER_TEST_POSTGRES_URL"):
        pytest.skip("external PostgreSQL given; restarting it is not ours to do")
    server = launch(PostgresServer, Path(tempfile.mkdtemp(prefix="squeezer-pg-")))  # reachable by the postgres user
    yield server
    server.stop()
