"""Job polls on PostgreSQL (store.job_reads): psycopg_pool's connections, bounded, per event loop, closed with the
reader."""

import asyncio

from sqlalchemy import text

from squeezer.store.db import make_engine
from squeezer.store.job_reads import POLL_APPLICATION_NAME, AsyncPostgresJobReader
from squeezer.store.jobs import create_job
from squeezer.store.models import DEFAULT_TENANT
from tests.helpers import wait_until


def _poll_connections(url: str) -> int:
    """The poll connections PostgreSQL has open to this test's database."""
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            query = text(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = :name AND datname = current_database()"
            )
            return connection.execute(query, {"name": POLL_APPLICATION_NAME}).scalar_one()
    finally:
        engine.dispose()


def _new_job(pg_sessions) -> str:
    with pg_sessions() as session:
        return create_job(
            session, tenant=DEFAULT_TENANT, spec={}, idempotency_key=None, request_hash=None, max_attempts=1
        )[0].id


def test_concurrent_polls_share_at_most_size_connections_on_each_event_loop(pg_sessions, postgres_url):
    job_id = _new_job(pg_sessions)
    reader = AsyncPostgresJobReader(postgres_url, size=2)

    async def poll_many() -> tuple[list, int]:
        rows = await asyncio.gather(*(reader.job_row(job_id, DEFAULT_TENANT) for _ in range(40)))
        return rows, await asyncio.to_thread(_poll_connections, postgres_url)

    for _ in range(2):  # a second loop, as a second TestClient runs the app on
        rows, connections = asyncio.run(poll_many())
        assert [row.id for row in rows] == [job_id] * 40
        assert 1 <= connections <= 2 * 2  # this loop's pool, and at most the abandoned one of the loop before
    assert asyncio.run(reader.job_row(job_id, "another-tenant")) is None


def test_closing_the_reader_closes_its_connections(pg_sessions, postgres_url):
    job_id = _new_job(pg_sessions)
    reader = AsyncPostgresJobReader(postgres_url)

    async def poll_then_close() -> int:
        await asyncio.gather(*(reader.job_row(job_id, DEFAULT_TENANT) for _ in range(5)))
        opened = await asyncio.to_thread(_poll_connections, postgres_url)
        await reader.close()
        return opened

    assert asyncio.run(poll_then_close()) >= 1
    wait_until(lambda: _poll_connections(postgres_url) == 0, what="the poll connections to close")
