"""Job polls, the hottest read: one job row by id and tenant, many times a second per client. On PostgreSQL they run
on the event loop over a psycopg_pool of async connections: a worker-thread hop and SQLAlchemy's execution path cost
more CPU than the query itself (bench/api_poll.py). SQLite has no async driver here, so its polls take a worker thread
to store.jobs.poll_job_row. Failures surface as SQLAlchemy's errors, which the API already answers with a 503."""

import asyncio
from typing import Any, Protocol

import anyio.to_thread
import psycopg
from psycopg import AsyncConnection
from psycopg.rows import namedtuple_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DataError, OperationalError
from sqlalchemy.exc import TimeoutError as SQLAlchemyPoolTimeout

from squeezer.store.db import POOL_SIZE, make_engine
from squeezer.store.jobs import poll_job_row
from squeezer.store.models import Job

# A poll waits at most this long for a connection and its answer before the API answers 503.
POLL_TIMEOUT_S = 10.0
# Once the server was lost: how long a poll waits for a new connection, and how long the pool keeps retrying one
# before the next poll starts afresh, so an outage answers 503 within seconds and a restart is noticed at once.
RECONNECT_WAIT_S = 2.0
# How the poll connections name themselves to the server (pg_stat_activity.application_name).
POLL_APPLICATION_NAME = "squeezer-job-polls"
_COLUMNS = ", ".join(column.name for column in Job.__table__.columns)
_POLL_SQL = f"SELECT {_COLUMNS} FROM {Job.__tablename__} WHERE id = %s AND tenant = %s"


class JobReader(Protocol):
    async def job_row(self, job_id: str, tenant: str) -> Any | None:
        """The job's row (its columns as attributes, named as on `Job`) when it belongs to `tenant`, else None."""

    async def close(self) -> None: ...


class ThreadedJobReader:
    """Polls through SQLAlchemy in a worker thread, on an autocommit engine of their own (SQLite)."""

    def __init__(self, url: str):
        self.engine: Engine = make_engine(url, autocommit=True)

    async def job_row(self, job_id: str, tenant: str) -> Any | None:
        return await anyio.to_thread.run_sync(poll_job_row, self.engine, job_id, tenant)

    async def close(self) -> None:
        self.engine.dispose()


class AsyncPostgresJobReader:
    """Polls on the event loop through psycopg_pool: up to `size` autocommit connections, made on demand and reused,
    each query prepared by psycopg after its first few runs. The pool replaces a connection that comes back broken
    or mid-query (a cancelled poll); a query that fails on a connection (a restarted server dropped them all) has the
    idle ones checked and is tried once more, so a restart costs no poll once the server is back. Until a poll
    succeeds again, polls wait RECONNECT_WAIT_S for a connection, then answer 503 like any other request."""

    def __init__(self, url: str, size: int = POOL_SIZE, timeout_s: float = POLL_TIMEOUT_S):
        self.conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        self.timeout_s = timeout_s
        self.size = size
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pool: AsyncConnectionPool[AsyncConnection[Any]] | None = None
        self._server_lost = False

    async def _bound_pool(self) -> AsyncConnectionPool[AsyncConnection[Any]]:
        """A pool belongs to the event loop that opened it: an app served again on another loop (a test client per
        test) opens a new one; the old loop, and the old pool's tasks with it, are gone."""
        loop = asyncio.get_running_loop()
        if self._pool is None or loop is not self._loop:
            self._loop = loop
            self._pool = AsyncConnectionPool(
                self.conninfo,
                min_size=0,
                max_size=self.size,
                timeout=self.timeout_s,
                reconnect_timeout=RECONNECT_WAIT_S,
                kwargs={"autocommit": True, "row_factory": namedtuple_row, "application_name": POLL_APPLICATION_NAME},
                open=False,
                name="job-polls",
            )
            await self._pool.open()
        return self._pool

    async def job_row(self, job_id: str, tenant: str) -> Any | None:
        if "\x00" in job_id or "\x00" in tenant:  # as PostgreSQL would refuse it elsewhere: the client's error
            raise DataError(_POLL_SQL, (job_id, tenant), ValueError("NUL character in a text value"))
        pool = await self._bound_pool()
        try:
            async with asyncio.timeout(self.timeout_s):
                try:
                    row = await self._query(pool, job_id, tenant)
                except psycopg.OperationalError:
                    self._server_lost = True
                    await pool.check()  # drops the idle connections the server dropped too
                    row = await self._query(pool, job_id, tenant)
        except (TimeoutError, PoolTimeout):
            raise SQLAlchemyPoolTimeout("the database did not answer a job poll in time") from None
        except psycopg.OperationalError as error:
            raise OperationalError(_POLL_SQL, (job_id, tenant), error) from error
        self._server_lost = False
        return row

    async def _query(self, pool: AsyncConnectionPool[AsyncConnection[Any]], job_id: str, tenant: str) -> Any | None:
        # getconn/putconn rather than pool.connection(): an autocommit connection needs no commit or rollback on exit.
        connection = await pool.getconn(RECONNECT_WAIT_S if self._server_lost else None)
        try:
            cursor = await connection.execute(_POLL_SQL, (job_id, tenant))
            return await cursor.fetchone()
        finally:
            await pool.putconn(connection)

    async def close(self) -> None:
        if self._pool is not None and self._loop is asyncio.get_running_loop():
            await self._pool.close()
        self._pool = None


def make_job_reader(url: str) -> JobReader:
    if make_url(url).get_backend_name() == "postgresql":
        return AsyncPostgresJobReader(url)
    return ThreadedJobReader(url)
